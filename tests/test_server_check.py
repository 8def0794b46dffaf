"""The reconcile tick end to end: subscriptions in the storefront become servers, ended ones
go away, and one server's failure never stops the others."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select

from jobs.driver import drive_until_idle
from jobs.server_check import server_check
from provisioner.models import Server
from tests.fixtures.stack import Stack


def _statuses(stack: Stack) -> dict[str, str]:
    with stack.app.sessions() as s:
        return {r.subscription_id: r.status for r in s.scalars(select(Server))}


def _settle(stack: Stack) -> None:
    lc = stack.lifecycle()
    server_check(stack.app, lc)
    drive_until_idle(lc, timeout=60)


def test_it_builds_for_new_subscriptions_and_destroys_for_ended_ones_after_the_grace(stack: Stack) -> None:
    stack.add_subscription(1, "ann@example.com")
    stack.add_subscription(2, "bob@example.com")
    _settle(stack)
    assert _statuses(stack) == {"1": "Running", "2": "Running"}
    stack.set_subscription(2, status="cancelled", days=-1)   # paid period over
    _settle(stack)
    # first seen ended now: it waits out planner.destroy_grace_hours (48 by default)
    assert _statuses(stack) == {"1": "Running", "2": "Running"}
    stack.app.clock = lambda: dt.datetime.now(dt.UTC) + dt.timedelta(hours=48, minutes=5)
    _settle(stack)
    assert _statuses(stack) == {"1": "Running", "2": "Destroyed"}
    assert len(stack.state()["instances"]) == 1


def test_one_servers_failure_does_not_stop_the_others(stack: Stack) -> None:
    stack.add_subscription(1, "ann@example.com", product_id=1)
    stack.add_subscription(2, "bob@example.com", product_id=1)
    stack.add_subscription(3, "cat@example.com", product_id=1)
    # the first create POST is refused for good (a 400): that server needs a human
    stack.sandbox.set_faults({"faults": {"POST /v2/instances": {"error_first": 1, "error_status": 400}}})
    _settle(stack)
    statuses = sorted(_statuses(stack).values())
    assert statuses == ["Error", "Running", "Running"]


def test_a_failed_storefront_read_destroys_nothing(stack: Stack) -> None:
    stack.add_subscription(1, "ann@example.com")
    _settle(stack)
    from sqlalchemy import text

    from provisioner import db

    eng = db.make_engine(stack.app.settings.storefront.edd_url)
    with eng.begin() as conn:
        conn.execute(text("ALTER TABLE wp_edd_subscriptions RENAME TO wp_edd_subscriptions_gone"))
    eng.dispose()
    report = server_check(stack.app, stack.lifecycle())
    assert report.storefront_error and report.plan is not None and report.plan.destroy == []
    assert _statuses(stack) == {"1": "Running"}


def test_it_keeps_each_subscriptions_standing_for_the_dashboard(stack: Stack) -> None:
    import datetime as dt

    from provisioner import standing
    from provisioner.models import SubscriptionStanding

    stack.add_subscription(1, "ann@example.com", days=10)
    stack.add_subscription(2, "bob@example.com", status="cancelled", days=5)
    stack.add_subscription(3, "cat@example.com", status="failing", days=-1)
    server_check(stack.app, stack.lifecycle())
    now = stack.app.clock()
    with stack.app.sessions() as s:
        rows = {r.subscription_id: r for r in s.scalars(select(SubscriptionStanding))}
        seen = {sid: r.seen_at for sid, r in rows.items()}
    kinds = {sid: standing.of(r, now).kind for sid, r in rows.items()}
    assert kinds == {"1": "renews", "2": "ends", "3": "grace"}
    assert abs((rows["1"].paid_through - (now + dt.timedelta(days=10))).total_seconds()) < 60
    # a second pass with nothing changed writes nothing
    server_check(stack.app, stack.lifecycle())
    with stack.app.sessions() as s:
        assert {r.subscription_id: r.seen_at for r in s.scalars(select(SubscriptionStanding))} == seen
    # a storefront that changes its mind is followed
    stack.set_subscription(1, status="cancelled", days=10)
    server_check(stack.app, stack.lifecycle())
    with stack.app.sessions() as s:
        assert standing.of(s.get(SubscriptionStanding, "1"), now).kind == "ends"
