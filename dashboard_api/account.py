"""The customer's account and each server's story: who is signed in, their plans and where
each stands (renews, ends, payment failed), servers that ended and why, the server's history in
plain words (paged) and its data use per day this month.

Nothing here reads the storefront or a sealed column: the standing comes from what the planning
pass recorded (:mod:`provisioner.standing`), the history from the audit trail
(:mod:`provisioner.history`), the days from the bandwidth sync (:mod:`provisioner.bandwidth`).
"""

from __future__ import annotations

import datetime as dt

from fastapi import APIRouter, Depends, Query
from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from dashboard_api import queries, scoped
from dashboard_api.context import ApiState, customer, state
from dashboard_api.customer_schemas import (
    AccountOut,
    EndedOut,
    HistoryItemOut,
    HistoryOut,
    PlanOut,
    UsageDay,
    UsageOut,
)
from dashboard_api.errors import responses
from dashboard_api.locations import region
from dashboard_api.routes import AUTHED, ServerName
from dashboard_api.tokens import Customer
from provisioner import bandwidth, history, standing
from provisioner.models import Server, ServerEvent, Status, SubscriptionStanding
from provisioner.settings.schema import Settings

router = APIRouter(prefix="/api", tags=["account"])
HISTORY_PAGE = 20

# English wording of each history kind (the page has its own in en/de/fr).
TEXTS = {
    "ordered": "Server ordered", "ready": "Server ready", "removal_started": "Removal started",
    "removed": "Server removed", "rebuild_requested": "Rebuild requested ({location})",
    "scheduled_rebuild": "Scheduled {schedule} rebuild ({location})", "rebuild_started": "Rebuild started ({location})",
    "moved": "Moved from {from} to {to}", "rebuilt": "Rebuilt in {location}",
    "schedule_set": "Rebuild schedule set to {schedule} ({location})", "password_viewed": "Root password viewed",
    "ssh_key_added": "SSH key '{name}' added", "ssh_key_removed": "SSH key '{name}' removed",
    "key_only_on": "Key-only login turned on", "key_only_off": "Key-only login turned off",
    "device_added": "Device '{name}' added", "device_revoked": "Device '{name}' revoked",
    "changes_applied": "Your changes reached the server", "restart_requested": "Restart requested",
    "restarted": "Server restarted", "usage_80": "80% of this month's data used",
    "usage_100": "This month's data limit reached", "suspended": "Paused at the data limit",
    "resumed": "Running again", "problem": "A problem came up; our team is on it",
}
_PLACES = ("location", "from", "to")


def text(item: history.Item) -> str:
    values = {k: _city(v) if k in _PLACES else v for k, v in item.params.items()}
    values.setdefault("schedule", "")
    values.setdefault("location", "?")
    wording = TEXTS.get(item.kind, item.kind).format_map(_Missing(values))
    return wording.replace("  ", " ") + (" (by support)" if item.by == "support" else "")


