"""The driver never waits for the slowest server: one install that hangs occupies one thread,
while the real worker (`provisioner run`) plans, builds ten other servers and starts a
customer's rebuild."""

from __future__ import annotations

import signal
import time
import tomllib

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from jobs.driver import drive_until_idle
from provisioner import customer
from provisioner.models import Server, ServerEvent
from tests.fixtures.config import dump_toml
from tests.fixtures.stack import Stack, start_worker, wait_until

INSTALL = "bash /root/provisioner/install.sh"


def _rows(stack: Stack) -> dict[str, Server]:
    with stack.app.sessions() as s:
        return {r.subscription_id: r for r in s.scalars(select(Server))}


def _first_rebuild_step(stack: Stack, rid: int) -> ServerEvent | None:
    with stack.app.sessions() as s:
        return s.scalars(select(ServerEvent).where(ServerEvent.server_id == rid,
                                                   ServerEvent.what == "rebuild.instance",
                                                   ServerEvent.outcome == "started")).first()


@pytest.mark.slow
def test_a_hung_install_delays_neither_ten_new_servers_nor_a_customers_rebuild(stack: Stack) -> None:
    data = tomllib.loads(stack.config_path.read_text())
    data["worker"].update({"tick_seconds": 1.0, "threads": 4})
    stack.config_path.write_text(dump_toml(data))
    stack.add_subscription(1, "owner@example.com")
    log = stack.tmp / "worker.log"
    worker = start_worker(stack.config_path, log)
    try:
        # Given a Running server whose owner will ask for a rebuild
        assert wait_until(lambda: _rows(stack).get("1") and _rows(stack)["1"].status == "Running", 60), \
            log.read_text()
        # And a new server whose install hangs (ten minutes: far past many ticks)
        stack.hosts.set_fault("*", "slow_install", seconds=600, count=1)
        stack.add_subscription(2, "slow@example.com")
        assert stack.hosts.wait_for(lambda: INSTALL in stack.hosts.running_commands(), 60), log.read_text()

        # When ten more subscriptions arrive and the owner clicks Rebuild
        for i in range(3, 13):
            stack.add_subscription(i, f"c{i}@example.com")
        with stack.app.sessions() as s:
            owned = s.scalars(select(Server).where(Server.subscription_id == "1")).one()
            customer.request_rebuild(s, stack.app.settings, owned, "random", now=stack.app.clock())
            s.commit()
            owned_id = owned.id
        asked = time.monotonic()

        # Then the rebuild starts while the hung install is still running...
        assert wait_until(lambda: _first_rebuild_step(stack, owned_id) is not None, 30), log.read_text()
        print(f"rebuild started {time.monotonic() - asked:.2f}s after the request")
        assert INSTALL in stack.hosts.running_commands()
        # ...and the ten reach Running while the hung one is still installing
        ten = [str(i) for i in range(3, 13)]
        assert wait_until(lambda: all(_rows(stack)[k].status == "Running" for k in ten if k in _rows(stack))
                          and all(k in _rows(stack) for k in ten), 120), \
            {k: r.status for k, r in _rows(stack).items()}
        slow = _rows(stack)["2"]
        assert (slow.status, slow.step) == ("Installing", "install")
        assert INSTALL in stack.hosts.running_commands()
        assert wait_until(lambda: _rows(stack)["1"].status == "Running", 60)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
    # The worker stopped without waiting for the hung install; its row resumes on restart.
    assert worker.returncode == 0, log.read_text()


@pytest.mark.slow
def test_a_new_sale_is_planned_within_seconds_not_at_the_next_tick(stack: Stack) -> None:
    # Given a worker whose clock ticks once an hour (the first tick runs at start-up)
    data = tomllib.loads(stack.config_path.read_text())
    data["worker"].update({"tick_seconds": 3600.0})
    stack.config_path.write_text(dump_toml(data))
    log = stack.tmp / "worker.log"
    worker = start_worker(stack.config_path, log)
    try:
        assert wait_until(lambda: b"worker started" in log.read_bytes(), 30), log.read_text()
        assert wait_until(lambda: b"now the leader" in log.read_bytes(), 30), log.read_text()
        time.sleep(2)  # past the first tick, which found nothing
        assert _rows(stack) == {}
        # When a customer buys a plan (a new row in the EDD tables)
        stack.add_subscription(7, "new@example.com")
        # Then it is planned and built long before the next tick
        assert wait_until(lambda: "7" in _rows(stack) and _rows(stack)["7"].status == "Running", 60), \
            log.read_text()
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)


