"""The planner: what should happen, given what the storefront says and what we run.

``plan(subscriptions, servers, now, policy)`` is a pure function (no I/O, no clock):

- **build** every entitled subscription that has no live server. One row per subscription,
  ever: a subscription whose server was destroyed and that entitles again (a lapsed
  customer who renews) gets its old row revived, never a second row. A server an operator
  took down (``operator_hold``: a forced destroy) is not built again until released.
  Subscriptions of products that are not configured are ignored (listed under ``unconfigured``).
- **destroy** only on aged, positive evidence: the storefront reports the subscription
  ended (:meth:`Subscription.ended`), and the later of its paid-through date and the moment
  a pass first saw it ended (``ended_seen_at``, which the caller records) is older than
  ``destroy_grace``. No evidence is ever inferred from an unknown status word, an
  unreadable or zero date, a subscription missing from the read, or a read that came back
  implausibly thin (fewer than ``min_read_fraction`` of the live servers' subscriptions):
  those servers are **held**, each with a reason.
- The **circuit breaker** works over time, not per pass: in any rolling ``breaker_window``
  at most ``max(1, min(max_destroy_count, ⌊max_destroy_fraction × fleet⌋))`` servers are
  destroyed by the planner (the fleet: live servers plus those the planner destroyed in the
  window). Beyond that destroys are held (code ``breaker``), oldest evidence first to go,
  until an operator approves them (``destroy_approved``), which lets them go regardless.
- **rebuild** servers whose customer asked for one (or whose schedule came due, once its
  spread start ``rebuild_due_at`` has passed) and that are idle.
- **resume** servers in the middle of an action whose step deadline has passed (a crashed
  or stalled worker's leftovers).
- **contacts**: live rows whose e-mail or storefront account differs from what the
  storefront says now (the row follows the storefront).

A failed read (``subscriptions is None``) destroys nothing and builds nothing.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from provisioner.models import Server, Status
from provisioner.subscriptions import (
    ACCOUNT,
    EMAIL,
    ENDS,
    ID,
    OK,
    PRODUCT,
    UNTIL,
    Subscription,
    SubscriptionRow,
    SubscriptionRows,
    ended_row,
    entitled_row,
    naive_utc,
)

# Hold codes (stable: `provisioner destroys`, `status` and alerts key on them).
VANISHED = "vanished"            # the subscription is missing from a successful read
NO_EVIDENCE = "no_evidence"      # unknown status, unreadable date, a status that neither entitles nor ends
THIN_READ = "thin_read"          # the read returned implausibly few of our subscriptions
BREAKER = "breaker"              # beyond the rolling window's allowance
CROSS_CHECK = "cross_check"      # a second source (Stripe behind EDD) did not confirm the end


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
    ended_seen_at: dt.datetime | None = None    # when a pass first saw its subscription ended
    planned_destroy_at: dt.datetime | None = None  # when the planner last started its destroy
    destroy_approved: bool = False              # an operator let its breaker-held destroy go
    email: str | None = None                    # None: do not compare contacts
    account_id: str | None = None
    operator_hold: bool = False                  # taken down by an operator until `provisioner release`

    @classmethod
    def of(cls, row: Server, destroy_approved: bool = False) -> ServerState:
        return cls(id=row.id, name=row.server_name, subscription_id=row.subscription_id, status=row.status,
                   action=row.action, step_deadline=row.step_deadline, rebuild_now=bool(row.rebuild_now_status),
                   paused=bool(row.paused), needs_human=bool(row.needs_human), rebuild_due_at=row.rebuild_due_at,
                   ended_seen_at=row.ended_seen_at, planned_destroy_at=row.planned_destroy_at,
                   destroy_approved=destroy_approved, email=row.user_email, account_id=row.account_id,
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
    breaker_window: dt.timedelta = dt.timedelta(hours=24)
    min_read_fraction: float = 0.9               # of the live servers' subscriptions a read must hold


@dataclass(frozen=True, slots=True)
class Hold:
    """A destroy the planner will not carry out, and why."""

    server_id: int
    server: str
    subscription_id: str
    code: str
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"server": self.server, "subscription": self.subscription_id, "code": self.code,
                "reason": self.reason}


@dataclass(frozen=True, slots=True)
class Contact:
    """The storefront's current e-mail and account for a live row that says otherwise."""

    server_id: int
    email: str
    account_id: str | None


