"""Pure readers for Stripe objects as plain dicts (``StripeObject.to_dict()`` or parsed JSON).

stripe-python 15+ objects are not dicts (``.get`` raises), so every object is turned into
a plain ``dict`` once, at the edge (:func:`as_dict`), and read here with ``dict.get``.

Both payload shapes are read, whatever the endpoint's API version:

- period end: ``subscription.current_period_end`` (before 2025-03-31.basil) or
  ``subscription.items.data[].current_period_end`` (basil and later);
- invoice → subscription: ``invoice.parent.subscription_details.subscription`` (basil and
  later) or ``invoice.subscription`` (before).

Where the email comes from, first match wins:

1. ``subscription.customer.email`` when the customer is expanded (our API fetches ask for
   ``expand=["customer"]``);
2. ``subscription.metadata.email`` (a checkout integration may set it);
3. ``invoice.customer_email`` (``invoice.paid`` / ``invoice.payment_failed``: Stripe fills
   it from the customer when the invoice is finalised);
4. the email already stored for that subscription.

A webhook-only setup (no ``stripe.api_key``) usually learns the email from the first
invoice event, seconds after ``customer.subscription.created``. Until an email is known
the subscription is held back from the planner (see ``StripeStorefront.read``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

SUBSCRIPTION_EVENTS = frozenset({
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "customer.subscription.paused",
    "customer.subscription.resumed",
    "customer.subscription.trial_will_end",
    "customer.subscription.pending_update_applied",
    "customer.subscription.pending_update_expired",
})
INVOICE_EVENTS = frozenset({"invoice.paid", "invoice.payment_succeeded", "invoice.payment_failed"})


def as_dict(obj: Any) -> dict[str, Any]:
    """A plain dict from a StripeObject (``to_dict``), a Mapping, or raise ValueError."""
    to_dict = getattr(obj, "to_dict", None)
    if callable(to_dict):
        value = to_dict()
    elif isinstance(obj, Mapping):
        value = dict(obj)
    else:
        raise ValueError(f"not a Stripe object: {type(obj).__name__}")
    if not isinstance(value, dict):
        raise ValueError("not a Stripe object")
    return value


def ts(value: Any) -> dt.datetime | None:
    """Stripe's unix seconds as an aware UTC datetime (None for null or nonsense)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return dt.datetime.fromtimestamp(value, dt.UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _map(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


@dataclass(frozen=True)
class SubscriptionState:
    """What we keep of one Stripe subscription object."""

    id: str
    customer_id: str
    email: str
    price_id: str
    status: str
    cancel_at_period_end: bool
    current_period_end: dt.datetime | None
    ended_at: dt.datetime | None
    trial_end: dt.datetime | None
    created: dt.datetime | None


def _items(sub: Mapping[str, Any]) -> list[dict[str, Any]]:
    data = _map(sub.get("items")).get("data")
    return [i for i in data if isinstance(i, dict)] if isinstance(data, list) else []


def _price_id(item: Mapping[str, Any]) -> str:
    price = item.get("price")
    if isinstance(price, str):
        return price
    pid = _str(_map(price).get("id"))
    return pid or _str(_map(item.get("plan")).get("id"))


def pick_item(sub: Mapping[str, Any], products: Collection[str] = ()) -> dict[str, Any]:
    """The item that decides the product: the first whose price is configured, else the first."""
    items = _items(sub)
    for item in items:
        if _price_id(item) in products:
            return item
    return items[0] if items else {}


def email_of(sub: Mapping[str, Any]) -> str:
    customer = sub.get("customer")
    if isinstance(customer, dict) and _str(customer.get("email")):
        return _str(customer["email"]).strip()
    return _str(_map(sub.get("metadata")).get("email")).strip()


def customer_id_of(obj: Mapping[str, Any]) -> str:
    customer = obj.get("customer")
    return customer if isinstance(customer, str) else _str(_map(customer).get("id"))


def parse_subscription(sub: Mapping[str, Any], products: Collection[str] = ()) -> SubscriptionState:
    sub_id = _str(sub.get("id"))
    if not sub_id.startswith("sub_"):
        raise ValueError("not a subscription object (no sub_ id)")
    item = pick_item(sub, products)
    # basil+ keeps the period on the item; older versions on the subscription itself.
    period_end = ts(item.get("current_period_end")) or ts(sub.get("current_period_end"))
    return SubscriptionState(
        id=sub_id,
        customer_id=customer_id_of(sub),
        email=email_of(sub),
        price_id=_price_id(item),
        status=_str(sub.get("status")),
        cancel_at_period_end=bool(sub.get("cancel_at_period_end")),
        current_period_end=period_end,
        ended_at=ts(sub.get("ended_at")),
        trial_end=ts(sub.get("trial_end")),
        created=ts(sub.get("created")),
    )


def invoice_subscription_id(invoice: Mapping[str, Any]) -> str:
    details = _map(_map(invoice.get("parent")).get("subscription_details"))
    sub = details.get("subscription") or invoice.get("subscription")
    if isinstance(sub, dict):
        sub = sub.get("id")
    return sub if isinstance(sub, str) and sub.startswith("sub_") else ""


def invoice_email(invoice: Mapping[str, Any]) -> str:
    return _str(invoice.get("customer_email")).strip()
