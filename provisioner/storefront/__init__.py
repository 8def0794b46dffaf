"""Where subscriptions come from. The planner never knows which storefront it reads."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any, Protocol

from provisioner.subscriptions import StorefrontUnavailable, Subscription

if TYPE_CHECKING:
    from provisioner.settings.schema import Settings

__all__ = ["Storefront", "StorefrontUnavailable", "Subscription", "open_storefront"]


class Storefront(Protocol):
    def read(self, now: dt.datetime) -> list[Subscription]:
        """Every subscription the storefront knows, or raise StorefrontUnavailable."""
        ...

    def change_marker(self) -> object | None:
        """Something cheap that changes when a subscription is added (None: not known). The
        leader polls it every second and plans at once when it moves; a storefront that
        pushes (Stripe's webhook) asks for a pass itself and answers None."""
        ...


def open_storefront(settings: Settings, sessions: Any = None) -> Storefront:
    """The configured storefront. ``sessions`` (our database) is needed by the Stripe one,
    which reads the subscriptions its webhook keeps current."""
    if settings.storefront.kind == "stripe":
        from provisioner.storefront.stripe import StripeStorefront

        if sessions is None:
            raise StorefrontUnavailable("the Stripe storefront needs the provisioner database")
        return StripeStorefront(sessions, settings)
    if settings.storefront.kind == "edd":
        from provisioner.db import make_engine
        from provisioner.storefront.edd import EddStorefront

        engine = make_engine(settings.storefront.edd_url)
        return EddStorefront(engine, table_prefix=settings.storefront.edd_table_prefix,
                             failing_grace=dt.timedelta(days=settings.storefront.failing_grace_days),
                             site_timezone=settings.storefront.site_timezone or None)
    raise StorefrontUnavailable(f"storefront.kind {settings.storefront.kind!r} is not available in this build")
