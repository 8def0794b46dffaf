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
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import DateTime, Table, bindparam, insert, select, type_coerce, update
from sqlalchemy.orm import Session

from provisioner.models import SubscriptionStanding
from provisioner.subscriptions import ID, PAID, RENEWS, STATUS, UNTIL, Subscription, SubscriptionRows

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
_NAIVE = DateTime()


def record(session: Session, subscriptions: Iterable[Subscription] | SubscriptionRows, now: dt.datetime) -> int:
    """Keep the standing of every subscription read; returns how many rows changed (caller commits).

    One Core SELECT of the stored values as plain tuples (times as the naive UTC the database
    holds), compared with each subscription's row; only what changed is written."""
    rows = subscriptions if isinstance(subscriptions, SubscriptionRows) else SubscriptionRows.of(subscriptions)
    q = select(_standing.subscription_id, _standing.status, _standing.renews,
               type_coerce(_standing.paid_through, _NAIVE), type_coerce(_standing.entitled_until, _NAIVE))
    known = {r[0]: (r[1], bool(r[2]), r[3], r[4]) for r in session.connection().execute(q)}
    inserts: list[dict[str, Any]] = []
    updates: list[dict[str, Any]] = []
    for row in rows.rows:
        values = (row[STATUS][:32], bool(row[RENEWS]), row[PAID], row[UNTIL])
        stored = known.get(row[ID], _MISSING)
        if stored == values:
            continue
        known[row[ID]] = values
        change = {"status": values[0], "renews": values[1], "paid_through": _aware(values[2]),
                  "entitled_until": _aware(values[3]), "seen_at": now}
        if stored is _MISSING:
            inserts.append({"subscription_id": row[ID], **change})
        else:
            updates.append({"key": row[ID], **change})
    table = cast(Table, SubscriptionStanding.__table__)
    if inserts:
        session.execute(insert(table), inserts)
    if updates:
        session.execute(update(table).where(table.c.subscription_id == bindparam("key")), updates)
    return len(inserts) + len(updates)


_MISSING: Any = object()


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    return None if value is None else value.replace(tzinfo=dt.UTC)
