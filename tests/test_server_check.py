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


def _sales(stack: Stack, n: int) -> list:
    for i in range(1, n + 1):
        stack.add_subscription(i, f"c{i}@example.com")
    return sorted(stack.app.storefront.read(stack.app.clock()), key=lambda sub: int(sub.id))


def test_a_burst_of_sales_is_recorded_at_once_and_a_taken_subscription_is_refused_alone(stack: Stack) -> None:
    from provisioner import operations
    from provisioner.reconcile import Plan

    subs = _sales(stack, 3)
    lc = stack.lifecycle()
    # another process (an operator's `provisioner create`) recorded subscription 2 meanwhile
    with stack.app.sessions() as s:
        lc.begin_create(s, subs[1])
        s.commit()
    applied = operations.start_plan(lc, Plan(build=subs))
    assert len(applied.started["build"]) == 2
    assert [line.split(":")[0] for line in applied.refused] == ["build 2"]
    with stack.app.sessions() as s:
        assert sorted(r.subscription_id for r in s.scalars(select(Server))) == ["1", "2", "3"]


def test_a_leader_that_loses_its_lock_while_recording_builds_records_none_of_them(stack: Stack) -> None:
    from provisioner import operations
    from provisioner.reconcile import Plan

    subs = _sales(stack, 3)
    asked = {"n": 0}

    def lock_lost_after_two_builds() -> bool:
        asked["n"] += 1
        return asked["n"] <= 3     # asked before builds 1, 2 and 3: gone at the third

    applied = operations.start_plan(stack.lifecycle(), Plan(build=subs), still_leader=lock_lost_after_two_builds)
    assert applied.lost_leadership and applied.started["build"] == []
    with stack.app.sessions() as s:
        assert s.scalars(select(Server)).all() == []


def test_a_stale_write_in_a_burst_falls_back_to_one_build_at_a_time(stack: Stack, monkeypatch) -> None:
    from sqlalchemy.orm.exc import StaleDataError

    from provisioner import operations
    from provisioner.lifecycle import Lifecycle
    from provisioner.reconcile import Plan

    subs = _sales(stack, 3)
    real = Lifecycle.begin_create
    stale = {"left": 1}

    def begin_create(self, session, sub, actor="planner"):  # type: ignore[no-untyped-def]
        row = real(self, session, sub, actor)
        if sub.id == "2" and stale["left"]:     # the batch's write of row 2 meets a concurrent change once
            stale["left"] -= 1
            raise StaleDataError("row 2 changed underneath")
        return row

    monkeypatch.setattr(Lifecycle, "begin_create", begin_create)
    applied = operations.start_plan(stack.lifecycle(), Plan(build=subs))
    assert stale["left"] == 0 and applied.refused == []
    assert len(applied.started["build"]) == 3
    with stack.app.sessions() as s:
        assert sorted(r.subscription_id for r in s.scalars(select(Server))) == ["1", "2", "3"]
