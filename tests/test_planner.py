"""The planner: who gets built, destroyed, rebuilt or resumed — and who is never touched."""

from __future__ import annotations

import datetime as dt

from hypothesis import given, settings
from hypothesis import strategies as st

from provisioner.reconcile import Plan, Policy, ServerState, plan
from provisioner.subscriptions import Subscription

NOW = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)


def sub(id_: str, until: dt.datetime | None, product: str = "1", status: str = "active") -> Subscription:
    return Subscription(id=id_, customer_id="c" + id_, product_id=product, email=f"{id_}@example.com",
                        status=status, entitled_until=until)


def server(id_: int, sub_id: str, status: str = "Running", **kw) -> ServerState:
    return ServerState(id=id_, name=f"g{id_:04d}.vpn.example.test", subscription_id=sub_id, status=status, **kw)


def test_it_builds_for_an_entitled_subscription_without_a_server() -> None:
    p = plan([sub("1", NOW + DAY), sub("2", NOW + DAY)], [server(1, "1")], NOW)
    assert [s.id for s in p.build] == ["2"]
    assert p.destroy == []


def test_it_destroys_a_server_whose_subscription_ended() -> None:
    p = plan([sub("1", NOW - DAY, status="cancelled")], [server(1, "1")], NOW)
    assert [s.id for s in p.destroy] == [1]


def test_it_waits_out_the_destroy_grace() -> None:
    s, srv = [sub("1", NOW - dt.timedelta(hours=2))], [server(1, "1")]
    assert plan(s, srv, NOW, Policy(destroy_grace=dt.timedelta(hours=3))).destroy == []
    assert len(plan(s, srv, NOW, Policy(destroy_grace=dt.timedelta(hours=1))).destroy) == 1


def test_it_does_not_destroy_when_the_subscription_is_missing_from_the_read() -> None:
    p = plan([sub("2", NOW + DAY)], [server(1, "1")], NOW)
    assert p.destroy == []
    assert "subscription 1 is not in the storefront" in p.held[0]["reason"]


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


def test_it_holds_subscriptions_for_unconfigured_products() -> None:
    p = plan([sub("1", NOW + DAY, product="99")], [], NOW, Policy(products={"1"}))
    assert p.build == []
    assert "product 99 is not configured" in p.held[0]["reason"]


def test_the_circuit_breaker_destroys_nothing_when_too_many_would_go() -> None:
    subs = [sub(str(i), NOW - DAY) for i in range(10)]
    servers = [server(i, str(i)) for i in range(10)]
    p = plan(subs, servers, NOW, Policy(max_destroy_count=5, max_destroy_fraction=0.1))
    assert p.destroy == []
    assert p.held[0]["reason"].startswith("circuit breaker: this pass would destroy 10 of 10 live servers")


def test_the_circuit_breaker_allows_a_share_of_a_large_fleet() -> None:
    subs = [sub(str(i), NOW + DAY) for i in range(200)] + [sub("x" + str(i), NOW - DAY) for i in range(20)]
    servers = [server(i, str(i)) for i in range(200)] + [server(1000 + i, "x" + str(i)) for i in range(20)]
    p = plan(subs, servers, NOW, Policy(max_destroy_count=5, max_destroy_fraction=0.1))
    assert len(p.destroy) == 20  # 10% of 220 live servers = 22 allowed


def test_the_json_shape_is_exactly_the_documented_one() -> None:
    p = plan([sub("1", NOW + DAY), sub("2", NOW - DAY)], [server(2, "2")], NOW)
    assert p.to_json() == {"build": ["1"], "destroy": ["g0002.vpn.example.test"], "rebuild": [], "resume": [],
                           "held": []}


# --- properties ----------------------------------------------------------------------------------

sub_ids = st.sampled_from([str(i) for i in range(12)])
offsets = st.one_of(st.none(), st.integers(min_value=-72, max_value=72).map(lambda h: NOW + dt.timedelta(hours=h)))
subscriptions = st.lists(st.builds(sub, sub_ids, offsets), max_size=15)
statuses = st.sampled_from(["Queued", "Installing", "Running", "Rebuilding", "Error", "Destroyed"])
server_lists = st.lists(
    st.builds(lambda i, sid, status, rb, act: server(i, sid, status=status, rebuild_now=rb, action=act,
                                                     step_deadline=NOW - DAY if act else None),
              st.integers(0, 10_000), sub_ids, statuses, st.booleans(), st.sampled_from([None, "create", "destroy"])),
    max_size=15, unique_by=lambda s: s.subscription_id)
policies = st.builds(Policy, max_destroy_count=st.integers(0, 6), max_destroy_fraction=st.floats(0, 1),
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


@settings(max_examples=200, deadline=None)
@given(server_lists, policies)
def test_property_a_failed_storefront_read_plans_no_destroy_and_no_build(servers, policy) -> None:
    p = plan(None, servers, NOW, policy)
    assert p.destroy == [] and p.build == []


@settings(max_examples=300, deadline=None)
@given(subscriptions, server_lists, policies)
def test_property_the_circuit_breaker_holds(subs, servers, policy) -> None:
    p = plan(subs, servers, NOW, policy)
    live = sum(1 for s in servers if s.live)
    assert len(p.destroy) <= max(policy.max_destroy_count, int(policy.max_destroy_fraction * live))


def test_it_does_not_build_again_a_server_an_operator_took_down_until_released() -> None:
    entitled = [sub("1", NOW + DAY)]
    held = plan(entitled, [server(1, "1", status="Destroyed", operator_hold=True)], NOW)
    assert held.build == [] and held.destroy == []
    (why,) = held.held
    assert why["kind"] == "operator_hold"
    assert why["reason"] == ("server g0001.vpn.example.test: taken down by an operator; not building it again "
                             "until `provisioner release g0001.vpn.example.test`")
    released = plan(entitled, [server(1, "1", status="Destroyed")], NOW)
    assert [s.id for s in released.build] == ["1"]
