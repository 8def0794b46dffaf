"""Every job by name: what ``provisioner job NAME`` runs once and the worker runs on a clock.

Each job is a callable returning a report with a one-line ``summary()`` (what the log,
``provisioner job`` and ``provisioner status`` show).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any
from zoneinfo import ZoneInfo

from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from jobs import bandwidth, identities, privacy, schedules, sweep
from jobs.catalog import CLOCK_JOBS, NAMES
from jobs.records import record_status
from provisioner import notify
from provisioner.lifecycle import Lifecycle
from provisioner.notify import outbox
from provisioner.settings.schema import Settings, WorkerSettings
from provisioner.wiring import App

__all__ = ["CLOCK", "INTERVAL_JOBS", "NAMES", "job", "period", "run_and_record", "succeeded", "summary"]

Trigger = Callable[[WorkerSettings], Any]

# Midnight New York: never inside a DST change (those happen at 02:00), so each fires once a day.
CLOCK: dict[str, Trigger] = {
    "rebuild_daily": lambda w: CronTrigger(hour=0, minute=0, timezone=w.timezone),
    "rebuild_weekly": lambda w: CronTrigger(day_of_week="sun", hour=0, minute=0, timezone=w.timezone),
    "rebuild_monthly": lambda w: CronTrigger(day=1, hour=0, minute=0, timezone=w.timezone),
    "reset_bandwidth_monthly": lambda w: CronTrigger(day=1, hour=0, minute=0, second=30, timezone=w.timezone),
    "sync_bandwidth": lambda w: IntervalTrigger(seconds=period("sync_bandwidth", w).total_seconds(),
                                                timezone=w.timezone),
    "sweep": lambda w: IntervalTrigger(seconds=period("sweep", w).total_seconds(), timezone=w.timezone),
    "send_outbox": lambda w: IntervalTrigger(seconds=period("send_outbox", w).total_seconds(), timezone=w.timezone),
    "purge_ip_history": lambda w: CronTrigger(hour=3, minute=15, timezone=w.timezone),
    "expire_identities": lambda w: IntervalTrigger(seconds=period("expire_identities", w).total_seconds(),
                                                   timezone=w.timezone),
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
        mailer = app.calls.observe("smtp", outbox.mailer_for(app.settings.notify))
        return lambda: outbox.send_pending(app.sessions, app.settings.notify, app.clock(), mailer=mailer)
    if name == "purge_ip_history":
        return lambda: privacy.purge_ip_history(app)
    if name == "expire_identities":
        def expire() -> identities.IdentityReport:
            with app.sessions() as s:
                return identities.expire_identities(s, app.clock())
        return expire
    raise KeyError(name)


def summary(name: str, result: Any) -> str:
    """``"<name>: <what it did>"`` for the log, ``provisioner job`` and ``provisioner status``."""
    return f"{name}: {result.summary()}"


def succeeded(result: Any) -> bool:
    """Whether a run did its whole job: a sweep that could not list everything, or a sync or
    delete that a provider refused, did not (the outbox's own failures are the outbox check's)."""
    if getattr(result, "complete", True) is False or int(getattr(result, "delete_failed", 0)):
        return False
    return not (isinstance(result, bandwidth.BandwidthReport) and result.failed)


def run_and_record(app: App, name: str, func: Callable[[], Any]) -> Any:
    """Run one job and record how it went in ``provisioner_worker_status`` (``job:<name>``),
    whoever runs it: the worker's clock or ``provisioner job NAME`` from cron."""
    started = app.clock()
    try:
        result = func()
    except Exception as exc:
        first = (str(exc).splitlines() or [""])[0][:300]
        record_status(app, f"job:{name}", {"at": started.isoformat(), "ok": False,
                                           "result": f"{name}: failed: {type(exc).__name__}: {first}"})
        raise
    record_status(app, f"job:{name}", {"at": started.isoformat(), "ok": succeeded(result),
                                       "result": summary(name, result)})
    return result


def period(name: str, w: WorkerSettings) -> dt.timedelta:
    """How often a clock job runs (what `status` compares its last run with)."""
    return {"rebuild_daily": dt.timedelta(days=1), "rebuild_weekly": dt.timedelta(days=7),
            "rebuild_monthly": dt.timedelta(days=31), "reset_bandwidth_monthly": dt.timedelta(days=31),
            "sync_bandwidth": dt.timedelta(minutes=w.bandwidth_sync_minutes),
            "sweep": dt.timedelta(minutes=w.sweep_minutes), "send_outbox": dt.timedelta(minutes=1),
            "purge_ip_history": dt.timedelta(days=1), "expire_identities": dt.timedelta(hours=1)}[name]


INTERVAL_JOBS = ("sync_bandwidth", "sweep", "send_outbox", "expire_identities")


def _notifier(settings: Settings) -> bandwidth.OnEvent:
    def on_event(session: Any, server: Any, kind: str, context: dict[str, Any]) -> None:
        notify.enqueue(session, kind, settings=settings, server=server, context=context,
                       dedupe_key=f"{kind}:{server.id}:{context.get('month', '')}")
    return on_event