@dataclass
class Plan:
    build: list[Subscription] = field(default_factory=list)
    destroy: list[ServerState] = field(default_factory=list)
    rebuild: list[ServerState] = field(default_factory=list)
    resume: list[ServerState] = field(default_factory=list)
    held: list[dict[str, str]] = field(default_factory=list)
    holds: list[Hold] = field(default_factory=list)              # per server (also in ``held``)
    ended: dict[int, Subscription] = field(default_factory=dict)  # server id → the ended subscription
    unconfigured: list[str] = field(default_factory=list)          # subscription ids of unknown products
    waiting: dict[str, dt.datetime] = field(default_factory=dict)  # server → when its grace ends
    seen_ended: list[int] = field(default_factory=list)            # rows to stamp ended_seen_at = now
    unended: list[int] = field(default_factory=list)               # rows whose ended_seen_at no longer holds
    contacts: list[Contact] = field(default_factory=list)
    thin_read: str | None = None                                   # why the read looked implausible
    breaker: dict[str, int] = field(default_factory=dict)          # allowance, used in window, fleet

    def to_json(self) -> dict[str, Any]:
        return {
            "build": [s.id for s in self.build],
            "destroy": [s.label for s in self.destroy],
            "rebuild": [s.label for s in self.rebuild],
            "resume": [s.label for s in self.resume],
            "held": list(self.held),
            "unconfigured": list(self.unconfigured),
        }

    @property
    def empty(self) -> bool:
        return not (self.build or self.destroy or self.rebuild or self.resume)

    def hold(self, s: ServerState, code: str, reason: str) -> None:
        h = Hold(server_id=s.id, server=s.label, subscription_id=s.subscription_id, code=code, reason=reason)
        self.holds.append(h)
        self.held.append({**h.to_json(), "reason": f"server {s.label}: {reason}"})


def allowance(policy: Policy, fleet: int) -> int:
    """How many servers the planner may destroy in one rolling window."""
    return max(1, min(policy.max_destroy_count, math.floor(policy.max_destroy_fraction * fleet)))


# --- the planning pass's view of a server row: one plain tuple --------------------------------------
#
# The fields of :class:`ServerState` in its order, with every time as naive UTC, then SOURCE:
# the ServerState itself, or None when the row came straight from the database.
(S_ID, S_NAME, S_SUB, S_STATUS, S_ACTION, S_DEADLINE, S_REBUILD_NOW, S_PAUSED, S_NEEDS_HUMAN, S_REBUILD_DUE,
 S_ENDED_SEEN, S_PLANNED_DESTROY, S_APPROVED, S_EMAIL, S_ACCOUNT, S_HOLD, S_SOURCE) = range(17)
ServerRow = tuple[Any, ...]


def server_row(s: ServerState) -> ServerRow:
    """A :class:`ServerState` as the planning pass's tuple."""
    return (s.id, s.name, s.subscription_id, s.status, s.action, naive_utc(s.step_deadline), s.rebuild_now,
            s.paused, s.needs_human, naive_utc(s.rebuild_due_at), naive_utc(s.ended_seen_at),
            naive_utc(s.planned_destroy_at), s.destroy_approved, s.email, s.account_id, s.operator_hold, s)


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    return None if value is None else value.replace(tzinfo=dt.UTC)


