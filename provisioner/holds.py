"""What a planning pass learned, written down: when subscriptions were first seen ended,
the rows' current contact (e-mail and storefront account), and the destroys it holds.

:func:`record_pass` runs after every pass that read the storefront (the worker's tick and
``provisioner check --apply``), in one transaction:

- ``ended_seen_at`` is stamped on rows whose subscription a pass saw ended for the first
  time, and cleared when that is no longer so (a renewal): the destroy grace counts from
  the later of this moment and the paid-through date.
- A row whose storefront e-mail or account changed follows it, with an ``email.changed`` /
  ``account.changed`` event. These bookkeeping columns are written without the row's
  version column, so a worker in the middle of a step on that row is not fenced out.
- ``provisioner_destroy_holds`` becomes exactly the plan's holds: a hold that is new, or
  whose code (for lack of evidence: whose reason) changed, starts a new episode
  (``since``); one that is gone is deleted (an approval goes with it).
- Alerts, each once: the operator per server and reason for a destroy held for lack of
  evidence (``destroy_held``); once per episode when the circuit breaker starts holding
  destroys, and when the storefront read turns implausibly thin (``destroys_held``).

Approving breaker-held destroys (:func:`approve`) is the operator's side: audited, and a
pass is requested at once.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from provisioner import notify, planning
from provisioner.models import DestroyHold, Server, ServerEvent, WorkerStatus
from provisioner.reconcile import BREAKER, NO_EVIDENCE, THIN_READ, Hold, Plan
from provisioner.settings.schema import Settings

log = logging.getLogger(__name__)

THIN_STATUS = "storefront_thin"      # a WorkerStatus row while reads look implausible
PER_SERVER_ALERTS = frozenset({"vanished", NO_EVIDENCE, "cross_check"})


@dataclass
class Recorded:
    new_holds: list[Hold] = field(default_factory=list)
    released: int = 0
    alerts: int = 0
    contacts: int = 0


def record_pass(session: Session, plan: Plan, now: dt.datetime, settings: Settings,
                extra_holds: Sequence[Hold] = ()) -> Recorded:
    """Write down what a pass that read the storefront learned (see the module docstring).
    The caller commits."""
    out = Recorded()
    if plan.seen_ended:
        session.execute(update(Server).where(Server.id.in_(plan.seen_ended), Server.ended_seen_at.is_(None))
                        .values(ended_seen_at=now).execution_options(synchronize_session=False))
    if plan.unended:
        session.execute(update(Server).where(Server.id.in_(plan.unended))
                        .values(ended_seen_at=None).execution_options(synchronize_session=False))
    for c in plan.contacts:
        out.contacts += _follow_contact(session, c.server_id, c.email, c.account_id, now)
    holds = {h.server_id: h for h in [*plan.holds, *extra_holds]}
    existing = {r.server_id: r for r in session.scalars(select(DestroyHold))}
    breaker_before = any(r.reason_code == BREAKER for r in existing.values())
    for sid, row in existing.items():
        h = holds.get(sid)
        if h is None or not _same_episode(row, h):
            session.delete(row)
            out.released += h is None
    session.flush()
    for sid, h in holds.items():
        kept = existing.get(sid)
        if kept is not None and _same_episode(kept, h):
            kept.reason = h.reason
            continue
        session.add(DestroyHold(server_id=sid, subscription_id=h.subscription_id, reason_code=h.code,
                                reason=h.reason, since=now))
        out.new_holds.append(h)
    session.flush()
    out.alerts += _alert(session, settings, now, out.new_holds, breaker_before, holds.values())
    out.alerts += _thin_episode(session, settings, now, plan.thin_read, holds.values())
    return out


def _same_episode(row: DestroyHold, h: Hold) -> bool:
    return row.reason_code == h.code and (h.code != NO_EVIDENCE or row.reason == h.reason)


def _follow_contact(session: Session, server_id: int, email: str, account_id: str | None, now: dt.datetime) -> int:
    before = session.execute(select(Server.user_email, Server.account_id, Server.server_name, Server.subscription_id)
                             .where(Server.id == server_id)).first()
    if before is None:
        return 0
    old_email, old_account, name, sub_id = before
    session.execute(update(Server).where(Server.id == server_id)
                    .values(user_email=email[:191], account_id=account_id)
                    .execution_options(synchronize_session=False))
    changes = []
    if email != old_email:
        changes.append(("email.changed", f"{old_email} -> {email} (the storefront's address now)"))
    if account_id != old_account:
        changes.append(("account.changed", f"storefront account {old_account or 'none'} -> {account_id or 'none'}"))
    for what, detail in changes:
        session.add(ServerEvent(server_id=server_id, at=now, actor="planner", what=what, outcome="info",
                                detail=detail))
        log.info("server=%s sub=%s %s: %s", name or f"#{server_id}", sub_id, what, detail)
    return 1


def _alert(session: Session, settings: Settings, now: dt.datetime, new: list[Hold], breaker_before: bool,
           held: Iterable[Hold]) -> int:
    added = 0
    for h in new:
        if h.code not in PER_SERVER_ALERTS:
            continue
        server = session.get(Server, h.server_id)
        added += _enqueue(session, settings, "destroy_held", {"reason": h.reason},
                          f"held:{h.server_id}:{h.code}:{now:%Y%m%dT%H%M%S}", now, server)
    breaker = [h for h in held if h.code == BREAKER]
    if breaker and not breaker_before:
        log.error("circuit breaker: holding %d destroy(s): %s", len(breaker), ", ".join(h.server for h in breaker))
        added += _enqueue(session, settings, "destroys_held",
                          {"reason": f"the circuit breaker holds {len(breaker)} destroy(s)",
                           "servers": _lines(breaker)}, f"breaker:{now:%Y%m%dT%H%M%S}", now)
    return added


def _thin_episode(session: Session, settings: Settings, now: dt.datetime, thin: str | None,
                  held: Iterable[Hold]) -> int:
    row = session.get(WorkerStatus, THIN_STATUS)
    if thin is None:
        if row is not None:
            session.delete(row)
            log.info("the storefront read looks plausible again")
        return 0
    if row is not None:
        row.value, row.updated_at = json.dumps({**json.loads(row.value or "{}"), "reason": thin}), now
        return 0
    session.add(WorkerStatus(name=THIN_STATUS, value=json.dumps({"since": now.isoformat(), "reason": thin}),
                             updated_at=now))
    log.error("%s: nothing is destroyed until a plausible read", thin)
    thin_held = [h for h in held if h.code == THIN_READ]
    return _enqueue(session, settings, "destroys_held", {"reason": thin, "servers": _lines(thin_held) or "(none yet)"},
                    f"thin:{now:%Y%m%dT%H%M%S}", now)


def _lines(holds: Iterable[Hold]) -> str:
    return "\n".join(f"  {h.server} (subscription {h.subscription_id}): {h.reason}" for h in holds)


def _enqueue(session: Session, settings: Settings, kind: str, context: dict[str, object], key: str,
             now: dt.datetime, server: Server | None = None) -> int:
    try:
        return notify.enqueue(session, kind, settings=settings, server=server, context=context, dedupe_key=key,
                              now=now)
    except ValueError as exc:  # a template problem must never stop the planner
        log.error("could not queue %s: %s", kind, exc)
        return 0


# --- the operator's side ------------------------------------------------------------------------

class NotHeld(ValueError):
    """The server's destroy is not held by the circuit breaker (a message for a human)."""


