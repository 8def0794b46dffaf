"""The lease heartbeat: one thread renews the lease of every running step, only while it runs."""

from __future__ import annotations

import datetime as dt
import threading
import time
from typing import Any

import pytest

from provisioner import lease

LEASE = 0.3   # a renewal every 0.1 s


def _beating(monkeypatch: pytest.MonkeyPatch, answer: Any) -> list[tuple[int, float]]:
    """Replace the database write with ``answer(server_id)``; the (server id, time) of each call."""
    calls: list[tuple[int, float]] = []

    def renew(sessions: object, server_id: int, owner: str, until: dt.datetime) -> bool:
        calls.append((server_id, time.monotonic()))
        return bool(answer(server_id))

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


def test_a_renewal_that_blows_up_neither_hangs_the_step_nor_stops_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    def answer(sid: int) -> bool:
        if sid == 4:
            raise RuntimeError("a bug in the renewal")
        return True

    calls = _beating(monkeypatch, answer)
    with lease.heartbeat(None, 5, "me", LEASE, _clock):  # type: ignore[arg-type]
        started = time.monotonic()
        with lease.heartbeat(None, 4, "me", LEASE, _clock):  # type: ignore[arg-type]
            time.sleep(LEASE * 1.5)
        assert time.monotonic() - started < LEASE * 3        # the step's end did not wait for ever
        time.sleep(LEASE)
    assert len([1 for sid, _ in calls if sid == 4]) >= 2     # tried again at the next beat
    assert len([1 for sid, _ in calls if sid == 5]) >= 3     # the other step's lease kept being renewed
