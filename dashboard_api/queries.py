"""Customer-scoped reads: every query the API makes about servers starts here.

A customer is their storefront account (a dashboard token's ``sub``: the WordPress user id
for EDD, the Stripe customer id for Stripe), compared exactly on
``ix_provisioner_servers_account``. The e-mail address is not an identity: it changes, and
whoever holds an old address must not see the servers. Rows without an account (guest
checkouts) belong to nobody until the storefront gives them one; the planner keeps
``account_id`` in step with the storefront on every pass.

A customer sees their servers that still exist, and those support took down until further
notice (``operator_hold_at``); other Destroyed rows are kept for audit, not shown.
"""

from __future__ import annotations

import datetime as dt
import functools
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

from sqlalchemy import (
    ClauseElement,
    ColumnElement,
    Connection,
    Dialect,
    Select,
    String,
    bindparam,
    false,
    select,
    union_all,
)
from sqlalchemy.orm import Session
from sqlalchemy.sql.compiler import SQLCompiler

from provisioner.models import Server, ServerEvent, ServerSealed, Status, is_idle

GUESTS = ("", "0")     # a token for "no account" (WordPress's user id 0) owns nothing


def _owned_by() -> ColumnElement[bool]:
    return Server.account_id == bindparam("account", type_=String)


def owned_by(account: str) -> ColumnElement[bool]:
    """The account's rows, every status (a guest's token owns nothing)."""
    return false() if account in GUESTS else Server.account_id == account


def _shown(status: str, operator_hold_at: object) -> bool:
    return status != Status.DESTROYED.value or operator_hold_at is not None


@dataclass(frozen=True)
class Owned:
    """One of the customer's rows (its secret columns not loaded) and whether its .ovpn exists."""

    row: Server
    has_ovpn: bool


@dataclass(frozen=True, slots=True)
class ServerRow:
    """What the customer's reads need of one row: plain columns, no ORM object, no secrets.

    The read path (the page polls ``GET /api/servers``) builds these from one Core query
    on a pooled connection; the write routes use the ORM (:class:`Owned`) for its version
    fence. Both expose the attributes :mod:`dashboard_api.views` reads."""

    id: int
    server_name: str | None
    product_id: str
    status: str
    action: str | None
    step: str | None
    needs_human: bool
    rebuild_now_status: bool
    rebuild_now_location: str | None
    server_ip: str | None
    current_location: str | None
    rebuild_schedule: str
    rebuild_schedule_location: str
    bandwidth_this_month: int | None
    bandwidth_limit_this_month: int | None
    last_rebuilt_at: dt.datetime | None
    has_ovpn: bool
    paused: bool
    operator_hold_at: dt.datetime | None
    human_alerted_at: dt.datetime | None
    restart_pending: bool

    @property
    def busy(self) -> bool:
        return not is_idle(self.action, self.status) or bool(self.rebuild_now_status)

    @property
    def on_hold(self) -> bool:
        return self.operator_hold_at is not None


# Whether the server has its .ovpn, without reading it (the sealed tokens have their own table).
_HAS_OVPN = (select(ServerSealed.server_id)
             .where(ServerSealed.server_id == Server.id, ServerSealed.ovpn_file_enc.is_not(None)).exists())
# The id of the server's newest event: events are only ever appended, so it stands for the
# server's event list (see listing.py). One seek at the end of the server's range of
# ix_provisioner_server_events_server_id. MariaDB, left to itself, reads the server's every
# event through (server_id, at) and sorts them (measured: 2.4 ms for 5 servers with 1,000
# events each, against 0.5 ms when told the index); it optimises MAX() no better.
_EVENTS_BY_ID = "FORCE INDEX (ix_provisioner_server_events_server_id)"
_NEWEST_EVENT = (select(ServerEvent.id).where(ServerEvent.server_id == Server.id)
                 .with_hint(ServerEvent, _EVENTS_BY_ID, dialect_name="mysql")
                 .with_hint(ServerEvent, _EVENTS_BY_ID, dialect_name="mariadb")
                 .order_by(ServerEvent.id.desc()).limit(1).scalar_subquery())
