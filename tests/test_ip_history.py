"""IP history: who held an address when, across create, rebuilds and destroy; what the
migration makes of the audit trail; the retention; the command an abuse desk runs."""

from __future__ import annotations

import datetime as dt
import json
import random
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import inspect, select, text

from jobs.privacy import purge_ip_history
from provisioner import db
from provisioner.cli import main
from provisioner.models import IpHolding, Server
from provisioner.wiring import App
from tests.fixtures.config import write_config
from tests.fixtures.stack import Stack

# A /29: five addresses to hand out, so a later server is given an address an earlier one held.
_NET = f"127.{random.randint(100, 250)}.{random.randint(0, 255)}.{8 * random.randint(1, 30)}"
TINY_POOL = {"sandbox": {"ip_pool": f"{_NET}/29"}}


def ip_history(capsys: pytest.CaptureFixture[str], cfg: Path, *args: str) -> tuple[int, list[dict], str]:
    code = main(["--config", str(cfg), "ip-history", *args, "--json"])
    out, err = capsys.readouterr()
    return code, json.loads(out) if code == 0 else [], err


def holdings(app: App) -> list[IpHolding]:
    with app.sessions() as s:
        return list(s.scalars(select(IpHolding).order_by(IpHolding.held_from, IpHolding.id)))


def mid(a: dt.datetime, b: dt.datetime) -> str:
    return (a + (b - a) / 2).isoformat()


@pytest.mark.parametrize("stack", [TINY_POOL], indirect=True)
def test_it_names_who_held_an_address_at_any_moment_across_rebuilds_and_destroy(
        stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = stack.config_path
    # ann: create, two rebuilds, destroy; then bob's server, rebuilt until it is given ann's first address
    ann = stack.create_server(1, "ann@example.com")
    stack.act(ann, "rebuild", "ams")
    stack.act(ann, "rebuild", "fra")
    stack.set_subscription(1, status="expired", days=-10)
    stack.act(ann, "destroy")
    bob = stack.create_server(2, "bob@example.com")
    first_ip = holdings(stack.app)[0].ip
    while holdings(stack.app)[-1].ip != first_ip:
        stack.act(bob, "rebuild", "random")

    h = holdings(stack.app)
    anns = [x for x in h if x.server_id == ann]
    assert len(anns) == 3 and len({x.ip for x in anns}) == 3
    # every holding of ann ended; during each rebuild the old address was held until the old
    # instance was deleted, after the new one was up
    ends = [x.held_until for x in anns]
    assert None not in ends
    assert anns[0].held_from < anns[1].held_from < ends[0] < anns[2].held_from < ends[1] < ends[2]  # type: ignore[operator]
    assert (h[-1].server_id, h[-1].ip, h[-1].held_until) == (bob, first_ip, None)

    # Inside each of ann's holdings, her address names her server, e-mail and subscription
    for x in anns:
        code, found, err = ip_history(capsys, cfg, x.ip, "--at", mid(x.held_from, x.held_until or x.held_from))
        assert code == 0, err
        assert [(f["server"], f["email"], f["subscription_id"], f["customer_id"]) for f in found] == [
            (x.server_name, "ann@example.com", "1", "1")]
    # between holdings (ann's first address after its instance went, before the destroy): nobody
    code, _, err = ip_history(capsys, cfg, anns[0].ip, "--at", mid(ends[0], anns[2].held_from))  # type: ignore[arg-type]
    assert code == 2 and "no server of ours held" in err
    # the first address, later given to bob, names bob now, and nobody in between
    code, found, _ = ip_history(capsys, cfg, first_ip, "--at", dt.datetime.now(dt.UTC).isoformat())
    assert [f["email"] for f in found] == ["bob@example.com"]
    gap = (anns[0].held_until or dt.datetime.now(dt.UTC)) + dt.timedelta(microseconds=1)
    code, _, err = ip_history(capsys, cfg, first_ip, "--at", gap.isoformat())
    assert code == 2 and f"no server of ours held {first_ip} at" in err and len(err.strip().splitlines()) == 1
    # before the first holding: nobody
    code, _, err = ip_history(capsys, cfg, anns[0].ip, "--at", "2000-01-01T00:00Z")
    assert code == 2
    # without --at: every holding of the address, oldest first
    code, found, _ = ip_history(capsys, cfg, first_ip)
    assert [f["email"] for f in found] == ["ann@example.com", "bob@example.com"]
    # the table for humans
    assert main(["--config", str(cfg), "ip-history", first_ip]) == 0
    table = capsys.readouterr().out
    assert "(still held)" in table and "ann@example.com" in table


@pytest.mark.parametrize(("args", "needle"), [
    (("203.0.113.500",), "'203.0.113.500' is not an IPv4 or IPv6 address"),
    (("203.0.113.7", "--at", "the 3rd at 14:02"), "--at: 'the 3rd at 14:02' is not a time"),
    (("203.0.113.7",), "no server of ours held 203.0.113.7 (holdings are kept 180 days"),
    (("203.0.113.7", "--at", "2026-03-03T14:02Z"), "no server of ours held 203.0.113.7 at 2026-03-03 14:02:00 UTC"),
])
def test_it_answers_a_bad_or_unmatched_query_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         args: tuple[str, ...], needle: str) -> None:
    cfg = write_config(tmp_path)
    assert main(["--config", str(cfg), "db", "upgrade"]) == 0
    capsys.readouterr()
    code = main(["--config", str(cfg), "ip-history", *args])
    _, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and needle in lines[0], err


