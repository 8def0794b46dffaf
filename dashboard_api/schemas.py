"""Request and response bodies of the dashboard API (what /openapi.json documents).

Request bodies are strict: unknown fields, wrong types and unknown schedules are 422s.
Locations are checked against the server's product in the route (the allowed regions
depend on the plan), so the schema only bounds their shape.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from provisioner.schedule import SCHEDULES

if TYPE_CHECKING:
    ScheduleName = str
else:  # the vocabulary lives in provisioner.schedule; a tuple subscript is the same Literal
    ScheduleName = Literal[SCHEDULES]
LocationId = Field(min_length=1, max_length=16, description='a region id of the plan, or "random"')


class StrictBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class RebuildRequest(StrictBody):
    location: str = LocationId


class ScheduleRequest(StrictBody):
    schedule: ScheduleName
    location: str = LocationId


class EventOut(BaseModel):
    at: dt.datetime
    what: str
    outcome: str


class RegionOut(BaseModel):
    id: str
    city: str
    country: str


class ServerOut(BaseModel):
    name: str | None = Field(description="the DNS name (g0001.vpn.example.com); null until allocated")
    short_name: str | None
    dns_name: str | None
    status: str = Field(description="Queued, Installing, Running, Rebuilding, Destroying, Error or Suspended")
    step: str | None = Field(description="the lifecycle step in progress, if any")
    progress: str | None = Field(description="human text of what is happening now")
    support_hold: Literal["paused", "suspended"] | None = Field(
        None, description="support holds the server: paused while they look (it keeps running), or suspended "
                          "(taken down until they release it); null otherwise")
    busy: bool = Field(description="true while a rebuild cannot be requested")
    rebuild_requested: bool
    rebuild_location: str | None
    ip: str | None
    location: str | None
    city: str | None
    country: str | None
    regions: list[str] = Field(description="the locations this server's plan allows (besides random)")
    location_choices: list[str] = Field(description="what may be asked for: the plan's regions, then random")
    schedule: str
    schedule_location: str
    next_scheduled_rebuild: dt.datetime | None
    bandwidth_used: int = Field(description="bytes this month")
    bandwidth_cap: int = Field(description="bytes per month")
    last_rebuilt: dt.datetime | None
    ovpn_available: bool
    protocols: list[str] = Field(description="the VPN protocols of the server's plan: openvpn, wireguard or both; "
                                             "each device has a profile for each (see its devices)")
    last_error: str | None = Field(description="human text, only when status is Error")
    last_error_code: str | None = Field(description="retrying, rebuild_delayed, rebuild_delayed_alerted, "
                                                    "needs_attention or stopped, only when status is Error")
    events: list[EventOut] = Field(description="the last 10 events, newest first")


class ConfigOut(BaseModel):
    storefront_url: str = Field(description="where a customer without servers can buy a plan")
    languages: list[str]
    refresh_seconds: int
    schedules: list[str] = Field(description="the rebuild schedules a customer may choose")


class HealthOut(BaseModel):
    status: Literal["ok"]


class AcceptedOut(BaseModel):
    status: Literal["accepted"]
    server: ServerOut


def document_locations(openapi: dict[str, Any], regions: list[str]) -> dict[str, Any]:
    """Name the configured regions in the schema (the route still checks the server's plan)."""
    for model in ("RebuildRequest", "ScheduleRequest"):
        prop = openapi.get("components", {}).get("schemas", {}).get(model, {}).get("properties", {}).get("location")
        if prop is not None:
            prop["enum"] = [*regions, "random"]
    return openapi
