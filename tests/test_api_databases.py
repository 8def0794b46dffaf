"""The customer queries on both databases: SQLite (embedded) and MariaDB/MySQL (production).
The MariaDB half skips locally without a server and is required in CI."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from dashboard_api.queries import customer_servers_query
from tests.fixtures.api import OTHER, OVPN, OWNER, ApiEnv, build_env


@pytest.fixture
def env(tmp_path: Path, db_url: str) -> Iterator[ApiEnv]:
    e = build_env(tmp_path, database_url=db_url)
    e.add_server(OWNER, "g0001")
    e.add_server("ALICE@example.COM", "g0002")
    e.add_server(OTHER, "g0003")
    e.add_server("alice@example.com.evil.test", "g0004")
    with e.client:
        yield e
    e.app.engine.dispose()


def test_it_scopes_finds_and_changes_the_same_on_every_database(env: ApiEnv) -> None:
    alice = env.headers("Alice@Example.com")
    listed = env.client.get("/api/servers", headers=alice).json()
    assert [s["short_name"] for s in listed] == ["g0001", "g0002"]
    assert listed[0]["events"][0]["what"] == "create.finish"
    assert env.client.get("/api/servers/g0003/ovpn", headers=alice).status_code == 404
    assert env.client.get("/api/servers/g0001/ovpn", headers=alice).content == OVPN
    assert env.client.post("/api/servers/g0002/rebuild", headers=alice, json={"location": "ams"}).status_code == 202
    assert env.client.post("/api/servers/g0002/rebuild", headers=alice, json={"location": "ams"}).status_code == 409
    r = env.client.put("/api/servers/g0001/schedule", headers=alice, json={"schedule": "daily", "location": "fra"})
    assert r.status_code == 200 and r.json()["events"][0]["what"] == "schedule.changed"
    assert (env.row("g0001").rebuild_schedule, env.row("g0002").rebuild_now_location) == ("daily", "ams")


def test_it_uses_the_account_index_on_every_database(env: ApiEnv) -> None:
    q = customer_servers_query("1")
    sql = str(q.compile(env.app.engine, compile_kwargs={"literal_binds": True}))
    with env.app.engine.connect() as conn:
        if env.app.engine.dialect.name == "sqlite":
            plan = " ".join(str(r[-1]) for r in conn.execute(text("EXPLAIN QUERY PLAN " + sql)))
            assert "ix_provisioner_servers_account" in plan and "SCAN provisioner_servers" not in plan, plan
            # each listed server's newest event is one seek on its (server_id, id) index
            assert "USING COVERING INDEX ix_provisioner_server_events_server_id" in plan, plan
        else:
            rows = conn.execute(text("EXPLAIN " + sql)).mappings().all()
            keys = {r["key"] for r in rows if r["table"] == "provisioner_servers"}
            # on a tiny table the optimizer may still scan; it must at least consider the index
            assert any("ix_provisioner_servers_account" in str(r["possible_keys"]) for r in rows), rows
            assert keys <= {"ix_provisioner_servers_account", None}, rows
            # "has a .ovpn?" looks up each listed server's sealed row by its primary key, never a scan
            sealed = [r for r in rows if r["table"] == "provisioner_server_sealed"]
            assert sealed and all(r["key"] == "PRIMARY" for r in sealed), rows
            # and its newest event by the (server_id, id) index, never a scan of the events
            events = [r for r in rows if r["table"] == "provisioner_server_events"]
            assert events and all(r["key"] == "ix_provisioner_server_events_server_id" for r in events), rows