_ROW_COLUMNS = (Server.id, Server.server_name, Server.product_id, Server.status, Server.action, Server.step,
                Server.needs_human, Server.rebuild_now_status, Server.rebuild_now_location, Server.server_ip,
                Server.current_location, Server.rebuild_schedule, Server.rebuild_schedule_location,
                Server.bandwidth_this_month, Server.bandwidth_limit_this_month, Server.last_rebuilt_at,
                _HAS_OVPN, Server.paused, Server.operator_hold_at, Server.human_alerted_at,
                Server.restart_pending,
                _NEWEST_EVENT)


class EventRow(TypedDict):
    at: dt.datetime | None
    what: str
    outcome: str


@functools.lru_cache(maxsize=1)
def _servers_query() -> Select[tuple[Server, bool]]:
    # Built once: building the statement costs more than running it. A customer has a
    # handful of rows; Python sorts them.
    return select(Server, _HAS_OVPN).where(_owned_by())


@functools.lru_cache(maxsize=1)
def _rows_query() -> Select[Any]:
    # The same WHERE as _servers_query (the same index range), only the columns the reads show.
    return select(*_ROW_COLUMNS).where(_owned_by())


def customer_servers_query(account: str) -> Select[Any]:
    """The statement the read path runs for ``account`` (tests and benchmarks EXPLAIN it)."""
    return _rows_query().params(account=account)


def customer_rows(conn: Connection, account: str) -> list[ServerRow]:
    """The account's servers to show, by id, as plain rows (one indexed query)."""
    return rows_of(fetch_customer_rows(conn, account))


def fetch_customer_rows(conn: Connection, account: str) -> list[tuple[Any, ...]]:
    """The driver's tuples of the account's rows (every status), in the columns of
    :data:`_ROW_COLUMNS`: everything the customer's reads show of a row, as stored."""
    if account in GUESTS:
        return []
    return _fetch(conn, _rows_query(), {"account": account})


def rows_of(fetched: list[tuple[Any, ...]]) -> list[ServerRow]:
    """:func:`fetch_customer_rows`'s tuples as the rows to show, by id."""
    found = [ServerRow(rid, name, product, status, action, step, bool(human), bool(rebuild), rebuild_at, ip, where,
                       schedule, schedule_at, int(used or 0), int(limit or 0), _utc(rebuilt), bool(ovpn),
                       bool(paused), _utc(held), _utc(alerted), bool(restart))
             for (rid, name, product, status, action, step, human, rebuild, rebuild_at, ip, where, schedule,
                  schedule_at, used, limit, rebuilt, ovpn, paused, held, alerted, restart, _newest_event)
             in fetched]
    found.sort(key=lambda r: r.id)
    return [r for r in found if _shown(r.status, r.operator_hold_at)]


@dataclass(frozen=True)
class _Compiled:
    sql: str
    positions: tuple[str, ...] | None   # the parameters' order for a positional paramstyle
    defaults: dict[str, Any]            # the statement's own values (its LIMIT)


@functools.lru_cache(maxsize=256)
def _compile(dialect: Dialect, statement: ClauseElement) -> _Compiled:
    compiled = statement.compile(dialect=dialect)
    assert isinstance(compiled, SQLCompiler)
    return _Compiled(compiled.string, tuple(compiled.positiontup or ()) if compiled.positional else None,
                     dict(compiled.params))


def _fetch(conn: Connection, statement: ClauseElement, params: dict[str, Any]) -> list[Any]:
    """Rows of a cached statement straight from the driver's cursor.

    The read path's two queries return a few dozen small rows; SQLAlchemy's result layer
    (row objects, type processors) cost more than the SQL itself, so these two run on the
    DBAPI cursor of the pooled connection, compiled once per dialect, and convert their own
    values (:func:`_utc`). Parameters are plain strings and integers."""
    c = _compile(conn.dialect, statement)
    values = {**c.defaults, **params}
    args: Any = tuple(values[name] for name in c.positions) if c.positions is not None else values
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(c.sql, args)
        return list(cursor.fetchall())
    except Exception:
        conn.invalidate()  # a broken connection must not go back to the pool
        raise
    finally:
        cursor.close()


