"""The DEMO storefront behind ``make run``: EDD-shaped tables with a few believable customers.

It lives in the embedded SQLite file (it works on MySQL too, for tests) and is read by the
ordinary :class:`~provisioner.storefront.edd.EddStorefront`, so the demo exercises the real
reader. The site time zone is America/New_York, as on many real WordPress sites, so every
date goes through the site-local conversion.

The seed, relative to ``now`` (with the default 3-day grace for ``failing``):

=====================  =======  ==========  ==========================  ===========
customer               WP user  status      expiration                  entitled?
=====================  =======  ==========  ==========================  ===========
alice@example.com      yes      active      now + 25 days               yes
bob@example.com        guest    trialling   now + 6 days                yes
carol@example.com      yes      cancelled   now + 7 days (paid period)  yes
dave@example.com       guest    failing     now - 1 day                 yes, 2 days
erin@example.com       yes      expired     now - 20 days               no
frank@example.com      guest    pending     now + 30 days               no
=====================  =======  ==========  ==========================  ===========

Never point these helpers at a production storefront: they write.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, text

from provisioner.storefront import eddschema
from provisioner.storefront.edd import (
    DEFAULT_FAILING_GRACE,
    EddStorefront,
    parse_site_datetime,
    read_site_timezone,
    site_local_to_utc,
    table_name,
    utc_to_site_local,
)

log = logging.getLogger(__name__)

DEMO_TIMEZONE = "America/New_York"
DEMO_PRODUCT_ID = 1  # matches [products."1"] in config/sandbox.toml


@dataclass(frozen=True)
class DemoRow:
    email: str
    registered: bool          # has a WordPress user (else a guest checkout, user_id 0)
    status: str
    expires_in: dt.timedelta  # expiration relative to the seed's `now`
    period: str = "month"


DEMO_ROWS: tuple[DemoRow, ...] = (
    DemoRow("alice@example.com", True, "active", dt.timedelta(days=25)),
    DemoRow("bob@example.com", False, "trialling", dt.timedelta(days=6), period="week"),
    DemoRow("carol@example.com", True, "cancelled", dt.timedelta(days=7)),
    DemoRow("dave@example.com", False, "failing", dt.timedelta(days=-1)),
    DemoRow("erin@example.com", True, "expired", dt.timedelta(days=-20)),
    DemoRow("frank@example.com", False, "pending", dt.timedelta(days=30)),
)

_PERIODS = {1: "day", 7: "week", 30: "month", 31: "month", 90: "quarter", 182: "semi-year", 365: "year"}


def seed_demo_storefront(engine: Engine, prefix: str = "wp_", *, now: dt.datetime) -> int:
    """Create the EDD tables if missing and add the demo customers not yet there.

    Idempotent: a customer already present (by email) is left alone. Returns how many demo
    subscriptions were added this time.
    """
    _require_aware(now)
    eddschema.create_edd_tables(engine, prefix)
    added = 0
    with engine.begin() as conn:
        if eddschema.get_option(conn, prefix, "timezone_string") is None:
            eddschema.set_option(conn, prefix, "timezone_string", DEMO_TIMEZONE)
        zone = read_site_timezone(conn, prefix)
        for row in DEMO_ROWS:
            if _customer_id(conn, prefix, row.email) is not None:
                continue
            user_id = eddschema.insert_wp_user(conn, prefix, email=row.email) if row.registered else 0
            customer_id = eddschema.insert_customer(conn, prefix, email=row.email, user_id=user_id,
                                                    name=row.email.split("@")[0].title())
            expiration = now + row.expires_in
            eddschema.insert_subscription(
                conn, prefix, customer_id=customer_id, product_id=DEMO_PRODUCT_ID, status=row.status,
                created=utc_to_site_local(min(now, expiration) - dt.timedelta(days=30), zone),
                expiration=utc_to_site_local(expiration, zone), period=row.period,
                profile_id=_profile_id())
            added += 1
    if added:
        log.info("seeded the demo storefront with %d subscriptions", added)
    return added


def add_subscription(engine: Engine, prefix: str, email: str, product_id: int | str, period_days: int,
                     now: dt.datetime) -> int:
    """A demo purchase: an ``active`` subscription paid for ``period_days`` from ``now``."""
    _require_aware(now)
    if period_days < 1:
        raise ValueError(f"period_days must be at least 1, got {period_days}")
    eddschema.create_edd_tables(engine, prefix)
    with engine.begin() as conn:
        zone = read_site_timezone(conn, prefix)
        customer_id = _customer_id(conn, prefix, email)
        if customer_id is None:
            customer_id = eddschema.insert_customer(conn, prefix, email=email,
                                                    user_id=_wp_user_id(conn, prefix, email))
        sub_id = eddschema.insert_subscription(
            conn, prefix, customer_id=customer_id, product_id=product_id, status="active",
            created=utc_to_site_local(now, zone),
            expiration=utc_to_site_local(now + dt.timedelta(days=period_days), zone),
            period=_PERIODS.get(period_days, "day"), profile_id=_profile_id())
    log.info("demo storefront: %s bought product %s for %d days (subscription %d)",
             email, product_id, period_days, sub_id)
    return sub_id


def cancel_subscription(engine: Engine, prefix: str, sub_id: int, now: dt.datetime,
                        immediately: bool) -> None:
    """A demo cancellation.

    ``immediately=False`` is what a customer's "cancel" does in EDD: status ``cancelled``,
    access until the paid period ends. ``immediately=True`` is an operator revoking access:
    status ``expired`` and the expiration pulled back to ``now`` (if it was later).
    Raises LookupError for an unknown id.
    """
    _require_aware(now)
    subs = table_name(engine, prefix, "edd_subscriptions")
    with engine.begin() as conn:
        found = conn.execute(text(f"SELECT expiration FROM {subs} WHERE id = :id"), {"id": sub_id}).first()
        if found is None:
            raise LookupError(f"the demo storefront has no subscription {sub_id}")
        if not immediately:
            conn.execute(text(f"UPDATE {subs} SET status = 'cancelled' WHERE id = :id"), {"id": sub_id})
        else:
            zone = read_site_timezone(conn, prefix)
            local = parse_site_datetime(found[0])
            if local is None or site_local_to_utc(local, zone) > now:
                local = utc_to_site_local(now, zone)
            conn.execute(text(f"UPDATE {subs} SET status = 'expired', expiration = :exp WHERE id = :id"),
                         {"exp": eddschema.site_datetime(local), "id": sub_id})
    log.info("demo storefront: subscription %d cancelled%s", sub_id, " immediately" if immediately else "")


@dataclass(frozen=True)
class DemoStorefront:
    """The demo helpers bound to one database and prefix, plus the reader over them."""

    engine: Engine
    prefix: str = "wp_"

    def seed(self, now: dt.datetime) -> int:
        return seed_demo_storefront(self.engine, self.prefix, now=now)

    def add_subscription(self, email: str, product_id: int | str, period_days: int, now: dt.datetime) -> int:
        return add_subscription(self.engine, self.prefix, email, product_id, period_days, now)

    def cancel_subscription(self, sub_id: int, now: dt.datetime, immediately: bool = False) -> None:
        cancel_subscription(self.engine, self.prefix, sub_id, now, immediately)

    def reader(self, failing_grace: dt.timedelta = DEFAULT_FAILING_GRACE) -> EddStorefront:
        return EddStorefront(self.engine, table_prefix=self.prefix, failing_grace=failing_grace)


def _customer_id(conn: Connection, prefix: str, email: str) -> int | None:
    customers = table_name(conn, prefix, "edd_customers")
    found = conn.execute(text(f"SELECT id FROM {customers} WHERE email = :email"), {"email": email}).scalar()
    return None if found is None else int(found)


def _wp_user_id(conn: Connection, prefix: str, email: str) -> int:
    users = table_name(conn, prefix, "users")
    found = conn.execute(text(f"SELECT ID FROM {users} WHERE user_email = :email"), {"email": email}).scalar()
    return 0 if found is None else int(found)


def _profile_id() -> str:
    return "demo_" + secrets.token_hex(6)


def _require_aware(now: dt.datetime) -> None:
    if now.tzinfo is None:
        raise ValueError("now must be an aware datetime (UTC)")
