"""The lease heartbeat: one thread renews the lease of every running step, only while it runs."""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
import time
from typing import Any

import pytest

from provisioner import lease

LEASE = 0.3   # a renewal every 0.1 s


def _beating(monkeypatch: pytest.MonkeyPatch, answer: Any) -> list[tuple[int, float]]:
    """Replace the database write with ``answer(server_id)`` for each row (True: still ours); the
    (server id, time) of each row renewed."""
    calls: list[tuple[int, float]] = []

    def renew(sessions: object, server_ids: set[int], owner: str, until: dt.datetime) -> set[int]:
        calls.extend((sid, time.monotonic()) for sid in server_ids)
        return {sid for sid in server_ids if answer(sid)}

    monkeypatch.setattr(lease, "renew", renew)
    return calls


def _clock() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def test_every_running_step_is_renewed_and_none_after_its_end(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _beating(monkeypatch, lambda sid: True)
    threads_before = threading.active_count()
    with lease.heartbeat(None, 1, "me", LEASE, _clock):  # type: ignore[arg-type]
        with lease.heartbeat(None, 2, "me", LEASE, _clock):  # type: ignore[arg-type]
            time.sleep(LEASE * 2)
            # one thread for both (a thread per step was the old way), started on first use
            assert threading.active_count() <= threads_before + 1
        ended = time.monotonic()
        time.sleep(LEASE)
    over = time.monotonic()
    assert {sid for sid, _ in calls} == {1, 2}
    assert len([1 for sid, _ in calls if sid == 2]) >= 2
    assert not [at for sid, at in calls if sid == 2 and at > ended]      # none after its step ended
    time.sleep(LEASE)
    assert not [at for sid, at in calls if at > over]


def test_a_lease_taken_over_is_no_longer_renewed(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _beating(monkeypatch, lambda sid: False)     # the row's lease is someone else's now
    with lease.heartbeat(None, 3, "me", LEASE, _clock):  # type: ignore[arg-type]
        time.sleep(LEASE * 2)
    assert len(calls) == 1


def test_a_renewal_that_blows_up_neither_hangs_the_step_nor_stops_the_beats(monkeypatch: pytest.MonkeyPatch) -> None:
    def answer(sid: int) -> bool:
        if sid == 4:
            raise RuntimeError("a bug in the renewal")
        return True

    calls = _beating(monkeypatch, answer)
    started = time.monotonic()
    with lease.heartbeat(None, 4, "me", LEASE, _clock):  # type: ignore[arg-type]
        time.sleep(LEASE * 1.5)
    assert time.monotonic() - started < LEASE * 3            # the step's end did not wait for ever
    assert len([1 for sid, _ in calls if sid == 4]) >= 2     # tried again at the next beat
    with lease.heartbeat(None, 5, "me", LEASE, _clock):  # type: ignore[arg-type]
        time.sleep(LEASE * 1.5)
    assert len([1 for sid, _ in calls if sid == 5]) >= 2     # the thread lives on for the next step


def test_the_leases_due_together_are_renewed_in_one_statement(sqlite_url: str) -> None:
    """A hundred long installs renew their leases with one UPDATE per beat, not one each; a row
    another worker took over is told apart and let go."""
    from sqlalchemy import event, insert, select, update

    from provisioner import db
    from provisioner.models import Server

    engine = db.make_engine(sqlite_url)
    db.upgrade(engine)
    sessions = db.session_factory(engine)
    old = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    with engine.begin() as conn:
        conn.execute(insert(Server), [{"id": i, "subscription_id": f"s{i}", "customer_id": "1", "product_id": "1",
                                       "user_email": "a@example.com", "status": "Queued", "lease_owner": "me",
                                       "lease_until": old} for i in range(1, 6)])
    updates: list[str] = []
    event.listen(engine, "before_cursor_execute",
                 lambda conn, cur, sql, *a: updates.append(sql) if "SET lease_until" in sql else None)
    with contextlib.ExitStack() as steps:
        for i in range(1, 6):           # steps that started 10 ms apart
            steps.enter_context(lease.heartbeat(sessions, i, "me", LEASE, _clock))
            time.sleep(0.01)
        with engine.begin() as conn:     # another worker takes row 5 over
            conn.execute(update(Server).where(Server.id == 5).values(lease_owner="other"))
        time.sleep(LEASE * 0.6)         # the first beat comes at a third of the lease, the next at two
    with engine.connect() as conn:
        until = dict(conn.execute(select(Server.id, Server.lease_until)).tuples().all())
    assert all(db_time(until[i]) > old for i in range(1, 5)), until     # renewed
    assert db_time(until[5]) == old                                      # not ours: left alone
    assert updates, "no renewal"
    in_lists = [sql.split(" IN (", 1)[1].split(")", 1)[0].count("?") for sql in updates]
    assert min(in_lists) >= 4, updates     # each beat renews them all in one statement, not one each
    engine.dispose()


def db_time(value: Any) -> dt.datetime:
    from provisioner.models import as_utc

    result = as_utc(value)
    assert result is not None
    return result