def test_the_due_row_query_is_one_range_on_the_due_index(db_url: str) -> None:
    import datetime as dt

    from sqlalchemy import insert, text

    from provisioner import db, operations

    # Given many idle rows (no action, no next attempt) and a few with work, no statistics gathered
    engine = db.make_engine(db_url)
    db.upgrade(engine)
    now = dt.datetime.now(dt.UTC)
    rows = [{"subscription_id": f"s{i}", "customer_id": "1", "product_id": "1", "user_email": "a@example.com",
             "status": "Running", "action": "create" if i % 100 == 0 else None} for i in range(2000)]
    with engine.begin() as conn:
        conn.execute(insert(Server), rows)

    # When the driver's statement is planned
    sql = str(operations.due_rows_query(now, limit=32).compile(engine, compile_kwargs={"literal_binds": True}))
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            plan = " ".join(str(r[-1]) for r in conn.execute(text("EXPLAIN QUERY PLAN " + sql)))
            # Then it searches ix_provisioner_servers_due for the rows with an action, nothing else
            assert "SEARCH provisioner_servers USING INDEX ix_provisioner_servers_due" in plan, plan
            assert "MULTI-INDEX" not in plan and "SCAN" not in plan, plan
        else:
            found = conn.execute(text("EXPLAIN " + sql)).mappings().all()
            assert [r["key"] for r in found] == ["ix_provisioner_servers_due"], found
        assert len(conn.execute(text(sql)).all()) == 20
    # And the driver's own calls: the rows it is working on are left out, the limit holds
    sessions = db.session_factory(engine)
    due = operations.due_rows(sessions, now)
    assert len(due) == 20
    assert operations.due_rows(sessions, now, limit=5, exclude=due[:3]) == due[3:8]
    assert operations.due_rows(sessions, now, exclude=due) == []
    later = now.replace(microsecond=0) + dt.timedelta(minutes=5)     # MariaDB keeps whole seconds
    with engine.begin() as conn:
        conn.execute(Server.__table__.update().where(Server.id.in_(due[:2])).values(next_attempt_at=later))
    assert operations.next_due_at(sessions, now) == later
    assert operations.next_due_at(sessions, now, exclude=due[:1]) == later   # the other one
    assert operations.next_due_at(sessions, now, exclude=due[:2]) is None
    engine.dispose()


def test_drive_until_idle_never_holds_a_due_row_back_behind_a_slow_one(sqlite_url: str) -> None:
    """`provisioner check --apply`, the operator commands and bench/fleet.py drive rows with
    drive_until_idle: a row whose poll comes due while another row sits in a long step is
    carried at once, not when the slow row's step is over."""
    import datetime as dt
    import threading
    from types import SimpleNamespace

    from sqlalchemy import insert, update

    from provisioner import db
    from provisioner.lifecycle import Outcome

    engine = db.make_engine(sqlite_url)
    db.upgrade(engine)
    sessions = db.session_factory(engine)
    with engine.begin() as conn:
        conn.execute(insert(Server), [{"subscription_id": f"s{i}", "customer_id": "1", "product_id": "1",
                                       "user_email": "a@example.com", "status": "Installing", "action": "create",
                                       "step": "boot"} for i in (1, 2)])
        slow, quick = sorted(conn.scalars(select(Server.id)))
    done: dict[int, float] = {}
    slow_started = threading.Event()
    calls: dict[int, int] = {slow: 0, quick: 0}

    def clock() -> dt.datetime:
        return dt.datetime.now(dt.UTC)

    def finish(rid: int) -> Outcome:
        with sessions() as s:
            s.execute(update(Server).where(Server.id == rid).values(action=None, step=None, next_attempt_at=None))
            s.commit()
        done[rid] = time.monotonic()
        return Outcome.DONE

    def advance(rid: int) -> Outcome:
        calls[rid] += 1
        if rid == slow:      # a long install
            slow_started.set()
            time.sleep(2.0)
            return finish(rid)
        if calls[rid] == 1:  # a boot poll: not ready, polled again in a tenth of a second
            assert slow_started.wait(5)
            with sessions() as s:
                s.execute(update(Server).where(Server.id == rid).values(
                    next_attempt_at=clock() + dt.timedelta(seconds=0.1)))
                s.commit()
            return Outcome.WAITING
        return finish(rid)

    lc = SimpleNamespace(advance=advance, clock=clock, ctx=SimpleNamespace(
        sessions=sessions, settings=SimpleNamespace(lifecycle=SimpleNamespace(poll_seconds=1.0))))
    started = time.monotonic()
    outcomes = drive_until_idle(lc, timeout=30, threads=4)  # type: ignore[arg-type]

    assert outcomes == {slow: Outcome.DONE, quick: Outcome.DONE}
    assert done[quick] - started < 1.0, "the quick row waited for the slow row's step"
    assert done[slow] - started >= 2.0
    engine.dispose()


