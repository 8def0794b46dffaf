"""When scheduled rebuilds are due: pure calendar maths in America/New_York.

daily   every day at 00:00 New York time
weekly  Sundays at 00:00
monthly the 1st of the month at 00:00

Midnight is never inside a New York DST change (those happen at 02:00), so a slot is a
well-defined instant. A slot is identified by its UTC start; a server records the last slot
it was rebuilt for, so a restart after downtime catches up once and never twice.
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

NEW_YORK = ZoneInfo("America/New_York")
SCHEDULES = ("none", "daily", "weekly", "monthly")


def _midnight(day: dt.date, tz: ZoneInfo) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(0, 0), tzinfo=tz).astimezone(dt.UTC)


def last_slot(schedule: str, now: dt.datetime, tz: ZoneInfo = NEW_YORK) -> dt.datetime | None:
    """The most recent slot start at or before ``now`` (aware UTC), or None for "none"."""
    if schedule == "none":
        return None
    local = now.astimezone(tz).date()
    if schedule == "daily":
        day = local
    elif schedule == "weekly":
        day = local - dt.timedelta(days=(local.weekday() + 1) % 7)  # back to Sunday
    elif schedule == "monthly":
        day = local.replace(day=1)
    else:
        raise ValueError(f"unknown schedule {schedule!r}; expected one of {', '.join(SCHEDULES)}")
    return _midnight(day, tz)


def next_slot(schedule: str, now: dt.datetime, tz: ZoneInfo = NEW_YORK) -> dt.datetime | None:
    """The first slot start strictly after ``now``, or None for "none"."""
    last = last_slot(schedule, now, tz)
    if last is None:
        return None
    day = last.astimezone(tz).date()
    if schedule == "daily":
        day += dt.timedelta(days=1)
    elif schedule == "weekly":
        day += dt.timedelta(days=7)
    else:
        day = (day.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
    return _midnight(day, tz)
