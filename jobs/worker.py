"""`provisioner run`: the daemon operators run under systemd.

Two halves (DESIGN.md "The worker has two halves"):

- the **driver** (:mod:`jobs.driver`), on every worker: carries any due row forward as soon
  as it is due, in a bounded pool of ``worker.threads``; one slow server never delays
  another or the next plan;
- the **clock**, on the leader only (APScheduler 3.x ``BackgroundScheduler`` in
  ``worker.timezone``):

=========================  ======================================
job                        when
=========================  ======================================
server_check               every ``worker.tick_seconds``, and within a second or two when
                           another process asks for a pass (a Stripe webhook)
rebuild_daily/weekly/...   00:00 daily / Sunday / the 1st (also marked every tick, so a
                           restart after downtime catches up)
reset_bandwidth_monthly    the 1st, 00:00
sync_bandwidth             every ``worker.bandwidth_sync_minutes``
sweep                      every ``worker.sweep_minutes``
send_outbox                every minute
=========================  ======================================

The leader's driver loop also starts the rebuilds customers asked for as soon as they are
due (within a second of the click). Every job is a plain function that ``provisioner job
NAME`` also runs once, for operators who prefer cron. Shutdown: SIGTERM/SIGINT stop new
work; running steps stop at their next recorded boundary (at most
``worker.shutdown_grace_seconds``); exit 0.
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

from jobs import registry
from jobs.driver import Driver
from jobs.leader import LeaderLock, leader_lock
from jobs.server_check import record_status, server_check
from provisioner import db, operations, planning, sdnotify, wiring
from provisioner.lifecycle import Lifecycle
from provisioner.wiring import App

log = logging.getLogger("provisioner.worker")

LEADERSHIP_CHECK_SECONDS = 5


class Worker:
    def __init__(self, app: App, lc: Lifecycle | None = None, lock: LeaderLock | None = None) -> None:
        self.app = app
        self.lc = lc or wiring.lifecycle(app)
        self.lock = lock or leader_lock(app.engine, app.settings.worker.lock_file)
        self.stop = threading.Event()
        self.exit_code = 0
        self.leader = False
        w = app.settings.worker
        self.driver = Driver(self.lc, threads=w.threads, on_loop=self._on_driver_loop)
        self.scheduler = BackgroundScheduler(
            timezone=w.timezone,
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 3600})
        self.scheduler.add_listener(self._job_failed, EVENT_JOB_ERROR)
        self._planning = threading.Lock()
        self._last_plan_started = dt.datetime.min.replace(tzinfo=dt.UTC)
        # APScheduler says "Running job …" at INFO for every run: the journal wants our lines.
        logging.getLogger("apscheduler").setLevel(logging.WARNING)

    # --- the clock's jobs ------------------------------------------------------------------------

    def tick(self) -> None:
        """The planning pass (leader only); the driver carries out what it records."""
        if self.stop.is_set() or not self.leader:
            return
        if not self._planning.acquire(blocking=False):
            return
        try:
            self._last_plan_started = self.app.clock()
            report = server_check(self.app, self.lc, still_leader=self.lock.held)
            if report.lost_leadership:
                self._lost_leadership()
        finally:
            self._planning.release()
        self.driver.wake()
        sdnotify.notify("WATCHDOG=1")

    def _on_driver_loop(self, now: dt.datetime) -> None:
        """Every driver loop on the leader: requests that must not wait for the next tick."""
        if not self.leader or self.stop.is_set():
            return
        if operations.start_requested_rebuilds(self.lc, now):
            self.driver.wake()
        if not self._planning.locked() and planning.requested_since(self.app.sessions, self._last_plan_started):
            self.scheduler.modify_job("server_check", next_run_time=dt.datetime.now(dt.UTC))

    def _leader_only(self, name: str, func: Callable[[], Any]) -> Callable[[], None]:
        def run() -> None:
            if self.leader and not self.stop.is_set():
                result = func()
                record_status(self.app, f"job:{name}", {"at": self.app.clock().isoformat(),
                                                        "result": registry.summary(name, result)})
        run.__name__ = run.__qualname__ = name
        return run

    def check_leadership(self) -> None:
        if self.leader:
            if not self.lock.held():
                self._lost_leadership()
        elif self.lock.acquire():
            self.leader = True
            log.info("this worker is now the leader (clock and planner)")
            self.driver.wake()
        sdnotify.notify("WATCHDOG=1")

    def _lost_leadership(self) -> None:
        log.error("leader lock lost: stopping all side effects and exiting")
        self.leader = False
        self.exit_code = 1
        self.lc.stopping.set()
        self.stop.set()

    def _job_failed(self, event: JobExecutionEvent) -> None:
        log.error("job %s failed: %s: %s", event.job_id, type(event.exception).__name__, event.exception)

    # --- running ---------------------------------------------------------------------------------

    def start(self) -> None:
        db.upgrade_if_needed(self.app.engine)
        self.check_leadership()
        w = self.app.settings.worker
        s = self.scheduler
        now = dt.datetime.now(dt.UTC)
        s.add_job(self.check_leadership, "interval", seconds=LEADERSHIP_CHECK_SECONDS, id="leadership",
                  name="leadership")
        s.add_job(self.tick, "interval", seconds=w.tick_seconds, id="server_check", name="server_check",
                  next_run_time=now)
        for name, trigger in registry.CLOCK.items():
            func = registry.job(self.app, name, self.lc)
            s.add_job(self._leader_only(name, func), trigger=trigger(w), id=name, name=name)
        s.start()
        self.driver.start()
        sdnotify.notify("READY=1")
        log.info("worker started (leader=%s, tick every %ss, %d threads)", self.leader, w.tick_seconds, w.threads)

    def run_forever(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop.set())
        self.start()
        # Timed waits: the main thread must get back to the interpreter to run signal handlers.
        while not self.stop.wait(0.5):
            pass
        self.shutdown()
        return self.exit_code

    def shutdown(self) -> None:
        sdnotify.notify("STOPPING=1")
        log.info("stopping: no new work; running steps finish their current step")
        self.lc.stopping.set()
        grace = self.app.settings.worker.shutdown_grace_seconds
        self.scheduler.shutdown(wait=False)
        if not self.driver.stop(grace):
            log.warning("shutdown: steps still running after %ss; they resume on restart", grace)
        self.lock.release()
        log.info("worker stopped")
