"""Carrying out plans and requests: start actions on rows, find the rows that are due, and
drive rows forward.

The worker's planning tick starts a plan's actions (:func:`start_plan`) and the leader
starts the rebuilds customers asked for as soon as they are due
(:func:`start_requested_rebuilds`); the worker's driver (:mod:`jobs.driver`) finds due rows
with :func:`due_rows` and advances each in its own thread. ``provisioner check --apply``
and the operator commands use :func:`drive` (one step each) or
:func:`jobs.driver.drive_until_idle` (the worker's driver, to the end) to carry their own rows
in the foreground. One server's failure never stops the others.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
from collections.abc import Callable, Collection, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import BindParameter, Connection, Engine, Integer, Select, bindparam, case, func, or_, select
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.exc import StaleDataError

from provisioner import access, actions
from provisioner.actions import ServerBusy
from provisioner.lifecycle import Lifecycle, Outcome
from provisioner.models import REBUILDABLE, Server, Status, as_utc
from provisioner.planning import CrossCheck
from provisioner.reconcile import CROSS_CHECK, Hold, Plan
from provisioner.subscriptions import Subscription

log = logging.getLogger(__name__)


@dataclass
class Applied:
    started: dict[str, list[str]] = field(default_factory=lambda: {"build": [], "destroy": [], "rebuild": []})
    outcomes: dict[int, Outcome] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)
    held: list[Hold] = field(default_factory=list)      # destroys the second source did not confirm
    lost_leadership: bool = False                        # stopped: the leader lock was gone


def start_plan(lc: Lifecycle, p: Plan, cross_check: CrossCheck | None = None,
               still_leader: Callable[[], bool] | None = None) -> Applied:
    """Record the plan's actions on the rows (the new servers together, :data:`BUILD_BATCH` to a
    commit; each destroy and rebuild in a commit of its own); returns what was started.

    ``cross_check`` confirms a destroy with a second source (Stripe behind EDD): True lets
    it go ahead; False (the second source says the subscription is live) or None (it cannot
    tell right now) holds it until a later pass. ``still_leader`` is asked before every
    record: once it says no, nothing more is recorded (a worker that lost its leader lock
    mid-pass must not act on its plan).
    """
    applied = Applied()

    def leading() -> bool:
        if still_leader is None or still_leader():
            return True
        applied.lost_leadership = True
        return False

    with lc.ctx.sessions() as s:
        for start in range(0, len(p.build), BUILD_BATCH):
            if not _record_builds(lc, s, p.build[start:start + BUILD_BATCH], applied, leading):
                return applied
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
                    applied.held.append(Hold(state.id, state.label, state.subscription_id, CROSS_CHECK,
                                             f"the storefront says subscription {ended.id} ended, but {why}"))
                    if not leading():
                        return applied
                    lc.event(s, doomed, "destroy.held", "info", f"cross-check: {why}", actor="planner")
                    s.commit()
                    continue
            if not leading():
                return applied
            try:
                doomed.planned_destroy_at = lc.clock()     # the circuit breaker's window counts these
                approved = " (approved by an operator)" if state.destroy_approved else ""
                lc.begin_destroy(s, doomed, actor="planner",
                                 reason=f"subscription {doomed.subscription_id} ended{approved}")
                s.commit()
                applied.started["destroy"].append(state.label)
            except StaleDataError as exc:
                s.rollback()
                applied.refused.append(f"destroy {state.label}: {exc}")
        for state in p.rebuild:
            if not leading():
                return applied
            asked = s.get(Server, state.id)
            if asked is not None:
                _start_requested(lc, s, asked, applied)
    return applied


# A plan's new servers are recorded this many to a transaction. One commit per row made a burst of
# sales trickle in: as soon as the first rows were committed, their drive threads kept SQLite's
# write lock busy, and the planner's next commit waited in the busy handler's back-off each time
# (100 sales: the last row recorded ~19 s after the sale, against ~0.3 s for all of them at once).
BUILD_BATCH = 200


def _record_builds(lc: Lifecycle, s: Session, subs: list[Subscription], applied: Applied,
                   leading: Callable[[], bool]) -> bool:
    """Record these builds in one commit; False (and none of them recorded) once the leader lock
    is gone. A subscription that already has a server is refused alone; a stale write (another
    process changed one of the rows) makes the batch fall back to one commit per build, so it
    refuses only the row it concerns."""
    rows: list[Server] = []
    refused: list[str] = []
    try:
        for sub in subs:
            if not leading():
                s.rollback()
                return False
            try:
                rows.append(lc.begin_create(s, sub))
            except ServerBusy as exc:      # raised before the row is touched: the batch goes on
                refused.append(f"build {sub.id}: {exc}")
        if not leading():
            s.rollback()
            return False
        s.commit()
    except StaleDataError:
        s.rollback()
        return _record_each(lc, s, subs, applied, leading)
    applied.started["build"].extend(row.server_name or f"#{row.id}" for row in rows)
    applied.refused.extend(refused)
    return True


def _record_each(lc: Lifecycle, s: Session, subs: list[Subscription], applied: Applied,
                 leading: Callable[[], bool]) -> bool:
    for sub in subs:
        if not leading():
            return False
        try:
            row = lc.begin_create(s, sub)
            s.commit()
            applied.started["build"].append(row.server_name or f"#{row.id}")
        except (ServerBusy, StaleDataError) as exc:
            s.rollback()
            applied.refused.append(f"build {sub.id}: {exc}")
    return True


def start_requested_rebuilds(lc: Lifecycle, now: dt.datetime) -> list[str]:
    """Start every rebuild a customer (or the schedule) asked for whose time has come; one
    indexed query when there is none, so the leader can ask every second."""
    ids = _ids(lc.ctx.sessions, _requested_rebuilds(), {"now": now})
    if not ids:
        return []
    with lc.ctx.sessions() as s:
        applied = Applied()
        for rid in ids:
            row = s.get(Server, rid)
            if row is not None:
                _start_requested(lc, s, row, applied)
    for line in applied.refused:
        log.warning("rebuild request: %s", line)
    return applied.started["rebuild"]


def start_customer_changes(lc: Lifecycle, now: dt.datetime) -> list[str]:
    """Start a ``sync`` for every Running, idle server with changes its customer made (a revoked
    device, SSH keys, key-only login), and a ``restart`` for every one whose customer asked for
    it: two cheap indexed queries when there is none, so the leader asks every second. A server
    that is busy now (a rebuild) is found again once it is idle: its change is still pending."""
    syncs = _ids(lc.ctx.sessions, _customer_changes("sync"))
    restarts = _ids(lc.ctx.sessions, _customer_changes("restart"))
    if not syncs and not restarts:
        return []
    with lc.ctx.sessions() as s:
        return _begin_each(lc, s, [(r, actions.begin_sync) for r in syncs] +
                           [(r, actions.begin_restart) for r in restarts if r not in syncs])


def _ids(sessions: sessionmaker[Session], query: Select[Any], params: dict[str, Any] | None = None) -> list[int]:
    """The ids a check asked every second finds, read on a connection: most often there are none,
    and an ORM session costs more than the query. A session is opened only to act on them."""
    with _connection(sessions) as conn:
        return list(conn.execute(query, params).scalars())


# The leader asks these every second: built once (building a statement costs more than running it).
@functools.lru_cache(maxsize=1)
def _requested_rebuilds() -> Select[Any]:
    now: BindParameter[dt.datetime] = bindparam("now")
    return select(Server.id).where(
        Server.rebuild_now_status.is_(True), or_(Server.rebuild_due_at.is_(None), Server.rebuild_due_at <= now),
        # the busy rule (models.is_idle): a request waits quietly until its server is idle
        Server.action.is_(None), Server.status.in_(REBUILDABLE), Server.paused.is_(False),
        Server.needs_human.is_(False))


@functools.lru_cache(maxsize=2)
def _customer_changes(kind: str) -> Select[Any]:
    pending = Server.access_pending_since.is_not(None) if kind == "sync" else Server.restart_pending.is_(True)
    return select(Server.id).where(pending, *_IDLE_RUNNING)


def start_protocol_gains(lc: Lifecycle) -> list[str]:
    """Start a ``sync`` for every Running, idle server whose product offers a protocol its
    instance lacks (an operator added WireGuard): the sync installs it from the stored keys.
    Only a settings change (a restart) makes new ones, and the query scans the running rows of
    such products, so it runs with each planning pass, not every second; a server busy now is
    found again at a later pass."""
    with lc.ctx.sessions() as s:
        ids = list(s.scalars(select(Server.id).where(access.gaining(lc.ctx.settings), *_IDLE_RUNNING)))
        return _begin_each(lc, s, [(r, actions.begin_sync) for r in ids])


# Running and idle: where a sync or a restart may start (the busy rule, models.is_idle).
_IDLE_RUNNING = (Server.action.is_(None), Server.status == Status.RUNNING.value, Server.paused.is_(False),
                 Server.needs_human.is_(False))


def _begin_each(lc: Lifecycle, s: Session, starts: list[tuple[int, Callable[..., Any]]]) -> list[str]:
    started: list[str] = []
    for rid, begin in starts:
        row = s.get(Server, rid)
        if row is None:
            continue
        try:
            begin(s, lc.ctx.settings, row, actor="customer", now=lc.clock())
            s.commit()
            started.append(row.server_name or f"#{rid}")
        except (ServerBusy, StaleDataError) as exc:
            s.rollback()
            log.info("customer change on %s not started yet: %s", row.server_name or f"#{rid}", exc)
    return started


def _start_requested(lc: Lifecycle, s: Session, row: Server, applied: Applied) -> None:
    label = row.server_name or f"#{row.id}"
    actor = "customer" if row.rebuild_due_at is None else "scheduler"
    try:
        actions.begin_requested_rebuild(s, lc.ctx.settings, row, actor=actor, now=lc.clock())
        s.commit()
        applied.started["rebuild"].append(label)
    except (ServerBusy, actions.NotOffered, StaleDataError) as exc:
        s.rollback()
        applied.refused.append(f"rebuild {label}: {exc}")


# 1 for a row whose next step creates its instance (a new create, or a rebuild's new
# generation), 0 for one already past that.
_NOT_STARTED = case((Server.step.in_(("prepare", "instance")), 1), (Server.step.is_(None), 1), else_=0)


_LONG_AGO = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def due_rows(sessions: sessionmaker[Session], now: dt.datetime, *, limit: int | None = None,
             exclude: Collection[int] = ()) -> list[int]:
    """Rows with an action whose next attempt is due and that no live lease holds (one query
    on ``ix_provisioner_servers_due``): servers already under way first, then new creates,
    each soonest first. A server past its create is a boot poll, an install or a DNS write
    away from running; taking it before starting another create keeps every provider's
    limit busy (creates queue on Vultr's while finished boots feed SSH and Cloudflare).
    ``exclude``: rows the caller is working on, left out."""
    skip = set(exclude)
    fetch = None if limit is None else limit + len(skip)
    with _connection(sessions) as conn:
        ids = conn.execute(_due_rows(fetch is not None), _due_params(now, fetch)).scalars()
        return [rid for rid in ids if rid not in skip][:limit]


def due_rows_query(now: dt.datetime, *, limit: int | None = None) -> Select[Any]:
    """The statement :func:`due_rows` runs, with its values bound (tests and benchmarks EXPLAIN it)."""
    return _due_rows(limit is not None).params(_due_params(now, limit))


# The driver asks for due rows and the next due time after every finished step: building the
# statement each time (and its cache key) cost more of a busy worker's CPU than running it.
# So they are built once per shape, their values bound at execution. The rows the driver is
# working on are left out in Python, not by "id NOT IN (...)": most of them hold a live lease,
# which the query already skips, and expanding a hundred ids into the statement on every pass
# cost more than the query. The connection comes from the engine, without an ORM session.
def _due_params(now: dt.datetime, limit: int | None) -> dict[str, Any]:
    return {"now": now, "limit": limit}


def _connection(sessions: sessionmaker[Session]) -> Connection:
    return cast(Engine, sessions.kw["bind"]).connect()


@functools.lru_cache(maxsize=2)
def _due_rows(limited: bool) -> Select[Any]:
    # COALESCE, not "IS NULL OR <=": with the OR, SQLite (without ANALYZE statistics, i.e.
    # always in practice) walks ix_next_attempt, where every idle row sits at NULL, instead of
    # the range of rows with an action on ix_due: 50 ms instead of 0.3 ms at 100,000 rows.
    now: BindParameter[dt.datetime] = bindparam("now")
    q = (select(Server.id).where(
        Server.action.is_not(None), Server.needs_human.is_(False), Server.paused.is_(False),
        func.coalesce(Server.next_attempt_at, _LONG_AGO) <= now,
        or_(Server.lease_until.is_(None), Server.lease_until <= now))
        .order_by(_NOT_STARTED, Server.next_attempt_at, Server.id))
    if limited:
        q = q.limit(bindparam("limit", type_=Integer))
    return q


def next_due_at(sessions: sessionmaker[Session], now: dt.datetime, *,
                exclude: Collection[int] = ()) -> dt.datetime | None:
    """When the soonest waiting row (a boot poll, a backoff) that nobody works on becomes due;
    ``exclude``: rows the caller is working on."""
    skip = set(exclude)
    with _connection(sessions) as conn:
        for rid, at in conn.execute(_next_due(), _due_params(now, len(skip) + 1)):
            if rid not in skip:
                return as_utc(at)
    return None


def next_due_query(now: dt.datetime, *, exclude: Collection[int] = ()) -> Select[Any]:
    """The statement :func:`next_due_at` runs, with its values bound (at most this many rows)."""
    return _next_due().params(_due_params(now, len(set(exclude)) + 1))


@functools.cache
def _next_due() -> Select[Any]:
    # "IS NOT NULL" lets SQLite start its walk of ix_next_attempt past the idle rows' NULLs (every
    # one of them, checked row by row otherwise: 90 ms at 100k). In index order, the first rows
    # are the soonest: as many as the caller leaves out, plus one.
    now: BindParameter[dt.datetime] = bindparam("now")
    return (select(Server.id, Server.next_attempt_at).where(
        Server.next_attempt_at.is_not(None),
        Server.action.is_not(None), Server.needs_human.is_(False), Server.paused.is_(False),
        or_(Server.lease_until.is_(None), Server.lease_until <= now))
        .order_by(Server.next_attempt_at).limit(bindparam("limit", type_=Integer)))


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


def pending(lc: Lifecycle, watched: set[int] | None) -> bool:
    """Whether any row (of ``watched``, None: any) has an action under way that no human holds."""
    with lc.ctx.sessions() as s:
        q = select(Server.id).where(Server.action.is_not(None), Server.needs_human.is_(False),
                                    Server.paused.is_(False))
        rows = set(s.scalars(q))
    return bool(rows if watched is None else rows & watched)
