"""The planner: who gets built, destroyed, rebuilt or resumed — and who is never touched."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from provisioner.reconcile import BREAKER, NO_EVIDENCE, THIN_READ, VANISHED, Plan, Policy, ServerState, plan
from provisioner.subscriptions import Subscription

NOW = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)
HOUR = dt.timedelta(hours=1)
ENDING = ("expired", "completed")


def sub(id_: str, until: dt.datetime | None, product: str = "1", status: str = "active",
        **kw) -> Subscription:
    """An EDD-like subscription: `until` is its expiration (its paid-through date)."""
    ends = status in ENDING
    return Subscription(id=id_, customer_id="c" + id_, product_id=product, email=f"{id_}@example.com",
                        status=status, entitled_until=None if ends or status == "pending" else until,
                        paid_through=until,
                        ends_by_status=ends, **kw)


def server(id_: int, sub_id: str, status: str = "Running", **kw) -> ServerState:
    return ServerState(id=id_, name=f"g{id_:04d}.vpn.example.test", subscription_id=sub_id, status=status, **kw)


def test_it_builds_for_an_entitled_subscription_without_a_server() -> None:
    p = plan([sub("1", NOW + DAY), sub("2", NOW + DAY)], [server(1, "1")], NOW)
    assert [s.id for s in p.build] == ["2"]
    assert p.destroy == []


def test_it_destroys_a_server_whose_subscription_ended() -> None:
    p = plan([sub("1", NOW - DAY, status="cancelled")], [server(1, "1")], NOW)
    assert [s.id for s in p.destroy] == [1]


def test_it_counts_the_grace_from_the_later_of_paid_through_and_first_seen_ended() -> None:
    grace = Policy(destroy_grace=3 * HOUR)
    ended_two_hours_ago = [sub("1", NOW - 2 * HOUR)]
    # seen ended long ago: the paid-through date decides
    seen_long_ago = [server(1, "1", ended_seen_at=NOW - DAY)]
    assert plan(ended_two_hours_ago, seen_long_ago, NOW, grace).destroy == []
    assert [s.id for s in plan(ended_two_hours_ago, seen_long_ago, NOW + 1 * HOUR, grace).destroy] == [1]
    # never seen before: this pass stamps it, and the grace starts now
    first = plan([sub("1", NOW - 10 * DAY)], [server(1, "1")], NOW, grace)
    assert first.destroy == [] and first.seen_ended == [1]
    assert first.waiting == {"g0001.vpn.example.test": NOW + 3 * HOUR}


def test_an_ending_status_waits_for_its_paid_through_date_plus_grace() -> None:
    flipped = [sub("1", NOW + 5 * DAY, status="expired")]     # expired by hand, paid for 5 more days
    srv = [server(1, "1", ended_seen_at=NOW - DAY)]
    policy = Policy(destroy_grace=2 * DAY)
    assert plan(flipped, srv, NOW + 6 * DAY, policy).destroy == []
    assert [s.id for s in plan(flipped, srv, NOW + 7 * DAY, policy).destroy] == [1]


def test_a_renewal_clears_the_first_seen_stamp() -> None:
    p = plan([sub("1", NOW + 30 * DAY)], [server(1, "1", ended_seen_at=NOW - HOUR)], NOW)
    assert p.unended == [1] and p.destroy == [] and p.holds == []


def test_it_does_not_destroy_when_the_subscription_is_missing_from_the_read() -> None:
    p = plan([sub("2", NOW + DAY)], [server(1, "1"), server(2, "2")] + [server(i, str(i)) for i in range(3, 12)]
             + [], NOW, Policy(min_read_fraction=0.5))
    assert p.destroy == []
    [h] = [h for h in p.holds if h.server_id == 1]
    assert h.code == VANISHED and "subscription 1 is not in the storefront" in h.reason


def test_unknown_statuses_and_unreadable_dates_are_no_evidence() -> None:
    subs = [sub("1", NOW - DAY, problem="unknown status 'needs_attention'"),
            sub("2", None, status="expired"),                   # expired, but no date to count from
            sub("3", NOW - DAY, status="pending"),
            sub("4", NOW - DAY, status="expired")]
    p = plan(subs, [server(i, str(i)) for i in range(1, 5)], NOW)
    assert [s.id for s in p.destroy] == [4]
    assert {h.server_id: h.code for h in p.holds} == {1: NO_EVIDENCE, 2: NO_EVIDENCE, 3: NO_EVIDENCE}
    assert "needs_attention" in next(h.reason for h in p.holds if h.server_id == 1)


def test_a_thin_read_destroys_nothing_and_says_why() -> None:
    servers = [server(i, str(i)) for i in range(1, 11)]
    p = plan([sub("1", NOW - DAY), sub("2", NOW - DAY)], servers, NOW)      # 2 of 10 subscriptions came back
    assert p.destroy == []
    assert p.thin_read and "only 2 of 10" in p.thin_read
    assert {h.server_id: h.code for h in p.holds if h.code == THIN_READ} == {1: THIN_READ, 2: THIN_READ}


def test_it_does_nothing_with_subscriptions_when_the_storefront_cannot_be_read() -> None:
    p = plan(None, [server(1, "1"), server(2, "2", rebuild_now=True)], NOW)
    assert p.build == [] and p.destroy == []
    assert [s.id for s in p.rebuild] == [2]
    assert "storefront could not be read" in p.held[0]["reason"]


def test_it_revives_a_destroyed_row_for_a_renewed_subscription_rather_than_adding_one() -> None:
    p = plan([sub("1", NOW + DAY)], [server(1, "1", status="Destroyed")], NOW)
    assert [s.id for s in p.build] == ["1"]


def test_it_rebuilds_only_idle_servers_that_asked() -> None:
    servers = [server(1, "1", rebuild_now=True), server(2, "2", rebuild_now=True, action="create",
                                                                   status="Installing", step_deadline=NOW + DAY),
               server(3, "3")]
    p = plan([sub(str(i), NOW + DAY) for i in (1, 2, 3)], servers, NOW)
    assert [s.id for s in p.rebuild] == [1]


def test_it_waits_for_a_scheduled_rebuilds_spread_start() -> None:
    servers = [server(1, "1", rebuild_now=True, rebuild_due_at=NOW + dt.timedelta(minutes=7)),
               server(2, "2", rebuild_now=True, rebuild_due_at=NOW - dt.timedelta(minutes=1))]
    p = plan([sub("1", NOW + DAY), sub("2", NOW + DAY)], servers, NOW)
    assert [s.id for s in p.rebuild] == [2]


def test_it_resumes_servers_whose_step_deadline_passed() -> None:
    servers = [server(1, "1", action="create", status="Installing", step_deadline=NOW - dt.timedelta(seconds=1)),
               server(2, "2", action="create", status="Installing", step_deadline=NOW + dt.timedelta(minutes=5)),
               server(3, "3", action="create", status="Error", step_deadline=NOW - DAY, needs_human=True)]
    p = plan([sub(str(i), NOW + DAY) for i in (1, 2, 3)], servers, NOW)
    assert [s.id for s in p.resume] == [1]


def test_it_leaves_paused_servers_alone() -> None:
    p = plan([sub("1", NOW - DAY)], [server(1, "1", paused=True, rebuild_now=True)], NOW)
    assert p.empty


def test_it_ignores_subscriptions_of_unconfigured_products_without_holding_them() -> None:
    p = plan([sub("1", NOW + DAY, product="99")], [], NOW, Policy(products={"1"}))
    assert p.build == [] and p.held == []
    assert p.unconfigured == ["1"]


def test_the_storefronts_email_and_account_win() -> None:
    s = replace(sub("1", NOW + DAY), email="new@example.com", account_id="42")
    p = plan([s], [server(1, "1", email="old@example.com", account_id="42"),
                   server(2, "2", status="Destroyed", email="x@example.com")], NOW)
    assert [(c.server_id, c.email, c.account_id) for c in p.contacts] == [(1, "new@example.com", "42")]


# --- the circuit breaker, over time ---------------------------------------------------------------

def test_the_breaker_allows_the_smaller_of_count_and_fraction_and_at_least_one() -> None:
    fleet = [server(i, str(i)) for i in range(25)]
    ended = [sub(str(i), NOW - DAY) for i in range(10)] + [sub(str(i), NOW + DAY) for i in range(10, 25)]
    p = plan(ended, fleet, NOW, Policy(max_destroy_count=5, max_destroy_fraction=0.1))
    assert len(p.destroy) == 2                                   # 10 % of 25, below 5
    assert sum(h.code == BREAKER for h in p.holds) == 8
    five = plan([sub(str(i), NOW - DAY) for i in range(5)], [server(i, str(i)) for i in range(5)], NOW,
                Policy(max_destroy_count=5, max_destroy_fraction=0.1))
    assert len(five.destroy) == 1                                # ⌊0.5⌋ = 0, but at least 1


def test_the_breaker_counts_destroys_of_earlier_passes_in_its_window() -> None:
    policy = Policy(max_destroy_count=3, max_destroy_fraction=1.0, breaker_window=DAY)
    gone = [server(100 + i, f"old{i}", status="Destroyed", planned_destroy_at=NOW - 2 * HOUR) for i in range(2)]
    fleet = [server(i, str(i)) for i in range(6)]
    subs = [sub(str(i), NOW - DAY) for i in range(6)]
    p = plan(subs, fleet + gone, NOW, policy)
    assert len(p.destroy) == 1 and p.breaker == {"allowance": 3, "used": 2, "fleet": 8}
    later = plan(subs, fleet + gone, NOW + DAY, policy)         # those two left the window
    assert len(later.destroy) == 3


def test_the_oldest_evidence_goes_first_and_an_approved_destroy_goes_regardless() -> None:
    policy = Policy(max_destroy_count=1, max_destroy_fraction=1.0)
    subs = [sub("1", NOW - HOUR), sub("2", NOW - 3 * DAY), sub("3", NOW - 2 * DAY)]
    fleet = [server(1, "1"), server(2, "2"), server(3, "3", destroy_approved=True)]
    p = plan(subs, fleet, NOW, policy)
    assert sorted(s.id for s in p.destroy) == [2, 3]
    assert [h.server_id for h in p.holds] == [1]


def test_the_json_shape_is_exactly_the_documented_one() -> None:
    p = plan([sub("1", NOW + DAY), sub("2", NOW - DAY), sub("3", NOW + DAY, product="9")], [server(2, "2")], NOW,
             Policy(products={"1"}))
    assert p.to_json() == {"build": ["1"], "destroy": ["g0002.vpn.example.test"], "rebuild": [], "resume": [],
                           "held": [], "unconfigured": ["3"]}


# --- properties ----------------------------------------------------------------------------------

sub_ids = st.sampled_from([str(i) for i in range(12)])
offsets = st.one_of(st.none(), st.integers(min_value=-72, max_value=72).map(lambda h: NOW + dt.timedelta(hours=h)))
sub_statuses = st.sampled_from(["active", "cancelled", "expired", "completed", "pending"])
subscriptions = st.lists(st.builds(sub, sub_ids, offsets, status=sub_statuses), max_size=15)
statuses = st.sampled_from(["Queued", "Installing", "Running", "Rebuilding", "Error", "Destroyed"])
server_lists = st.lists(
    st.builds(lambda i, sid, status, rb, act: server(i, sid, status=status, rebuild_now=rb, action=act,
                                                     step_deadline=NOW - DAY if act else None),
              st.integers(0, 10_000), sub_ids, statuses, st.booleans(), st.sampled_from([None, "create", "destroy"])),
    max_size=15, unique_by=lambda s: s.subscription_id)
policies = st.builds(Policy, max_destroy_count=st.integers(1, 6), max_destroy_fraction=st.floats(0, 1),
                     destroy_grace=st.integers(0, 48).map(lambda h: dt.timedelta(hours=h)))


def _apply(servers: list[ServerState], p: Plan) -> list[ServerState]:
    """The fleet after the plan: builds add a live server, destroys remove one."""
    gone = {s.id for s in p.destroy}
    after = [s for s in servers if s.id not in gone and s.live]
    after += [server(100_000 + i, b.id, status="Queued") for i, b in enumerate(p.build)]
    return after


@settings(max_examples=300, deadline=None)
@given(subscriptions, server_lists, policies)
def test_property_never_two_live_servers_for_one_subscription(subs, servers, policy) -> None:
    p = plan(subs, servers, NOW, policy)
    after = _apply(servers, p)
    ids = [s.subscription_id for s in after]
    assert len(ids) == len(set(ids))


@settings(max_examples=300, deadline=None)
@given(subscriptions, server_lists, policies)
def test_property_never_destroys_an_entitled_subscription(subs, servers, policy) -> None:
    p = plan(subs, servers, NOW, policy)
    first = {}
    for s in subs:
        first.setdefault(s.id, s)
    for doomed in p.destroy:
        assert not first[doomed.subscription_id].entitled(NOW)
        assert first[doomed.subscription_id].ended(NOW)


@settings(max_examples=200, deadline=None)
@given(server_lists, policies)
def test_property_a_failed_storefront_read_plans_no_destroy_and_no_build(servers, policy) -> None:
    p = plan(None, servers, NOW, policy)
    assert p.destroy == [] and p.build == []


def test_it_does_not_build_again_a_server_an_operator_took_down_until_released() -> None:
    entitled = [sub("1", NOW + DAY)]
    held = plan(entitled, [server(1, "1", status="Destroyed", operator_hold=True)], NOW)
    assert held.build == [] and held.destroy == []
    (why,) = held.held
    assert why["code"] == "operator_hold"
    assert why["reason"] == ("server g0001.vpn.example.test: taken down by an operator; not building it again "
                             "until `provisioner release g0001.vpn.example.test`")
    released = plan(entitled, [server(1, "1", status="Destroyed")], NOW)
    assert [s.id for s in released.build] == ["1"]