def server_state(row: ServerRow) -> ServerState:
    """The :class:`ServerState` of a row (the one it was made from, if any)."""
    source = row[S_SOURCE]
    if source is not None:
        assert isinstance(source, ServerState)
        return source
    return ServerState(id=row[S_ID], name=row[S_NAME], subscription_id=row[S_SUB], status=row[S_STATUS],
                       action=row[S_ACTION], step_deadline=_aware(row[S_DEADLINE]),
                       rebuild_now=bool(row[S_REBUILD_NOW]), paused=bool(row[S_PAUSED]),
                       needs_human=bool(row[S_NEEDS_HUMAN]), rebuild_due_at=_aware(row[S_REBUILD_DUE]),
                       ended_seen_at=_aware(row[S_ENDED_SEEN]), planned_destroy_at=_aware(row[S_PLANNED_DESTROY]),
                       destroy_approved=bool(row[S_APPROVED]), email=row[S_EMAIL], account_id=row[S_ACCOUNT],
                       operator_hold=bool(row[S_HOLD]))


def _label(row: ServerRow) -> str:
    return row[S_NAME] or f"#{row[S_ID]}"


def plan(subscriptions: Sequence[Subscription] | None, servers: Iterable[ServerState], now: dt.datetime,
         policy: Policy | None = None) -> Plan:
    """The plan for these subscriptions and servers at ``now`` (see the module docstring)."""
    rows = None if subscriptions is None else SubscriptionRows.of(subscriptions)
    return plan_rows(rows, [server_row(s) for s in servers], now, policy)


