"""Faults a worker must come back from, or exit on with one clear line (so systemd restarts
it): a read-only database, restarts more frequent than a job's interval, a leader lock
lost in the middle of a planning pass."""

from __future__ import annotations

import datetime as dt
import json
import signal
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select, text

from jobs import records
from jobs.leader import MySQLLeaderLock
from jobs.server_check import server_check
from jobs.worker import Worker
from provisioner.models import Server, WorkerStatus
from provisioner.wiring import App
from tests.fixtures.config import dump_toml
from tests.fixtures.readonly import database_refusing_writes
from tests.fixtures.services import fresh_mysql_database
from tests.fixtures.shop import DAY, open_shop
from tests.fixtures.stack import Stack, open_stack, start_worker, wait_until


@pytest.fixture
def quick_stack(tmp_path: Path) -> Iterator[Stack]:
    """The stack with a worker that ticks every second and gives a read-only database 5 s."""
    with open_stack(tmp_path, worker={"tick_seconds": 1.0, "database_outage_seconds": 5,
                                      "shutdown_grace_seconds": 1}) as s:
        yield s


def _last_tick(stack: Stack) -> dt.datetime | None:
    with stack.app.sessions() as s:
        row = s.get(WorkerStatus, "last_tick")
        return None if row is None else row.updated_at


@pytest.mark.slow
def test_a_database_read_only_for_longer_than_allowed_makes_the_worker_exit_with_one_line(quick_stack: Stack) -> None:
    log = quick_stack.tmp / "worker.log"
    worker = start_worker(quick_stack.config_path, log)
    try:
        assert wait_until(lambda: _last_tick(quick_stack) is not None, 30), log.read_text()
        with database_refusing_writes(quick_stack.tmp / "provisioner.db"):
            # Then it exits 1 by itself, saying why in one line, within the outage allowance (5 s) and a bit
            assert worker.wait(40) == 1, log.read_text()[-3000:]
        lines = [ln for ln in log.read_text().splitlines() if "exiting so that systemd restarts" in ln]
        assert len(lines) == 1 and "has not taken writes" in lines[0]
        assert "Traceback" not in log.read_text()
        # And a restarted worker works on the writable database again
        before = _last_tick(quick_stack)
        worker = start_worker(quick_stack.config_path, quick_stack.tmp / "worker2.log")
        assert wait_until(lambda: (_last_tick(quick_stack) or before) > before, 30)  # type: ignore[operator]
    finally:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            worker.wait(15)


@pytest.mark.slow
def test_a_worker_started_on_a_read_only_database_recovers_once_it_is_writable(quick_stack: Stack) -> None:
    data = tomllib.loads(quick_stack.config_path.read_text())
    data["worker"]["database_outage_seconds"] = 120
    quick_stack.config_path.write_text(dump_toml(data))
    log = quick_stack.tmp / "worker.log"
    first = start_worker(quick_stack.config_path, quick_stack.tmp / "first.log")   # makes the WAL files
    assert wait_until(lambda: _last_tick(quick_stack) is not None, 30)
    first.send_signal(signal.SIGTERM)
    assert first.wait(15) == 0
    # Given the database files turned read-only, and a worker (re)started on them: SQLite opens
    # its connections read-only, and they stay so
    with database_refusing_writes(quick_stack.tmp / "provisioner.db", index_too=True):
        worker = start_worker(quick_stack.config_path, log)
        assert wait_until(lambda: b"does not take writes" in log.read_bytes(), 30), log.read_text()[-2000:]
    try:
        # When the files are writable again, Then the worker takes fresh connections and goes on
        assert wait_until(lambda: b"takes writes again" in log.read_bytes(), 30), log.read_text()[-2000:]
        quick_stack.add_subscription(1, "ann@example.com")
        with quick_stack.app.sessions() as s:
            assert wait_until(lambda: s.scalars(select(Server.status)).all() == ["Running"], 60), log.read_text()
        assert worker.poll() is None
        assert log.read_bytes().count(b"does not take writes") == 1       # one line for the outage, not one a row
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(15) == 0


def _record_run(app: App, name: str, at: dt.datetime) -> None:
    records.record_status(app, f"job:{name}", {"at": at.isoformat(), "ok": True, "result": f"{name}: seeded"})


def _last_run(app: App, name: str) -> dt.datetime:
    with app.sessions() as s:
        row = s.get(WorkerStatus, f"job:{name}")
        assert row is not None
        return dt.datetime.fromisoformat(json.loads(row.value)["at"])


def test_a_worker_restarted_more_often_than_an_interval_still_runs_the_job_on_time(stack: Stack) -> None:
    # Given bandwidth was last synced 50 minutes ago (the interval is 60)
    synced = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=50)
    _record_run(stack.app, "sync_bandwidth", synced)
    for other in ("sweep", "expire_identities"):      # not due: they stay out of the way
        _record_run(stack.app, other, dt.datetime.now(dt.UTC))

    # When the worker is restarted three times in a row
    for _ in range(3):
        worker = Worker(stack.app, stack.lifecycle())
        worker.start()
        try:
            job = worker.scheduler.get_job("sync_bandwidth")
            # Then each start keeps the due time the last run set, not one interval from the start
            assert abs((job.next_run_time - (synced + dt.timedelta(minutes=60))).total_seconds()) < 1
        finally:
            worker.shutdown()

    # And once that time has passed while it was down, it runs within seconds of the next start
    _record_run(stack.app, "sync_bandwidth", dt.datetime.now(dt.UTC) - dt.timedelta(minutes=61))
    worker = Worker(stack.app, stack.lifecycle())
    worker.start()
    try:
        started = dt.datetime.now(dt.UTC)
        assert wait_until(lambda: _last_run(stack.app, "sync_bandwidth") >= started, 30)
    finally:
        worker.shutdown()


@pytest.fixture
def mysql_db(mysql_server_url: str) -> Iterator[str]:
    yield from fresh_mysql_database(mysql_server_url)


@pytest.mark.mysql
def test_a_worker_that_lost_its_lock_mid_tick_records_no_plan(tmp_path: Path, mysql_db: str) -> None:
    # Given a leader on MariaDB and three subscriptions to build
    shop = open_shop(tmp_path, mysql_db)
    try:
        for n in (1, 2, 3):
            shop.subscribe(n, expires=shop.clock.now + 30 * DAY)
        lock = MySQLLeaderLock(shop.app.engine)
        assert lock.acquire()
        asked = {"n": 0}

        def lock_killed_after_the_first_build() -> bool:
            asked["n"] += 1
            if asked["n"] == 3:     # before the pass, before build 1, before build 2: the connection dies
                holder = lock._conn.execute(text("SELECT CONNECTION_ID()")).scalar()
                with shop.app.engine.connect() as admin:
                    admin.execute(text(f"KILL {int(holder)}"))
            return lock.held()

        # When its lock connection is killed in the middle of recording the pass
        report = server_check(shop.app, shop.lc, still_leader=lock_killed_after_the_first_build)

        # Then it stops: nothing is recorded, and the pass is not either (a plan's builds are
        # committed together, after the last check of the lock: the first is not kept either)
        assert report.lost_leadership
        with shop.app.sessions() as s:
            assert len(s.scalars(select(Server)).all()) == 0
            assert s.get(WorkerStatus, "last_tick") is None
        lock.release()
    finally:
        shop.app.engine.dispose()
