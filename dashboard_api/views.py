"""What a customer sees of a server row: plain facts, human progress text, no secrets.

The operator's ``last_error`` (provider messages, ids) is not shown to customers; they get a
human sentence saying whether we retry on our own or a person is looking at it.
"""

from __future__ import annotations

import datetime as dt
import functools
from typing import Any, Literal, Protocol
from zoneinfo import ZoneInfo

import orjson
from sqlalchemy import Connection
from sqlalchemy.orm import Session

from dashboard_api import queries
from dashboard_api.locations import region
from dashboard_api.queries import EventRow, Owned, ServerRow
from dashboard_api.schemas import ServerOut
from provisioner import locations
from provisioner.models import Status
from provisioner.schedule import next_slot
from provisioner.settings.schema import OPENVPN, Settings

# (action, step) -> what the customer reads; the page has the same texts in its i18n files.
PROGRESS = {
    "prepare": "Preparing your server",
    "instance": "Creating the server",
    "boot": "Starting the server",
    "install": "Installing the VPN",
    "dns": "Setting up the DNS name",
    "snapshot": "Saving a snapshot",
    "carry": "Moving the bandwidth count",
    "retire": "Switching to the new server",
    "finish": "Finishing",
    "instances": "Removing the server",
    "wipe": "Erasing secrets",
    "push": "Sending your changes to the server",
    "reboot": "Restarting the server",
    "settle": "Waiting for the server to come back",
}
REBUILD_REQUESTED = "Rebuild requested"
RESTART_REQUESTED = "Restart requested; it starts within seconds"
# An operator's hold, as the customer reads it (the page has the same texts in its i18n files).
SUPPORT_HOLD = {
    "paused": "Paused by support",
    "suspended": "Suspended by support",
}
ERROR_TEXT = {
    "retrying": "Something went wrong while working on your server. We are retrying automatically.",
    "rebuild_delayed": "Your rebuild is delayed. Your VPN keeps working on the current server meanwhile; we keep "
                       "retrying automatically.",
    "rebuild_delayed_alerted": "Your rebuild is delayed. Your VPN keeps working on the current server meanwhile, "
                               "and our team has been alerted.",
    "needs_attention": "Your server is not working right now and we are on it: our team has been alerted.",
    "stopped": "Your server is not working right now, and automatic retries have stopped. Please contact support.",
}


