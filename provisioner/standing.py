"""Where a customer's subscription stands, in the words of their page: it renews on a date, it
ends on a date, its payment failed and the server is kept until a date, or it has ended.

The dashboard never reads the storefront: the planning pass, which reads every subscription
anyway, hands them to :func:`record`, which keeps one row per subscription in
``provisioner_subscription_standing`` and writes only what changed. :func:`of` turns that row
into a :class:`Standing` at a given moment. The storefront decides entitlement
(:mod:`provisioner.subscriptions`); this module only describes it.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import String, Table, bindparam, insert, select, update
from sqlalchemy import cast as sql_cast
from sqlalchemy.orm import Session

from provisioner.models import SubscriptionStanding
from provisioner.subscriptions import (
    ID,
    PAID,
    RENEWS,
    STATUS,
    UNTIL,
    Subscription,
    SubscriptionRow,
    SubscriptionRows,
)

# Storefront status words that mean "a payment failed; the gateway is retrying" (EDD, Stripe).
PAYMENT_FAILED = frozenset({"failing", "past_due", "unpaid"})


@dataclass(frozen=True)
class Standing:
    kind: str                       # renews | ends | grace | ended | unknown
    date: dt.datetime | None        # when it renews, ends, or the server is kept until
    status: str                     # the storefront's own word


def of(row: SubscriptionStanding | None, now: dt.datetime) -> Standing:
    if row is None:
        return Standing("unknown", None, "")
    until = row.entitled_until
    if until is None or now >= until:
        return Standing("ended", until or row.paid_through, row.status)
    if row.status in PAYMENT_FAILED or (row.paid_through is not None and now >= row.paid_through):
        return Standing("grace", until, row.status)
    if row.renews:
        return Standing("renews", row.paid_through or until, row.status)
    return Standing("ends", until, row.status)


_standing = SubscriptionStanding.__table__.c


def record(session: Session, subscriptions: Iterable[Subscription] | SubscriptionRows, now: dt.datetime) -> int:
    """Keep the standing of every subscription read; returns how many rows changed (caller commits).

    The stored values are read with one Core SELECT, in parts, as plain tuples (times as the
    naive UTC the database holds) and compared with each subscription's row; only what changed
    is written. A subscription id read twice (no storefront does that) keeps its last values."""
    rows = subscriptions if isinstance(subscriptions, SubscriptionRows) else SubscriptionRows.of(subscriptions)
    return _record_rows(session, rows.rows, now, by_id=False)


class StandingKeeper:
    """:func:`record` for the process that records every pass (the worker's leader).

    It remembers a fingerprint of each part of the last read it found equal to the table or made
    so, and compares again only the parts whose rows changed since, or that it last compared
    more than ``recheck`` ago. At 100,000 subscriptions a pass in which nothing changed costs a
    hash of each row instead of reading 100,000 stored rows (0.5 s on SQLite, more on MariaDB).
    Only :func:`record` writes the table; ``recheck`` bounds what it would miss if something
    else did (a restored backup), and a new process starts with no memory. (An id read twice,
    which no storefront does, keeps the values of the last part compared.)"""

    def __init__(self, recheck: dt.timedelta = dt.timedelta(minutes=10)) -> None:
        self.recheck = recheck
        self._lock = threading.Lock()
        self._known: dict[int, tuple[int, dt.datetime]] = {}   # part index -> (fingerprint, compared at)

    def record(self, session: Session, subscriptions: SubscriptionRows, now: dt.datetime) -> int:
        """:func:`record`, then commit; returns how many rows changed."""
        with self._lock:
            stale: list[tuple[int, list[SubscriptionRow], int | None]] = []
            parts = 0
            for index, part in enumerate(_parts(subscriptions.rows)):
                parts += 1
                mark = _fingerprint(part)
                known = self._known.get(index)
                if mark is None or known is None or known[0] != mark or now - known[1] >= self.recheck:
                    stale.append((index, part, mark))
            if len(stale) * 4 > parts:    # most of the table: one scan is cheaper than lookups by id
                changed = _record_rows(session, subscriptions.rows, now, by_id=False)
            else:
                changed = sum(_record_rows(session, part, now, by_id=True) for _, part, _ in stale)
            session.commit()
            merged = {**self._known, **{i: (mark, now) for i, _, mark in stale if mark is not None}}
            self._known = {i: v for i, v in merged.items() if i < parts}
            return changed


def _parts(rows: list[SubscriptionRow]) -> Iterator[list[SubscriptionRow]]:
    for start in range(0, len(rows), _PART):
        yield rows[start:start + _PART]


def _fingerprint(part: list[SubscriptionRow]) -> int | None:
    """A hash of every value of the part's rows (more than the standing needs: a changed e-mail
    only costs a comparison); None when a row holds something unhashable."""
    try:
        return hash(tuple(part))
    except TypeError:
        return None


def _record_rows(session: Session, rows: list[SubscriptionRow], now: dt.datetime, *, by_id: bool) -> int:
    """Compare ``rows`` with the stored standing and write what differs: the whole table read
    in parts, or (``by_id``, for a part of a read) only the stored rows of these ids."""
    wanted = {row[ID]: (row[STATUS][:32], bool(row[RENEWS]), row[PAID], row[UNTIL]) for row in rows}
    # the times as the text the database holds (naive UTC): fromisoformat is C, PyMySQL's parser Python
    q = select(_standing.subscription_id, _standing.status, _standing.renews,
               sql_cast(_standing.paid_through, String), sql_cast(_standing.entitled_until, String))
    if by_id:
        q = q.where(_standing.subscription_id.in_(list(wanted)))
    updates: list[dict[str, Any]] = []
    parse = dt.datetime.fromisoformat
    for part in session.connection().execute(q).partitions(_PART):
        for key, status, renews, paid, until in part:
            values = wanted.pop(key, None)
            if values is not None and values != (status, bool(renews), paid and parse(paid), until and parse(until)):
                updates.append({"key": key, **_change(values, now)})
    inserts = [{"subscription_id": key, **_change(values, now)} for key, values in wanted.items()]
    table = cast(Table, SubscriptionStanding.__table__)
    if inserts:
        session.execute(insert(table), inserts)
    if updates:
        session.execute(update(table).where(table.c.subscription_id == bindparam("key")), updates)
    return len(inserts) + len(updates)


_PART = 5000


def _change(values: tuple[str, bool, dt.datetime | None, dt.datetime | None], now: dt.datetime) -> dict[str, Any]:
    status, renews, paid, until = values
    return {"status": status, "renews": renews, "paid_through": _aware(paid), "entitled_until": _aware(until),
            "seen_at": now}




def _aware(value: dt.datetime | None) -> dt.datetime | None:
    return None if value is None else value.replace(tzinfo=dt.UTC)
