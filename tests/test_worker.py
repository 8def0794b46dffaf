"""The worker daemon: one leader, hand-over when it dies, no server worked on twice,
graceful shutdown."""

from __future__ import annotations

import datetime as dt
import signal
import subprocess
import sys
import tomllib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select, text

from jobs.leader import FileLeaderLock, MySQLLeaderLock
from provisioner import db
from provisioner.models import Server
from provisioner.sandbox.app import Sandbox
from provisioner.settings import load_settings
from provisioner.storefront import eddschema
from provisioner.wiring import App
from tests.fixtures.config import dump_toml
from tests.fixtures.services import fresh_mysql_database
from tests.fixtures.stack import Stack, build_stack, point_at, start_worker, wait_until


def test_only_one_file_lock_holder_at_a_time(tmp_path: Path) -> None:
    a, b = FileLeaderLock(str(tmp_path / "lock")), FileLeaderLock(str(tmp_path / "lock"))
    assert a.acquire() and a.held()
    assert not b.acquire()
    a.release()
    assert b.acquire() and b.held()
    b.release()


def test_a_killed_holder_releases_the_file_lock(tmp_path: Path) -> None:
    path = tmp_path / "lock"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys,time; from jobs.leader import FileLeaderLock as L; l=L(sys.argv[1]); "
        "assert l.acquire(); print('held', flush=True); time.sleep(60)"), str(path)], stdout=subprocess.PIPE)
    assert holder.stdout is not None and holder.stdout.readline().strip() == b"held"
    lock = FileLeaderLock(str(path))
    assert not lock.acquire()
    holder.kill()
    holder.wait()
    assert lock.acquire()
    lock.release()


@pytest.fixture
def mysql_db(mysql_server_url: str) -> Iterator[str]:
    yield from fresh_mysql_database(mysql_server_url)


@pytest.mark.mysql
def test_only_one_mysql_leader_and_a_dead_connection_hands_over(mysql_db: str) -> None:
    engine = db.make_engine(mysql_db)
    a, b = MySQLLeaderLock(engine), MySQLLeaderLock(engine)
    assert a.acquire() and a.held()
    assert not b.acquire()
    # the leader's connection dies (network cut, server restart, process killed)
    holder_id = a._conn.execute(text("SELECT CONNECTION_ID()")).scalar()
    with engine.connect() as admin:
        admin.execute(text(f"KILL {int(holder_id)}"))
    assert not a.held()          # the old leader notices it lost the lock...
    assert b.acquire()           # ...and another takes over
    b.release()
    engine.dispose()


def _statuses(app: App) -> list[str]:
    with app.sessions() as s:
        return [r.status for r in s.scalars(select(Server))]


@pytest.mark.mysql
@pytest.mark.slow
def test_two_workers_on_mariadb_one_leads_killing_it_hands_over_and_nothing_is_done_twice(
        tmp_path: Path, mysql_db: str) -> None:
    cfg, sb_config, hosts = build_stack(tmp_path, lifecycle={"lease_seconds": 30})
    data = tomllib.loads(cfg.read_text())
    data["database"]["url"] = data["storefront"]["edd_url"] = mysql_db
    data["worker"].update({"tick_seconds": 1.0, "threads": 4})
    cfg.write_text(dump_toml(data))
    with hosts, Sandbox(sb_config, hosts) as sb:
        point_at(cfg, sb)
        app = App(load_settings(cfg, env={}))
        db.upgrade(app.engine)
        edd = db.make_engine(mysql_db)
        eddschema.create_edd_tables(edd, "wp_")
        expiration = dt.datetime.now(dt.UTC).replace(tzinfo=None) + dt.timedelta(days=30)
        with edd.begin() as conn:
            for i in range(1, 7):
                cid = eddschema.insert_customer(conn, "wp_", email=f"c{i}@example.com")
                eddschema.insert_subscription(conn, "wp_", customer_id=cid, product_id=1, status="active",
                                              expiration=expiration)
        edd.dispose()
        logs = [tmp_path / "w1.log", tmp_path / "w2.log"]
        w1 = start_worker(cfg, logs[0])
        assert wait_until(lambda: b"now the leader" in logs[0].read_bytes(), 30), logs[0].read_text()
        w2 = start_worker(cfg, logs[1])
        try:
            assert wait_until(lambda: b"worker started" in logs[1].read_bytes(), 30), logs[1].read_text()
            assert b"now the leader" not in logs[1].read_bytes()
            # kill the leader mid-work: the follower takes the clock over and finishes
            assert wait_until(lambda: "Installing" in _statuses(app) or "Running" in _statuses(app), 30)
            w1.send_signal(signal.SIGKILL)
            w1.wait(10)
            assert wait_until(lambda: b"now the leader" in logs[1].read_bytes(), 30), logs[1].read_text()
            assert wait_until(lambda: _statuses(app) == ["Running"] * 6, 120), _statuses(app)
        finally:
            for w in (w1, w2):
                if w.poll() is None:
                    w.send_signal(signal.SIGTERM)
                    w.wait(30)
        calls = sb.calls()
        creates = Counter(c.get("label") for c in calls if c["endpoint"] == "POST /v2/instances"
                          and c["status"] == 202)
        assert len(creates) == 6 and set(creates.values()) == {1}, creates
        # each name created once: alone (a POST) or in a batch with others (its "posts")
        dns_creates = Counter([c["name"] for c in calls if c["endpoint"].endswith("/dns_records")
                               and c["method"] == "POST" and c["status"] == 200]
                              + [n for c in calls if c["endpoint"].endswith("/dns_records/batch") and c["status"] == 200
                                 for n in c.get("posts", "").split()])
        assert len(dns_creates) == 6 and set(dns_creates.values()) == {1}, dns_creates
        assert len([i for i in sb.describe()["instances"]]) == 6
        app.engine.dispose()


@pytest.mark.slow
def test_sigterm_stops_the_worker_cleanly_and_a_restart_finishes_the_work(stack: Stack) -> None:
    for i in range(1, 4):
        stack.add_subscription(i, f"c{i}@example.com")
    log = stack.tmp / "worker.log"
    w = start_worker(stack.config_path, log)
    try:
        assert wait_until(lambda: "Installing" in _statuses(stack.app), 30), log.read_text()
        w.send_signal(signal.SIGTERM)
        assert w.wait(40) == 0, log.read_text()
        assert b"worker stopped" in log.read_bytes()
        w = start_worker(stack.config_path, stack.tmp / "worker2.log")
        assert wait_until(lambda: _statuses(stack.app) == ["Running"] * 3, 90), _statuses(stack.app)
    finally:
        if w.poll() is None:
            w.send_signal(signal.SIGTERM)
            w.wait(30)
    assert len(stack.state()["instances"]) == 3
