"""The planning tick (the seed's server_check.py): read the storefront, plan, start the plan.

``server_check`` is one unit of work that tests call directly; the worker runs it on the
leader every ``worker.tick_seconds`` and whenever a pass is asked for. It only *records*
intent on rows (one commit each) and then wakes the driver (:mod:`jobs.driver`), which
carries every due row forward in its own pool: a slow install never delays a plan.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from jobs.schedules import mark_due_rebuilds
from provisioner import operations
from provisioner.lifecycle import Lifecycle
from provisioner.models import WorkerStatus
from provisioner.reconcile import Plan
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
    result, error = app.plan_once()
    report.plan, report.storefront_error = result, error
    if error:
        log.error("storefront could not be read: %s", error)
    if not still_leader():
        report.lost_leadership = True
        log.error("leader lock lost during the planning pass; the plan is not recorded")
        return report
    applied = operations.start_plan(lc, result, app.destroy_cross_check())
    report.started, report.refused = applied.started, applied.refused
    for line in applied.refused:
        log.warning("plan: %s", line)
    for held in result.held:
        # An operator's hold is deliberate, not a warning every tick (`provisioner check` lists it).
        log.log(logging.DEBUG if held.get("kind") == "operator_hold" else logging.WARNING, "plan held: %s",
                held["reason"])
    report.seconds = time.monotonic() - t0
    record_status(app, "last_tick", {"at": now.isoformat(), "seconds": round(report.seconds, 3),
                                     "plan": result.to_json(), "started": report.started})
    if not error:
        record_status(app, "storefront_ok", {"at": now.isoformat()})
    if report.did_work:
        log.info("tick: %s", report.summary())
    return report


def record_status(app: App, name: str, value: dict[str, object]) -> None:
    with app.sessions() as s:
        row = s.get(WorkerStatus, name)
        text = json.dumps(value, default=str)
        if row is None:
            s.add(WorkerStatus(name=name, value=text, updated_at=app.clock()))
        else:
            row.value, row.updated_at = text, app.clock()
        s.commit()
