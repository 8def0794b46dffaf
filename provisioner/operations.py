"""Carrying out plans and operator requests: start actions, then drive rows forward.

Used by ``provisioner check --apply``, the operator commands and the worker's tick. Each
server is driven in its own thread with its own database session; one server's failure
never stops the others.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm.exc import StaleDataError

from provisioner.lifecycle import Lifecycle, Outcome, ServerBusy
from provisioner.models import Server
from provisioner.reconcile import Plan
from provisioner.steps import PermanentStepError
from provisioner.subscriptions import Subscription

log = logging.getLogger(__name__)


@dataclass
class Applied:
    started: dict[str, list[str]] = field(default_factory=lambda: {"build": [], "destroy": [], "rebuild": []})
    outcomes: dict[int, Outcome] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)


CrossCheck = Callable[[Subscription], bool | None]


def start_plan(lc: Lifecycle, p: Plan, cross_check: CrossCheck | None = None) -> Applied:
    """Record the plan's actions on the rows (one commit each); returns what was started.

    ``cross_check`` confirms a destroy with a second source (Stripe behind EDD): True lets
    it go ahead; False (the second source says the subscription is live) or None (it cannot
    tell right now) holds it until a later pass.
    """
    applied = Applied()
    with lc.ctx.sessions() as s:
        for sub in p.build:
            try:
                row = lc.begin_create(s, sub)
                s.commit()
                applied.started["build"].append(row.server_name or f"#{row.id}")
            except (ServerBusy, StaleDataError) as exc:
                s.rollback()
                applied.refused.append(f"build {sub.id}: {exc}")
        for state in p.destroy:
            doomed = s.get(Server, state.id)
            if doomed is None:
                continue
            ended = p.ended.get(state.id)
            if cross_check is not None and ended is not None and ended.profile_id.startswith("sub_"):
                verdict = cross_check(ended)
                if verdict is not True:
                    why = "Stripe says it is still live" if verdict is False else "Stripe could not confirm it"
                    applied.refused.append(f"destroy {state.label}: the storefront says subscription {ended.id} ended, "
                                           f"but {why}; holding")
                    lc.event(s, doomed, "destroy.held", "info", f"cross-check: {why}", actor="planner")
                    s.commit()
                    continue
            try:
                lc.begin_destroy(s, doomed, actor="planner", reason=f"subscription {doomed.subscription_id} ended")
                s.commit()
                applied.started["destroy"].append(state.label)
            except StaleDataError as exc:
                s.rollback()
                applied.refused.append(f"destroy {state.label}: {exc}")
        for state in p.rebuild:
            asked = s.get(Server, state.id)
            if asked is None:
                continue
            actor = "customer" if asked.rebuild_due_at is None else "scheduler"
            try:
                try:
                    lc.begin_rebuild(s, asked, asked.rebuild_now_location, actor=actor)
                except ValueError as exc:  # a location no longer offered: never retry it forever
                    applied.refused.append(f"rebuild {state.label}: {exc}; rebuilding in a random location")
                    lc.begin_rebuild(s, asked, "random", actor=actor)
                s.commit()
                applied.started["rebuild"].append(state.label)
            except (ServerBusy, ValueError, PermanentStepError, StaleDataError) as exc:
                s.rollback()
                applied.refused.append(f"rebuild {state.label}: {exc}")
    return applied


def due_rows(lc: Lifecycle, now: dt.datetime) -> list[int]:
    """Rows with an action whose next attempt is due and that no live lease holds."""
    with lc.ctx.sessions() as s:
        q = select(Server.id, Server.next_attempt_at, Server.lease_until).where(
            Server.action.is_not(None), Server.needs_human.is_(False), Server.paused.is_(False))
        return [rid for rid, nxt, lease in s.execute(q)
                if (nxt is None or nxt <= now) and (lease is None or lease <= now)]


def drive(lc: Lifecycle, ids: Iterable[int], threads: int = 8) -> dict[int, Outcome]:
    ids = sorted(set(ids))
    if not ids:
        return {}
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(ids))), thread_name_prefix="server") as pool:
        futures = {rid: pool.submit(_advance_safely, lc, rid) for rid in ids}
        return {rid: f.result() for rid, f in futures.items()}


def _advance_safely(lc: Lifecycle, rid: int) -> Outcome:
    try:
        return lc.advance(rid)
    except Exception:  # noqa: BLE001 - one server's bug must not stop the others; it is logged
        log.exception("server #%s: unexpected error while advancing", rid)
        return Outcome.FAILED


def drive_until_idle(lc: Lifecycle, ids: Iterable[int] | None = None, timeout: float = 300.0,
                     threads: int = 8) -> dict[int, Outcome]:
    """Keep driving (polling waits) until every row is done or needs a human, or timeout."""
    deadline = time.monotonic() + timeout
    watched = set(ids) if ids is not None else None
    outcomes: dict[int, Outcome] = {}
    while time.monotonic() < deadline:
        now = lc.clock()
        due = due_rows(lc, now)
        if watched is not None:
            due = [r for r in due if r in watched]
        outcomes.update(drive(lc, due, threads))
        if not _pending(lc, watched):
            break
        time.sleep(min(0.2, lc.ctx.settings.lifecycle.poll_seconds))
    return outcomes


def _pending(lc: Lifecycle, watched: set[int] | None) -> bool:
    with lc.ctx.sessions() as s:
        q = select(Server.id).where(Server.action.is_not(None), Server.needs_human.is_(False),
                                    Server.paused.is_(False))
        rows = set(s.scalars(q))
    return bool(rows if watched is None else rows & watched)
