"""The month a byte belongs to, and carrying an old instance's bytes into it.

**The UTC calendar month of the UTC day Vultr counted it in.** Vultr reports
``GET /instances/{id}/bandwidth`` per UTC date (REFERENCE §1.6) and its own monthly
allowance follows the same calendar, so a server's counter month is the UTC month of
"now". The hourly sync (:mod:`jobs.bandwidth`) and a rebuild's ``carry`` step both use
these functions, so the two can never disagree about which month they are filling.

``bandwidth_this_month = bandwidth_carried + the current instance's total this month``;
``bandwidth_carried`` holds the earlier instances of this month, added by each rebuild.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

from provisioner.models import Server


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
