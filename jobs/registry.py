"""Every job by name: what ``provisioner job NAME`` runs once and the worker runs on a clock.

Each job is a callable returning a report with a one-line ``summary()`` (what the log,
``provisioner job`` and ``provisioner status`` show).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from zoneinfo import ZoneInfo

from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from jobs import bandwidth, schedules, sweep
from jobs.catalog import CLOCK_JOBS, NAMES
from provisioner import notify
from provisioner.lifecycle import Lifecycle
from provisioner.notify import outbox
from provisioner.settings.schema import Settings, WorkerSettings
from provisioner.wiring import App

__all__ = ["CLOCK", "NAMES", "job", "summary"]

Trigger = Callable[[WorkerSettings], Any]

# Midnight New York: never inside a DST change (those happen at 02:00), so each fires once a day.
CLOCK: dict[str, Trigger] = {
    "rebuild_daily": lambda w: CronTrigger(hour=0, minute=0, timezone=w.timezone),
    "rebuild_weekly": lambda w: CronTrigger(day_of_week="sun", hour=0, minute=0, timezone=w.timezone),
    "rebuild_monthly": lambda w: CronTrigger(day=1, hour=0, minute=0, timezone=w.timezone),
    "reset_bandwidth_monthly": lambda w: CronTrigger(day=1, hour=0, minute=0, second=30, timezone=w.timezone),
    "sync_bandwidth": lambda w: IntervalTrigger(minutes=w.bandwidth_sync_minutes, timezone=w.timezone),
    "sweep": lambda w: IntervalTrigger(minutes=w.sweep_minutes, timezone=w.timezone),
    "send_outbox": lambda w: IntervalTrigger(seconds=60, timezone=w.timezone),
}
assert tuple(CLOCK) == CLOCK_JOBS, "jobs.catalog and the triggers must name the same jobs"


def job(app: App, name: str, lc: Lifecycle) -> Callable[[], Any]:
    """The callable for one job, bound to this app."""
    if name == "server_check":
        from jobs.server_check import server_check

        return lambda: server_check(app, lc)
    if name in ("rebuild_daily", "rebuild_weekly", "rebuild_monthly"):
        def rebuild() -> schedules.MarkReport:
            w = app.settings.worker
            with app.sessions() as s:
                marked = schedules.mark_due_rebuilds(s, app.clock(), schedules=(name.removeprefix("rebuild_"),),
                                                     spread_minutes=w.rebuild_spread_minutes,
                                                     tz=ZoneInfo(w.timezone))
                s.commit()
            return schedules.MarkReport(marked)
        return rebuild
    if name == "sync_bandwidth":
        def sync() -> bandwidth.BandwidthReport:
            pace = bandwidth.SyncPace.for_period(app.settings.vultr.requests_per_second,
                                                 app.settings.worker.bandwidth_sync_minutes * 60)
            return bandwidth.sync_bandwidth_paced(app.sessions, lc.ctx.vultr, app.clock(), app.settings.products,
                                                  pace, on_event=_notifier(app.settings), stop=lc.stopping)
        return sync
    if name == "reset_bandwidth_monthly":
        def reset() -> bandwidth.BandwidthReport:
            with app.sessions() as s:
                return bandwidth.reset_bandwidth_monthly(s, lc.ctx.vultr, app.clock(), products=app.settings.products,
                                                         on_event=_notifier(app.settings))
        return reset
    if name == "sweep":
        def sw() -> sweep.SweepReport:
            from provisioner.wiring import sweep_adapters

            vultr, dns = sweep_adapters(app, lc.ctx.vultr, lc.ctx.dns)
            with app.sessions() as s:
                return sweep.sweep(s, vultr, dns, app.settings, app.clock())
        return sw
    if name == "send_outbox":
        return lambda: outbox.send_pending(app.sessions, app.settings.notify, app.clock())
    raise KeyError(name)


def summary(name: str, result: Any) -> str:
    """``"<name>: <what it did>"`` for the log, ``provisioner job`` and ``provisioner status``."""
    return f"{name}: {result.summary()}"


def _notifier(settings: Settings) -> bandwidth.OnEvent:
    def on_event(session: Any, server: Any, kind: str, context: dict[str, Any]) -> None:
        notify.enqueue(session, kind, settings=settings, server=server, context=context,
                       dedupe_key=f"{kind}:{server.id}:{context.get('month', '')}")
    return on_event