def _rows_in_a_step(url: str, count: int) -> tuple[Engine, sessionmaker[Session]]:
    """A database of ``count`` rows in the middle of a create (due now): its engine and sessions."""
    from sqlalchemy import insert

    from provisioner import db

    engine = db.make_engine(url)
    db.upgrade(engine)
    with engine.begin() as conn:
        conn.execute(insert(Server), [{"subscription_id": f"s{i}", "customer_id": "1", "product_id": "1",
                                       "user_email": "a@example.com", "status": "Installing", "action": "create",
                                       "step": "dns"} for i in range(count)])
    return engine, db.session_factory(engine)

def test_a_burst_of_finished_steps_keeps_the_leaders_checks_at_their_idle_pace(sqlite_url: str) -> None:
    """Each finished step wakes the driver to refill its thread; the leader's own checks (a
    customer's rebuild, a change to the storefront: several queries) ride along at most once
    per idle poll, not once per wake: a burst of 100 servers woke it over a thousand times."""
    import datetime as dt
    from types import SimpleNamespace

    from sqlalchemy import update

    from jobs.driver import Driver
    from provisioner.lifecycle import Outcome

    engine, sessions = _rows_in_a_step(sqlite_url, 200)

    def advance(rid: int) -> Outcome:     # a quick step that finishes its row
        with sessions() as s:
            s.execute(update(Server).where(Server.id == rid).values(action=None, step=None))
            s.commit()
        return Outcome.DONE

    checks: list[float] = []
    lc = SimpleNamespace(advance=advance, clock=lambda: dt.datetime.now(dt.UTC), ctx=SimpleNamespace(sessions=sessions))
    driver = Driver(lc, threads=4, on_loop=lambda now: checks.append(time.monotonic()))  # type: ignore[arg-type]
    started = time.monotonic()
    driver.start()
    try:
        assert wait_until(lambda: len(driver.outcomes) == 200 and driver.busy == 0, 60)
        elapsed = time.monotonic() - started
    finally:
        driver.stop(5)
        engine.dispose()
    assert set(driver.outcomes.values()) == {Outcome.DONE}
    # every check a quarter of a second apart at most (plus the first): not one per finished step
    assert len(checks) <= elapsed / driver.idle_poll + 2, (len(checks), elapsed)
    assert all(b - a >= driver.idle_poll * 0.99 for a, b in zip(checks, checks[1:], strict=False))


def test_a_step_that_finishes_before_its_callback_is_registered_does_not_freeze_the_driver(
        sqlite_url: str) -> None:
    """A quick step can finish before the driver has registered what to do when it finishes;
    the driver then runs that itself, at once, and must not be holding its own lock."""
    import datetime as dt
    import threading
    from concurrent.futures import Executor, Future
    from types import SimpleNamespace
    from typing import Any

    from jobs.driver import Driver
    from provisioner.lifecycle import Outcome

    class Finished(Executor):
        """Runs each step before handing back its future: the tightest possible race, every time."""

        def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
            future: Future[Any] = Future()
            future.set_result(fn(*args, **kwargs))
            return future

    engine, sessions = _rows_in_a_step(sqlite_url, 3)
    lc = SimpleNamespace(advance=lambda rid: Outcome.WAITING, clock=lambda: dt.datetime.now(dt.UTC),
                         ctx=SimpleNamespace(sessions=sessions))
    driver = Driver(lc, threads=3)  # type: ignore[arg-type]
    driver._pool = Finished()  # type: ignore[assignment]
    filling = threading.Thread(target=driver.fill, args=(lc.clock(),), daemon=True)
    filling.start()
    filling.join(10)
    try:
        assert not filling.is_alive(), "the driver froze on its own lock"
        assert driver.busy == 0 and sorted(driver.outcomes) == [1, 2, 3]
    finally:
        engine.dispose()
