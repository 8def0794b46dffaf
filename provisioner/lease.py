"""Keep a server's lease alive while one step runs longer than the lease itself.

A worker claims a row for ``lifecycle.lease_seconds`` and renews the claim at every step
boundary. One step can outlast it: the install runs for up to ``ssh.command_timeout``
(15 min by default) against a 10 min lease. Without renewal another worker would see the
lease expire, take the row over and run the same install on the same host concurrently.

The heartbeat writes only ``lease_until``, only while we still hold the lease, through its
own connection and a Core UPDATE: the row's ``version`` (the ORM's fence against a worker
whose claim was taken over) is left alone, so the step's own commits are unaffected.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
from collections.abc import Callable, Iterator
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


@contextlib.contextmanager
def heartbeat(sessions: sessionmaker[Session], server_id: int, owner: str, lease_seconds: float,
              clock: Callable[[], dt.datetime]) -> Iterator[None]:
    """Renew the lease every third of its length until the block ends."""
    done = threading.Event()

    def beat() -> None:
        while not done.wait(lease_seconds / 3):
            try:
                if not renew(sessions, server_id, owner, clock() + dt.timedelta(seconds=lease_seconds)):
                    log.warning("server %s: lease no longer ours; the step's next write will stop", server_id)
                    return
            except SQLAlchemyError as exc:  # the database hiccuped: try again at the next beat
                log.warning("server %s: could not renew the lease: %s", server_id, type(exc).__name__)

    thread = threading.Thread(target=beat, name=f"lease-{server_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
