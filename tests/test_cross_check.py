"""With EDD and a Stripe key, a destroy is first confirmed with Stripe (EDD can miss webhooks)."""

from __future__ import annotations

import tomllib

import pytest
from sqlalchemy import select, text

from jobs.driver import drive_until_idle
from provisioner import db, operations
from provisioner.models import Server, ServerEvent
from provisioner.settings import load_settings
from provisioner.wiring import App
from tests.fixtures.config import dump_toml
from tests.fixtures.stack import Stack
from tests.fixtures.stripe_api import fake_stripe


def _with_stripe(stack: Stack, base_url: str) -> App:
    data = tomllib.loads(stack.config_path.read_text())
    data["stripe"] = {"api_key": "sk_test_crosscheck", "api_base": base_url, "cross_check_destroys": True}
    stack.config_path.write_text(dump_toml(data))
    return App(load_settings(stack.config_path, env={}))


def _build_then_end_in_edd(stack: Stack) -> int:
    stack.add_subscription(1, "ann@example.com")
    lc = stack.lifecycle()
    result, _ = stack.app.plan_once()
    operations.start_plan(lc, result)
    drive_until_idle(lc, timeout=60)
    eng = db.make_engine(stack.app.settings.storefront.edd_url)
    with eng.begin() as conn:  # EDD now says the subscription expired
        conn.execute(text("UPDATE wp_edd_subscriptions SET status='expired', profile_id='sub_1', "
                          "expiration='2020-01-01 00:00:00' WHERE id=1"))
    eng.dispose()
    with stack.app.sessions() as s:
        return s.scalars(select(Server.id)).one()


def _tick(app: App, stack: Stack) -> operations.Applied:
    from provisioner import wiring

    result, error = app.plan_once()
    assert error is None and [s.id for s in result.destroy] == [1]
    return operations.start_plan(wiring.lifecycle(app, owner="t"), result, app.destroy_cross_check())


NO_GRACE = {"planner": {"destroy_grace_hours": 0}}


@pytest.mark.parametrize("stack", [NO_GRACE], indirect=True)
def test_it_holds_a_destroy_when_stripe_says_the_subscription_is_live(stack: Stack) -> None:
    rid = _build_then_end_in_edd(stack)
    with fake_stripe() as stripe_api:
        stripe_api.subscriptions["sub_1"] = {"id": "sub_1", "object": "subscription", "status": "active"}
        app = _with_stripe(stack, stripe_api.base_url)
        applied = _tick(app, stack)
        assert applied.started["destroy"] == []
        assert "Stripe says it is still live" in applied.refused[0]
        assert [r["path"] for r in stripe_api.requests] == ["/v1/subscriptions/sub_1"]
    with stack.app.sessions() as s:
        row = s.get(Server, rid)
        assert row is not None and row.action is None and row.status == "Running"
        assert s.scalars(select(ServerEvent.what).where(ServerEvent.what == "destroy.held")).first()


@pytest.mark.parametrize("stack", [NO_GRACE], indirect=True)
def test_it_holds_when_stripe_cannot_be_reached_and_destroys_once_stripe_confirms(stack: Stack) -> None:
    _build_then_end_in_edd(stack)
    with fake_stripe() as stripe_api:
        app = _with_stripe(stack, stripe_api.base_url)
        stripe_api.status_override = 500
        assert _tick(app, stack).started["destroy"] == []
        stripe_api.status_override = None
        stripe_api.subscriptions["sub_1"] = {"id": "sub_1", "object": "subscription", "status": "canceled"}
        assert _tick(app, stack).started["destroy"] == ["g0001.vpn.example.test"]
