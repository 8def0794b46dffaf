"""What a storefront tells us about one subscription, in storefront-neutral terms.

Every storefront reader (EDD Recurring over MySQL, Stripe Billing via webhooks) turns its
rows into :class:`Subscription` values and decides by its own rules. The planner asks three
questions and nothing else:

- :meth:`Subscription.entitled`: does it entitle a server now?
- :meth:`Subscription.ended`: does the storefront *positively* report that it ended? (a
  known ending status, or a known status whose paid window has run out, with a readable
  paid-through date). Only this is evidence for a destroy.
- :meth:`Subscription.no_evidence`: neither: why not (an unknown status word, a zero or
  unreadable date, a status that neither entitles nor ends). Such a subscription's server
  is held, never destroyed.

All datetimes here are timezone-aware UTC.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any


class StorefrontUnavailable(RuntimeError):
    """The storefront could not be read. Never to be mistaken for "no subscriptions"."""


@dataclass(frozen=True, slots=True)
class Subscription:
    id: str                      # storefront subscription id ("42" for EDD, "sub_…" for Stripe)
    customer_id: str
    product_id: str              # storefront product id, mapped to a product by settings
    email: str
    status: str                  # the storefront's own status word, for display and audit
    # Entitlement window computed by the reader from its own rules: the subscription
    # entitles the customer to a server while ``now < entitled_until``. ``None`` means
    # "does not entitle at all" (pending, expired, unknown statuses...).
    entitled_until: dt.datetime | None
    profile_id: str = ""         # gateway subscription id (Stripe ``sub_…`` behind EDD)
    user_id: int = 0             # WordPress user id (0 = guest)
    # The end of the period the customer paid for (EDD ``expiration``, Stripe
    # ``current_period_end``); None when the storefront has no readable date. The customer's
    # page shows it too.
    paid_through: dt.datetime | None = None
    # The status word itself says "ended" (EDD expired/completed; Stripe canceled, unpaid…).
    ends_by_status: bool = False
    # Why this row is no evidence either way (an unknown status word, an unreadable date);
    # None when the reader understood it.
    problem: str | None = None
    # The storefront account that owns the subscription, the one a dashboard token's ``sub``
    # must name: the WordPress user id (EDD) or the Stripe customer id. None: a guest.
    account_id: str | None = None
    # For the customer's page only (never for entitlement, nor compared): whether the
    # storefront will try to renew it at the end of the paid period.
    renews: bool = field(default=False, compare=False)

    def entitled(self, now: dt.datetime) -> bool:
        return self.problem is None and self.entitled_until is not None and now < self.entitled_until

    def ended(self, now: dt.datetime) -> bool:
        """Positive evidence that the subscription ended: a status the storefront defines as
        ending (or a known status whose window has run out) and a readable paid-through date."""
        if self.problem is not None or self.paid_through is None:
            return False
        if self.ends_by_status:
            return True
        return self.entitled_until is not None and now >= self.entitled_until

    def no_evidence(self, now: dt.datetime) -> str | None:
        """Why this subscription neither entitles nor ended (None when it does one of them)."""
        if self.entitled(now) or self.ended(now):
            return None
        if self.problem is not None:
            return self.problem
        if self.paid_through is None:
            return f"status {self.status!r} without a readable paid-through date"
        return f"status {self.status!r} neither entitles a server nor ends the subscription"


# --- the planning pass's view: one plain tuple per subscription ------------------------------------
#
# A planning pass looks at every subscription but needs an object for very few (the ones to
# build, the ended ones behind a destroy, the ones it holds). :class:`SubscriptionRows` keeps
# one tuple of plain values per subscription, times as naive UTC (compared with "now" converted
# once), and turns a row into its :class:`Subscription` only when asked. The tuple's fields:

ID, OK, UNTIL, PAID, ENDS, EMAIL, ACCOUNT, PRODUCT, STATUS, RENEWS, SOURCE = range(11)
# ID str; OK: ``problem is None``; UNTIL/PAID: ``entitled_until``/``paid_through`` as naive UTC;
# ENDS: ``ends_by_status``; EMAIL, ACCOUNT (``account_id``), PRODUCT (``product_id``), STATUS (the
# storefront's word), RENEWS; SOURCE: the Subscription itself, or what the reader makes it from.

SubscriptionRow = tuple[Any, ...]   # the fields above, in that order


def naive_utc(value: dt.datetime | None) -> dt.datetime | None:
    """An aware datetime as naive UTC (the same instant); None stays None."""
    return None if value is None else value.astimezone(dt.UTC).replace(tzinfo=None)


def row_of(sub: Subscription) -> SubscriptionRow:
    """A subscription as the planning pass's tuple (its SOURCE is the subscription itself)."""
    return (sub.id, sub.problem is None, naive_utc(sub.entitled_until), naive_utc(sub.paid_through),
            sub.ends_by_status, sub.email, sub.account_id, sub.product_id, sub.status, sub.renews, sub)


class SubscriptionRows:
    """Every subscription of one read, as tuples; :meth:`subscription` makes the object of one.

    ``make`` turns a row into its :class:`Subscription` when its SOURCE is not one already.
    The predicates below are :meth:`Subscription.entitled` and :meth:`Subscription.ended` on
    the tuple, with ``now`` as naive UTC."""

    __slots__ = ("rows", "_make")

    def __init__(self, rows: list[SubscriptionRow],
                 make: Callable[[SubscriptionRow], Subscription] | None = None) -> None:
        self.rows = rows
        self._make = make

    @classmethod
    def of(cls, subscriptions: Iterable[Subscription]) -> SubscriptionRows:
        return cls([row_of(s) for s in subscriptions])

    def __len__(self) -> int:
        return len(self.rows)

    def subscription(self, row: SubscriptionRow) -> Subscription:
        source = row[SOURCE]
        if isinstance(source, Subscription):
            return source
        assert self._make is not None, "a row without its Subscription needs a maker"
        return self._make(row)

    def subscriptions(self) -> list[Subscription]:
        """Every subscription as an object (slow at scale: for callers that need them all)."""
        return [self.subscription(r) for r in self.rows]


def entitled_row(row: SubscriptionRow, now_utc: dt.datetime) -> bool:
    """:meth:`Subscription.entitled` of a row; ``now_utc`` naive UTC."""
    until = row[UNTIL]
    return bool(row[OK] and until is not None and now_utc < until)


def ended_row(row: SubscriptionRow, now_utc: dt.datetime) -> bool:
    """:meth:`Subscription.ended` of a row; ``now_utc`` naive UTC."""
    if not row[OK] or row[PAID] is None:
        return False
    if row[ENDS]:
        return True
    until = row[UNTIL]
    return bool(until is not None and now_utc >= until)
