"""A property over random storefront histories: subscriptions change status and expiration,
vanish and come back, between planning passes hours apart. Whatever happens,

- no server is destroyed before its paid-through date + the grace, nor before the grace
  after a pass first saw its subscription ended, nor without positive evidence; and
- no window of ``breaker_window`` holds more planner destroys than the breaker allows.

The storefront rows go through the EDD reader's own conversion; the fleet follows each plan
as the worker would record it (first-seen stamps, builds, destroys).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace

from hypothesis import given, settings
from hypothesis import strategies as st

from provisioner.reconcile import Policy, ServerState, allowance, plan
from provisioner.storefront.edd import subscription_from_row
from provisioner.subscriptions import Subscription

UTC = dt.UTC
T0 = dt.datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
HOUR = dt.timedelta(hours=1)
STATUSES = ["active", "trialling", "cancelled", "failing", "expired", "completed", "pending",
            "Active", "EXPIRED", "needs_attention"]


@dataclass(frozen=True)
class Change:
    """Between two passes: ``after`` hours pass, then subscription ``sub`` changes."""

    after: int
    sub: int
    status: str
    expires_in: int | None          # hours from that moment; None: a zero date
    vanished: bool


ENDING_OFTEN = st.one_of(st.sampled_from(["expired", "cancelled", "completed"]), st.sampled_from(STATUSES))
changes = st.builds(Change, after=st.integers(1, 12), sub=st.integers(1, 8), status=ENDING_OFTEN,
                    expires_in=st.one_of(st.none(), st.integers(-200, 100)),
                    vanished=st.sampled_from([False, False, False, True]))
policies = st.builds(Policy, max_destroy_count=st.integers(1, 4), max_destroy_fraction=st.floats(0, 1),
                     destroy_grace=st.integers(0, 24).map(lambda h: h * HOUR),
                     breaker_window=st.integers(1, 48).map(lambda h: h * HOUR),
                     min_read_fraction=st.sampled_from([0.0, 0.5, 0.9]))


def _read(rows: dict[int, tuple[str, dt.datetime | None]]) -> list[Subscription]:
    return [subscription_from_row({"sub_id": n, "product_id": 1, "price_id": 0, "status": status,
                                   "expiration": "0000-00-00 00:00:00" if exp is None else exp.replace(tzinfo=None),
                                   "profile_id": "", "customer_id": n, "user_id": n, "customer_email": f"c{n}@x.test",
                                   "user_email": f"c{n}@x.test"}, UTC, dt.timedelta(days=3))
            for n, (status, exp) in sorted(rows.items())]


@settings(max_examples=200, deadline=None)
@given(st.lists(changes, min_size=1, max_size=25), policies)
def test_property_destroys_are_aged_positive_and_within_the_breaker(history: list[Change], policy: Policy) -> None:
    now = T0
    rows = {n: ("active", T0 + 30 * 24 * HOUR) for n in range(1, 9)}
    servers: dict[int, ServerState] = {}
    first_seen: dict[int, dt.datetime] = {}      # what the worker stamps
    passes: list[tuple[dt.datetime, int]] = []   # (when, the fleet the breaker counted)
    destroyed_at: list[dt.datetime] = []
    gone: set[int] = set()

    for step in [None, *history]:
        if step is not None:
            now += step.after * HOUR
            if step.vanished:
                gone ^= {step.sub}
            exp = None if step.expires_in is None else now + step.expires_in * HOUR
            rows[step.sub] = (step.status, exp)
        subs = _read({n: r for n, r in rows.items() if n not in gone})
        by_id = {s.id: s for s in subs}
        result = plan(subs, servers.values(), now, policy)
        passes.append((now, result.breaker.get("fleet", 0)))

        for doomed in result.destroy:
            sub = by_id[doomed.subscription_id]
            # positive evidence, aged past the paid-through date and the first sighting
            assert sub.ended(now) and sub.problem is None and sub.paid_through is not None
            assert now >= sub.paid_through + policy.destroy_grace
            assert now >= first_seen.get(doomed.id, now) + policy.destroy_grace
            servers[doomed.id] = replace(doomed, status="Destroyed", planned_destroy_at=now, ended_seen_at=None)
            destroyed_at.append(now)
        for sid in result.seen_ended:
            first_seen.setdefault(sid, now)
            servers[sid] = replace(servers[sid], ended_seen_at=now)
        for sid in result.unended:
            first_seen.pop(sid, None)
            servers[sid] = replace(servers[sid], ended_seen_at=None)
        for sub in result.build:
            sid = int(sub.id)
            servers[sid] = ServerState(id=sid, name=f"g{sid:04d}", subscription_id=sub.id, status="Running",
                                       planned_destroy_at=servers[sid].planned_destroy_at if sid in servers else None)

        # the breaker: no window holds more destroys than it allowed at any pass inside it
        in_window = [t for t in destroyed_at if t > now - policy.breaker_window]
        fleets = [f for t, f in passes if t > now - policy.breaker_window]
        assert len(in_window) <= allowance(policy, max(fleets))
        assert len(in_window) <= policy.max_destroy_count
