"""The month a byte belongs to, and carrying an old instance's bytes into it.

**The UTC calendar month of the UTC day Vultr counted it in.** Vultr reports
``GET /instances/{id}/bandwidth`` per UTC date (REFERENCE §1.6) and its own monthly
allowance follows the same calendar, so a server's counter month is the UTC month of
"now". The hourly sync (:mod:`jobs.bandwidth`) and a rebuild's ``carry`` step both use
these functions, so the two can never disagree about which month they are filling.

``bandwidth_this_month = bandwidth_carried + the current instance's total this month``;
``bandwidth_carried`` holds the earlier instances of this month, added by each rebuild.

The customer's usage chart needs the days too: :func:`record_days` keeps each instance's
per-day totals of the month (the sync for the current instance, the ``carry`` step for the
one a rebuild retires), replacing its own earlier numbers, so a day is never counted twice;
:func:`usage_days` adds up a server's instances per day.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from provisioner.models import BandwidthDay, Server


def month_of(now: dt.datetime) -> str:
    """The counter month of an instant: its UTC ``YYYY-MM``."""
    return now.astimezone(dt.UTC).strftime("%Y-%m")


def month_total(days: Mapping[dt.date, tuple[int, int]], month: str) -> int:
    """In + out bytes of the UTC days belonging to ``month``."""
    return sum(i + o for day, (i, o) in days.items() if day.strftime("%Y-%m") == month)


def carry(row: Server, days: Mapping[dt.date, tuple[int, int]], now: dt.datetime) -> int:
    """Add a retired instance's bytes of this month to the row's carried total; return them.

    A month that began before any sync noticed starts here (the sync's roll-over then
    keeps the carried bytes and resets the rest)."""
    month = month_of(now)
    used = month_total(days, month)
    if row.bandwidth_month != month:
        row.bandwidth_month, row.bandwidth_carried = month, 0
        row.bandwidth_this_month, row.bandwidth_alerted = 0, 0
    row.bandwidth_carried += used
    row.bandwidth_this_month = max(row.bandwidth_this_month, row.bandwidth_carried)
    return used


def record_days(session: Session, server_id: int, instance_id: str, days: Mapping[dt.date, tuple[int, int]],
                month: str) -> None:
    """Keep one instance's in + out bytes per day of ``month`` (the caller commits)."""
    wanted = {day: i + o for day, (i, o) in days.items() if day.strftime("%Y-%m") == month}
    if not wanted:
        return
    stored = {r.day: r for r in session.scalars(select(BandwidthDay).where(
        BandwidthDay.server_id == server_id, BandwidthDay.instance_id == instance_id,
        BandwidthDay.day.in_(list(wanted))))}
    for day, total in wanted.items():
        row = stored.get(day)
        if row is None:
            session.add(BandwidthDay(server_id=server_id, instance_id=instance_id, day=day, bytes=total))
        elif row.bytes != total:
            row.bytes = total


def usage_days(session: Session, server_id: int, month: str) -> dict[dt.date, int]:
    """Bytes per UTC day of ``month`` (all the server's instances), for the days that have any."""
    first = dt.date.fromisoformat(f"{month}-01")
    after = (first + dt.timedelta(days=32)).replace(day=1)
    q = (select(BandwidthDay.day, func.sum(BandwidthDay.bytes))
         .where(BandwidthDay.server_id == server_id, BandwidthDay.day >= first, BandwidthDay.day < after)
         .group_by(BandwidthDay.day))
    return {day: int(total or 0) for day, total in session.execute(q)}
