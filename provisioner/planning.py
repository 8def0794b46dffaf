"""One planning pass: read what we run and what the storefront says, and decide.

:func:`provisioner.reconcile.plan` decides (pure); this module gathers its inputs from the
database and the storefront, and knows the planner's policy and the optional second
opinion before a destroy (Stripe behind EDD). The leader runs a pass every tick and
whenever someone asks for one (:func:`request`), e.g. a Stripe webhook that just told us
about a new subscription.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import json
import logging
import operator
from collections.abc import Callable, Iterator
from typing import Any, cast

from sqlalchemy import ColumnElement, Connection, DateTime, and_, case, null, select, type_coerce
from sqlalchemy.orm import Session, sessionmaker

from provisioner.models import DestroyHold, Server, WorkerStatus
from provisioner.reconcile import BREAKER, Plan, Policy, ServerRow, ServerState, plan_rows, server_state
from provisioner.settings.schema import Settings
from provisioner.storefront import Storefront
from provisioner.subscriptions import StorefrontUnavailable, Subscription, SubscriptionRows

log = logging.getLogger(__name__)

CrossCheck = Callable[[Subscription], bool | None]
REQUESTED = "plan_requested"    # a WorkerStatus row: someone wants a pass before the next tick


def policy(settings: Settings) -> Policy:
    p = settings.planner
    return Policy(max_destroy_count=p.max_destroy_count, max_destroy_fraction=p.max_destroy_fraction,
                  destroy_grace=dt.timedelta(hours=p.destroy_grace_hours), products=frozenset(settings.products),
                  breaker_window=dt.timedelta(hours=p.breaker_window_hours), min_read_fraction=p.min_read_fraction)


# The planner's columns of our servers table, in the order of a ServerRow, and nothing else:
# full rows would drag every server's sealed PKI and .ovpn along. Times are read as the naive
# UTC the database holds (no per-row conversion); the planner compares them with "now" once.
_servers = Server.__table__.c
_holds = DestroyHold.__table__.c
PLANNER_COLUMNS = (
    _servers.id, _servers.server_name, _servers.subscription_id, _servers.status, _servers.action,
    type_coerce(_servers.step_deadline, DateTime()), _servers.rebuild_now_status, _servers.paused,
    _servers.needs_human, type_coerce(_servers.rebuild_due_at, DateTime()),
    type_coerce(_servers.ended_seen_at, DateTime()), type_coerce(_servers.planned_destroy_at, DateTime()),
    _holds.approved_at.is_not(None), _servers.user_email, _servers.account_id,
    _servers.operator_hold_at.is_not(None), null(),
)


# What most rows hold: nothing in progress, nothing asked for, nothing held. The scan reads six
# columns and this condition's outcome; the other rows' planner columns follow by
# primary key (the drivers make a Python value of every column, NULLs too: on MariaDB 17 columns a
# row cost ~2.5x the time of 7; a second scan of the table would cost the server a second pass).
_QUIET = and_(_servers.action.is_(None), _servers.step_deadline.is_(None), _servers.rebuild_now_status.is_(False),
              _servers.paused.is_(False), _servers.needs_human.is_(False), _servers.rebuild_due_at.is_(None),
              _servers.ended_seen_at.is_(None), _servers.planned_destroy_at.is_(None),
              _servers.operator_hold_at.is_(None), _holds.approved_at.is_(None))
_QUIET_COLUMNS = (_servers.id, _servers.server_name, _servers.subscription_id, _servers.status, _servers.user_email,
                  _servers.account_id, case((_QUIET, 1), else_=0))
_BY_ID = 1000
_first = operator.itemgetter(0)


def server_rows(sessions: sessionmaker[Session]) -> list[ServerRow]:
    """Every server row as the planner's tuple (:data:`provisioner.reconcile.ServerRow`), in id
    order, through Core SELECTs of :data:`PLANNER_COLUMNS` (no ORM entity, no sealed column):
    one scan of six columns and whether the row is quiet (:data:`_QUIET`: its other columns are
    filled in with exactly the values the condition requires), then the other rows' planner
    columns by id. On SQLite too: the full-width read made a driver value and a result row
    object for each of 17 columns of every row (0.59 s at 100k against 0.41 s; and ~10 MB)."""
    approved = (_holds.server_id == _servers.id) & (_holds.reason_code == BREAKER)
    joined = Server.__table__.outerjoin(DestroyHold.__table__, approved)
    # No ORDER BY: it would keep the database from scanning a covering index instead of the
    # table (measured on MariaDB at 100k: 1.0 s vs 5.6 s); the rows are sorted here.
    q = select(*PLANNER_COLUMNS).select_from(joined)
    with sessions() as s:
        conn = s.connection()
        packed = _packed_scan(conn, approved) if conn.dialect.name in ("mysql", "mariadb") else None
        scan = packed if packed is not None else cast(
            list[tuple[Any, ...]], conn.execute(select(*_QUIET_COLUMNS).select_from(joined)).fetchall())
        scan.sort(key=_first)
        busy_ids = [r[0] for r in scan if not r[6]]
        busy: dict[int, ServerRow] = {}
        for start in range(0, len(busy_ids), _BY_ID):
            for r in conn.execute(q.where(_servers.id.in_(busy_ids[start:start + _BY_ID]))):
                busy[r[0]] = tuple(r)
    # The driver makes a new string of each row's status word; one of each is enough (~5 MB at 100k).
    words: dict[str, str] = {}
    word = words.setdefault
    return [(i, name, sub, word(status, status), None, None, False, False, False, None, None, None, 0, email,
             account, 0, None) if quiet else busy[i] for i, name, sub, status, email, account, quiet in scan]


# MySQL/MariaDB: PyMySQL spends ~7 us of Python on each row it reads, however few its columns
# (96k rows of the scan's 7 columns: 1.4 s; of one column: 0.7 s). The scan's rows are packed
# on the server instead, _PACK_ROWS to a value: fields joined by _FIELD, rows by _RECORD, a
# nullable field as "" for NULL or "v" and its value. 0.65 s for the same rows, parsing included.
_PACK_ROWS = 2000
_FIELD, _RECORD = "\x1f", "\x1e"
_PACK_LIMIT = 64 * 2**20     # group_concat_max_len: far above _PACK_ROWS rows; a cut value is caught below


def _packed_scan(conn: Connection, approved: ColumnElement[bool]) -> list[tuple[Any, ...]] | None:
    """The rows of the quiet scan (:data:`_QUIET_COLUMNS`), read packed; None when any packed
    value does not unpack to exactly its rows (a value holding a separator, a value cut at the
    server's length limit): the caller then reads them plainly."""
    def sql(expr: ColumnElement[Any]) -> str:
        return str(expr.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))

    servers, holds = Server.__tablename__, DestroyHold.__tablename__
    record = (f"CONCAT_WS(CHAR(31 USING utf8mb4), {servers}.id, IFNULL(CONCAT('v', {servers}.server_name), ''), "
              f"{servers}.subscription_id, {servers}.status, {servers}.user_email, "
              f"IFNULL(CONCAT('v', {servers}.account_id), ''), {sql(case((_QUIET, 1), else_=0))})")
    query = (f"SELECT COUNT(*), GROUP_CONCAT({record} SEPARATOR '{_RECORD}') "
             f"FROM {servers} LEFT OUTER JOIN {holds} ON {sql(approved)} GROUP BY {servers}.id DIV {_PACK_ROWS}")
    conn.exec_driver_sql(f"SET SESSION group_concat_max_len = {_PACK_LIMIT}")
    rows: list[tuple[Any, ...]] = []
    append = rows.append
    for count, packed in conn.exec_driver_sql(query):
        records = packed.split(_RECORD) if isinstance(packed, str) else []
        if len(records) != count:
            return None
        for one in records:
            fields = one.split(_FIELD)
            if len(fields) != 7:
                return None
            row_id, name, sub, status, email, account, quiet = fields
            append((int(row_id), name[1:] if name else None, sub, status, email, account[1:] if account else None,
                    1 if quiet == "1" else 0))
    return rows


