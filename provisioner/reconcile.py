"""The planner: what should happen, given what the storefront says and what we run.

``plan(subscriptions, servers, now, policy)`` is a pure function (no I/O, no clock):

- **build** every entitled subscription that has no live server. One row per subscription,
  ever: a subscription whose server was destroyed and that entitles again (a lapsed
  customer who renews) gets its old row revived, never a second row. A server an operator
  took down (``operator_hold``: a forced destroy) is not built again until released.
- **destroy** live servers whose subscription the storefront positively reports as ended,
  past the grace period. A subscription missing from a successful read is *not* evidence;
  a failed read (``subscriptions is None``) destroys nothing and builds nothing.
- **rebuild** servers whose customer asked for one (or whose schedule came due, once its
  spread start ``rebuild_due_at`` has passed) and that are idle.
- **resume** servers in the middle of an action whose step deadline has passed (a crashed
  or stalled worker's leftovers).
- The **circuit breaker**: a plan that would destroy more than
  ``max(max_destroy_count, max_destroy_fraction × live servers)`` destroys nothing and
  says why in ``held``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from provisioner.models import Server, Status
from provisioner.subscriptions import Subscription


@dataclass(frozen=True, slots=True)
class ServerState:
    """The part of a server row the planner looks at."""

    id: int
    name: str | None
    subscription_id: str
    status: str
    action: str | None = None
    step_deadline: dt.datetime | None = None
    rebuild_now: bool = False
    paused: bool = False
    needs_human: bool = False
    rebuild_due_at: dt.datetime | None = None   # a scheduled rebuild's spread start
    operator_hold: bool = False                  # taken down by an operator until `provisioner release`

    @classmethod
    def of(cls, row: Server) -> ServerState:
        return cls(id=row.id, name=row.server_name, subscription_id=row.subscription_id, status=row.status,
                   action=row.action, step_deadline=row.step_deadline, rebuild_now=bool(row.rebuild_now_status),
                   paused=bool(row.paused), needs_human=bool(row.needs_human), rebuild_due_at=row.rebuild_due_at,
                   operator_hold=row.on_hold)

    @property
    def live(self) -> bool:
        return self.status != Status.DESTROYED.value

    @property
    def label(self) -> str:
        return self.name or f"#{self.id}"


@dataclass(frozen=True, slots=True)
class Policy:
    max_destroy_count: int = 5
    max_destroy_fraction: float = 0.1
    destroy_grace: dt.timedelta = dt.timedelta(0)
    products: Collection[str] | None = None      # configured product ids; None = accept all


@dataclass
class Plan:
    build: list[Subscription] = field(default_factory=list)
    destroy: list[ServerState] = field(default_factory=list)
    rebuild: list[ServerState] = field(default_factory=list)
    resume: list[ServerState] = field(default_factory=list)
    held: list[dict[str, str]] = field(default_factory=list)
    ended: dict[int, Subscription] = field(default_factory=dict)   # server id → the ended subscription

    def to_json(self) -> dict[str, Any]:
        return {
            "build": [s.id for s in self.build],
            "destroy": [s.label for s in self.destroy],
            "rebuild": [s.label for s in self.rebuild],
            "resume": [s.label for s in self.resume],
            "held": list(self.held),
        }

    @property
    def empty(self) -> bool:
        return not (self.build or self.destroy or self.rebuild or self.resume)


def plan(subscriptions: Sequence[Subscription] | None, servers: Iterable[ServerState], now: dt.datetime,
         policy: Policy | None = None) -> Plan:
    if now.tzinfo is None:
        raise ValueError("plan() needs an aware datetime")
    policy = policy or Policy()
    result = Plan()
    by_sub: dict[str, ServerState] = {}
    for s in servers:
        # Several rows for one subscription cannot come from us (unique column), but a
        # hand-edited table could: keep the live one and never plan a build next to it.
        if s.subscription_id not in by_sub or (s.live and not by_sub[s.subscription_id].live):
            by_sub[s.subscription_id] = s
    live = [s for s in by_sub.values() if s.live]

    for s in live:
        if s.paused:
            continue
        if s.action and s.step_deadline is not None and s.step_deadline <= now and not s.needs_human:
            result.resume.append(s)
        elif s.rebuild_now and not s.action and s.status in (Status.RUNNING.value, Status.ERROR.value) \
                and (s.rebuild_due_at is None or s.rebuild_due_at <= now):
            result.rebuild.append(s)

    if subscriptions is None:
        result.held.append({"reason": "storefront could not be read: nothing is built or destroyed this pass"})
        return result

    subs: dict[str, Subscription] = {}
    for sub in subscriptions:
        subs.setdefault(sub.id, sub)

    for sub in subs.values():
        if not sub.entitled(now):
            continue
        existing = by_sub.get(sub.id)
        if existing is not None and existing.live:
            continue
        if existing is not None and existing.operator_hold:
            result.held.append({"reason": f"server {existing.label}: taken down by an operator; not building it "
                                          f"again until `provisioner release {existing.label}`",
                                "kind": "operator_hold"})
            continue
        if policy.products is not None and sub.product_id not in policy.products:
            result.held.append({"reason": f"subscription {sub.id}: product {sub.product_id} is not configured "
                                          "in [products]; not building"})
            continue
        result.build.append(sub)

    wanted: list[ServerState] = []
    for s in live:
        if s.paused or s.action == "destroy":
            continue
        sub_or_none = subs.get(s.subscription_id)
        if sub_or_none is None:
            result.held.append({"reason": f"server {s.label}: subscription {s.subscription_id} is not in the "
                                          "storefront; not destroying without positive evidence"})
            continue
        if _ended_past_grace(sub_or_none, now, policy.destroy_grace):
            wanted.append(s)
            result.ended[s.id] = sub_or_none

    allowance = max(policy.max_destroy_count, int(policy.max_destroy_fraction * len(live)))
    if len(wanted) > allowance:
        result.held.append({"reason": f"circuit breaker: this pass would destroy {len(wanted)} of {len(live)} live "
                                      f"servers (allowed {allowance}); destroying none — check the storefront, "
                                      "then raise planner.max_destroy_count or destroy by hand"})
    else:
        result.destroy = wanted
    # A server on its way out is not rebuilt first.
    doomed = {s.id for s in result.destroy}
    result.rebuild = [s for s in result.rebuild if s.id not in doomed]
    return result


def _ended_past_grace(sub: Subscription, now: dt.datetime, grace: dt.timedelta) -> bool:
    if sub.entitled(now):
        return False
    if sub.entitled_until is None:
        return True
    return now >= sub.entitled_until + grace
