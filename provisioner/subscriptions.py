"""What a storefront tells us about one subscription, in storefront-neutral terms.

Every storefront reader (EDD Recurring over MySQL, Stripe Billing via webhooks) turns its
rows into :class:`Subscription` values and decides entitlement by its own rules; the
planner only ever asks :meth:`Subscription.entitled` and :meth:`Subscription.ended`.

All datetimes here are timezone-aware UTC.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field


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
    # For the customer's page only (never for entitlement, nor compared): the end of the paid
    # period, and whether the storefront will try to renew it then.
    paid_through: dt.datetime | None = field(default=None, compare=False)
    renews: bool = field(default=False, compare=False)

    def entitled(self, now: dt.datetime) -> bool:
        return self.entitled_until is not None and now < self.entitled_until

    def ended(self, now: dt.datetime) -> bool:
        """Positive evidence that the subscription no longer entitles a server."""
        return not self.entitled(now)
