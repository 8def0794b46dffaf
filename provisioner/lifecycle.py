"""Create, rebuild and destroy as resumable step machines, driven from the database alone.

A server row carries ``action`` (create | rebuild | destroy) and ``step``. :meth:`advance`
claims the row (compare-and-set on ``version`` plus a lease), then runs steps until one
must wait, fails, or the action is done. Around every step::

    event "<action>.<step> started"  → commit        (intent, before the side effect)
    the step's side effect            (idempotent: replaying it after a crash is safe)
    event "<action>.<step> ok" + the ids it produced + the next step → one commit

so a crash at any point replays at most one step, and every replay converges: instances
are adopted by their deterministic label, DNS is upserted, deletes accept "not found".

Failures: a transient error (timeouts, 5xx, 429, SSH unreachable, a step past its
deadline) is retried with capped exponential backoff; the customer sees ``Error`` from
``error_after_attempts`` on, with a human message, and retries continue. A permanent error
(unknown plan or region, a host-key mismatch, a label that is not ours) or too many
attempts stops the row and marks it as needing a human.

Fencing: every write goes through the ORM with ``version`` as its version column, so a
worker whose claim was taken over gets ``StaleDataError`` on its next write and stops.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from provisioner import access, actions, lease, notify
from provisioner.actions import FIRST_STEP, ServerBusy, budget, status_for
from provisioner.cloud.errors import ProviderError
from provisioner.cloud.retry import backoff
from provisioner.cloud.ssh import SSHError
from provisioner.models import Server, Status, utcnow
from provisioner.steps import STEPS, Context, Next, PermanentStepError, Wait
from provisioner.subscriptions import Subscription

__all__ = ["Lifecycle", "Outcome", "ServerBusy"]

log = logging.getLogger(__name__)

# Test-only crash injection: PROVISIONER_CRASH_AT=create.instance kills this process with
# SIGKILL right after that step's side effect and before its result is recorded.
CRASH_AT_ENV = "PROVISIONER_CRASH_AT"


class Outcome(StrEnum):
    DONE = "done"          # nothing left to do for this row
    WAITING = "waiting"    # polled again at next_attempt_at
    FAILED = "failed"      # an error was recorded; retried later or needs a human
    BUSY = "busy"          # another worker holds the row
    LOST = "lost"          # our claim was taken over mid-way; we stopped


@dataclass
class Lifecycle:
    ctx: Context
    owner: str
    clock: Callable[[], dt.datetime] = utcnow
    # Set on shutdown (or lost leadership): running rows stop at their next step boundary.
    stopping: threading.Event = field(default_factory=threading.Event)
    # (action, step, outcome, seconds) after every step run: "ok", "wait", "retry", "needs_human",
    # "error" (a bug); the worker's metrics listen here.
    on_step: Callable[[str, str, str, float], None] | None = None

    # --- starting actions (see provisioner.actions) ----------------------------------------------

    def begin_create(self, session: Session, sub: Subscription, actor: str = "planner") -> Server:
        return actions.begin_create(session, self.ctx.settings, sub, actor=actor, now=self.clock())

    def begin_rebuild(self, session: Session, row: Server, location: str | None, actor: str) -> None:
        actions.begin_rebuild(session, self.ctx.settings, row, location, actor=actor, now=self.clock())

    def begin_destroy(self, session: Session, row: Server, actor: str, reason: str) -> None:
        actions.begin_destroy(session, self.ctx.settings, row, actor=actor, reason=reason, now=self.clock())

    def retry(self, session: Session, row: Server, actor: str) -> None:
        actions.retry(session, self.ctx.settings, row, actor=actor, now=self.clock())

    # --- driving -------------------------------------------------------------------------------

    def advance(self, server_id: int, max_steps: int = 100) -> Outcome:
        with self.ctx.sessions() as session:
            row = self._claim(session, server_id)
            if row is None:
                return Outcome.BUSY
            try:
                return self._run(session, row, max_steps)
            except StaleDataError:
                session.rollback()
                log.warning("server %s: claim lost to another worker; stopping", server_id)
                return Outcome.LOST
            finally:
                self._release(session, server_id)

    def _claim(self, session: Session, server_id: int) -> Server | None:
        now = self.clock()
        row = session.get(Server, server_id)
        if row is None or row.paused:
            return None
        if row.lease_owner not in (None, self.owner) and row.lease_until and row.lease_until > now:
            return None
        row.lease_owner = self.owner
        row.lease_until = now + dt.timedelta(seconds=self.ctx.settings.lifecycle.lease_seconds)
        try:
            session.commit()
        except StaleDataError:
            session.rollback()
            return None
        return row

    def _release(self, session: Session, server_id: int) -> None:
        try:
            row = session.get(Server, server_id)
            if row is not None and row.lease_owner == self.owner:
                row.lease_owner, row.lease_until = None, None
                session.commit()
        except StaleDataError:
            session.rollback()

    def _let_go(self, row: Server) -> None:
        """Release our lease in the commit that ends this advance (a wait, a failure, the action's
        end) rather than in a write of its own afterwards; :meth:`_release` then finds nothing
        to do. Only where no step of this advance runs after that commit."""
        if row.lease_owner == self.owner:
            row.lease_owner, row.lease_until = None, None

    def _run(self, session: Session, row: Server, max_steps: int) -> Outcome:
        entered = False   # this step's "started" is already committed, with the step before's "ok"
        for left in range(max_steps - 1, -1, -1):
            now = self.clock()
            if self.stopping.is_set():
                return Outcome.WAITING
            if not row.action:
                return Outcome.DONE
            if row.needs_human:
                return Outcome.FAILED
            if row.next_attempt_at and row.next_attempt_at > now:
                return Outcome.WAITING
            action, step = row.action, row.step or FIRST_STEP[row.action]
            if row.next_attempt_at is None and not entered:  # entering the step, not polling it again
                self.event(session, row, f"{action}.{step}", "started")
            self._renew_lease(row, now)
            session.commit()   # the intent, and no read transaction held open through the step
            started = time.perf_counter()
            try:
                with lease.heartbeat(self.ctx.sessions, row.id, self.owner,
                                     self.ctx.settings.lifecycle.lease_seconds, self.clock):
                    result = STEPS[action][step](self.ctx, row)
            except Wait as w:
                if row.step_deadline and now >= row.step_deadline:
                    self._fail(session, row, f"{w.reason} did not finish in time", permanent=False)
                    return self._stepped(row, action, step, started, Outcome.FAILED)
                row.next_attempt_at = now + dt.timedelta(seconds=w.seconds)
                self._let_go(row)
                session.commit()
                self._observe(action, step, "wait", started)
                return Outcome.WAITING
            except StaleDataError:
                raise
            except PermanentStepError as exc:
                self._fail(session, row, str(exc), permanent=True)
                return self._stepped(row, action, step, started, Outcome.FAILED)
            except ProviderError as exc:  # transient ones retried with backoff; 4xx, a host-key mismatch…: a human
                where = f"SSH to {row.new_ip or row.server_ip}: " if isinstance(exc, SSHError) else ""
                self._fail(session, row, where + _human(exc), permanent=not exc.transient, retry_after=exc.retry_after)
                return self._stepped(row, action, step, started, Outcome.FAILED)
            except Exception as exc:  # noqa: BLE001 - a bug or an unmapped library error
                # Recorded and backed off like a transient error: unrecorded, the row would be due
                # again at once and retried hot forever, never reaching "needs a human".
                log.exception("server %s sub=%s: unexpected error in %s.%s", row.server_name or row.id,
                              row.subscription_id, action, step)
                session.rollback()  # the step's ids are already committed; drop half-made changes
                self._fail(session, row, f"unexpected {type(exc).__name__} in step {step} (see the worker's log)",
                           permanent=False)
                self._observe(action, step, "error", started)
                return Outcome.FAILED
            maybe_crash(f"{action}.{step}")
            entered = self._advance_to(session, row, action, step, result, goes_on=left > 0)
            self._observe(action, step, "ok", started)
        return Outcome.WAITING

    def _renew_lease(self, row: Server, now: dt.datetime) -> None:
        lease_length = dt.timedelta(seconds=self.ctx.settings.lifecycle.lease_seconds)
        if row.lease_until is None or row.lease_until - now < lease_length * 2 / 3:
            # Renewed only when a third of it is gone: the claim (or the step before) wrote it
            # moments ago on most entries, and each write is an UPDATE of the row.
            row.lease_until = now + lease_length

    def _stepped(self, row: Server, action: str, step: str, started: float, outcome: Outcome) -> Outcome:
        self._observe(action, step, "needs_human" if row.needs_human else "retry", started)
        return outcome

    def _observe(self, action: str, step: str, outcome: str, started: float) -> None:
        if self.on_step is not None:
            self.on_step(action, step, outcome, time.perf_counter() - started)

    def _advance_to(self, session: Session, row: Server, action: str, step: str, result: Next, *,
                    goes_on: bool = False) -> bool:
        """Record the step's result and the next step in one commit; whether that commit also
        holds the next step's "started" (so the caller must not record it again)."""
        now = self.clock()
        entered = False
        self.event(session, row, f"{action}.{step}", "ok", result.detail)
        row.attempts, row.last_error = 0, None
        if row.status == Status.ERROR.value:
            row.status = status_for(action, Status.QUEUED.value)
        if result.step is None:  # the action is complete; the step set the final status
            row.action, row.step, row.step_deadline, row.next_attempt_at = None, None, None, None
            self._let_go(row)   # before the queries below, whose autoflush would write the row once more
            self.event(session, row, f"{action}.done", "ok", f"status {row.status}")
            message = self._completion_message(row, action)   # sync and restart: the page says it
            # "Your subscription has ended" would be untrue when an operator took the server down.
            if message is not None and not (action == "destroy" and row.on_hold):
                kind, context = message
                self._notify(session, row, kind, f"{kind}:{row.id}:g{row.generation}", context)
        else:
            row.step, row.step_deadline = result.step, now + budget(self.ctx.settings.lifecycle, result.step)
            row.next_attempt_at = result.not_before
            if result.not_before is not None:
                # A step entered with a wait (the first boot poll, the DNS TTL before retire) is
                # entered now: its first run will look like a poll, so its intent is recorded here.
                self.event(session, row, f"{action}.{result.step}", "started")
            elif goes_on and not self.stopping.is_set():
                # The next step runs at once in this advance: its intent rides in this commit, which
                # precedes its side effect all the same (a commit of its own was ~0.6 ms of CPU, seven
                # times a create). Should the advance stop before the step anyway (a shutdown in
                # between), the next advance records "started" once more: a repeated line, no gap.
                self.event(session, row, f"{action}.{result.step}", "started")
                self._renew_lease(row, now)
                entered = True
        session.commit()
        return entered

    def _completion_message(self, row: Server, action: str) -> tuple[str, dict[str, Any]] | None:
        """The customer's mail when an action completes: its kind and context."""
        if action == "create":
            return "server_ready", {}
        if action == "rebuild":
            # A WireGuard client resolves the name once: the mail says to restart the tunnel.
            offered = access.protocols(self.ctx.settings, row)
            return "rebuild_done", {"location": row.current_location or "", "wireguard": access.WIREGUARD in offered}
        if action == "destroy":
            kept = row.identity_kept_until
            return "server_destroyed", {"identity_until": f"{kept:%Y-%m-%d %H:%M}"} if kept else {}
        return None

    def _fail(self, session: Session, row: Server, message: str, *, permanent: bool,
              retry_after: float | None = None) -> None:
        lc = self.ctx.settings.lifecycle
        now = self.clock()
        self._let_go(row)    # first: the notify queries below autoflush, which would write the row twice
        row.attempts += 1
        row.last_error = message
        # A failed sync leaves the VPN as it was: the customer's server is not in error.
        in_error = Status.ERROR.value if row.action != "sync" else row.status
        if permanent or row.attempts >= lc.max_attempts:
            row.needs_human = True
            row.status = in_error
            row.next_attempt_at = None
            self.event(session, row, f"{row.action}.{row.step}", "failed", f"needs a human: {message}")
            # One alert per marking: after `provisioner retry`, a new failure alerts again.
            key = f"attention:{row.id}:{row.action}:{row.step}:g{row.generation}:v{row.version}"
            queued = self._notify(session, row, "needs_attention", key,
                                  {"error": message, "step": row.step or "", "action": row.action or "",
                                   "attempt": row.attempts})
            alerted = bool(queued) and self.ctx.settings.notify.operator_channel
            row.human_alerted_at = now if alerted else None
            self._tell_customer(session, row, alerted=alerted)
            log.error("server %s sub=%s: %s.%s needs a human: %s%s", row.server_name or row.id, row.subscription_id,
                      row.action, row.step, message, "" if alerted else " (no operator channel: nobody was alerted)")
        else:
            wait = backoff(row.attempts, lc.backoff_base_seconds, lc.backoff_cap_seconds, retry_after=retry_after)
            row.next_attempt_at = now + dt.timedelta(seconds=wait)
            row.step_deadline = row.next_attempt_at + budget(lc, row.step or "")
            if row.attempts >= lc.error_after_attempts:
                row.status = in_error
                self._tell_customer(session, row, alerted=False)
            self.event(session, row, f"{row.action}.{row.step}", "failed",
                       f"attempt {row.attempts}: {message}; retrying in {wait:.0f}s")
        session.commit()

    def _tell_customer(self, session: Session, row: Server, *, alerted: bool) -> None:
        """Once per action and generation: a create is late (no server yet), or a rebuild is late
        (the old server keeps serving). "Our team has been alerted" only when it is true."""
        kind = {"create": "provisioning_delayed", "rebuild": "rebuild_delayed"}.get(row.action or "")
        if kind is not None:
            self._notify(session, row, kind, f"{kind}:{row.id}:g{row.generation}", {"alerted": alerted})

    def _notify(self, session: Session, row: Server, kind: str, key: str, context: dict[str, Any]) -> int:
        """Queue a message in the same transaction as the state change that caused it; how many
        rows were queued (0: deduplicated, no recipient, or a template problem)."""
        try:
            return notify.enqueue(session, kind, server=row, context=context, dedupe_key=key,
                                  settings=self.ctx.settings, now=self.clock())
        except ValueError as exc:  # a template problem must never block the server's life
            log.error("server %s: could not queue %s: %s", row.server_name or row.id, kind, exc)
            return 0

    # --- the audit trail ----------------------------------------------------------------------

    def event(self, session: Session, row: Server, what: str, outcome: str, detail: str = "",
              actor: str | None = None) -> None:
        actions.record(session, row, what, outcome, detail, actor=actor or f"worker:{self.owner}", now=self.clock())


def _human(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:500]


def maybe_crash(point: str) -> None:
    if os.environ.get(CRASH_AT_ENV) == point:
        os.kill(os.getpid(), signal.SIGKILL)
