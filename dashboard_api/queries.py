"""Customer-scoped reads: every query the API makes about servers starts here.

A customer is their email, compared case-insensitively (ASCII case, as SQLite's ``lower()``
and MySQL's ``*_ci`` collations fold). A plain ``lower(user_email) = ?`` would scan the
table; instead the email's first letters in all their case variants become a few index
range scans on ``ix_provisioner_servers_user_email``, and the exact comparison filters those.
"""

from __future__ import annotations

import datetime as dt
import functools
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Select, String, and_, bindparam, func, or_, select, union_all
from sqlalchemy.orm import Session, defer

from provisioner.models import Server, ServerEvent, Status

PREFIX_CHARS = 3   # 2**3 = at most 8 index ranges


def ascii_lower(text: str) -> str:
    return text.translate(_LOWER)


_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _next_string(prefix: str) -> str:
    """The smallest string greater than every string starting with ``prefix``."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def _ranges(email: str) -> tuple[str, list[tuple[str, str]]]:
    wanted = ascii_lower(email)
    head = wanted[:PREFIX_CHARS] or " "
    variants = sorted({"".join(chars) for chars in itertools.product(*({c, c.upper()} for c in head))})
    return wanted, [(v, _next_string(v)) for v in variants]


def _owned_by(count: int) -> ColumnElement[bool]:
    ranges = [and_(Server.user_email >= bindparam(f"lo{i}", type_=String),
                   Server.user_email < bindparam(f"hi{i}", type_=String)) for i in range(count)]
    return and_(or_(*ranges), func.lower(Server.user_email) == bindparam("wanted", type_=String))


def owned_by(email: str) -> ColumnElement[bool]:
    """``Server.user_email`` equals ``email`` ignoring ASCII case, in a form that uses the index."""
    return _owned_by(len(_ranges(email)[1])).params(_params(email))


@dataclass(frozen=True)
class Owned:
    """One of the customer's rows (its secret columns not loaded) and whether its .ovpn exists."""

    row: Server
    has_ovpn: bool


@dataclass(frozen=True)
class EventRow:
    at: dt.datetime
    what: str
    outcome: str


@functools.lru_cache(maxsize=16)
def _servers_query(count: int) -> Select[tuple[Server, bool]]:
    # Built once per number of index ranges: building the statement costs more than running it.
    # No ORDER BY and no other filter in SQL: with them SQLite's planner prefers a rowid scan
    # of the whole table over the index ranges. A customer has a handful of rows; Python sorts.
    return (select(Server, Server.ovpn_file_enc.is_not(None))
            .where(_owned_by(count))
            .options(defer(Server.ovpn_file_enc), defer(Server.secrets_enc), defer(Server.root_password_enc)))


def customer_servers_query(email: str) -> Select[tuple[Server, bool]]:
    return _servers_query(len(_ranges(email)[1])).params(_params(email))


def _params(email: str) -> dict[str, str]:
    wanted, ranges = _ranges(email)
    return {"wanted": wanted, **{f"lo{i}": lo for i, (lo, _) in enumerate(ranges)},
            **{f"hi{i}": hi for i, (_, hi) in enumerate(ranges)}}


def customer_servers(session: Session, email: str) -> list[Owned]:
    """The customer's servers that still exist, and those support took down until further notice
    (other Destroyed rows are kept for audit, not shown)."""
    result = session.execute(_servers_query(len(_ranges(email)[1])), _params(email)).tuples()
    found = [Owned(row, bool(has)) for row, has in result]
    return sorted((o for o in found if o.row.status != Status.DESTROYED.value or o.row.on_hold),
                  key=lambda o: o.row.id)


def customer_server(session: Session, email: str, name: str, domain: str) -> Owned | None:
    """One of the customer's servers by DNS name or short name; anyone else's is None, like a
    missing one, so a guess cannot tell "exists" from "not yours"."""
    wanted = name.lower()
    for owned in customer_servers(session, email):
        full = (owned.row.server_name or "").lower()
        if full and wanted in (full, full.removesuffix("." + domain.lower())):
            return owned
    return None


def ovpn_token(session: Session, server_id: int) -> str | None:
    return session.scalar(select(Server.ovpn_file_enc).where(Server.id == server_id))


@functools.lru_cache(maxsize=64)
def _events_union(count: int, limit: int) -> Any:
    # Built once per server count: constructing a UNION of subqueries costs more than running it.
    cols = (ServerEvent.server_id, ServerEvent.at, ServerEvent.what, ServerEvent.outcome, ServerEvent.id)
    parts = [select(*cols).where(ServerEvent.server_id == bindparam(f"sid{i}"))
             .order_by(ServerEvent.at.desc(), ServerEvent.id.desc()).limit(limit).subquery()
             for i in range(count)]
    return union_all(*(select(*part.c) for part in parts)) if count > 1 else select(*parts[0].c)


def recent_events(session: Session, server_ids: Sequence[int], limit: int = 10) -> dict[int, list[EventRow]]:
    """The last ``limit`` events of each server, newest first, in one statement: a UNION ALL of
    one index range per server (portable: no window functions, which MySQL 5.7 lacks)."""
    out: dict[int, list[EventRow]] = {sid: [] for sid in server_ids}
    if not server_ids:
        return out
    q = _events_union(len(server_ids), limit)
    rows = session.execute(q, {f"sid{i}": sid for i, sid in enumerate(server_ids)}).tuples()
    for sid, at, what, outcome, _id in sorted(rows, key=lambda r: (r[1], r[4]), reverse=True):
        out[sid].append(EventRow(at=at, what=what, outcome=outcome))
    return out
