"""Request and response bodies of the customer's own-server routes: devices, SSH access, the
root password, restart, account, history and usage (dashboard_api.schemas has the rest)."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, Field

from dashboard_api.schemas import StrictBody


class NewDevice(StrictBody):
    name: str = Field(min_length=1, max_length=100, description="what the customer calls it, e.g. 'Phone'")


class ProfileOut(BaseModel):
    protocol: str = Field(description="openvpn (download: …/devices/{id}/ovpn) or wireguard (…/devices/{id}/conf, "
                                      "and …/qr for its QR code), one profile per protocol of the plan")
    revoked_at: dt.datetime | None


class DeviceOut(BaseModel):
    id: str = Field(description="stable for the life of the server, never reused")
    name: str
    created_at: dt.datetime
    revoked_at: dt.datetime | None
    profiles: list[ProfileOut]


class DevicesOut(BaseModel):
    max_devices: int = Field(description="active devices the plan allows at a time")
    ready: bool = Field(description="whether profiles can be downloaded yet (the server has been installed)")
    devices: list[DeviceOut] = Field(description="every device, revoked ones included, oldest first")


class NewSSHKey(StrictBody):
    public_key: str = Field(min_length=1, max_length=8192, description="one OpenSSH public key line (.pub)")


class KeyOnly(StrictBody):
    key_only: bool


class SSHKeyOut(BaseModel):
    id: int
    key_type: str
    bits: int
    fingerprint: str = Field(description="SHA256:…, as ssh-keygen -l prints it")
    comment: str
    created_at: dt.datetime


class SSHAccessOut(BaseModel):
    key_only: bool = Field(description="root logs in with a key only; the root password does not work")
    password_available: bool = Field(description="the root password can be shown")
    pending: bool = Field(description="a change is on its way to the running server")
    max_keys: int
    keys: list[SSHKeyOut]


class RootPasswordOut(BaseModel):
    password: str
    note: str = Field(description="a rebuild gives the server a new root password")


class RestartOut(BaseModel):
    status: Literal["accepted"]


class PlanOut(BaseModel):
    server: str | None = Field(description="the server's DNS name")
    plan: str = Field(description="the plan's name")
    standing: Literal["renews", "ends", "grace", "ended", "unknown"]
    date: dt.datetime | None = Field(description="when it renews or ends, or how long a failed payment is "
                                                 "waited for")


class EndedOut(BaseModel):
    server: str | None
    plan: str
    ended_at: dt.datetime | None
    reason: Literal["cancelled", "expired", "payment_failed", "support"]


class AccountOut(BaseModel):
    email: str = Field(description="who is signed in")
    timezone: str = Field(description="the time zone of scheduled rebuilds (IANA name)")
    store_url: str = Field(description="where to buy or renew a plan")
    plans: list[PlanOut] = Field(description="one per live server")
    ended: list[EndedOut] = Field(description="servers that were removed, newest first")


class HistoryItemOut(BaseModel):
    id: int
    at: dt.datetime
    kind: str = Field(description="a stable key the page words in the customer's language")
    by: Literal["you", "support", "schedule", "system"]
    params: dict[str, str]
    text: str = Field(description="the same in English")


class HistoryOut(BaseModel):
    items: list[HistoryItemOut] = Field(description="newest first")
    next_before: int | None = Field(description="pass as ?before= for the next page; null at the end")


class UsageDay(BaseModel):
    day: dt.date
    bytes: int


class UsageOut(BaseModel):
    month: str = Field(description="YYYY-MM, the UTC month the counter is on")
    used: int = Field(description="bytes this month")
    cap: int = Field(description="bytes per month")
    days: list[UsageDay] = Field(description="every day of the month so far, in order")
