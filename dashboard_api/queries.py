"""Customer-scoped reads: every query the API makes about servers starts here.

A customer is their storefront account (a dashboard token's ``sub``: the WordPress user id
for EDD, the Stripe customer id for Stripe), compared exactly on
``ix_provisioner_servers_account``. The e-mail address is not an identity: it changes, and
whoever holds an old address must not see the servers. Rows without an account (guest
checkouts) belong to nobody until the storefront gives them one; the planner keeps
``account_id`` in step with the storefront on every pass.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, String, bindparam, select, union_all
from sqlalchemy.orm import Session, defer

from provisioner.models import Server, ServerEvent, Status

GUESTS = ("", "0")     # a token for "no account" (WordPress's user id 0) owns nothing


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


@functools.lru_cache(maxsize=1)
def _servers_query() -> Select[tuple[Server, bool]]:
    # Built once: building the statement costs more than running it. A customer has a
    # handful of rows; Python sorts them.
    return (select(Server, Server.ovpn_file_enc.is_not(None))
            .where(Server.account_id == bindparam("account", type_=String))
            .options(defer(Server.ovpn_file_enc), defer(Server.secrets_enc), defer(Server.root_password_enc)))


def customer_servers_query(account: str) -> Select[tuple[Server, bool]]:
    return _servers_query().params(account=account)


def customer_servers(session: Session, account: str) -> list[Owned]:
    """The account's servers that still exist, and those support took down until further notice
    (other Destroyed rows are kept for audit, not shown)."""
    if account in GUESTS:
        return []
    result = session.execute(_servers_query(), {"account": account}).tuples()
    found = [Owned(row, bool(has)) for row, has in result]
    return sorted((o for o in found if o.row.status != Status.DESTROYED.value or o.row.on_hold),
                  key=lambda o: o.row.id)


def customer_server(session: Session, account: str, name: str, domain: str) -> Owned | None:
    """One of the account's servers by DNS name or short name; anyone else's is None, like a
    missing one, so a guess cannot tell "exists" from "not yours"."""
    wanted = name.lower()
    for owned in customer_servers(session, account):
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
