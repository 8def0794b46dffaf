"""Revision 0005 on SQLite and MariaDB: it moves what existing rows already know into the new
columns, and its downgrade gives back the 0004 schema with every row intact."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Engine, MetaData, Table, insert, inspect, select

from provisioner import db
from tests.fixtures.migrations import alembic as _alembic

T = dt.datetime(2026, 11, 20, 10, 0)
NEW = {"account_id", "ended_seen_at", "planned_destroy_at", "identity_kept_until", "action_started_at",
       "human_alerted_at"}


def _server(**values: Any) -> dict[str, Any]:
    return {"action": None, "step": None, "customer_id": "1", "product_id": "1", "user_email": "a@example.com",
            "bandwidth_this_month": 0,
            "bandwidth_limit_this_month": 0, "rebuild_schedule": "none", "rebuild_schedule_location": "random",
            "status": "Running", "rebuild_now_status": False, "generation": 0, "attempts": 0, "needs_human": False,
            "paused": False, "version": 1, "bandwidth_carried": 0, "created_at": T, "updated_at": T, **values}


def _columns(engine: Engine) -> set[str]:
    return {c["name"] for c in inspect(engine).get_columns("provisioner_servers")}


def test_it_moves_the_data_it_can_and_downgrades_cleanly(db_url: str) -> None:
    engine = db.make_engine(db_url)
    db.upgrade(engine, "0004")
    md = MetaData()
    with engine.begin() as conn:
        servers, events, stripe, outbox = (Table(n, md, autoload_with=conn) for n in (
            "provisioner_servers", "provisioner_server_events", "provisioner_stripe_subscriptions",
            "provisioner_outbox"))
        for row in (_server(id=1, subscription_id="sub_A", customer_id="cus_A"),             # Stripe storefront
                    _server(id=2, subscription_id="17", customer_id="7"),                    # EDD
                    _server(id=3, subscription_id="18", action="create", step="boot"),       # mid-action
                    _server(id=4, subscription_id="19", status="Destroyed"),                  # the planner destroyed it
                    _server(id=5, subscription_id="20", status="Error", action="create", step="install",
                            needs_human=True)):
            conn.execute(insert(servers).values(**row))     # one by one: each row names other columns
        conn.execute(insert(stripe), [{"id": "sub_A", "customer_id": "cus_A", "email": "a@example.com",
                                       "price_id": "price_1", "status": "active", "cancel_at_period_end": False,
                                       "updated_at": T}])
        conn.execute(insert(events), [
            {"server_id": 3, "at": T - dt.timedelta(hours=5), "actor": "planner", "what": "create.requested",
             "outcome": "info", "detail": ""},
            {"server_id": 3, "at": T - dt.timedelta(hours=1), "actor": "worker", "what": "create.boot",
             "outcome": "started", "detail": ""},
            {"server_id": 4, "at": T - dt.timedelta(hours=3), "actor": "planner", "what": "destroy.requested",
             "outcome": "info", "detail": ""},
            {"server_id": 5, "at": T - dt.timedelta(hours=2), "actor": "planner", "what": "create.requested",
             "outcome": "info", "detail": ""}])
        conn.execute(insert(outbox), [{"kind": "needs_attention", "channel": "email", "recipient": "ops@x.test",
                                       "language": "en", "subject": "s", "body": "b", "payload": "{}", "server_id": 5,
                                       "dedupe_key": "attention:5", "status": "sent", "attempts": 1,
                                       "next_attempt_at": T, "created_at": T - dt.timedelta(minutes=30)}])

    db.upgrade(engine, "0005")
    assert db.current_revision(engine) == "0005" and NEW <= _columns(engine)
    md = MetaData()
    with engine.connect() as conn:
        servers = Table("provisioner_servers", md, autoload_with=conn)
        got = {r.id: r for r in conn.execute(select(servers))}
    assert (got[1].account_id, got[2].account_id) == ("cus_A", None)   # EDD: the first pass fills it in
    assert got[3].action_started_at == T - dt.timedelta(hours=5)      # from its request, not a heartbeat
    assert got[4].planned_destroy_at == T - dt.timedelta(hours=3)     # the breaker's window counts it
    assert got[5].human_alerted_at == T - dt.timedelta(minutes=30)
    assert got[2].action_started_at is None and got[1].ended_seen_at is None
    assert "provisioner_destroy_holds" in inspect(engine).get_table_names()

    _alembic(engine, "downgrade", "0004")
    assert db.current_revision(engine) == "0004"
    assert not (NEW & _columns(engine))
    assert "provisioner_destroy_holds" not in inspect(engine).get_table_names()
    with engine.connect() as conn:
        servers = Table("provisioner_servers", MetaData(), autoload_with=conn)
        assert sorted(r.id for r in conn.execute(select(servers.c.id))) == [1, 2, 3, 4, 5]
    db.upgrade(engine, "0005")                      # and up again
    assert db.current_revision(engine) == "0005"
    engine.dispose()
