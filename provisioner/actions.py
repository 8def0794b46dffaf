"""Starting an action on a server row: create, rebuild, destroy, the short sync and restart, and
resuming a stuck one; an operator's holds: pause / resume, and a forced destroy held until released.

Starting records intent only (``action``, its first ``step``, a deadline, an event): no
provider is touched, so the planner, the operator's CLI and the customer service all start
actions the same way, in the caller's transaction. The lifecycle's driver carries the row
forward once it is committed (:mod:`provisioner.lifecycle`).
"""

from __future__ import annotations

import datetime as dt
import logging

from sqlalchemy import select
from sqlalchemy.orm import Session

from provisioner import access, history, locations
from provisioner.models import Server, ServerEvent, Status
from provisioner.settings.schema import LifecycleSettings, Settings
from provisioner.subscriptions import Subscription

log = logging.getLogger(__name__)

FIRST_STEP = {"create": "prepare", "rebuild": "instance", "destroy": "instances", "sync": "push",
              "restart": "reboot"}


class ServerBusy(RuntimeError):
    """The server is in the middle of another action (or not in a state to start this one)."""


class NotOffered(ValueError):
    """What was asked for is not what the server's plan offers (a message for a human)."""


def budget(lc: LifecycleSettings, step: str) -> dt.timedelta:
    """How long one step may take before it counts as failed (and is retried)."""
    minutes = {"boot": lc.boot_deadline_minutes, "settle": lc.boot_deadline_minutes,
               "install": lc.install_deadline_minutes,
               "snapshot": lc.snapshot_deadline_minutes}.get(step, lc.api_deadline_minutes)
    if step == "retire":  # waits out the DNS TTL first
        minutes += lc.retire_delay_seconds / 60
    return dt.timedelta(minutes=minutes)


def status_for(action: str, current: str) -> str:
    """What the customer sees while ``action`` runs."""
    if action == "create":
        return Status.QUEUED.value if current in (Status.QUEUED.value, Status.DESTROYED.value) \
            else Status.INSTALLING.value
    if action == "sync":  # the VPN keeps running while the customer's changes are sent
        return Status.RUNNING.value if current == Status.ERROR.value else current
    return {"rebuild": Status.REBUILDING.value, "destroy": Status.DESTROYING.value,
            "restart": Status.RESTARTING.value}[action]


def record(session: Session, row: Server, what: str, outcome: str, detail: str, *, actor: str,
           now: dt.datetime) -> None:
    """One line of the server's audit trail (and of the journal)."""
    session.add(ServerEvent(server_id=row.id, at=now, actor=actor, what=what, outcome=outcome, detail=detail[:2000]))
    level = logging.WARNING if outcome == "failed" else logging.INFO
    log.log(level, "server=%s sub=%s %s %s%s", row.server_name or f"#{row.id}", row.subscription_id, what,
            outcome, f": {detail}" if detail else "")


def begin_create(session: Session, settings: Settings, sub: Subscription, *, actor: str,
                 now: dt.datetime, keep_identity: bool = False) -> Server:
    """Start building ``sub``'s server, reviving its old row if there is one. A revived row keeps
    its name and PKI (the same ``.ovpn``) within ``lifecycle.keep_identity_days`` of its destroy,
    or always with ``keep_identity`` (an operator's release of a server they took down)."""
    row = session.scalars(select(Server).where(Server.subscription_id == sub.id)).first()
    product = settings.product(sub.product_id)
    if row is None:
        row = Server(subscription_id=sub.id, customer_id=sub.customer_id, product_id=sub.product_id,
                     user_email=sub.email, status=Status.QUEUED.value, generation=0)
        session.add(row)
    elif row.status != Status.DESTROYED.value:
        raise ServerBusy(f"subscription {sub.id} already has server {row.server_name or row.id}")
    else:  # a renewed subscription revives its old row: one row per subscription, ever
        row.status, row.destroyed_at, row.generation = Status.QUEUED.value, None, row.generation + 1
        row.user_email, row.product_id, row.customer_id = sub.email, sub.product_id, sub.customer_id
        expired = row.identity_kept_until is None or now >= row.identity_kept_until
        if row.secrets_enc and expired and not keep_identity:
            access.wipe_identity(session, row)   # too late: a fresh PKI (the job may not have run yet)
            record(session, row, "identity.expired", "info", "renewed after lifecycle.keep_identity_days: new PKI",
                   actor=actor, now=now)
        elif row.secrets_enc:
            record(session, row, "identity.kept", "info", "renewed in time: the same name and .ovpn come back",
                   actor=actor, now=now)
        row.identity_kept_until = None
    row.account_id = sub.account_id
    row.ended_seen_at = None
    row.target_location = product.default_region if product else None
    row.bandwidth_limit_this_month = product.bandwidth_cap_bytes if product else 0
    _start(session, settings.lifecycle, row, "create", actor, f"subscription {sub.id} ({sub.status})", now)
    return row


