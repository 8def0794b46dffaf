"""What the Stripe storefront tells the planner: who is entitled, who has ended."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import sessionmaker

from provisioner import db
from provisioner.reconcile import Policy, ServerState, plan
from provisioner.storefront.stripe import CLOCK_SKEW, StripeStorefront
from provisioner.subscriptions import StorefrontUnavailable
from provisioner.wiring import App
from tests.fixtures.stripe_events import event, make_app, subscription

UTC = dt.UTC
NOW = dt.datetime(2026, 5, 10, 12, 0, tzinfo=UTC)
DAY = dt.timedelta(days=1)
EMAIL = "buyer@shop.test"


@pytest.fixture
def app(tmp_path: Path) -> Iterator[App]:
    a = make_app(tmp_path, stripe_section={"past_due_grace_days": 3})
    yield a
    a.engine.dispose()


def given(app: App, *events: dict[str, Any]) -> StripeStorefront:
    storefront = StripeStorefront(app.sessions, app.settings)
    for ev in events:
        with app.sessions.begin() as s:
            storefront.handle_event(s, ev, NOW)
    return storefront


def sub_event(sub_id: str, status: str, period_end: dt.datetime, etype: str = "customer.subscription.updated",
              at: dt.datetime = NOW - DAY, **kw: Any) -> dict[str, Any]:
    return event(etype, subscription(sub_id, status, period_end, email=EMAIL, **kw), at)


def running(sub_id: str, server_id: int = 1) -> ServerState:
    return ServerState(id=server_id, name=f"g{server_id:04d}", subscription_id=sub_id, status="Running")


@pytest.mark.parametrize("status", ["active", "trialing"])
def test_it_builds_for_an_active_or_trialing_subscription(app: App, status: str) -> None:
    sf = given(app, sub_event("sub_1", status, NOW + 10 * DAY))
    [sub] = sf.read(NOW)
    assert sub.entitled(NOW) and sub.product_id == "price_vpn_monthly" and sub.email == EMAIL
    assert sub.entitled_until == NOW + 10 * DAY + CLOCK_SKEW
    result = plan(sf.read(NOW), [], NOW, Policy())
    assert [s.id for s in result.build] == ["sub_1"]
    assert result.destroy == []


@pytest.mark.parametrize("status", ["canceled", "unpaid", "incomplete_expired", "paused", "Canceled"])
def test_it_destroys_for_an_ended_subscription_once_its_paid_period_is_over(app: App, status: str) -> None:
    sf = given(app, sub_event("sub_1", status, NOW + 10 * DAY))
    [sub] = sf.read(NOW)
    assert sub.entitled_until is None and sub.ended(NOW)
    # ended, but paid for ten more days: the server waits for the paid-through date
    result = plan(sf.read(NOW), [running("sub_1")], NOW, Policy())
    assert result.destroy == [] and result.build == []
    later = NOW + 10 * DAY
    assert [s.subscription_id for s in plan(sf.read(later), [running("sub_1")], later, Policy()).destroy] \
        == ["sub_1"]


def test_it_holds_a_subscription_with_an_unknown_status(app: App) -> None:
    sf = given(app, sub_event("sub_1", "on_hold", NOW - DAY))
    [sub] = sf.read(NOW)
    assert not sub.entitled(NOW) and not sub.ended(NOW)
    result = plan(sf.read(NOW), [running("sub_1")], NOW, Policy())
    assert result.destroy == [] and [h.code for h in result.holds] == ["no_evidence"]


def test_it_does_not_build_for_an_incomplete_subscription(app: App) -> None:
    sf = given(app, sub_event("sub_1", "incomplete", NOW + 30 * DAY, "customer.subscription.created"))
    assert plan(sf.read(NOW), [], NOW, Policy()).build == []


def test_it_keeps_access_until_the_period_end_when_cancelled_at_period_end(app: App) -> None:
    period_end = NOW + 5 * DAY
    sf = given(app, sub_event("sub_1", "active", period_end, cancel_at_period_end=True))
    keep = plan(sf.read(NOW), [running("sub_1")], NOW, Policy())
    assert keep.destroy == []
    # at the period end Stripe ends it: customer.subscription.deleted
    after = period_end + dt.timedelta(seconds=1)
    given(app, event("customer.subscription.deleted",
                     subscription("sub_1", "canceled", period_end, email=EMAIL, cancel_at_period_end=True,
                                  ended_at=period_end), period_end))
    gone = plan(sf.read(after), [running("sub_1")], after, Policy())
    assert [s.subscription_id for s in gone.destroy] == ["sub_1"]


def test_it_lets_an_active_subscription_lapse_at_its_period_end_without_an_api_key(app: App) -> None:
    period_end = NOW + 5 * DAY
    sf = given(app, sub_event("sub_1", "active", period_end, cancel_at_period_end=True))
    just_before = period_end + CLOCK_SKEW - dt.timedelta(seconds=1)
    assert plan(sf.read(just_before), [running("sub_1")], just_before, Policy()).destroy == []
    later = period_end + CLOCK_SKEW
    assert [s.subscription_id for s in plan(sf.read(later), [running("sub_1")], later, Policy()).destroy] == ["sub_1"]


def test_it_gives_past_due_the_grace_days_after_the_period_end(app: App) -> None:
    period_end = NOW + 2 * DAY
    sf = given(app, sub_event("sub_1", "past_due", period_end))
    within = period_end + 3 * DAY - dt.timedelta(minutes=1)
    assert plan(sf.read(within), [running("sub_1")], within, Policy()).destroy == []
    beyond = period_end + 3 * DAY
    assert [s.subscription_id for s in plan(sf.read(beyond), [running("sub_1")], beyond, Policy()).destroy] \
        == ["sub_1"]


def test_it_gives_a_trial_until_the_later_of_trial_end_and_period_end(app: App) -> None:
    sf = given(app, sub_event("sub_1", "trialing", NOW + DAY, trial_end=NOW + 3 * DAY))
    [sub] = sf.read(NOW)
    assert sub.entitled_until == NOW + 3 * DAY + CLOCK_SKEW


def test_it_returns_an_ended_subscription_even_without_an_email(app: App) -> None:
    storefront = StripeStorefront(app.sessions, app.settings)
    with app.sessions.begin() as s:
        storefront.handle_event(s, event("customer.subscription.deleted",
                                         subscription("sub_1", "canceled", NOW, ended_at=NOW), NOW), NOW)
    [sub] = storefront.read(NOW)
    assert sub.ended(NOW) and sub.email == ""


def test_it_reports_an_unreadable_table_as_unavailable(tmp_path: Path) -> None:
    engine = db.make_engine(f"sqlite:///{tmp_path}/empty.db")   # no schema: the table is missing
    (tmp_path / "cfg").mkdir()
    app = make_app(tmp_path / "cfg")
    with pytest.raises(StorefrontUnavailable, match="provisioner_stripe_subscriptions"):
        StripeStorefront(sessionmaker(engine), app.settings).read(NOW)
    engine.dispose()
    app.engine.dispose()
