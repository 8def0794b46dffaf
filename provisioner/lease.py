"""Keep a server's lease alive while one step runs longer than the lease itself.

A worker claims a row for ``lifecycle.lease_seconds`` and renews the claim at every step
boundary. One step can outlast it: the install runs for up to ``ssh.command_timeout``
(15 min by default) against a 10 min lease. Without renewal another worker would see the
lease expire, take the row over and run the same install on the same host concurrently.

The heartbeat writes only ``lease_until``, only while we still hold the lease, through its
own connection and a Core UPDATE: the row's ``version`` (the ORM's fence against a worker
whose claim was taken over) is left alone, so the step's own commits are unaffected. One
thread of the process renews every running step's lease.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import cast

from sqlalchemy import Table, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from provisioner.models import Server

log = logging.getLogger(__name__)


def renew(sessions: sessionmaker[Session], server_id: int, owner: str, until: dt.datetime) -> bool:
    """Extend our lease on one row; False when it is no longer ours (or the row is gone)."""
    table = cast(Table, Server.__table__)
    with sessions() as session:
        result = session.execute(update(table)
                                 .where(table.c.id == server_id, table.c.lease_owner == owner)
                                 .values(lease_until=until))
        session.commit()
    return bool(getattr(result, "rowcount", 0))


@dataclass
class _Beat:
    sessions: sessionmaker[Session]
    server_id: int
    owner: str
    lease_seconds: float
    clock: Callable[[], dt.datetime]
    due: float                      # monotonic time of the next renewal


class _Heart:
    """One thread renews every running step's lease. A thread per step cost each step a thread's
    start and join (and a hundred sleeping threads in a burst of new servers) for a write that
    only a step longer than a third of the lease ever makes."""

    def __init__(self) -> None:
        self._beats: dict[int, _Beat] = {}
        self._renewing: set[int] = set()     # beats being written right now, outside the lock
        self._keys = itertools.count()
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    def add(self, beat: _Beat) -> int:
        with self._changed:
            key = next(self._keys)
            self._beats[key] = beat
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="lease-heartbeat", daemon=True)
                self._thread.start()
            self._changed.notify_all()
            return key

    def remove(self, key: int) -> None:
        """Stop renewing; returns once no renewal of it is under way, so none lands after the step."""
        with self._changed:
            self._beats.pop(key, None)
            self._changed.wait_for(lambda: key not in self._renewing)

    def _run(self) -> None:
        while True:
            with self._changed:
                now = time.monotonic()
                due = {k: b for k, b in self._beats.items() if b.due <= now}
                if not due:
                    soonest = min((b.due for b in self._beats.values()), default=now + 60.0)
                    self._changed.wait(soonest - now)
                    continue
                for b in due.values():
                    b.due = now + b.lease_seconds / 3
                self._renewing = set(due)
            lost: list[int] = []
            try:
                lost = [k for k, b in due.items() if not self._renew(b)]   # a step may end meanwhile
            finally:   # whatever happened, no step's end may wait on these for ever
                with self._changed:
                    for k in lost:
                        self._beats.pop(k, None)
                    self._renewing = set()
                    self._changed.notify_all()

    @staticmethod
    def _renew(b: _Beat) -> bool:
        try:
            if renew(b.sessions, b.server_id, b.owner, b.clock() + dt.timedelta(seconds=b.lease_seconds)):
                return True
            log.warning("server %s: lease no longer ours; the step's next write will stop", b.server_id)
            return False
        except SQLAlchemyError as exc:  # the database hiccuped: try again at the next beat
            log.warning("server %s: could not renew the lease: %s", b.server_id, type(exc).__name__)
            return True
        except Exception:  # noqa: BLE001 - a bug must not end the one thread that renews every lease
            log.exception("server %s: could not renew the lease", b.server_id)
            return True


_HEART = _Heart()


@contextlib.contextmanager
def heartbeat(sessions: sessionmaker[Session], server_id: int, owner: str, lease_seconds: float,
              clock: Callable[[], dt.datetime]) -> Iterator[None]:
    """Renew the lease every third of its length until the block ends."""
    key = _HEART.add(_Beat(sessions, server_id, owner, lease_seconds, clock, time.monotonic() + lease_seconds / 3))
    try:
        yield
    finally:
        _HEART.remove(key)