def begin_rebuild(session: Session, settings: Settings, row: Server, location: str | None, *, actor: str,
                  now: dt.datetime) -> None:
    """Start a create-before-destroy rebuild in ``location`` (a region of the plan, or random).

    Raises :class:`ServerBusy` unless the server is idle, :class:`NotOffered` for a region the
    plan does not offer or an unconfigured product."""
    if row.action:
        raise ServerBusy(f"server {row.server_name} is busy ({row.action} {row.step})")
    if not row.idle:
        raise ServerBusy(f"server {row.server_name} is {row.status}, not Running")
    product = settings.product(row.product_id)
    if product is None:
        raise NotOffered(f"product {row.product_id} is not configured in [products]")
    try:
        locations.check(product, location or locations.RANDOM)
    except locations.LocationRefused as exc:
        raise NotOffered(str(exc)) from None
    target, _ = locations.resolve(product, location, row.current_location)
    _begin_rebuild_to(session, settings, row, target, actor=actor, now=now)


def begin_requested_rebuild(session: Session, settings: Settings, row: Server, *, actor: str,
                            now: dt.datetime) -> None:
    """Start the rebuild a customer or the schedule asked for: a location recorded earlier and no
    longer offered goes to a random one (never a request retried and refused forever)."""
    if not row.idle:
        raise ServerBusy(f"server {row.server_name} is busy ({row.action or row.status})")
    product = settings.product(row.product_id)
    if product is None:
        raise NotOffered(f"product {row.product_id} is not configured in [products]")
    target, note = locations.resolve(product, row.rebuild_now_location, row.current_location)
    if note:
        record(session, row, "rebuild.location", "info", note, actor=actor, now=now)
    _begin_rebuild_to(session, settings, row, target, actor=actor, now=now)


def _begin_rebuild_to(session: Session, settings: Settings, row: Server, target: str, *, actor: str,
                      now: dt.datetime) -> None:
    row.old_instance_id, row.instance_id = row.instance_id, None
    row.generation += 1
    row.target_location = target
    row.rebuild_now_status, row.rebuild_now_location, row.rebuild_due_at = False, None, None
    row.new_ip, row.restart_pending = None, False   # a new instance needs no restart
    detail = history.rebuild_target(target, row.rebuild_schedule if actor == "scheduler" else None)
    _start(session, settings.lifecycle, row, "rebuild", actor, detail, now)


def begin_sync(session: Session, settings: Settings, row: Server, *, actor: str, now: dt.datetime) -> None:
    """Send the running server the customer's changes (:mod:`provisioner.access`)."""
    if not row.idle or row.status != Status.RUNNING.value:
        raise ServerBusy(f"server {row.server_name} is busy ({row.action or row.status})")
    _start(session, settings.lifecycle, row, "sync", actor, f"revision {row.access_revision}", now)


def begin_restart(session: Session, settings: Settings, row: Server, *, actor: str, now: dt.datetime) -> None:
    """Reboot the instance the customer asked to restart."""
    if not row.idle or row.status != Status.RUNNING.value or not row.instance_id:
        raise ServerBusy(f"server {row.server_name} is busy ({row.action or row.status})")
    row.restart_pending = False
    _start(session, settings.lifecycle, row, "restart", actor, f"instance {row.instance_id}", now)


def begin_destroy(session: Session, settings: Settings, row: Server, *, actor: str, reason: str,
                  now: dt.datetime) -> None:
    if row.status == Status.DESTROYED.value or row.action == "destroy":
        return
    _start(session, settings.lifecycle, row, "destroy", actor, reason, now)


