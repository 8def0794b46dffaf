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
import random
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from provisioner import lease
from provisioner.cloud.cloudflare import CloudflareError
from provisioner.cloud.retry import TransientError
from provisioner.cloud.ssh import SSHError
from provisioner.cloud.vultr import VultrError
from provisioner.models import RANDOM_LOCATION, Server, ServerEvent, Status, utcnow
from provisioner.steps import STEPS, Context, PermanentStepError, Wait, first_step, status_for
from provisioner.subscriptions import Subscription

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


class ServerBusy(RuntimeError):
    """The server is in the middle of another action."""


@dataclass
class Lifecycle:
    ctx: Context
    owner: str
    clock: Callable[[], dt.datetime] = utcnow
    # Set on shutdown (or lost leadership): running rows stop at their next step boundary.
    stopping: threading.Event = field(default_factory=threading.Event)

    # --- starting actions --------------------------------------------------------------------

    def begin_create(self, session: Session, sub: Subscription, actor: str = "planner") -> Server:
        row = session.scalars(select(Server).where(Server.subscription_id == sub.id)).first()
        product = self.ctx.settings.product(sub.product_id)
        if row is None:
            row = Server(subscription_id=sub.id, customer_id=sub.customer_id, product_id=sub.product_id,
                         user_email=sub.email, status=Status.QUEUED.value, generation=0)
            session.add(row)
        elif row.status != Status.DESTROYED.value:
            raise ServerBusy(f"subscription {sub.id} already has server {row.server_name or row.id}")
        else:  # a renewed subscription revives its old row: one row per subscription, ever
            row.status, row.destroyed_at, row.generation = Status.QUEUED.value, None, row.generation + 1
            row.user_email, row.product_id, row.customer_id = sub.email, sub.product_id, sub.customer_id
        row.target_location = product.default_region if product else None
        row.bandwidth_limit_this_month = product.bandwidth_cap_bytes if product else 0
        self._start(session, row, "create", actor, f"subscription {sub.id} ({sub.status})")
        return row

    def begin_rebuild(self, session: Session, row: Server, location: str | None, actor: str) -> None:
        if row.action:
            raise ServerBusy(f"server {row.server_name} is busy ({row.action} {row.step})")
        if row.status not in (Status.RUNNING.value, Status.ERROR.value):
            raise ServerBusy(f"server {row.server_name} is {row.status}, not Running")
        target = self.pick_location(row, location)
        row.old_instance_id, row.instance_id = row.instance_id, None
        row.generation += 1
        row.target_location = target
        row.rebuild_now_status, row.rebuild_now_location, row.rebuild_due_at = False, None, None
        self._start(session, row, "rebuild", actor, f"to {target}")

    def begin_destroy(self, session: Session, row: Server, actor: str, reason: str) -> None:
        if row.status == Status.DESTROYED.value:
            return
        if row.action == "destroy":
            return
        self._start(session, row, "destroy", actor, reason)

    def retry(self, session: Session, row: Server, actor: str) -> None:
        """An operator fixed the cause: resume the stuck action at its step with fresh attempts."""
        if not row.action:
            raise ServerBusy(f"server {row.server_name or row.id} has nothing to retry (status {row.status})")
        if not row.needs_human and not row.attempts:
            raise ServerBusy(f"server {row.server_name or row.id} is not stuck ({row.action} {row.step} is running)")
        row.needs_human, row.attempts, row.next_attempt_at = False, 0, None
        row.step_deadline = self.clock() + self.ctx.budget(row.step or first_step(row.action))
        self.event(session, row, f"{row.action}.retry", "info", f"at step {row.step}; last error: {row.last_error}",
                   actor=actor)

    def pick_location(self, row: Server, location: str | None) -> str:
        product = self.ctx.settings.product(row.product_id)
        if product is None:
            raise PermanentStepError(f"product {row.product_id} is not configured")
        if location in (None, "", RANDOM_LOCATION):
            choices = [r for r in product.regions if r != row.current_location] or list(product.regions)
            return random.choice(choices)
        if location not in product.regions:
            raise ValueError(f"location {location!r} is not offered for this plan; choose one of "
                             f"{', '.join(product.regions)} or 'random'")
        return location

    def _start(self, session: Session, row: Server, action: str, actor: str, detail: str) -> None:
        now = self.clock()
        row.action, row.step = action, first_step(action)
        row.attempts, row.last_error, row.needs_human, row.next_attempt_at = 0, None, False, None
        row.step_deadline = now + self.ctx.budget(row.step)
        row.status = status_for(action, row.status)
        session.flush()
        self.event(session, row, f"{action}.requested", "info", detail, actor=actor)

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

    def _run(self, session: Session, row: Server, max_steps: int) -> Outcome:
        for _ in range(max_steps):
            now = self.clock()
            if self.stopping.is_set():
                return Outcome.WAITING
            if not row.action:
                return Outcome.DONE
            if row.needs_human:
                return Outcome.FAILED
            if row.next_attempt_at and row.next_attempt_at > now:
                return Outcome.WAITING
            action, step = row.action, row.step or first_step(row.action)
            if row.next_attempt_at is None:  # entering the step, not polling it again
                self.event(session, row, f"{action}.{step}", "started")
            row.lease_until = now + dt.timedelta(seconds=self.ctx.settings.lifecycle.lease_seconds)
            session.commit()
            try:
                with lease.heartbeat(self.ctx.sessions, row.id, self.owner,
                                     self.ctx.settings.lifecycle.lease_seconds, self.clock):
                    result = STEPS[action][step](self.ctx, row)
            except Wait as w:
                if row.step_deadline and now >= row.step_deadline:
                    self._fail(session, row, f"{w.reason} did not finish in time", permanent=False)
                    return Outcome.FAILED
                row.next_attempt_at = now + dt.timedelta(seconds=w.seconds)
                session.commit()
                return Outcome.WAITING
            except StaleDataError:
                raise
            except PermanentStepError as exc:
                self._fail(session, row, str(exc), permanent=True)
                return Outcome.FAILED
            except TransientError as exc:
                self._fail(session, row, _human(exc), permanent=False, retry_after=exc.retry_after)
                return Outcome.FAILED
            except SSHError as exc:  # a host-key mismatch or refused key is permanent; the rest retried
                self._fail(session, row, f"SSH to {row.server_ip}: {_human(exc)}", permanent=not exc.transient)
                return Outcome.FAILED
            except (CloudflareError, VultrError) as exc:  # permanent API errors (4xx)
                self._fail(session, row, _human(exc), permanent=True)
                return Outcome.FAILED
            except Exception as exc:  # noqa: BLE001 - a bug or an unmapped library error
                # Recorded and backed off like a transient error: unrecorded, the row would be due
                # again at once and retried hot forever, never reaching "needs a human".
                log.exception("server %s sub=%s: unexpected error in %s.%s", row.server_name or row.id,
                              row.subscription_id, action, step)
                session.rollback()  # the step's ids are already committed; drop half-made changes
                self._fail(session, row, f"unexpected {type(exc).__name__} in step {step} (see the worker's log)",
                           permanent=False)
                return Outcome.FAILED
            maybe_crash(f"{action}.{step}")
            self._advance_to(session, row, action, step, result)
        return Outcome.WAITING

    def _advance_to(self, session: Session, row: Server, action: str, step: str, result: str | None) -> None:
        now = self.clock()
        detail = self.ctx.last_detail.pop(row.id, "")
        self.event(session, row, f"{action}.{step}", "ok", detail)
        row.attempts, row.last_error = 0, None
        if row.status == Status.ERROR.value:
            row.status = status_for(action, Status.QUEUED.value)
        if result is None:  # the action is complete; the step set the final status
            row.action, row.step, row.step_deadline, row.next_attempt_at = None, None, None, None
            self.event(session, row, f"{action}.done", "ok", f"status {row.status}")
            kind, context = {"create": ("server_ready", {}),
                             "rebuild": ("rebuild_done", {"location": row.current_location or ""}),
                             "destroy": ("server_destroyed", {})}[action]
            self._notify(session, row, kind, f"{kind}:{row.id}:g{row.generation}", context)
        else:
            row.step, row.step_deadline = result, now + self.ctx.budget(result)
            row.next_attempt_at = self.ctx.delay.pop(row.id, None)
        session.commit()

    def _fail(self, session: Session, row: Server, message: str, *, permanent: bool,
              retry_after: float | None = None) -> None:
        lc = self.ctx.settings.lifecycle
        now = self.clock()
        row.attempts += 1
        row.last_error = message
        if permanent or row.attempts >= lc.max_attempts:
            row.needs_human = True
            row.status = Status.ERROR.value
            row.next_attempt_at = None
            self.event(session, row, f"{row.action}.{row.step}", "failed", f"needs a human: {message}")
            key = f"attention:{row.id}:{row.action}:{row.step}:g{row.generation}"
            self._notify(session, row, "needs_attention", key,
                         {"error": message, "step": row.step or "", "action": row.action or "",
                          "attempt": row.attempts})
            log.error("server %s sub=%s: %s.%s needs a human: %s", row.server_name or row.id, row.subscription_id,
                      row.action, row.step, message)
        else:
            wait = min(lc.backoff_cap_seconds, lc.backoff_base_seconds * 2 ** (row.attempts - 1))
            wait = wait / 2 + random.uniform(0, wait / 2)
            if retry_after:  # e.g. a Cloudflare lockout: 300 s; retrying sooner only extends it
                wait = max(wait, retry_after)
            row.next_attempt_at = now + dt.timedelta(seconds=wait)
            row.step_deadline = row.next_attempt_at + self.ctx.budget(row.step or "")
            if row.attempts >= lc.error_after_attempts:
                row.status = Status.ERROR.value
                if row.action == "create":  # tell the customer once that it takes longer
                    self._notify(session, row, "provisioning_delayed", f"delayed:{row.id}:g{row.generation}", {})
            self.event(session, row, f"{row.action}.{row.step}", "failed",
                       f"attempt {row.attempts}: {message}; retrying in {wait:.0f}s")
        session.commit()

    def _notify(self, session: Session, row: Server, kind: str, key: str, context: dict[str, Any]) -> None:
        """Queue a message in the same transaction as the state change that caused it."""
        from provisioner import notify

        try:
            notify.enqueue(session, kind, server=row, context=context, dedupe_key=key, settings=self.ctx.settings,
                           now=self.clock())
        except ValueError as exc:  # a template problem must never block the server's life
            log.error("server %s: could not queue %s: %s", row.server_name or row.id, kind, exc)

    # --- the audit trail ----------------------------------------------------------------------

    def event(self, session: Session, row: Server, what: str, outcome: str, detail: str = "",
              actor: str | None = None) -> None:
        session.add(ServerEvent(server_id=row.id, at=self.clock(), actor=actor or f"worker:{self.owner}",
                                what=what, outcome=outcome, detail=detail[:2000]))
        level = logging.WARNING if outcome == "failed" else logging.INFO
        log.log(level, "server=%s sub=%s %s %s%s", row.server_name or f"#{row.id}", row.subscription_id, what,
                outcome, f": {detail}" if detail else "")


def _human(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:500]


def maybe_crash(point: str) -> None:
    if os.environ.get(CRASH_AT_ENV) == point:
        os.kill(os.getpid(), signal.SIGKILL)
