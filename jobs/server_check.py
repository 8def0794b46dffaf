"""The planning tick (the seed's server_check.py): read the storefront, plan, start the plan.

``server_check`` is one unit of work that tests call directly; the worker runs it on the
leader every ``worker.tick_seconds`` and whenever a pass is asked for. It only *records*
intent on rows (one commit each) and then wakes the driver (:mod:`jobs.driver`), which
carries every due row forward in its own pool: a slow install never delays a plan.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from sqlalchemy.exc import SQLAlchemyError

from jobs.records import record_once, record_status
from jobs.schedules import mark_due_rebuilds
from provisioner import holds, operations
from provisioner.lifecycle import Lifecycle
from provisioner.reconcile import Plan
from provisioner.subscriptions import SubscriptionRows
from provisioner.wiring import App

log = logging.getLogger(__name__)


@dataclass
class TickReport:
    started_at: dt.datetime
    seconds: float = 0.0
    plan: Plan | None = None
    storefront_error: str | None = None
    started: dict[str, list[str]] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)
    scheduled: int = 0
    lost_leadership: bool = False

    @property
    def did_work(self) -> bool:
        return any(self.started.values()) or bool(self.scheduled)

    def summary(self) -> str:
        if self.lost_leadership:
            return "not the leader any more; nothing recorded"
        if self.storefront_error:
            return f"storefront could not be read ({self.storefront_error}); nothing built or destroyed"
        counts = ", ".join(f"{len(v)} {k}" for k, v in self.started.items() if v) or "nothing to start"
        held = f"; {len(self.plan.held)} held" if self.plan and self.plan.held else ""
        return f"{counts}{held} ({self.seconds:.2f}s)"


def server_check(app: App, lc: Lifecycle, *, still_leader: Callable[[], bool] = lambda: True) -> TickReport:
    """One planning pass on the leader. ``still_leader`` is asked right before anything is
    recorded: a worker that lost its lock meanwhile records nothing."""
    t0 = time.monotonic()
    now = app.clock()
    report = TickReport(started_at=now)
    w = app.settings.worker
    with app.sessions() as s:
        report.scheduled = len(mark_due_rebuilds(s, now, spread_minutes=w.rebuild_spread_minutes,
                                                 tz=ZoneInfo(w.timezone)))
        s.commit()
    result, error = app.plan_once(on_read=lambda subs: keep_standing(app, subs, now))
    report.plan, report.storefront_error = result, error
    if error:
        log.error("storefront could not be read: %s", error)
    if not still_leader():
        return _lost(report)
    applied = operations.start_plan(lc, result, app.destroy_cross_check(), still_leader=still_leader)
    if applied.lost_leadership:
        return _lost(report)
    report.started, report.refused = applied.started, applied.refused
    gained = operations.start_protocol_gains(lc)
    if gained:
        log.info("installing a protocol their product gained on %s", ", ".join(gained))
    for line in applied.refused:
        log.warning("plan: %s", line)
    if not error:
        with app.sessions() as s:
            recorded = holds.record_pass(s, result, now, app.settings, extra_holds=applied.held)
            if not still_leader():
                s.rollback()
                return _lost(report)
            s.commit()
        for h in recorded.new_holds:
            log.warning("plan held: server %s (subscription %s): %s", h.server, h.subscription_id, h.reason)
    report.seconds = time.monotonic() - t0
    record_status(app, "last_tick", {
        "at": now.isoformat(), "seconds": round(report.seconds, 3), "plan": result.to_json(),
        "started": report.started, "storefront_error": error, "thin_read": result.thin_read,
        "breaker": result.breaker})
    if not error:
        record_status(app, "storefront_ok", {"at": now.isoformat()})
    record_once(app, "first_tick", {"at": now.isoformat()})
    if report.did_work:
        log.info("tick: %s", report.summary())
    return report


def keep_standing(app: App, subs: SubscriptionRows, now: dt.datetime) -> None:
    """What the dashboard shows of each subscription (renews, ends, in grace); never stops the tick."""
    try:
        with app.sessions() as s:
            app.standing.record(s, subs, now)
    except SQLAlchemyError as exc:
        log.warning("could not keep the subscriptions' standing for the dashboard: %s", type(exc).__name__)


def _lost(report: TickReport) -> TickReport:
    report.lost_leadership = True
    log.error("leader lock lost during the planning pass; the plan is not recorded")
    return report
