"""`provisioner run`: the daemon operators run under systemd.

APScheduler 3.x ``BackgroundScheduler`` in America/New_York (``worker.timezone``):

=========================  ======================================  ============
job                        when                                    who
=========================  ======================================  ============
server_check               every ``worker.tick_seconds``           leader plans; followers carry out due rows
rebuild_daily/weekly/...   00:00 daily / Sunday / the 1st          leader (also marked every tick, so a
                                                                   restart after downtime catches up)
reset_bandwidth_monthly    the 1st, 00:00                          leader
sync_bandwidth             every ``worker.bandwidth_sync_minutes`` leader
sweep                      every ``worker.sweep_minutes``          leader
send_outbox                every minute                            any
=========================  ======================================  ============

Every job is a plain function of (app, …) that ``provisioner job NAME`` also runs once,
for operators who prefer cron. Shutdown: SIGTERM/SIGINT stop new work; running steps stop
at their next recorded boundary (at most ``worker.shutdown_grace_seconds``), exit 0.
"""

from __future__ import annotations

import datetime as dt
import logging
import signal
import threading
from collections.abc import Callable
from typing import Any

from apscheduler.events import EVENT_JOB_ERROR, JobExecutionEvent
from apscheduler.schedulers.background import BackgroundScheduler

from jobs.leader import LeaderLock, leader_lock
from jobs.server_check import record_status, server_check
from provisioner import db, sdnotify, wiring
from provisioner.app import App
from provisioner.lifecycle import Lifecycle

log = logging.getLogger("provisioner.worker")


class Worker:
    def __init__(self, app: App, lc: Lifecycle | None = None, lock: LeaderLock | None = None) -> None:
        self.app = app
        self.lc = lc or wiring.lifecycle(app)
        self.lock = lock or leader_lock(app.engine, app.settings.worker.lock_file)
        self.stop = threading.Event()
        self.exit_code = 0
        self.leader = False
        w = app.settings.worker
        self.scheduler = BackgroundScheduler(
            timezone=w.timezone,
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 3600})
        self.scheduler.add_listener(self._job_failed, EVENT_JOB_ERROR)

    # --- jobs -----------------------------------------------------------------------------------

    def tick(self) -> None:
        if self.stop.is_set():
            return
        server_check(self.app, self.lc, leader=self.leader)
        sdnotify.notify("WATCHDOG=1")

    def _leader_only(self, name: str, func: Callable[[], Any]) -> Callable[[], None]:
        def run() -> None:
            if self.leader and not self.stop.is_set():
                result = func()
                record_status(self.app, f"job:{name}", {"at": self.app.clock().isoformat(), "result": repr(result)})
        run.__name__ = name
        return run

    def check_leadership(self) -> None:
        if self.leader:
            if not self.lock.held():
                log.error("leader lock lost: stopping all side effects and exiting")
                self.exit_code = 1
                self.lc.stopping.set()
                self.stop.set()
        elif self.lock.acquire():
            self.leader = True
            log.info("this worker is now the leader (clock and planner)")
        sdnotify.notify("WATCHDOG=1")

    def _job_failed(self, event: JobExecutionEvent) -> None:
        log.error("job %s failed: %s: %s", event.job_id, type(event.exception).__name__, event.exception)

    # --- running --------------------------------------------------------------------------------

    def start(self) -> None:
        from jobs import registry

        db.upgrade(self.app.engine)
        self.check_leadership()
        w = self.app.settings.worker
        s = self.scheduler
        now = dt.datetime.now(dt.UTC)
        s.add_job(self.check_leadership, "interval", seconds=5, id="leadership")
        s.add_job(self.tick, "interval", seconds=w.tick_seconds, id="server_check", next_run_time=now)
        for name, trigger in registry.CLOCK.items():
            func = registry.job(self.app, name, self.lc)
            s.add_job(self._leader_only(name, func), trigger=trigger(w), id=name)
        s.start()
        sdnotify.notify("READY=1")
        log.info("worker started (leader=%s, tick every %ss)", self.leader, w.tick_seconds)

    def run_forever(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop.set())
        self.start()
        self.stop.wait()
        self.shutdown()
        return self.exit_code

    def shutdown(self) -> None:
        sdnotify.notify("STOPPING=1")
        log.info("stopping: no new work; running steps finish their current step")
        self.lc.stopping.set()
        grace = self.app.settings.worker.shutdown_grace_seconds
        done = threading.Event()

        def wait_for_jobs() -> None:
            self.scheduler.shutdown(wait=True)
            done.set()

        threading.Thread(target=wait_for_jobs, daemon=True).start()
        if not done.wait(grace):
            log.warning("shutdown: steps still running after %ss; they resume on restart", grace)
        self.lock.release()
        log.info("worker stopped")
