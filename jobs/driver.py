"""The driver: carries every due row forward as soon as it is due, and never waits for the
slowest server.

One long-lived thread per worker (leader and followers alike) keeps a bounded pool of
``worker.threads`` busy: it asks the database which rows are due (an action, the next
attempt's time passed, no live lease: one indexed query), hands each to a free pool thread
(:meth:`provisioner.lifecycle.Lifecycle.advance`, which claims the row by compare-and-set
and runs steps until one must wait), and sleeps until the soonest waiting row is due, a
thread comes free, someone wakes it, or ``IDLE_POLL_SECONDS`` (a quarter second: four indexed
queries a second) passed, whichever is first.

So a 15-minute install occupies one thread and nothing else: boot polls of other servers
run every ``lifecycle.poll_seconds``, new work starts within a second of being recorded
(the planner wakes the driver in-process; other processes' requests are seen by the
once-a-second poll), and a row whose worker died is taken over once its lease ends.

On the leader, the loop also starts the rebuilds customers asked for whose time has come
and asks for a planning pass when another process requested one (``on_loop``), at most once
per ``IDLE_POLL_SECONDS`` however often finished steps wake it.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor

from sqlalchemy.exc import SQLAlchemyError

from provisioner import operations
from provisioner.lifecycle import Lifecycle, Outcome

log = logging.getLogger(__name__)

IDLE_POLL_SECONDS = 0.25     # how often an idle driver looks for work recorded by other processes
MIN_SLEEP_SECONDS = 0.02
# Passes come at most this often, however many threads come free meanwhile: each is two or three
# queries, and a burst of 100 servers woke the loop over a thousand times (one wake per finished
# step, a pass each), which took more of the worker's one core than the servers' own steps. The
# threads freed within one gap are refilled by one query.
MIN_PASS_GAP_SECONDS = 0.05
# A row that could not be claimed (another worker holds it) or whose advance blew up before
# anything was recorded is left alone this long, so it is never retried in a hot loop.
COOL_OFF_SECONDS = 2.0


class Driver:
    def __init__(self, lc: Lifecycle, *, threads: int, idle_poll: float = IDLE_POLL_SECONDS,
                 on_loop: Callable[[dt.datetime], None] | None = None,
                 can_work: Callable[[], bool] = lambda: True,
                 on_database_error: Callable[[SQLAlchemyError], None] | None = None,
                 only: Iterable[int] | None = None) -> None:
        self.lc = lc
        self.only = None if only is None else set(only)    # drive these rows alone (None: every due row)
        self.outcomes: dict[int, Outcome] = {}              # each row's last outcome
        self.threads = max(1, threads)
        self.idle_poll = idle_poll
        self.on_loop = on_loop
        self.can_work = can_work                  # False while the database is away: no rows are taken
        self.on_database_error = on_database_error
        self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="server")
        self._running: dict[int, Future[Outcome]] = {}
        self._cool: dict[int, float] = {}    # row id -> monotonic time before which it is skipped
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors = 0                       # consecutive failed polls (the database is away)

    # --- control -------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="driver", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Look for due rows now (new work was just recorded)."""
        self._wake.set()

    def stop(self, grace: float) -> bool:
        """Stop taking rows; wait up to ``grace`` seconds (in all) for running steps. True if all ended."""
        deadline = time.monotonic() + grace
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=max(0.5, deadline - time.monotonic()))
        with self._lock:
            futures = list(self._running.values())
        for f in futures:
            try:
                f.result(timeout=max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                break
            except Exception:  # noqa: BLE001, S110 - already logged by _advance
                pass
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            return not self._running

    @property
    def busy(self) -> int:
        with self._lock:
            return len(self._running)

    # --- the loop ------------------------------------------------------------------------------

    def _loop(self) -> None:
        last_pass = last_on_loop = float("-inf")
        while not self._stop.is_set():
            timeout = self.idle_poll
            gap = last_pass + MIN_PASS_GAP_SECONDS - time.monotonic()
            if gap > 0 and self._stop.wait(gap):
                break
            last_pass = time.monotonic()
            try:
                if self.can_work():
                    now = self.lc.clock()
                    # the leader's own checks (requests of customers and other processes) keep
                    # their idle pace under load too: not once per finished step
                    if self.on_loop is not None and last_pass - last_on_loop >= self.idle_poll:
                        last_on_loop = last_pass
                        self.on_loop(now)
                    self.fill(now)
                    timeout = self._sleep_for(now)
                self.errors = 0
            except SQLAlchemyError as exc:
                self.errors += 1
                if self.on_database_error is not None:
                    self.on_database_error(exc)
                else:
                    log.warning("driver: the database did not answer (%s); trying again", type(exc).__name__)
            except Exception:  # noqa: BLE001 - the loop must outlive a bug in one pass; it is logged
                self.errors += 1
                log.exception("driver: unexpected error; trying again")
            self._wake.wait(timeout)
            self._wake.clear()

    def fill(self, now: dt.datetime) -> int:
        """Hand due rows to free threads; return how many were started."""
        with self._lock:
            free = self.threads - len(self._running)
            mono = time.monotonic()
            self._cool = {rid: until for rid, until in self._cool.items() if until > mono}
            busy = set(self._running) | set(self._cool)
        if free <= 0 or self._stop.is_set():
            return 0
        if self.only is None:
            ids = operations.due_rows(self.lc.ctx.sessions, now, limit=free, exclude=busy)
        else:
            ids = [r for r in operations.due_rows(self.lc.ctx.sessions, now, exclude=busy) if r in self.only][:free]
        started: list[tuple[int, Future[Outcome]]] = []
        with self._lock:
            for rid in ids:
                if rid not in self._running:
                    future = self._pool.submit(self._advance, rid)
                    self._running[rid] = future
                    started.append((rid, future))
        # Outside the lock: a step that has already finished runs its callback here, in this
        # thread, and the callback takes the lock (held here, it froze the driver for good).
        for rid, future in started:
            future.add_done_callback(self._when_done(rid))
        return len(ids)

    def _advance(self, rid: int) -> Outcome:
        try:
            outcome = self.lc.advance(rid)
        except SQLAlchemyError as exc:   # the database went away mid-step: the row resumes from its record
            if self.on_database_error is not None:
                self.on_database_error(exc)
            else:
                log.warning("server #%s: the database did not answer (%s)", rid, type(exc).__name__)
            outcome = Outcome.FAILED
            self._cool_off(rid)
        except Exception:  # noqa: BLE001 - one server's bug must not stop the others; it is logged
            log.exception("server #%s: unexpected error while advancing", rid)
            outcome = Outcome.FAILED
            self._cool_off(rid)
        if outcome in (Outcome.BUSY, Outcome.LOST):
            self._cool_off(rid)
        self.outcomes[rid] = outcome
        return outcome

    def _cool_off(self, rid: int) -> None:
        with self._lock:
            self._cool[rid] = time.monotonic() + COOL_OFF_SECONDS

    def _when_done(self, rid: int) -> Callable[[Future[Outcome]], None]:
        return lambda _future: self._done(rid)

    def _done(self, rid: int) -> None:
        with self._lock:
            self._running.pop(rid, None)
        self._wake.set()    # a thread came free: there may be more due rows

    def _sleep_for(self, now: dt.datetime) -> float:
        with self._lock:
            if len(self._running) >= self.threads:
                return self.idle_poll        # woken by _done as soon as a thread frees up
            skip = set(self._running) | set(self._cool)
        soonest = operations.next_due_at(self.lc.ctx.sessions, now, exclude=skip)
        if soonest is None:
            return self.idle_poll
        return min(self.idle_poll, max(MIN_SLEEP_SECONDS, (soonest - now).total_seconds()))


def drive_until_idle(lc: Lifecycle, ids: Iterable[int] | None = None, timeout: float = 300.0,
                     threads: int = 8) -> dict[int, Outcome]:
    """Drive the rows ``ids`` (None: every row with an action) with a :class:`Driver` of its own
    until each is done or needs a human, or ``timeout`` passed: what the CLI's ``--wait``, the
    benchmarks and the tests use, carried exactly as the worker carries rows. After the timeout
    nothing new starts; the call returns once the running steps stopped. Each row's last outcome."""
    watched = None if ids is None else set(ids)
    poll = min(IDLE_POLL_SECONDS, lc.ctx.settings.lifecycle.poll_seconds)
    driver = Driver(lc, threads=threads, idle_poll=poll, only=watched)
    deadline = time.monotonic() + timeout
    driver.start()
    try:
        while time.monotonic() < deadline and (driver.busy or operations.pending(lc, watched)):
            time.sleep(poll)
    finally:
        driver.stop(grace=timeout)
    return driver.outcomes
