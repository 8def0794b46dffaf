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
purge_ip_history           03:15 daily (``privacy.ip_history_days``)
=========================  ======================================

The leader's driver loop also starts the rebuilds customers asked for as soon as they are
due (within a second of the click), and the short actions that carry a customer's changes
to their running server (a revoked device's CRL, SSH keys, a restart). Every job is a plain
function that ``provisioner job NAME`` also runs once, for operators who prefer cron. Shutdown: SIGTERM/SIGINT stop new
work; running steps stop at their next recorded boundary (at most
``worker.shutdown_grace_seconds``); exit 0.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from apscheduler.events import EVENT_JOB_ERROR, JobExecutionEvent
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy.exc import SQLAlchemyError

from jobs import records, registry
from jobs.driver import Driver
from jobs.leader import LeaderLock, leader_lock
from jobs.metrics import WorkerMetrics
from jobs.server_check import server_check
from provisioner import db, operations, planning, sdnotify, wiring
from provisioner.lifecycle import Lifecycle
from provisioner.models import WorkerStatus
from provisioner.settings import ConfigError
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
        self.driver = Driver(self.lc, threads=w.threads, on_loop=self._on_driver_loop,
                             can_work=self.database_up, on_database_error=self._database_failed)
        self.metrics = WorkerMetrics(app.sessions, busy=lambda: self.driver.busy)
        self.lc.on_step = self.metrics.step
        app.calls.listeners.append(self.metrics.call)
        self._metrics_server: Any = None
        self.scheduler = BackgroundScheduler(
            timezone=w.timezone,
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 3600})
        self.scheduler.add_listener(self._job_failed, EVENT_JOB_ERROR)
        self._planning = threading.Lock()
        self._last_plan_started = dt.datetime.min.replace(tzinfo=dt.UTC)
        self._storefront_marker: object | None = None
        self._db_down_since: float | None = None     # monotonic; None while the database takes writes
        self._db_lock = threading.Lock()
        # APScheduler says "Running job …" at INFO for every run: the journal wants our lines.
        logging.getLogger("apscheduler").setLevel(logging.WARNING)

    # --- the clock's jobs ------------------------------------------------------------------------

    def tick(self) -> None:
        """The planning pass (leader only); the driver carries out what it records."""
        if self.stop.is_set() or not self.leader or not self.database_up():
            return
        if not self._planning.acquire(blocking=False):
            return
        started = time.monotonic()
        try:
            self._last_plan_started = self.app.clock()
            report = server_check(self.app, self.lc, still_leader=self.lock.held)
            outcome = "lost_leadership" if report.lost_leadership else \
                "storefront_error" if report.storefront_error else "ok"
            self.metrics.tick(outcome, time.monotonic() - started)
            if report.lost_leadership:
                self._lost_leadership()
        except SQLAlchemyError as exc:
            self.metrics.tick("error", time.monotonic() - started)
            self._database_failed(exc)
            return
        finally:
            self._planning.release()
        self.driver.wake()
        sdnotify.notify("WATCHDOG=1")

    def _on_driver_loop(self, now: dt.datetime) -> None:
        """On the leader, every idle poll of the driver: requests that must not wait for the next tick."""
        if not self.leader or self.stop.is_set():
            return
        if operations.start_requested_rebuilds(self.lc, now) + operations.start_customer_changes(self.lc, now):
            self.driver.wake()
        if self._planning.locked():
            return
        marker = self.app.storefront.change_marker()
        arrived = marker is not None and self._storefront_marker is not None and marker != self._storefront_marker
        self._storefront_marker = marker if marker is not None else self._storefront_marker
        if arrived or planning.requested_since(self.app.sessions, self._last_plan_started):
            self.scheduler.modify_job("server_check", next_run_time=dt.datetime.now(dt.UTC))

    def _leader_only(self, name: str, func: Callable[[], Any]) -> Callable[[], None]:
        def run() -> None:
            if not self.leader or self.stop.is_set() or not self.database_up():
                return
            try:
                result = registry.run_and_record(self.app, name, func)
                self.metrics.job(name, "ok" if registry.succeeded(result) else "incomplete")
            except SQLAlchemyError as exc:
                self.metrics.job(name, "error")
                self._database_failed(exc)
            except Exception:  # noqa: BLE001 - recorded as failed (status shows it); the clock goes on
                self.metrics.job(name, "error")
                log.exception("job %s failed", name)
        run.__name__ = run.__qualname__ = name
        return run

    def check_leadership(self) -> None:
        """Every few seconds on every worker: the heartbeat (a write: it notices a read-only or
        lost database), then the leader lock."""
        self._heartbeat()
        if self.leader:
            if not self.lock.held():
                self._lost_leadership()
        elif self.database_up() and self.lock.acquire():
            self.leader = True
            self.metrics.leader.set(1)
            log.info("this worker is now the leader (clock and planner)")
            if self.scheduler.running:
                self._schedule_interval_jobs()
            self.driver.wake()
        sdnotify.notify("WATCHDOG=1")

    def _heartbeat(self) -> None:
        try:
            records.heartbeat(self.app, self.lc.owner, leader=self.leader)
        except SQLAlchemyError as exc:
            self._database_failed(exc)
            return
        self._database_ok()

    # --- the database coming and going -----------------------------------------------------------

    def database_up(self) -> bool:
        return self._db_down_since is None

    def _database_failed(self, exc: SQLAlchemyError) -> None:
        """A write (or a read) failed. Fresh connections next time: a SQLite file opened while it
        was read-only stays read-only on that connection, and a MariaDB that restarted left
        dead ones. Past ``worker.database_outage_seconds`` the worker exits 1 (systemd restarts it)."""
        limit = self.app.settings.worker.database_outage_seconds
        with self._db_lock:
            first = self._db_down_since is None
            if first:
                self._db_down_since = time.monotonic()
            down_for = time.monotonic() - (self._db_down_since or 0.0)
        if first:
            log.error("the database does not take writes (%s); pausing work and reconnecting, for at most %gs",
                      db.reason(exc), limit)
        self.app.engine.dispose()
        if down_for > limit and not self.stop.is_set():
            log.error("the database has not taken writes for %.0fs (%s); exiting so that systemd restarts the "
                      "worker", down_for, db.reason(exc))
            self.exit_code = 1
            self.lc.stopping.set()
            self.stop.set()

    def _database_ok(self) -> None:
        with self._db_lock:
            was_down, self._db_down_since = self._db_down_since, None
        if was_down is not None:
            log.info("the database takes writes again after %.0fs; resuming", time.monotonic() - was_down)
            self.driver.wake()

    def _lost_leadership(self) -> None:
        log.error("leader lock lost: stopping all side effects and exiting")
        self.leader = False
        self.metrics.leader.set(0)
        self.exit_code = 1
        self.lc.stopping.set()
        self.stop.set()

    def _job_failed(self, event: JobExecutionEvent) -> None:
        log.error("job %s failed: %s: %s", event.job_id, type(event.exception).__name__, event.exception)

    # --- running ---------------------------------------------------------------------------------

    def _due_at(self, name: str, now: dt.datetime) -> dt.datetime:
        """When an interval job is next due by its last recorded run (in the database), so a
        worker restarted more often than the interval still runs it on time."""
        try:
            with self.app.sessions() as s:
                row = s.get(WorkerStatus, f"job:{name}")
                last = dt.datetime.fromisoformat(json.loads(row.value)["at"]) if row is not None else None
        except (SQLAlchemyError, ValueError, KeyError, TypeError):
            last = None
        soon = now + dt.timedelta(seconds=INTERVAL_JOB_STAGGER_SECONDS)
        if last is None:
            return soon
        return max(soon, last + registry.period(name, self.app.settings.worker))

    def _schedule_interval_jobs(self) -> None:
        now = dt.datetime.now(dt.UTC)
        for name in registry.INTERVAL_JOBS:
            self.scheduler.modify_job(name, next_run_time=self._due_at(name, now))

    def start(self) -> None:
        db.upgrade_if_needed(self.app.engine)
        w = self.app.settings.worker
        if w.metrics_port:
            try:
                self._metrics_server = self.metrics.serve(w.metrics_listen, w.metrics_port)
            except OSError as exc:
                raise ConfigError(f"worker.metrics_port: cannot listen on {w.metrics_listen}:{w.metrics_port}: "
                                  f"{exc.strerror or exc}") from None
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
            when = {"next_run_time": self._due_at(name, now)} if name in registry.INTERVAL_JOBS else {}
            s.add_job(self._leader_only(name, func), trigger=trigger(w), id=name, name=name, **when)
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
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()  # shutdown() alone leaves the port bound
            self._metrics_server = None
        log.info("worker stopped")


INTERVAL_JOB_STAGGER_SECONDS = 5     # after a start, due jobs wait for the first planning pass
