"""The body of ``GET /api/servers``, made again only when what it shows has changed.

The page polls every 15 s, and between two polls a running server usually changes nothing it
shows. Every poll still runs the customer's one indexed query, which reads every column the
page shows of each of their rows and the id of each server's newest event. When that answer
equals the one a remembered body was made from, the body is sent again as it is: no events
query, no conversions, no serialisation. Nothing else goes into the body but the settings
(fixed for the life of the process) and each server's next scheduled rebuild, which moves
only when the clock passes it, so a body is reused at most up to its earliest such slot.

Why the newest event's id stands for the whole event list: events are only ever appended
(never updated or deleted), and on SQLite, where one writer at a time holds the lock, they
commit in id order. On MariaDB two transactions can commit out of id order, so an event
with a lower id than the newest one seen could land after a body was made. Every body is
therefore made afresh at least every :data:`MAX_AGE`: a late line of history shows up
within that bound, and every other change on the next poll.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

from dashboard_api import queries, views
from provisioner.settings.schema import Settings

MAX_AGE = dt.timedelta(seconds=60)
# What one fetched row's tuple holds with its values (measured: ~1,030 bytes on SQLite),
# counted once more per entry for its key and bookkeeping, on top of the body itself: the
# default api.listing_memory_mb (8 MiB) holds ~3,000 one-server customers.
_ROW_BYTES = 1_000


@dataclass(frozen=True, slots=True)
class _Body:
    fetched: list[tuple[Any, ...]]   # the rows' tuples it was made from, as the driver gave them
    body: bytes
    made_at: dt.datetime
    until: dt.datetime               # reused only before this instant
    size: int


class ServerListing:
    """The last body per account (least recently used first out, at most ``max_bytes`` of them
    together: ``api.listing_memory_mb``).

    Thread-safe: MariaDB's reads run in a thread pool."""

    def __init__(self, max_bytes: int, max_age: dt.timedelta = MAX_AGE) -> None:
        self.max_bytes, self.max_age = max_bytes, max_age
        self._bodies: OrderedDict[str, _Body] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def body(self, conn: Connection, account: str, settings: Settings, now: dt.datetime) -> bytes:
        fetched = queries.fetch_customer_rows(conn, account)
        with self._lock:
            known = self._bodies.get(account)
            if known is not None and known.made_at <= now < known.until and known.fetched == fetched:
                self._bodies.move_to_end(account)
                return known.body
        rows = queries.rows_of(fetched)
        body = views.servers_json(conn, rows, settings, now)
        slots = [s for s in (views.next_rebuild(r, settings, now) for r in rows) if s is not None]
        made = _Body(fetched, body, now, min([now + self.max_age, *slots]), len(body) + _ROW_BYTES * (len(fetched) + 1))
        self._remember(account, made)
        return body

    def remembered_bytes(self) -> int:
        return self._bytes

    def _remember(self, account: str, made: _Body) -> None:
        with self._lock:
            old = self._bodies.pop(account, None)
            if old is not None:
                self._bytes -= old.size
            if made.size > self.max_bytes:
                return
            self._bodies[account] = made
            self._bytes += made.size
            while self._bytes > self.max_bytes:
                _, dropped = self._bodies.popitem(last=False)
                self._bytes -= dropped.size
