"""The reconcile tick (the seed's server_check.py): read the storefront, plan, carry out.

``server_check`` is one unit of work that tests call directly; the worker's scheduler
calls it every ``worker.tick_seconds`` (never two at once: ``max_instances=1``). The leader
plans; followers only carry out rows that are due (claims make double work impossible).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from dataclasses import dataclass, field

from provisioner import operations
from provisioner.app import App
from provisioner.lifecycle import Lifecycle, Outcome
from provisioner.models import WorkerStatus
from provisioner.reconcile import Plan

log = logging.getLogger(__name__)


@dataclass
class TickReport:
    started_at: dt.datetime
    seconds: float = 0.0
    plan: Plan | None = None
    storefront_error: str | None = None
    outcomes: dict[int, Outcome] = field(default_factory=dict)
    scheduled: int = 0

    @property
    def did_work(self) -> bool:
        return bool(self.outcomes) or bool(self.plan and not self.plan.empty)


def server_check(app: App, lc: Lifecycle, *, leader: bool = True) -> TickReport:
    t0 = time.monotonic()
    now = app.clock()
    report = TickReport(started_at=now)
    ids: list[int] = []
    if leader:
        report.scheduled = _mark_schedules(app, now)
        result, error = app.plan_once()
        report.plan, report.storefront_error = result, error
        if error:
            log.error("storefront could not be read: %s", error)
        applied = operations.start_plan(lc, result, app.destroy_cross_check())
        for line in applied.refused:
            log.warning("plan: %s", line)
        for held in result.held:
            log.warning("plan held: %s", held["reason"])
        ids += [s.id for s in result.resume]
    ids += operations.due_rows(lc, app.clock())
    report.outcomes = operations.drive(lc, ids, threads=app.settings.worker.threads)
    report.seconds = time.monotonic() - t0
    record_status(app, "last_tick", {"at": now.isoformat(), "seconds": round(report.seconds, 3),
                                     "leader": leader, "worked_on": len(report.outcomes),
                                     "plan": report.plan.to_json() if report.plan else None})
    if leader and not report.storefront_error:
        record_status(app, "storefront_ok", {"at": now.isoformat()})
    if report.did_work:
        log.info("tick: %d server(s) worked on in %.2fs", len(report.outcomes), report.seconds)
    return report


def _mark_schedules(app: App, now: dt.datetime) -> int:
    try:
        from jobs.schedules import mark_due_rebuilds
    except ImportError:  # pragma: no cover - the schedules module ships with the worker
        return 0
    from zoneinfo import ZoneInfo

    w = app.settings.worker
    with app.sessions() as s:
        marked = mark_due_rebuilds(s, now, spread_minutes=w.rebuild_spread_minutes, tz=ZoneInfo(w.timezone))
        s.commit()
    return len(marked)


def record_status(app: App, name: str, value: dict[str, object]) -> None:
    with app.sessions() as s:
        row = s.get(WorkerStatus, name)
        text = json.dumps(value, default=str)
        if row is None:
            s.add(WorkerStatus(name=name, value=text, updated_at=app.clock()))
        else:
            row.value, row.updated_at = text, app.clock()
        s.commit()
