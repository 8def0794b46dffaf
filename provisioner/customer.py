"""What a customer may ask of their own server, one rule each: rebuild now, and the schedule.

The dashboard API calls these (and so will anything else that speaks for a customer); the
worker carries the requests out. Each function checks the request against the one rule
for it (:mod:`provisioner.locations`, the busy rule on the row, the rebuild cooldown, the
schedule vocabulary), records it on the row with an audit event in the caller's session,
and raises :class:`Refused` (a status, a code and a sentence for the customer) without
changing anything when the request cannot be honoured. The caller commits; the row's
version column fences the write against a worker that changed the row meanwhile.
"""

from __future__ import annotations

import datetime as dt
import math
from zoneinfo import ZoneInfo

from sqlalchemy.orm import Session

from provisioner import actions, locations
from provisioner.models import Server
from provisioner.schedule import SCHEDULES, last_slot
from provisioner.settings.schema import Settings

ACTOR = "customer"


class Refused(Exception):  # noqa: N818 - a verdict, not a bug
    """The request cannot be honoured now; ``message`` is written for the customer."""

    def __init__(self, status: int, code: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.retry_after = status, code, message, retry_after


def check_location(settings: Settings, row: Server, wanted: str) -> str:
    try:
        return locations.check(settings.product(row.product_id), wanted)
    except locations.LocationRefused:
        offered = ", ".join(locations.choices(settings.product(row.product_id)))
        raise Refused(422, "invalid_location",
                      f"'{wanted}' is not a location of your plan; choose one of {offered}.") from None


def busy_reason(row: Server) -> str | None:
    """Why a rebuild cannot be asked for now, in the customer's words (None: it can)."""
    if not row.busy:
        return None
    if row.on_hold:
        return "This server is suspended by support; please contact them."
    if row.paused:
        return "Support has paused this server while they look at it; a rebuild is possible once they resume it."
    if row.rebuild_now_status:
        return "A rebuild is already requested for this server; it starts within a minute or two."
    if row.action:
        return f"This server is busy ({row.status}); try again when it is Running."
    return f"This server is {row.status}; it can be rebuilt when it is Running."


def request_rebuild(session: Session, settings: Settings, row: Server, location: str, *, now: dt.datetime) -> None:
    """Record "rebuild now, in ``location``": the worker starts it within seconds."""
    wanted = check_location(settings, row, location)
    busy = busy_reason(row)
    if busy:
        raise Refused(409, "support_hold" if row.paused or row.on_hold else "busy", busy)
    cooldown = settings.api.rebuild_cooldown_seconds
    if row.rebuild_requested_at is not None:
        wait = (row.rebuild_requested_at - now).total_seconds() + cooldown
        if wait > 0:
            raise Refused(429, "rebuild_cooldown", "You asked for a rebuild recently; you can ask again in "
                          f"{max(1, math.ceil(wait))} seconds.", retry_after=wait)
    row.rebuild_now_status, row.rebuild_now_location, row.rebuild_requested_at = True, wanted, now
    row.rebuild_due_at = None  # a customer's own rebuild is not spread like a scheduled one
    actions.record(session, row, "rebuild.requested", "info", f"location {wanted}", actor=ACTOR, now=now)


def set_schedule(session: Session, settings: Settings, row: Server, schedule: str, location: str, *,
                 now: dt.datetime) -> bool:
    """Set the rebuild schedule and where scheduled rebuilds go; False when nothing changed."""
    if schedule not in SCHEDULES:
        raise Refused(422, "invalid_schedule", f"'{schedule}' is not a schedule; choose one of "
                      f"{', '.join(SCHEDULES)}.")
    wanted = check_location(settings, row, location)
    before = (row.rebuild_schedule, row.rebuild_schedule_location)
    if before == (schedule, wanted):
        return False
    if row.rebuild_schedule != schedule:
        # A new schedule starts with the *next* slot (what the page shows as "next rebuild"),
        # not with a catch-up of a slot that began before the customer chose it.
        row.schedule_slot_done = last_slot(schedule, now, ZoneInfo(settings.worker.timezone))
        row.schedule_set_at = now
    row.rebuild_schedule, row.rebuild_schedule_location = schedule, wanted
    actions.record(session, row, "schedule.changed", "info", f"{before[0]}/{before[1]} -> {schedule}/{wanted}",
                   actor=ACTOR, now=now)
    return True
