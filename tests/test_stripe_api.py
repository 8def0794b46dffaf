"""The Stripe storefront asking Stripe itself, against a local double of GET /v1/subscriptions/{id}."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from provisioner.models import StripeSubscription
from provisioner.storefront.stripe import StripeStorefront
from provisioner.subscriptions import StorefrontUnavailable
from provisioner.wiring import App
from tests.fixtures.net import free_port
from tests.fixtures.stripe_api import FakeStripe, fake_stripe
from tests.fixtures.stripe_events import event, invoice, make_app, subscription

UTC = dt.UTC
NOW = dt.datetime.now(UTC).replace(microsecond=0)
DAY = dt.timedelta(days=1)
KEY = "sk_test_local_double_0123456789"


@pytest.fixture
def stripe_api() -> Iterator[FakeStripe]:
    with fake_stripe() as fake:
        fake.customers["cus_1"] = {"id": "cus_1", "object": "customer", "email": "from-customer@shop.test"}
        yield fake


@pytest.fixture
def app(tmp_path: Path, stripe_api: FakeStripe) -> Iterator[App]:
    a = make_app(tmp_path, stripe_section={"api_key": KEY, "api_base": stripe_api.base_url})
    yield a
    a.engine.dispose()


def handle(app: App, sf: StripeStorefront, ev: dict[str, Any], now: dt.datetime = NOW) -> str:
    with app.sessions.begin() as s:
        return sf.handle_event(s, ev, now)


def stored(app: App, sub_id: str) -> StripeSubscription | None:
    with app.sessions() as s:
        return s.get(StripeSubscription, sub_id)


def test_it_stores_what_stripe_says_rather_than_a_stale_payload(app: App, stripe_api: FakeStripe) -> None:
    stripe_api.subscriptions["sub_1"] = subscription("sub_1", "canceled", NOW + DAY, ended_at=NOW)
    sf = StripeStorefront(app.sessions, app.settings)
    # an old "updated: active" delivered late: the re-fetch says canceled
    outcome = handle(app, sf, event("customer.subscription.updated", subscription("sub_1", "active", NOW + DAY),
                                    NOW - DAY))
    assert outcome.startswith("applied from the API")
    row = stored(app, "sub_1")
    assert row is not None and row.status == "canceled"
    assert row.email == "from-customer@shop.test"       # from the expanded customer
    [req] = stripe_api.requests
    assert req["path"] == "/v1/subscriptions/sub_1"
    assert req["query"].get("expand[0]") == ["customer"]
    assert req["auth"] == f"Bearer {KEY}"


def test_it_fetches_the_status_an_invoice_event_does_not_carry(app: App, stripe_api: FakeStripe) -> None:
    stripe_api.subscriptions["sub_2"] = subscription("sub_2", "past_due", NOW + 28 * DAY)
    sf = StripeStorefront(app.sessions, app.settings)
    handle(app, sf, event("invoice.payment_failed", invoice("sub_2", email="payer@shop.test"), NOW))
    row = stored(app, "sub_2")
    assert row is not None and row.status == "past_due" and row.current_period_end == NOW + 28 * DAY
    [sub] = sf.read(NOW)
    assert sub.entitled(NOW) and sub.email == "from-customer@shop.test"


def test_it_falls_back_to_the_payload_when_stripe_is_down(app: App, stripe_api: FakeStripe) -> None:
    stripe_api.status_override = 500
    sf = StripeStorefront(app.sessions, app.settings)
    outcome = handle(app, sf, event("customer.subscription.created",
                                    subscription("sub_3", "active", NOW + DAY, email="a@shop.test"), NOW))
    assert outcome.startswith("applied: sub_3 active")
    assert stripe_api.requests, "it did try Stripe first"


def test_it_refreshes_a_subscription_that_lapsed_without_an_ending_event(app: App, stripe_api: FakeStripe) -> None:
    sf = StripeStorefront(app.sessions, app.settings)
    stripe_api.status_override = 500     # while the event is handled, use its payload
    handle(app, sf, event("customer.subscription.updated",
                          subscription("sub_4", "active", NOW + DAY, email="a@shop.test"), NOW), now=NOW)
    stripe_api.status_override = None
    later = NOW + 2 * DAY                # the renewal's webhook never came
    stripe_api.subscriptions["sub_4"] = subscription("sub_4", "active", NOW + 31 * DAY, email="a@shop.test")
    [sub] = sf.read(later)
    assert sub.entitled(later) and sub.entitled_until is not None and sub.entitled_until > NOW + 30 * DAY
    assert [r["path"] for r in stripe_api.requests[-1:]] == ["/v1/subscriptions/sub_4"]
    calls = len(stripe_api.requests)
    sf.read(later)
    assert len(stripe_api.requests) == calls     # fresh again: no second fetch


def test_it_refuses_to_guess_when_a_lapsed_subscription_cannot_be_confirmed(app: App, stripe_api: FakeStripe) -> None:
    sf = StripeStorefront(app.sessions, app.settings)
    stripe_api.status_override = 503
    handle(app, sf, event("customer.subscription.updated",
                          subscription("sub_5", "active", NOW + DAY, email="a@shop.test"), NOW))
    with pytest.raises(StorefrontUnavailable, match="sub_5"):
        sf.read(NOW + 2 * DAY)
    stripe_api.status_override = None
    stripe_api.subscriptions["sub_5"] = subscription("sub_5", "canceled", NOW + DAY, ended_at=NOW + DAY)
    [sub] = sf.read(NOW + 2 * DAY)
    assert sub.status == "canceled" and sub.ended(NOW + 2 * DAY)


@pytest.mark.parametrize(("status", "expected"), [
    ("canceled", True), ("unpaid", True), ("incomplete_expired", True), ("paused", True),
    ("active", False), ("trialing", False), ("past_due", False), ("something_new", None),
])
def test_it_cross_checks_whether_a_subscription_really_ended(app: App, stripe_api: FakeStripe, status: str,
                                                             expected: bool | None) -> None:
    stripe_api.subscriptions["sub_9"] = subscription("sub_9", status, NOW + DAY)
    assert StripeStorefront(app.sessions, app.settings).cross_check_ended("sub_9") is expected


def test_it_cannot_tell_for_an_unknown_id_or_without_stripe(app: App, stripe_api: FakeStripe, tmp_path: Path) -> None:
    sf = StripeStorefront(app.sessions, app.settings)
    assert sf.cross_check_ended("sub_unknown") is None          # 404
    assert sf.cross_check_ended("42") is None                   # not a Stripe id
    stripe_api.status_override = 500
    assert sf.cross_check_ended("sub_unknown") is None
    (tmp_path / "nokey").mkdir()
    no_key = make_app(tmp_path / "nokey")
    assert StripeStorefront(no_key.sessions, no_key.settings).cross_check_ended("sub_9") is None
    no_key.engine.dispose()


def test_it_cannot_tell_when_stripe_is_unreachable(tmp_path: Path) -> None:
    app = make_app(tmp_path, stripe_section={"api_key": KEY, "api_base": f"http://127.0.0.1:{free_port()}"})
    assert StripeStorefront(app.sessions, app.settings).cross_check_ended("sub_9") is None
    app.engine.dispose()