def server_states(sessions: sessionmaker[Session]) -> list[ServerState]:
    """Every server as the planner sees it, as objects (for callers outside the pass)."""
    return [server_state(r) for r in server_rows(sessions)]


def read_rows(storefront: Storefront, now: dt.datetime) -> SubscriptionRows:
    """The storefront's subscriptions as rows: its own row reader when it has one (EDD), else
    its objects, each as a row. Raises StorefrontUnavailable."""
    reader = getattr(storefront, "read_rows", None)
    if reader is not None:
        rows = reader(now)
        assert isinstance(rows, SubscriptionRows)
        return rows
    return SubscriptionRows.of(storefront.read(now))


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic garbage collection while the pass reads its rows. Its hundreds of thousands of
    new tuples would start one full collection after another (measured: 1.2 s of a 1.5 s read
    at 100k subscriptions); they make no cycles, and plain reference counting frees them. The
    collector runs again as before afterwards."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def plan_pass(sessions: sessionmaker[Session], storefront: Storefront, settings: Settings,
              now: dt.datetime, on_read: Callable[[SubscriptionRows], None] | None = None
              ) -> tuple[Plan, str | None]:
    """One planning pass. Returns the plan and, if the storefront failed, why. ``on_read`` gets
    the subscriptions of a successful read (the worker keeps their standing for the dashboard)."""
    with collector_paused():
        # The rows die inside the pause: still alive when the collector is back, the first young-
        # generation collection would walk every one of their tuples (~0.1 s at 100k) to find
        # nothing, since they make no cycles.
        result, why = _plan_read(sessions, storefront, settings, now, on_read)
    if why is not None:
        return result, why
    if result.unconfigured:
        log.debug("ignoring %d subscription(s) of products not in [products]: %s", len(result.unconfigured),
                  ", ".join(result.unconfigured[:20]))
    return result, None


def _plan_read(sessions: sessionmaker[Session], storefront: Storefront, settings: Settings, now: dt.datetime,
               on_read: Callable[[SubscriptionRows], None] | None) -> tuple[Plan, str | None]:
    servers = server_rows(sessions)
    try:
        subs = read_rows(storefront, now)
    except StorefrontUnavailable as exc:
        return plan_rows(None, servers, now, policy(settings)), str(exc)
    if on_read is not None:
        on_read(subs)
    return plan_rows(subs, servers, now, policy(settings)), None


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
        at = s.scalar(_REQUESTED_AT)
    return at is not None and at > since


# Asked every second by the leader: built once.
_REQUESTED_AT = select(WorkerStatus.updated_at).where(WorkerStatus.name == REQUESTED)
