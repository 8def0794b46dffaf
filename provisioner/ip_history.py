"""Who held which public address when (the answer to an abuse or copyright notice).

A server's address changes with every rebuild, and addresses go back to the provider's pool
when an instance is deleted, so "203.0.113.7 at 14:02 UTC on the 3rd" can name different
customers on different days. The lifecycle records a holding in the same commit as the step
that learns or ends it:

- opened when the worker first sees an instance up at its address (``boot``);
- closed when that instance is deleted: a rebuild's ``retire`` (the old instance kept serving
  until then, so during a rebuild a server holds two addresses), a ``destroy``, or an instance
  found gone behind our back.

Closed holdings older than ``privacy.ip_history_days`` are deleted by the ``purge_ip_history``
job. Times are the worker's observations: a holding starts when the worker saw the instance
up (seconds after the provider assigned the address, before any customer traffic).
"""

from __future__ import annotations

import datetime as dt
import ipaddress

from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session

from provisioner.models import IpHolding, Server


def normalise(text: str) -> str:
    """An address as stored (IPv6 compressed, lower case); ValueError for anything else."""
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise ValueError(f"{text!r} is not an IPv4 or IPv6 address") from None


def opened(session: Session, row: Server, ip: str, instance_id: str | None, now: dt.datetime) -> None:
    """``row``'s instance is up at ``ip`` from ``now`` (a replayed step records it once)."""
    ip = normalise(ip)
    already = session.scalar(select(IpHolding.id).where(
        IpHolding.server_id == row.id, IpHolding.ip == ip, IpHolding.held_until.is_(None),
        IpHolding.instance_id == instance_id if instance_id else IpHolding.instance_id.is_(None)))
    if already is None:
        session.add(IpHolding(ip=ip, server_id=row.id, server_name=row.server_name,
                              subscription_id=row.subscription_id, customer_id=row.customer_id,
                              user_email=row.user_email, instance_id=instance_id, held_from=now))


def closed(session: Session, server_id: int, now: dt.datetime, instance_id: str | None = None) -> None:
    """The server's open holdings end at ``now``: those of one deleted instance, or all of them."""
    q = update(IpHolding).where(IpHolding.server_id == server_id, IpHolding.held_until.is_(None))
    if instance_id is not None:
        q = q.where(IpHolding.instance_id == instance_id)
    session.execute(q.values(held_until=now))


def holdings(session: Session, ip: str, at: dt.datetime | None = None) -> list[IpHolding]:
    """Every holding of ``ip``, oldest first; with ``at``, only those covering that moment
    (from ≤ at < until)."""
    q = select(IpHolding).where(IpHolding.ip == normalise(ip))
    if at is not None:
        q = q.where(IpHolding.held_from <= at, or_(IpHolding.held_until.is_(None), IpHolding.held_until > at))
    return list(session.scalars(q.order_by(IpHolding.held_from, IpHolding.id)))


def purge(session: Session, now: dt.datetime, days: int) -> int:
    """Delete holdings that ended more than ``days`` ago; how many went."""
    result = session.execute(delete(IpHolding).where(IpHolding.held_until < now - dt.timedelta(days=days)))
    return int(getattr(result, "rowcount", 0) or 0)