def held(session: Session) -> list[tuple[DestroyHold, Server]]:
    """Every held destroy with its server, oldest first."""
    q = (select(DestroyHold, Server).join(Server, Server.id == DestroyHold.server_id)
         .order_by(DestroyHold.since, DestroyHold.server_id))
    return [(h, s) for h, s in session.execute(q).tuples()]


def approve(session: Session, servers: Sequence[Server] | None, *, actor: str, now: dt.datetime) -> list[Server]:
    """Let breaker-held destroys go (``servers=None``: all of them). Every named server must
    be held by the breaker, or nothing changes (:class:`NotHeld` says which). The caller commits."""
    by_id = {h.server_id: (h, s) for h, s in held(session)}
    if servers is None:
        chosen = [(h, s) for h, s in by_id.values() if h.reason_code == BREAKER]
    else:
        chosen = []
        for server in servers:
            found = by_id.get(server.id)
            label = server.server_name or f"#{server.id}"
            if found is None:
                raise NotHeld(f"server {label} has no held destroy (see `provisioner destroys`)")
            if found[0].reason_code != BREAKER:
                raise NotHeld(f"server {label} is held for lack of evidence ({found[0].reason_code}), not by the "
                              "circuit breaker; check the storefront, or destroy it by hand: "
                              f"provisioner destroy {label}")
            chosen.append(found)
    for h, s in chosen:
        if h.approved_at is None:
            h.approved_at, h.approved_by = now, actor[:64]
            session.add(ServerEvent(server_id=s.id, at=now, actor=actor, what="destroy.approved", outcome="info",
                                    detail=f"breaker-held destroy of subscription {h.subscription_id} approved"))
            log.info("server=%s sub=%s destroy.approved by %s", s.server_name, s.subscription_id, actor)
    if chosen:
        planning.request(session, now, "destroys approved")
    return [s for _, s in chosen]
