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

from sqlalchemy import select
from sqlalchemy.orm import Session

from provisioner.models import SubscriptionStanding
from provisioner.subscriptions import Subscription

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


def _values(sub: Subscription) -> tuple[str, bool, dt.datetime | None, dt.datetime | None]:
    return (sub.status[:32], bool(sub.renews), sub.paid_through, sub.entitled_until)


def record(session: Session, subscriptions: Iterable[Subscription], now: dt.datetime) -> int:
    """Keep the standing of every subscription read; returns how many rows changed (caller commits)."""
    known = {r.subscription_id: r for r in session.scalars(select(SubscriptionStanding))}
    changed = 0
    for sub in subscriptions:
        values = _values(sub)
        row = known.get(sub.id)
        if row is not None and (row.status, row.renews, row.paid_through, row.entitled_until) == values:
            continue
        if row is None:
            row = SubscriptionStanding(subscription_id=sub.id)
            session.add(row)
            known[sub.id] = row
        row.status, row.renews, row.paid_through, row.entitled_until = values
        row.seen_at = now
        changed += 1
    return changed
