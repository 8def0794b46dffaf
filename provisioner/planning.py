"""One planning pass: read what we run and what the storefront says, and decide.

:func:`provisioner.reconcile.plan` decides (pure); this module gathers its inputs from the
database and the storefront, and knows the planner's policy and the optional second
opinion before a destroy (Stripe behind EDD). The leader runs a pass every tick and
whenever someone asks for one (:func:`request`), e.g. a Stripe webhook that just told us
about a new subscription.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from provisioner.models import DestroyHold, Server, WorkerStatus
from provisioner.reconcile import BREAKER, Plan, Policy, ServerState, plan
from provisioner.settings.schema import Settings
from provisioner.storefront import Storefront
from provisioner.subscriptions import StorefrontUnavailable, Subscription

log = logging.getLogger(__name__)

CrossCheck = Callable[[Subscription], bool | None]
REQUESTED = "plan_requested"    # a WorkerStatus row: someone wants a pass before the next tick


def policy(settings: Settings) -> Policy:
    p = settings.planner
    return Policy(max_destroy_count=p.max_destroy_count, max_destroy_fraction=p.max_destroy_fraction,
                  destroy_grace=dt.timedelta(hours=p.destroy_grace_hours), products=frozenset(settings.products),
                  breaker_window=dt.timedelta(hours=p.breaker_window_hours), min_read_fraction=p.min_read_fraction)


def server_states(sessions: sessionmaker[Session]) -> list[ServerState]:
    # Only the planner's columns: full rows would drag every server's sealed PKI and .ovpn along.
    cols = (Server.id, Server.server_name, Server.subscription_id, Server.status, Server.action,
            Server.step_deadline, Server.rebuild_now_status, Server.paused, Server.needs_human,
            Server.rebuild_due_at, Server.ended_seen_at, Server.planned_destroy_at, Server.user_email,
            Server.account_id, DestroyHold.approved_at, Server.operator_hold_at)
    approved = (DestroyHold.server_id == Server.id) & (DestroyHold.reason_code == BREAKER)
    q = select(*cols).outerjoin(DestroyHold, approved)
    with sessions() as s:
        return [ServerState(id=r[0], name=r[1], subscription_id=r[2], status=r[3], action=r[4],
                            step_deadline=r[5], rebuild_now=bool(r[6]), paused=bool(r[7]),
                            needs_human=bool(r[8]), rebuild_due_at=r[9], ended_seen_at=r[10],
                            planned_destroy_at=r[11], email=r[12], account_id=r[13],
                            destroy_approved=r[14] is not None, operator_hold=r[15] is not None)
                for r in s.execute(q)]


def plan_pass(sessions: sessionmaker[Session], storefront: Storefront, settings: Settings,
              now: dt.datetime, on_read: Callable[[list[Subscription]], None] | None = None
              ) -> tuple[Plan, str | None]:
    """One planning pass. Returns the plan and, if the storefront failed, why. ``on_read`` gets
    the subscriptions of a successful read (the worker keeps their standing for the dashboard)."""
    servers = server_states(sessions)
    try:
        subs = storefront.read(now)
    except StorefrontUnavailable as exc:
        return plan(None, servers, now, policy(settings)), str(exc)
    if on_read is not None:
        on_read(subs)
    result = plan(subs, servers, now, policy(settings))
    if result.unconfigured:
        log.debug("ignoring %d subscription(s) of products not in [products]: %s", len(result.unconfigured),
                  ", ".join(result.unconfigured[:20]))
    return result, None


def stripe_cross_check(settings: Settings, sessions: sessionmaker[Session]) -> CrossCheck | None:
    """With EDD and a Stripe key: ask Stripe before destroying (EDD can miss webhooks)."""
    st = settings.stripe
    if settings.storefront.kind != "edd" or not st.api_key or not st.cross_check_destroys:
        return None
    from provisioner.storefront.stripe import StripeStorefront

    stripe_view = StripeStorefront(sessions, settings)
    return lambda sub: stripe_view.cross_check_ended(sub.profile_id)


def request(session: Session, now: dt.datetime, why: str) -> None:
    """Ask the leader for a planning pass soon (within seconds), in the caller's transaction."""
    row = session.get(WorkerStatus, REQUESTED)
    value = json.dumps({"at": now.isoformat(), "why": why})
    if row is None:
        session.add(WorkerStatus(name=REQUESTED, value=value, updated_at=now))
    else:
        row.value, row.updated_at = value, now


def requested_since(sessions: sessionmaker[Session], since: dt.datetime) -> bool:
    """Whether a pass was asked for after ``since`` (one primary-key read)."""
    with sessions() as s:
        at = s.scalar(select(WorkerStatus.updated_at).where(WorkerStatus.name == REQUESTED))
    return at is not None and at > since
