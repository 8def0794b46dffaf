"""POST /webhooks/stripe on a tiny FastAPI app, with events signed locally (no network)."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from dashboard_api.stripe_webhook import MAX_BODY_BYTES, router
from provisioner.models import StripeEvent, StripeSubscription
from provisioner.storefront.stripe import StripeStorefront
from provisioner.wiring import App
from tests.fixtures.stripe_events import OLD_SECRET, SECRET, event, invoice, make_app, signed, subscription

UTC = dt.UTC
NOW = dt.datetime.now(UTC).replace(microsecond=0)
DAY = dt.timedelta(days=1)


def client_for(app: App) -> TestClient:
    api = FastAPI()
    api.include_router(router)
    api.state.provisioner = app
    return TestClient(api)


@pytest.fixture
def app(tmp_path: Path) -> Iterator[App]:
    a = make_app(tmp_path)
    yield a
    a.engine.dispose()


@pytest.fixture
def client(app: App) -> TestClient:
    return client_for(app)


def post(client: TestClient, ev: dict[str, Any], secret: str = SECRET, timestamp: int | None = None) -> Any:
    body, headers = signed(ev, secret, timestamp)
    return client.post("/webhooks/stripe", content=body, headers=headers)


def counts(app: App) -> tuple[int, int]:
    with app.sessions() as s:
        return (s.scalar(select(func.count()).select_from(StripeEvent)) or 0,
                s.scalar(select(func.count()).select_from(StripeSubscription)) or 0)


def stored(app: App, sub_id: str) -> StripeSubscription | None:
    with app.sessions() as s:
        return s.get(StripeSubscription, sub_id)


def active(sub_id: str = "sub_A", **kw: Any) -> dict[str, Any]:
    return subscription(sub_id, "active", NOW + 20 * DAY, email="buyer@shop.test", **kw)


def test_it_stores_a_verified_subscription_event(app: App, client: TestClient) -> None:
    r = post(client, event("customer.subscription.created", active(), NOW - dt.timedelta(minutes=1)))
    assert r.status_code == 200, r.text
    assert r.json()["received"] is True and r.json()["duplicate"] is False
    row = stored(app, "sub_A")
    assert row is not None and row.status == "active" and row.email == "buyer@shop.test"
    assert row.price_id == "price_vpn_monthly" and row.customer_id == "cus_1"
    assert row.current_period_end == NOW + 20 * DAY
    assert counts(app) == (1, 1)


def test_it_rejects_a_bad_or_missing_signature_and_stores_nothing(app: App, client: TestClient) -> None:
    ev = event("customer.subscription.created", active(), NOW)
    r = post(client, ev, secret="whsec_someone_else")
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "bad_signature"

    body, headers = signed(ev)
    r = client.post("/webhooks/stripe", content=body.replace("active", "trialing"), headers=headers)
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_signature"

    r = client.post("/webhooks/stripe", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "missing_signature"

    r = client.post("/webhooks/stripe", content=body, headers={"Stripe-Signature": "garbage"})
    assert r.status_code == 400
    assert counts(app) == (0, 0)


def test_it_rejects_a_signature_older_than_the_tolerance(app: App, client: TestClient) -> None:
    ev = event("customer.subscription.created", active(), NOW)
    r = post(client, ev, timestamp=int(time.time()) - 301 - 60)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "stale_signature"
    assert counts(app) == (0, 0)


def test_it_accepts_both_secrets_during_a_rotation(tmp_path: Path) -> None:
    app = make_app(tmp_path, stripe_section={"webhook_secrets": [OLD_SECRET, SECRET]})
    client = client_for(app)
    assert post(client, event("customer.subscription.created", active("sub_old"), NOW), OLD_SECRET).status_code == 200
    assert post(client, event("customer.subscription.created", active("sub_new"), NOW), SECRET).status_code == 200
    assert post(client, event("customer.subscription.created", active("sub_x"), NOW), "whsec_nope").status_code == 400
    assert counts(app) == (2, 2)
    app.engine.dispose()


def test_it_ignores_a_replayed_event(app: App, client: TestClient) -> None:
    first = event("customer.subscription.updated", active(), NOW - dt.timedelta(minutes=5), event_id="evt_first")
    assert post(client, first).json()["duplicate"] is False
    later = subscription("sub_A", "canceled", NOW + 20 * DAY, email="buyer@shop.test", ended_at=NOW)
    assert post(client, event("customer.subscription.deleted", later, NOW)).status_code == 200
    # Stripe (or an attacker holding a captured request) sends the first one again
    r = post(client, first)
    assert r.status_code == 200 and r.json() == {"received": True, "duplicate": True}
    row = stored(app, "sub_A")
    assert row is not None and row.status == "canceled"
    assert counts(app) == (2, 1)


def test_it_never_lets_an_older_event_overwrite_a_newer_state(app: App, client: TestClient) -> None:
    deleted = subscription("sub_A", "canceled", NOW + 20 * DAY, email="buyer@shop.test", ended_at=NOW)
    updated = active()
    assert post(client, event("customer.subscription.deleted", deleted, NOW)).status_code == 200
    r = post(client, event("customer.subscription.updated", updated, NOW - dt.timedelta(seconds=30)))
    assert r.status_code == 200 and r.json()["outcome"].startswith("stale")
    row = stored(app, "sub_A")
    assert row is not None and row.status == "canceled"


def test_it_ignores_an_older_update_that_arrives_after_a_newer_one(app: App, client: TestClient) -> None:
    past_due = subscription("sub_A", "past_due", NOW + 25 * DAY, email="buyer@shop.test")
    assert post(client, event("customer.subscription.updated", past_due, NOW)).status_code == 200
    r = post(client, event("customer.subscription.updated", active(), NOW - dt.timedelta(seconds=1)))
    assert r.json()["outcome"].startswith("stale")
    row = stored(app, "sub_A")
    assert row is not None and row.status == "past_due" and row.current_period_end == NOW + 25 * DAY


def test_it_treats_deleted_as_terminal_even_within_the_same_second(app: App, client: TestClient) -> None:
    deleted = subscription("sub_A", "canceled", NOW + 20 * DAY, email="buyer@shop.test", ended_at=NOW)
    assert post(client, event("customer.subscription.deleted", deleted, NOW)).status_code == 200
    assert post(client, event("customer.subscription.updated", active(), NOW)).status_code == 200
    row = stored(app, "sub_A")
    assert row is not None and row.status == "canceled"


def test_it_keeps_an_update_when_its_created_event_arrives_late(app: App, client: TestClient) -> None:
    incomplete = subscription("sub_A", "incomplete", NOW + 30 * DAY, email="buyer@shop.test")
    assert post(client, event("customer.subscription.updated", active(), NOW)).status_code == 200
    assert post(client, event("customer.subscription.created", incomplete, NOW)).status_code == 200
    row = stored(app, "sub_A")
    assert row is not None and row.status == "active"


def test_it_applies_a_newer_event_after_an_older_one(app: App, client: TestClient) -> None:
    assert post(client, event("customer.subscription.updated", active(), NOW - DAY)).status_code == 200
    past_due = subscription("sub_A", "past_due", NOW + 25 * DAY, email="buyer@shop.test")
    assert post(client, event("customer.subscription.updated", past_due, NOW)).status_code == 200
    row = stored(app, "sub_A")
    assert row is not None and row.status == "past_due" and row.current_period_end == NOW + 25 * DAY


def test_it_reads_the_legacy_period_end_on_the_subscription(app: App, client: TestClient) -> None:
    legacy = subscription("sub_L", "active", NOW + 9 * DAY, email="old@shop.test", legacy=True)
    assert post(client, event("customer.subscription.created", legacy, NOW)).status_code == 200
    row = stored(app, "sub_L")
    assert row is not None and row.current_period_end == NOW + 9 * DAY


@pytest.mark.parametrize("legacy", [False, True], ids=["parent.subscription_details", "invoice.subscription"])
def test_it_learns_the_email_from_an_invoice_event(app: App, client: TestClient, legacy: bool) -> None:
    no_email = subscription("sub_E", "active", NOW + 20 * DAY)
    assert post(client, event("customer.subscription.created", no_email, NOW - dt.timedelta(seconds=5))).status_code \
        == 200
    storefront = StripeStorefront(app.sessions, app.settings)
    assert [s.id for s in storefront.read(NOW)] == []       # entitled but no email yet: held back
    paid = invoice("sub_E", email="payer@shop.test", legacy=legacy)
    r = post(client, event("invoice.paid", paid, NOW))
    assert r.status_code == 200 and r.json()["outcome"].startswith("recorded")
    [sub] = storefront.read(NOW)
    assert (sub.id, sub.email, sub.status) == ("sub_E", "payer@shop.test", "active")


def test_it_records_an_invoice_for_an_unknown_subscription_without_inventing_a_status(
        app: App, client: TestClient) -> None:
    assert post(client, event("invoice.payment_failed", invoice("sub_Z", email="z@shop.test"), NOW)).status_code \
        == 200
    row = stored(app, "sub_Z")
    assert row is not None and row.status == "" and row.email == "z@shop.test"
    assert StripeStorefront(app.sessions, app.settings).read(NOW) == []
    # the subscription event that follows fills in the status and keeps the email
    assert post(client, event("customer.subscription.created", subscription("sub_Z", "past_due", NOW + DAY),
                              NOW)).status_code == 200
    [sub] = StripeStorefront(app.sessions, app.settings).read(NOW)
    assert (sub.status, sub.email) == ("past_due", "z@shop.test")


def test_it_answers_503_when_no_secret_is_configured(tmp_path: Path) -> None:
    app = make_app(tmp_path, stripe_section={"webhook_secrets": []})
    r = post(client_for(app), event("customer.subscription.created", active(), NOW))
    assert r.status_code == 503 and r.json()["error"]["code"] == "webhook_not_configured"
    assert counts(app) == (0, 0)
    app.engine.dispose()


def test_it_refuses_a_body_over_one_megabyte(app: App, client: TestClient) -> None:
    ev = event("customer.subscription.created", active(), NOW)
    ev["data"]["object"]["metadata"]["padding"] = "x" * MAX_BODY_BYTES
    r = post(client, ev)
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    body, headers = signed(ev)          # the same without a Content-Length (chunked): counted as read
    r = client.post("/webhooks/stripe", content=iter([body[i:i + 65536].encode() for i in range(0, len(body), 65536)]),
                    headers=headers)
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    assert counts(app) == (0, 0)


def test_it_answers_400_for_a_signed_body_that_is_not_an_event(app: App, client: TestClient) -> None:
    import stripe

    body = "not json at all"
    header = stripe.WebhookSignature.generate_signature_header(body, SECRET)
    r = client.post("/webhooks/stripe", content=body, headers={"Stripe-Signature": header})
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_payload"
    assert counts(app) == (0, 0)


def test_it_records_but_ignores_events_it_does_not_use(app: App, client: TestClient) -> None:
    r = post(client, event("charge.succeeded", {"id": "ch_1", "object": "charge"}, NOW))
    assert r.status_code == 200 and r.json()["outcome"].startswith("ignored")
    r = post(client, event("customer.subscription.updated", {"object": "subscription", "status": "active"}, NOW))
    assert r.status_code == 200 and r.json()["outcome"].startswith("ignored")   # no sub_ id: unreadable
    assert counts(app) == (2, 0)


@pytest.mark.parametrize("body", ["[]", '"a string"', "42", "null", '{"id": "evt_1", "object": "charge"}'])
def test_it_answers_400_not_500_for_a_signed_body_that_is_not_an_event_object(app: App, client: TestClient,
                                                                               body: str) -> None:
    import stripe

    header = stripe.WebhookSignature.generate_signature_header(body, SECRET)
    r = client.post("/webhooks/stripe", content=body, headers={"Stripe-Signature": header})
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_payload"
    assert counts(app) == (0, 0)


def test_it_refuses_a_signature_dated_beyond_the_tolerance_in_the_future(app: App, client: TestClient) -> None:
    ev = event("customer.subscription.created", active(), NOW)
    r = post(client, ev, timestamp=int(time.time()) + 301 + 60)
    assert r.status_code == 400 and r.json()["error"]["code"] == "future_signature"
    assert counts(app) == (0, 0)
    assert post(client, ev, timestamp=int(time.time()) + 60).status_code == 200   # clock skew within it passes