def test_it_reads_times_with_offsets_and_ipv6_in_any_spelling(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    app = _app(tmp_path)
    at = dt.datetime(2026, 3, 3, 14, 0, tzinfo=dt.UTC)
    rid = _server(app)
    _holding(app, rid, "2001:db8::7", at, at + dt.timedelta(hours=1))
    cfg = tmp_path / "provisioner.toml"
    code, found, err = ip_history(capsys, cfg, "2001:0DB8:0:0::0007", "--at", "2026-03-03T15:02+01:00")
    assert code == 0 and [f["ip"] for f in found] == ["2001:db8::7"], err
    code, found, _ = ip_history(capsys, cfg, "2001:db8::7", "--at", "2026-03-03 14:59:59")
    assert len(found) == 1
    code, _, _ = ip_history(capsys, cfg, "2001:db8::7", "--at", "2026-03-03T15:00Z")  # the end is not inside
    assert code == 2


def test_it_forgets_holdings_that_ended_longer_ago_than_the_retention(tmp_path: Path) -> None:
    app = _app(tmp_path, privacy={"ip_history_days": 30})
    now = app.clock()
    rid = _server(app)
    _holding(app, rid, "203.0.113.1", now - dt.timedelta(days=90), now - dt.timedelta(days=31))   # forgotten
    _holding(app, rid, "203.0.113.2", now - dt.timedelta(days=31), now - dt.timedelta(days=29))   # kept
    _holding(app, rid, "203.0.113.3", now - dt.timedelta(days=400), None)                         # held now: kept
    report = purge_ip_history(app)
    assert report.deleted == 1 and "1 address holding(s) older than 30 days deleted" in report.summary()
    assert [h.ip for h in holdings(app)] == ["203.0.113.3", "203.0.113.2"]


# --- the migration ------------------------------------------------------------------------------

def _alembic(engine, revision: str, down: bool = False) -> None:  # noqa: ANN001
    cfg = Config()
    cfg.set_main_option("script_location", str(db.MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        (command.downgrade if down else command.upgrade)(cfg, revision)


T = dt.datetime(2026, 1, 5, 10, 0)


def test_the_migration_builds_the_history_from_the_audit_trail_and_downgrades(db_url: str) -> None:
    # Given a 0004 database whose audit trail tells a create, a rebuild, a destroy, and a live server
    engine = db.make_engine(db_url)
    _alembic(engine, "0004")
    minutes = lambda m: T + dt.timedelta(minutes=m)  # noqa: E731
    with engine.begin() as conn:
        for sid, sub, status, ip, inst, destroyed in ((1, "11", "Destroyed", None, None, minutes(30)),
                                                      (2, "12", "Running", "203.0.113.9", "i-9", None),
                                                      (3, "13", "Running", "203.0.113.5", "i-5", None)):
            conn.execute(text(
                "INSERT INTO provisioner_servers (id, customer_id, product_id, subscription_id, server_ip, user_email,"
                " server_name, bandwidth_this_month, bandwidth_limit_this_month, rebuild_schedule,"
                " rebuild_schedule_location, status, rebuild_now_status, generation, attempts, needs_human, paused,"
                " version, bandwidth_carried, created_at, updated_at, destroyed_at, instance_id, bandwidth_alerted,"
                " suspended_by_cap) VALUES (:id, :c, '1', :sub, :ip, :email, :name, 0, 0, 'none', 'random', :status,"
                " false, 0, 0, false, false, 0, 0, :created, :created, :destroyed, :inst, 0, false)"),
                {"id": sid, "c": f"c{sid}", "sub": sub, "ip": ip, "email": f"u{sid}@example.com",
                 "name": f"g000{sid}.vpn.example.com", "status": status, "created": T, "destroyed": destroyed,
                 "inst": inst})
        trail = [(1, 1, "create.boot", "instance i-1 is up at 203.0.113.1"),
                 (1, 10, "rebuild.boot", "instance i-2 is up at 203.0.113.2"),
                 (1, 12, "rebuild.retire", "deleted old instance i-1"),
                 (1, 30, "destroy.instances", "deleted 1 instance(s)"),
                 (2, 2, "create.boot", "instance i-8 disappeared; creating it again"),
                 (2, 3, "create.boot", "instance i-9 is up at 203.0.113.9"),
                 (2, 4, "create.boot", "instance i-9 is up at 203.0.113.9")]   # a replayed step: once
        for sid, m, what, detail in trail:
            conn.execute(text("INSERT INTO provisioner_server_events (server_id, at, actor, what, outcome, detail) "
                              "VALUES (:s, :at, 'worker', :what, 'ok', :d)"), {"s": sid, "at": minutes(m),
                                                                               "what": what, "d": detail})
    # When it is upgraded
    db.upgrade(engine)
    app_sessions = db.session_factory(engine)
    with app_sessions() as s:
        got = [(h.server_id, h.ip, h.instance_id, h.held_from.replace(tzinfo=None),
                h.held_until.replace(tzinfo=None) if h.held_until else None, h.user_email)
               for h in s.scalars(select(IpHolding).order_by(IpHolding.server_id, IpHolding.held_from))]
    # Then every address is held from its boot to its instance's deletion; a live server's
    # address no event explains is held from its creation
    assert got == [
        (1, "203.0.113.1", "i-1", minutes(1), minutes(12), "u1@example.com"),
        (1, "203.0.113.2", "i-2", minutes(10), minutes(30), "u1@example.com"),
        (2, "203.0.113.9", "i-9", minutes(3), None, "u2@example.com"),
        (3, "203.0.113.5", "i-5", T, None, "u3@example.com"),
    ]
    with app_sessions() as s:
        assert s.get(Server, 1) is not None and s.get(Server, 1).operator_hold_at is None  # type: ignore[union-attr]
    # And a downgrade takes the table and the hold columns away again, and the upgrade redoes them
    _alembic(engine, "0004", down=True)
    assert "provisioner_ip_history" not in inspect(engine).get_table_names()
    assert "operator_hold_at" not in {c["name"] for c in inspect(engine).get_columns("provisioner_servers")}
    db.upgrade(engine)
    with app_sessions() as s:
        assert len(list(s.scalars(select(IpHolding)))) == 4
    engine.dispose()


def test_the_migration_rebuilds_what_the_lifecycle_recorded(stack: Stack) -> None:
    rid = stack.create_server(1, "ann@example.com")
    stack.act(rid, "rebuild", "ams")
    stack.act(rid, "rebuild", "fra")
    recorded = [(h.ip, h.instance_id, h.held_until is None) for h in holdings(stack.app)]
    _alembic(stack.app.engine, "0004", down=True)
    db.upgrade(stack.app.engine)
    assert [(h.ip, h.instance_id, h.held_until is None) for h in holdings(stack.app)] == recorded


# --- helpers ------------------------------------------------------------------------------------

def _app(tmp: Path, **sections: dict) -> App:
    from provisioner.settings import load_settings

    app = App(load_settings(write_config(tmp, **sections), env={}))
    db.upgrade(app.engine)
    return app


def _server(app: App) -> int:
    with app.sessions() as s:
        row = Server(customer_id="7", product_id="1", subscription_id="77", user_email="eve@example.com",
                     server_name="g0007.vpn.example.test")
        s.add(row)
        s.commit()
        return row.id


def _holding(app: App, rid: int, ip: str, since: dt.datetime, until: dt.datetime | None) -> None:
    with app.sessions() as s:
        s.add(IpHolding(ip=ip, server_id=rid, server_name="g0007.vpn.example.test", subscription_id="77",
                        customer_id="7", user_email="eve@example.com", instance_id="i-7", held_from=since,
                        held_until=until))
        s.commit()