class ShownRow(Protocol):
    """What the views read of a row: an ORM :class:`Server` (write routes) or a lean
    :class:`~dashboard_api.queries.ServerRow` (the read path)."""

    @property
    def server_name(self) -> str | None: ...
    @property
    def product_id(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def action(self) -> str | None: ...
    @property
    def step(self) -> str | None: ...
    @property
    def needs_human(self) -> bool: ...
    @property
    def rebuild_now_status(self) -> bool: ...
    @property
    def rebuild_now_location(self) -> str | None: ...
    @property
    def server_ip(self) -> str | None: ...
    @property
    def current_location(self) -> str | None: ...
    @property
    def rebuild_schedule(self) -> str: ...
    @property
    def rebuild_schedule_location(self) -> str: ...
    @property
    def bandwidth_this_month(self) -> int | None: ...
    @property
    def bandwidth_limit_this_month(self) -> int | None: ...
    @property
    def last_rebuilt_at(self) -> dt.datetime | None: ...
    @property
    def busy(self) -> bool: ...
    @property
    def paused(self) -> bool: ...
    @property
    def on_hold(self) -> bool: ...
    @property
    def human_alerted_at(self) -> dt.datetime | None: ...
    @property
    def restart_pending(self) -> bool: ...


def support_hold(row: ShownRow) -> Literal["paused", "suspended"] | None:
    """``suspended`` (taken down until released), ``paused`` (held while support looks), or None."""
    if row.on_hold:
        return "suspended"
    return "paused" if row.paused else None


_ERROR, _QUEUED, _SUSPENDED = Status.ERROR.value, Status.QUEUED.value, Status.SUSPENDED.value


def error_code(row: ShownRow, hold: str | None) -> str | None:
    """What the customer is told about an Error row. A rebuild builds the new server next to the
    old one, so the VPN keeps working; "our team has been alerted" only when an alert was
    queued to a configured operator channel (``human_alerted_at``). ``hold`` is
    :func:`support_hold` of the row."""
    if row.status != _ERROR or hold:
        return None
    alerted = bool(row.needs_human and row.human_alerted_at)
    if row.action == "rebuild":
        return "rebuild_delayed_alerted" if alerted else "rebuild_delayed"
    if not row.needs_human:
        return "retrying"
    return "needs_attention" if alerted else "stopped"


def progress_text(row: ShownRow, hold: str | None) -> str | None:
    """The line under a server's status; ``hold`` is :func:`support_hold` of the row."""
    if hold:
        return SUPPORT_HOLD[hold]
    if row.action and row.step:
        return PROGRESS.get(row.step, row.step)
    if row.rebuild_now_status:
        return REBUILD_REQUESTED
    if row.restart_pending:
        return RESTART_REQUESTED
    if row.status == _QUEUED:
        return "Waiting to start"
    return None


def server_dict(row: ShownRow, has_ovpn: bool, settings: Settings, now: dt.datetime,
                events: list[EventRow]) -> dict[str, Any]:
    """One server as the API shows it: the fields of :class:`ServerOut`, as plain values.

    The read path serialises these with orjson (no model validation per request); the write
    routes validate them into :class:`ServerOut`. A test keeps the two byte-identical."""
    name = row.server_name
    product = settings.product(row.product_id)
    where = region(row.current_location)
    hold = support_hold(row)
    code = error_code(row, hold)
    suspended = hold == "suspended"
    return {
        "name": name, "short_name": name.split(".", 1)[0] if name else None, "dns_name": name,
        "status": _SUSPENDED if suspended else row.status,
        "step": row.step if row.action and not hold else None, "progress": progress_text(row, hold),
        "support_hold": hold, "busy": row.busy, "rebuild_requested": bool(row.rebuild_now_status),
        "rebuild_location": row.rebuild_now_location if row.rebuild_now_status else None,
        "ip": None if suspended else row.server_ip, "location": row.current_location,
        "city": where.city if where else None, "country": where.country if where else None,
        "regions": list(product.regions) if product else [], "location_choices": locations.choices(product),
        "schedule": row.rebuild_schedule, "schedule_location": row.rebuild_schedule_location,
        "next_scheduled_rebuild": next_rebuild(row, settings, now),
        "bandwidth_used": row.bandwidth_this_month or 0,
        "bandwidth_cap": row.bandwidth_limit_this_month or (product.bandwidth_cap_bytes if product else 0),
        "last_rebuilt": row.last_rebuilt_at, "ovpn_available": has_ovpn and not suspended,
        "protocols": list(product.protocols) if product else [OPENVPN],
        "last_error": ERROR_TEXT[code] if code else None, "last_error_code": code,
        "events": events}


def server_out(owned: Owned, settings: Settings, now: dt.datetime, events: list[EventRow]) -> ServerOut:
    return ServerOut.model_validate(server_dict(owned.row, owned.has_ovpn, settings, now, events))


def servers_out(session: Session, owned: list[Owned], settings: Settings, now: dt.datetime) -> list[ServerOut]:
    events = queries.recent_events(session, [o.row.id for o in owned])
    return [server_out(o, settings, now, events[o.row.id]) for o in owned]


def servers_json(conn: Connection, rows: list[ServerRow], settings: Settings, now: dt.datetime) -> bytes:
    """The read path's body for ``GET /api/servers``: plain rows to JSON bytes."""
    events = queries.recent_events(conn, [r.id for r in rows])
    return dumps([server_dict(r, r.has_ovpn, settings, now, events[r.id]) for r in rows])


def next_rebuild(row: ShownRow, settings: Settings, now: dt.datetime) -> dt.datetime | None:
    """When the row's schedule next rebuilds it, as the customer is shown (None: no schedule)."""
    return _next(row.rebuild_schedule, now, settings.worker.timezone)


def dumps(value: Any) -> bytes:
    """JSON as pydantic writes it for these models (UTC datetimes end in ``Z``)."""
    return orjson.dumps(value, option=orjson.OPT_UTC_Z)


# (schedule, zone) -> (when it was computed, the slot): the next slot stays the same from any
# instant up to the slot itself, so the page's polls compute it once per slot, not per server.
_NEXT_SLOTS: dict[tuple[str, str], tuple[dt.datetime, dt.datetime]] = {}


def _next(schedule: str, now: dt.datetime, tz: str) -> dt.datetime | None:
    key = (schedule, tz)
    known = _NEXT_SLOTS.get(key)
    if known is not None and known[0] <= now < known[1]:
        return known[1]
    try:
        slot = next_slot(schedule, now, _zone(tz))
    except ValueError:  # a hand-edited row with an unknown schedule shows "none"
        return None
    if slot is not None:  # bounded: only the known schedules have a slot
        _NEXT_SLOTS[key] = (now, slot)
    return slot


@functools.lru_cache(maxsize=8)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)