class _Missing(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return "?"


def _city(region_id: str) -> str:
    if region_id == "random":
        return "a random location"
    found = region(region_id)
    return found.city if found else region_id


# --- account ------------------------------------------------------------------------------------

@router.get("/account", response_model=AccountOut, responses=responses(*AUTHED),
            summary="Who is signed in, their plans, and servers that ended")
def account(who: Customer = Depends(customer), st: ApiState = Depends(state)) -> AccountOut:  # noqa: B008
    now = st.clock()
    with st.app.sessions() as s:
        rows = s.execute(select(Server.id, Server.server_name, Server.status, Server.subscription_id,
                                Server.product_id, Server.destroyed_at).where(queries.owned_by(who.user_id))).all()
        subs = [r.subscription_id for r in rows]
        standings = {x.subscription_id: x for x in s.scalars(
            select(SubscriptionStanding).where(SubscriptionStanding.subscription_id.in_(subs)))} if subs else {}
        plans, ended = [], []
        for r in sorted(rows, key=lambda r: r.id):
            where = standing.of(standings.get(r.subscription_id), now)
            if r.status != Status.DESTROYED.value:
                plans.append(PlanOut(server=r.server_name, plan=_plan(st.settings, r.product_id),
                                     standing=where.kind, date=where.date))  # type: ignore[arg-type]
            else:
                ended.append(EndedOut(server=r.server_name, plan=_plan(st.settings, r.product_id),
                                      ended_at=r.destroyed_at, reason=_why(s, r.id, where)))  # type: ignore[arg-type]
    ended.sort(key=lambda e: e.ended_at or dt.datetime.min.replace(tzinfo=dt.UTC), reverse=True)
    return AccountOut(email=who.email, timezone=st.settings.worker.timezone, store_url=st.settings.storefront.url,
                      plans=plans, ended=ended)


def _plan(settings: Settings, product_id: str) -> str:
    product = settings.product(product_id)
    return product.name if product is not None else "VPN server"


def _why(s: Session, server_id: int, where: standing.Standing) -> str:
    actor = s.scalar(select(ServerEvent.actor).where(ServerEvent.server_id == server_id,
                                                     ServerEvent.what == "destroy.requested")
                     .order_by(ServerEvent.id.desc()).limit(1))
    if actor and history.who(actor) == "support":
        return "support"
    if where.status == "cancelled" or where.status == "canceled":
        return "cancelled"
    return "payment_failed" if where.status in standing.PAYMENT_FAILED else "expired"


# --- history ------------------------------------------------------------------------------------

@router.get("/servers/{name}/history", response_model=HistoryOut, responses=responses(*AUTHED, 404, 422),
            summary="What happened to the server, in plain words, newest first (paged)")
def server_history(name: str = ServerName,  # noqa: B008
                   before: int | None = Query(None, ge=1, le=2**62, description="next_before of the previous page"),
                   limit: int = Query(HISTORY_PAGE, ge=1, le=100),
                   who: Customer = Depends(customer), st: ApiState = Depends(state)) -> HistoryOut:  # noqa: B008
    with st.app.sessions() as s:
        row = scoped.owned(s, st, who, name).row
        found, more = page(s, row.id, before, limit)
    return HistoryOut(items=[HistoryItemOut(id=i.id, at=i.at, kind=i.kind, by=i.by, params=i.params,  # type: ignore[arg-type]
                                            text=text(i)) for i in found],
                      next_before=found[-1].id if more and found else None)


def page(s: Session, server_id: int, before: int | None, limit: int) -> tuple[list[history.Item], bool]:
    """Up to ``limit`` items older than event ``before``, and whether there may be more."""
    shown = or_(ServerEvent.what.in_(history.WHATS),
                and_(ServerEvent.outcome == "failed", ServerEvent.detail.like(history.NEEDS_A_HUMAN + "%")))
    items: list[history.Item] = []
    cursor = before
    batch = limit * 2
    while True:
        q = (select(ServerEvent.id, ServerEvent.at, ServerEvent.actor, ServerEvent.what, ServerEvent.outcome,
                    ServerEvent.detail)
             .where(ServerEvent.server_id == server_id, shown, *([ServerEvent.id < cursor] if cursor else []))
             .order_by(ServerEvent.id.desc()).limit(batch))
        rows = s.execute(q).all()
        for r in rows:
            made = history.item(r.id, r.at, r.actor, r.what, r.outcome, r.detail)
            if made is not None:
                items.append(made)
                if len(items) == limit:
                    return items, True
        if len(rows) < batch:
            return items, False
        cursor = rows[-1].id


# --- usage --------------------------------------------------------------------------------------

@router.get("/servers/{name}/usage", response_model=UsageOut, responses=responses(*AUTHED, 404),
            summary="Data used per day this month (UTC days, as the provider counts them)")
def usage(name: str = ServerName, who: Customer = Depends(customer),  # noqa: B008
          st: ApiState = Depends(state)) -> UsageOut:  # noqa: B008
    now = st.clock()
    month = bandwidth.month_of(now)
    with st.app.sessions() as s:
        row = scoped.owned(s, st, who, name).row
        days = bandwidth.usage_days(s, row.id, month)
    product = st.settings.product(row.product_id)
    first, today = dt.date.fromisoformat(f"{month}-01"), now.astimezone(dt.UTC).date()
    every = [first + dt.timedelta(days=i) for i in range((today - first).days + 1)]
    used = row.bandwidth_this_month if row.bandwidth_month in (None, month) else 0
    return UsageOut(month=month, used=used or 0,
                    cap=row.bandwidth_limit_this_month or (product.bandwidth_cap_bytes if product else 0),
                    days=[UsageDay(day=d, bytes=days.get(d, 0)) for d in every])