def retry(session: Session, settings: Settings, row: Server, *, actor: str, now: dt.datetime,
          note: str = "") -> None:
    """An operator fixed the cause: resume the stuck action at its step with fresh attempts."""
    if not row.action:
        raise ServerBusy(f"server {row.server_name or row.id} has nothing to retry (status {row.status})")
    if not row.needs_human and not row.attempts:
        raise ServerBusy(f"server {row.server_name or row.id} is not stuck ({row.action} {row.step} is running)")
    row.needs_human, row.attempts, row.next_attempt_at, row.human_alerted_at = False, 0, None, None
    row.step_deadline = now + budget(settings.lifecycle, row.step or FIRST_STEP[row.action])
    record(session, row, f"{row.action}.retry", "info",
           f"at step {row.step}; last error: {row.last_error}" + (f" ({note})" if note else ""), actor=actor, now=now)


# --- an operator's holds ----------------------------------------------------------------------
#
# pause:  "hold this server while I look": nobody works on it (driver, planner, schedules), it
#         keeps running; the customer sees "paused by support". `resume` lets the work go on.
# hold:   a forced destroy (abuse, a chargeback): the server is destroyed although its
#         subscription entitles it, and the planner does not build it again until `release`,
#         which builds it with the PKI kept at the destroy, so the customer's .ovpn still works.


def pause(session: Session, row: Server, *, actor: str, reason: str, now: dt.datetime) -> None:
    if row.paused:
        raise ServerBusy(f"server {row.server_name or row.id} is already paused")
    if row.status == Status.DESTROYED.value:
        raise ServerBusy(f"server {row.server_name or row.id} is Destroyed; there is nothing to pause")
    row.paused = True
    record(session, row, "operator.paused", "info", reason or "no reason given", actor=actor, now=now)


def resume_paused(session: Session, settings: Settings, row: Server, *, actor: str, now: dt.datetime) -> None:
    if not row.paused:
        raise ServerBusy(f"server {row.server_name or row.id} is not paused")
    row.paused = False
    if row.action:  # the pause must not count against the step's deadline
        row.step_deadline = now + budget(settings.lifecycle, row.step or FIRST_STEP[row.action])
    record(session, row, "operator.resumed", "info", f"{row.action} {row.step} goes on" if row.action else "",
           actor=actor, now=now)


def begin_forced_destroy(session: Session, settings: Settings, row: Server, *, actor: str, reason: str,
                         now: dt.datetime) -> None:
    """Take the server down now and keep it down until :func:`release` (its PKI is kept)."""
    if row.on_hold:
        raise ServerBusy(f"server {row.server_name or row.id} is already held by an operator "
                         f"since {row.operator_hold_at:%Y-%m-%d %H:%M} UTC ({row.operator_hold_reason})")
    row.operator_hold_at, row.operator_hold_reason = now, reason
    row.paused = False                     # the destroy must run
    row.rebuild_now_status, row.rebuild_now_location, row.rebuild_due_at = False, None, None
    record(session, row, "operator.held", "info", reason, actor=actor, now=now)
    begin_destroy(session, settings, row, actor=actor, reason=f"forced by an operator: {reason}", now=now)


def release(session: Session, settings: Settings, row: Server, sub: Subscription | None, *, actor: str,
            now: dt.datetime) -> bool:
    """End an operator's hold. A subscription that still entitles gets its server built again
    (same name, same PKI: the same .ovpn); True when a build was started."""
    name = row.server_name or row.id
    if not row.on_hold:
        raise ServerBusy(f"server {name} is not held by an operator")
    if row.action:
        raise ServerBusy(f"server {name} is still being taken down ({row.action} {row.step}); "
                         "release it once it is Destroyed")
    row.operator_hold_at = row.operator_hold_reason = None
    if sub is not None and sub.entitled(now):
        record(session, row, "operator.released", "info", f"subscription {sub.id} entitles: building it again",
               actor=actor, now=now)
        begin_create(session, settings, sub, actor=actor, now=now, keep_identity=True)
        return True
    access.wipe_identity(session, row)  # nothing will use the kept PKI: wipe it, as a normal destroy does
    record(session, row, "operator.released", "info", "the subscription no longer entitles a server; "
           "its kept secrets are wiped", actor=actor, now=now)
    return False


def _start(session: Session, lc: LifecycleSettings, row: Server, action: str, actor: str, detail: str,
           now: dt.datetime) -> None:
    row.action, row.step = action, FIRST_STEP[action]
    row.action_started_at, row.human_alerted_at = now, None
    row.attempts, row.last_error, row.needs_human, row.next_attempt_at = 0, None, False, None
    row.step_deadline = now + budget(lc, row.step)
    row.status = status_for(action, row.status)
    session.flush()
    record(session, row, f"{action}.requested", "info", detail, actor=actor, now=now)