def plan_rows(subscriptions: SubscriptionRows | None, servers: Iterable[ServerRow], now: dt.datetime,
              policy: Policy | None = None) -> Plan:
    """:func:`plan` over plain tuples: what the planning pass calls with the rows it read.

    Every comparison with ``now`` is made on naive UTC (``now`` converted once); objects are
    made only for the rows that end up in the plan."""
    if now.tzinfo is None:
        raise ValueError("plan() needs an aware datetime")
    policy = policy or Policy()
    result = Plan()
    now_utc = now.astimezone(dt.UTC).replace(tzinfo=None)
    window_start = now_utc - policy.breaker_window
    destroyed = Status.DESTROYED.value
    servers = servers if isinstance(servers, Sequence) else list(servers)
    used = sum(1 for s in servers if s[S_PLANNED_DESTROY] is not None and s[S_PLANNED_DESTROY] > window_start)
    by_sub: dict[str, ServerRow] = {s[S_SUB]: s for s in servers}
    if len(by_sub) != len(servers):
        # Several rows for one subscription cannot come from us (unique column), but a
        # hand-edited table could: keep the live one and never plan a build next to it.
        by_sub = {}
        for s in servers:
            first = by_sub.get(s[S_SUB])
            if first is None or (s[S_STATUS] != destroyed and first[S_STATUS] == destroyed):
                by_sub[s[S_SUB]] = s
    live = [s for s in by_sub.values() if s[S_STATUS] != destroyed]

    rebuildable = (Status.RUNNING.value, Status.ERROR.value)
    for s in live:
        if s[S_PAUSED]:
            continue
        action, deadline = s[S_ACTION], s[S_DEADLINE]
        if action and deadline is not None and deadline <= now_utc and not s[S_NEEDS_HUMAN]:
            result.resume.append(server_state(s))
        elif s[S_REBUILD_NOW] and not action and s[S_STATUS] in rebuildable \
                and (s[S_REBUILD_DUE] is None or s[S_REBUILD_DUE] <= now_utc):
            result.rebuild.append(server_state(s))

    if subscriptions is None:
        result.held.append({"code": "storefront_unreadable",
                            "reason": "storefront could not be read: nothing is built or destroyed this pass"})
        return result

    rows = subscriptions.rows
    subs: dict[str, SubscriptionRow] = {r[ID]: r for r in rows}
    if len(subs) != len(rows):    # the same id twice: the first one counts
        subs = {}
        for r in rows:
            subs.setdefault(r[ID], r)

    products = policy.products
    for row in subs.values():
        until = row[UNTIL]
        if not (row[OK] and until is not None and now_utc < until):    # entitled
            continue
        existing = by_sub.get(row[ID])
        if existing is not None:
            if existing[S_STATUS] != destroyed:
                continue
            if existing[S_HOLD]:
                label = _label(existing)
                result.held.append({"code": "operator_hold",
                                    "reason": f"server {label}: taken down by an operator; not building it "
                                              f"again until `provisioner release {label}`"})
                continue
        if products is not None and row[PRODUCT] not in products:
            result.unconfigured.append(row[ID])
            continue
        result.build.append(subscriptions.subscription(row))

    present = sum(1 for s in live if s[S_SUB] in subs)
    if live and present < policy.min_read_fraction * len(live):
        result.thin_read = (f"the storefront read holds the subscriptions of only {present} of {len(live)} live "
                            f"servers (at least {policy.min_read_fraction:.0%} expected)")
        result.held.append({"code": THIN_READ, "reason": result.thin_read + ": no server is destroyed this pass"})

    candidates: list[tuple[dt.datetime, dt.datetime, ServerState]] = []
    for s in live:
        sub_or_none = subs.get(s[S_SUB])
        email = s[S_EMAIL]
        if sub_or_none is not None and email is not None and (
                sub_or_none[EMAIL] != email or sub_or_none[ACCOUNT] != s[S_ACCOUNT]) and sub_or_none[EMAIL]:
            result.contacts.append(Contact(s[S_ID], sub_or_none[EMAIL], sub_or_none[ACCOUNT]))
        if s[S_PAUSED] or s[S_ACTION] == "destroy":
            continue
        if sub_or_none is not None:
            until = sub_or_none[UNTIL]
            if sub_or_none[OK] and until is not None and now_utc < until and not sub_or_none[ENDS]:
                # entitled, so not ended (most rows: ended_row and entitled_row, inline)
                if s[S_ENDED_SEEN] is not None:
                    result.unended.append(s[S_ID])
                continue
        else:
            result.hold(server_state(s), VANISHED, f"subscription {s[S_SUB]} is not in the storefront; "
                                                   "not destroying without positive evidence")
            continue
        if not ended_row(sub_or_none, now_utc):
            if s[S_ENDED_SEEN] is not None:
                result.unended.append(s[S_ID])
            if not entitled_row(sub_or_none, now_utc):
                unclear = subscriptions.subscription(sub_or_none)
                why = unclear.no_evidence(now)
                if why is not None:
                    result.hold(server_state(s), NO_EVIDENCE, f"subscription {unclear.id}: {why}; not destroying "
                                                              "without positive evidence")
            continue
        ended = subscriptions.subscription(sub_or_none)
        state = server_state(s)
        seen = state.ended_seen_at
        if seen is None:
            result.seen_ended.append(state.id)
            seen = now
        assert ended.paid_through is not None  # ended() requires it
        due = max(ended.paid_through, seen) + policy.destroy_grace
        if now < due:
            result.waiting[state.label] = due
            continue
        candidates.append((due, ended.paid_through, state))

    if result.thin_read:
        for _, _, state in candidates:
            result.hold(state, THIN_READ, "the storefront read looks implausibly thin; not destroying this pass")
        candidates = []

    fleet = len(live) + sum(1 for s in by_sub.values() if s[S_STATUS] == destroyed
                            and s[S_PLANNED_DESTROY] is not None and s[S_PLANNED_DESTROY] > window_start)
    allowed = allowance(policy, fleet)
    result.breaker = {"allowance": allowed, "used": used, "fleet": fleet}
    candidates.sort(key=lambda c: (c[0], c[1], c[2].id))     # oldest evidence goes first
    room = max(0, allowed - used)
    hours = policy.breaker_window.total_seconds() / 3600
    for _, _, state in candidates:
        if state.destroy_approved:
            result.destroy.append(state)
        elif room > 0:
            result.destroy.append(state)
            room -= 1
        else:
            result.hold(state, BREAKER, f"circuit breaker: {used} server(s) destroyed in the last {hours:g} h and "
                                        f"at most {allowed} allowed (fleet of {fleet}); approve with "
                                        "`provisioner destroys approve`")
    result.ended = {state.id: subscriptions.subscription(subs[state.subscription_id]) for state in result.destroy}
    # A server on its way out is not rebuilt first.
    doomed = {state.id for state in result.destroy}
    result.rebuild = [state for state in result.rebuild if state.id not in doomed]
    return result
