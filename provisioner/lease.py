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
import math
import threading
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from typing import cast

from sqlalchemy import Table, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from provisioner.models import Server

log = logging.getLogger(__name__)


def renew(sessions: sessionmaker[Session], server_ids: Collection[int], owner: str, until: dt.datetime) -> set[int]:
    """Extend our lease on these rows in one statement; the ids still ours (the others were taken
    over, or the rows are gone)."""
    table = cast(Table, Server.__table__)
    ids = sorted(set(server_ids))
    ours = (table.c.id.in_(ids), table.c.lease_owner == owner)
    with sessions() as session:
        result = session.execute(update(table).where(*ours).values(lease_until=until))
        session.commit()
        if getattr(result, "rowcount", -1) == len(ids):
            return set(ids)
        return set(session.scalars(select(table.c.id).where(*ours)))


@dataclass
class _Beat:
    sessions: sessionmaker[Session]
    server_id: int
    owner: str
    lease_seconds: float
    clock: Callable[[], dt.datetime]
    due: float                      # monotonic time of the next renewal


class _Heart:
    """One thread renews every running step's lease, all those due at once in one statement. A
    thread per step cost each step a thread's start and join (and a hundred sleeping threads in
    a burst of new servers) for a write that only a step longer than a third of the lease ever
    makes; and a hundred long installs renewed one UPDATE each."""

    def __init__(self) -> None:
        self._beats: dict[int, _Beat] = {}
        self._renewing: set[int] = set()     # beats due in the round being written, outside the lock
        self._keys = itertools.count()
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        # When the waiting thread wakes on its own. A step whose first renewal comes later (all of
        # them, with the default lease) is added without waking it: no hand-off per step.
        self._wakes_at = -math.inf

    def add(self, beat: _Beat) -> int:
        with self._changed:
            key = next(self._keys)
            self._beats[key] = beat
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="lease-heartbeat", daemon=True)
                self._thread.start()
            if beat.due < self._wakes_at:
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
                soonest = min((b.due for b in self._beats.values()), default=now + 60.0)
                if soonest > now:
                    self._wakes_at = soonest
                    self._changed.wait(soonest - now)
                    continue
                # With the ones due now go those due within a sixth of their lease (half a beat
                # early at most): steps start at any time, and this keeps it to one statement.
                due = {k: b for k, b in self._beats.items() if b.due <= now + b.lease_seconds / 6}
                for b in due.values():
                    b.due = now + b.lease_seconds / 3
                groups: dict[tuple[int, str, float, int], dict[int, _Beat]] = {}
                for k, b in due.items():   # one statement renews every due lease of one database and owner
                    groups.setdefault((id(b.sessions), b.owner, b.lease_seconds, id(b.clock)), {})[k] = b
                self._renewing = set(due)
            for group in groups.values():
                lost: set[int] = set()
                try:
                    lost = self._renew(group)
                finally:   # whatever happened, no step's end may wait on these for ever
                    with self._changed:
                        for k in group:
                            self._renewing.discard(k)
                            if k in lost:
                                self._beats.pop(k, None)
                        self._changed.notify_all()

    @staticmethod
    def _renew(group: dict[int, _Beat]) -> set[int]:
        """Renew one group's leases; the keys of the beats whose lease is no longer ours."""
        first = next(iter(group.values()))
        ids = {b.server_id for b in group.values()}
        try:
            held = renew(first.sessions, ids, first.owner, first.clock() + dt.timedelta(seconds=first.lease_seconds))
        except SQLAlchemyError as exc:  # the database hiccuped: try again at the next beat
            log.warning("servers %s: could not renew the lease: %s", _ids(ids), type(exc).__name__)
            return set()
        except Exception:  # noqa: BLE001 - a bug must not end the one thread that renews every lease
            log.exception("servers %s: could not renew the lease", _ids(ids))
            return set()
        for sid in sorted(ids - held):
            log.warning("server %s: lease no longer ours; the step's next write will stop", sid)
        return {k for k, b in group.items() if b.server_id not in held}


def _ids(ids: Collection[int]) -> str:
    return ", ".join(str(i) for i in sorted(ids))


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