def _utc(value: Any) -> dt.datetime | None:
    """A DATETIME column as aware UTC: SQLite hands back ISO text, MySQL naive datetimes."""
    if value is None:
        return None
    if isinstance(value, str):
        # SQLite's text has no offset: parsing it with "+00:00" is 4x cheaper than .replace(tzinfo=)
        # afterwards, and the read path converts ~60 of these per request.
        return dt.datetime.fromisoformat(value + "+00:00") if len(value) <= _NAIVE_TEXT else \
            dt.datetime.fromisoformat(value).astimezone(dt.UTC)
    result: dt.datetime = value.replace(tzinfo=dt.UTC)
    return result


_NAIVE_TEXT = len("2026-01-01 00:00:00.000000")  # the longest text SQLite's DATETIME stores without offset


def find_row(rows: Sequence[ServerRow], name: str, domain: str) -> ServerRow | None:
    """The row called ``name`` (DNS name or short name) among the customer's own, else None."""
    wanted = name.lower()
    for row in rows:
        full = (row.server_name or "").lower()
        if full and wanted in (full, full.removesuffix("." + domain.lower())):
            return row
    return None


def customer_servers(session: Session, account: str) -> list[Owned]:
    """The account's servers to show, as ORM rows (the write routes: the version fence)."""
    if account in GUESTS:
        return []
    result = session.execute(_servers_query(), {"account": account}).tuples()
    found = [Owned(row, bool(has)) for row, has in result]
    return sorted((o for o in found if _shown(o.row.status, o.row.operator_hold_at)), key=lambda o: o.row.id)


def customer_server(session: Session, account: str, name: str, domain: str) -> Owned | None:
    """One of the account's servers by DNS name or short name; anyone else's is None, like a
    missing one, so a guess cannot tell "exists" from "not yours"."""
    wanted = name.lower()
    for owned in customer_servers(session, account):
        full = (owned.row.server_name or "").lower()
        if full and wanted in (full, full.removesuffix("." + domain.lower())):
            return owned
    return None


def ovpn_token(conn: Connection | Session, server_id: int) -> str | None:
    found = select(ServerSealed.ovpn_file_enc).where(ServerSealed.server_id == server_id)
    token: str | None = conn.execute(found).scalar()
    return token


@functools.lru_cache(maxsize=64)
def _events_union(count: int, limit: int) -> Any:
    # Built once per server count: constructing a UNION of subqueries costs more than running it.
    # No outer ORDER BY: SQLite answers one with a MERGE of the parts, a temporary B-tree each;
    # Python sorts the few dozen rows (recent_events).
    cols = (ServerEvent.server_id, ServerEvent.at, ServerEvent.what, ServerEvent.outcome, ServerEvent.id)
    parts = [select(*cols).where(ServerEvent.server_id == bindparam(f"sid{i}"))
             .order_by(ServerEvent.at.desc(), ServerEvent.id.desc()).limit(limit).subquery()
             for i in range(count)]
    return union_all(*(select(*part.c) for part in parts)) if count > 1 else select(*parts[0].c)


def recent_events(conn: Connection | Session, server_ids: Sequence[int], limit: int = 10) -> dict[int, list[EventRow]]:
    """The last ``limit`` events of each server, newest first, in one statement: a UNION ALL of
    one index range per server (portable: no window functions, which MySQL 5.7 lacks).

    Each event is a plain ``{"at", "what", "outcome"}`` dict, as the API shows it."""
    out: dict[int, list[EventRow]] = {sid: [] for sid in server_ids}
    if not server_ids:
        return out
    q = _events_union(len(server_ids), limit)
    params = {f"sid{i}": sid for i, sid in enumerate(server_ids)}
    if isinstance(conn, Session):
        rows = [tuple(r) for r in conn.execute(q, params)]
    else:
        # Sorted on the driver's values (ISO text on SQLite sorts like the times), converted after.
        rows = _fetch(conn, q, params)
    rows.sort(key=_NEWEST, reverse=True)
    parse = dt.datetime.fromisoformat
    for sid, at, what, outcome, _id in rows:
        # _utc inlined for SQLite's usual text (50 of these a request)
        at = parse(at + "+00:00") if at.__class__ is str and len(at) <= _NAIVE_TEXT else _utc(at)
        out[sid].append({"at": at, "what": what, "outcome": outcome})
    return out


_NEWEST = operator.itemgetter(1, 4)   # (at, id)
