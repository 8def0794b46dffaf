"""Every job by name: what ``provisioner job NAME`` runs once and the worker runs on a clock."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from zoneinfo import ZoneInfo

from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from provisioner.app import App
from provisioner.config_schema import WorkerSettings
from provisioner.lifecycle import Lifecycle

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

NAMES = ("server_check", *CLOCK)


def job(app: App, name: str, lc: Lifecycle) -> Callable[[], Any]:
    """The callable for one job, bound to this app."""
    if name == "server_check":
        from jobs.server_check import server_check

        return lambda: server_check(app, lc, leader=True)
    if name in ("rebuild_daily", "rebuild_weekly", "rebuild_monthly"):
        def rebuild() -> Any:
            from jobs import schedules

            mark = getattr(schedules, name)
            w = app.settings.worker
            with app.sessions() as s:
                marked = mark(s, app.clock(), spread_minutes=w.rebuild_spread_minutes, tz=ZoneInfo(w.timezone))
                s.commit()
            return marked
        return rebuild
    if name in ("reset_bandwidth_monthly", "sync_bandwidth"):
        def bw() -> Any:
            from jobs import bandwidth

            with app.sessions() as s:
                if name == "sync_bandwidth":
                    result = bandwidth.sync_bandwidth(s, lc.ctx.vultr, app.clock(), app.settings.products,
                                                      on_event=_notifier())
                else:
                    result = bandwidth.reset_bandwidth_monthly(s, lc.ctx.vultr, app.clock(),
                                                               products=app.settings.products, on_event=_notifier())
                s.commit()
            return result
        return bw
    if name == "sweep":
        def sw() -> Any:
            from jobs.sweep import sweep

            with app.sessions() as s:
                result = sweep(s, lc.ctx.vultr, lc.ctx.dns, app.settings, app.clock())
                s.commit()
            return result
        return sw
    if name == "send_outbox":
        def send() -> Any:
            try:
                from provisioner.outbox import send_pending
            except ImportError:
                return None
            return send_pending(app, app.clock())
        return send
    raise KeyError(name)


def _notifier() -> Any:
    try:
        from provisioner import notify
    except ImportError:
        return None

    def on_event(session: Any, server: Any, kind: str, context: dict[str, Any]) -> None:
        notify.enqueue(session, kind, server=server, context=context,
                       dedupe_key=f"{kind}:{server.id}:{context.get('month', '')}")
    return on_event
