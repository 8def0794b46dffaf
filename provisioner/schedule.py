"""Scheduled rebuilds: the vocabulary and when a slot is due (pure calendar maths).

The one place that knows the schedule words (the model's default, the API's request
schema, the page's choices and the marking job all take them from here)::

    none     never
    daily    every day at 00:00 in ``worker.timezone`` (America/New_York by default)
    weekly   Sundays at 00:00
    monthly  the 1st of the month at 00:00

Midnight is never inside a DST change in the zones we know of (New York changes at
02:00), so a slot is a well-defined instant. A slot is identified by its UTC start; a
server records the last slot it was rebuilt for, so a restart after downtime catches up
once and never twice.
"""

from __future__ import annotations

import datetime as dt
import enum
from zoneinfo import ZoneInfo

NEW_YORK = ZoneInfo("America/New_York")


class Schedule(enum.StrEnum):
    NONE = "none"
    DAILY = "daily"
    WEEKLY = "weekly"
    MONTHLY = "monthly"


SCHEDULES: tuple[str, ...] = tuple(s.value for s in Schedule)
RECURRING: tuple[str, ...] = tuple(s.value for s in Schedule if s is not Schedule.NONE)


def _midnight(day: dt.date, tz: ZoneInfo) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(0, 0), tzinfo=tz).astimezone(dt.UTC)


def last_slot(schedule: str, now: dt.datetime, tz: ZoneInfo = NEW_YORK) -> dt.datetime | None:
    """The most recent slot start at or before ``now`` (aware UTC), or None for "none"."""
    if schedule == Schedule.NONE:
        return None
    local = now.astimezone(tz).date()
    if schedule == Schedule.DAILY:
        day = local
    elif schedule == Schedule.WEEKLY:
        day = local - dt.timedelta(days=(local.weekday() + 1) % 7)  # back to Sunday
    elif schedule == Schedule.MONTHLY:
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
    if schedule == Schedule.DAILY:
        day += dt.timedelta(days=1)
    elif schedule == Schedule.WEEKLY:
        day += dt.timedelta(days=7)
    else:
        day = (day.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
    return _midnight(day, tz)


def zone_name(tz: ZoneInfo) -> str:
    """``"New York"`` for America/New_York: how a slot's zone reads in events and mails."""
    return tz.key.rsplit("/", 1)[-1].replace("_", " ")
