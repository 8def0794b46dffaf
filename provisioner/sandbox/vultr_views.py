"""SIMULATOR ONLY: how the simulated Vultr API renders its stored state.

Everything time-dependent (status, address, bandwidth) is derived here from stored
timestamps and the current time, so a restarted sandbox picks up where it was.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from typing import Any

from provisioner.sandbox import catalog
from provisioner.sandbox.httpbase import HttpError, Request

MAX_PER_PAGE = 500
DEFAULT_PER_PAGE = 100


def utc_iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00")


def is_running(inst: dict[str, Any]) -> bool:
    runs = inst["runs"]
    return bool(runs) and runs[-1][1] is None


def instance_view(inst: dict[str, Any], now: float, gateway: str = "127.77.0.1") -> dict[str, Any]:
    booted = now >= inst["boot_until"]
    addressed = now >= inst["ip_at"]
    plan = catalog.PLAN_BY_ID.get(inst["plan"], {})
    os_ = catalog.OS_BY_ID.get(inst["os_id"], {})
    tags = list(inst["tags"])
    return {
        "id": inst["id"], "os": os_.get("name", ""), "os_id": inst["os_id"], "ram": plan.get("ram", 0),
        "disk": plan.get("disk", 0), "vcpu_count": plan.get("vcpu_count", 0), "plan": inst["plan"],
        "region": inst["region"], "main_ip": inst["ip"] if addressed else "0.0.0.0",
        "netmask_v4": "255.255.0.0" if addressed else "", "gateway_v4": gateway if addressed else "0.0.0.0",
        "v6_main_ip": "", "v6_network": "", "v6_network_size": 0, "v6_networks": [], "internal_ip": "",
        "label": inst["label"], "hostname": inst["hostname"], "tag": tags[0] if tags else "", "tags": tags,
        "date_created": utc_iso(inst["created_at"]), "allowed_bandwidth": plan.get("bandwidth", 0),
        "status": "active" if booted else "pending",
        "power_status": "running" if is_running(inst) else "stopped",
        "server_status": "ok" if booted else "installingbooting",
        "kvm": "", "app_id": 0, "image_id": "", "firewall_group_id": "", "features": [], "user_scheme": "root",
    }


def snapshot_view(snap: dict[str, Any], now: float) -> dict[str, Any]:
    return {
        "id": snap["id"], "date_created": utc_iso(snap["created_at"]), "description": snap["description"],
        "size": snap["size"], "compressed_size": snap["compressed_size"],
        "status": "complete" if now >= snap["complete_at"] else "pending", "os_id": snap["os_id"], "app_id": 0,
    }


def bandwidth_days(inst: dict[str, Any], now: float, in_rate: float, out_rate: float) -> dict[str, dict[str, int]]:
    """Bytes per UTC day of the current month, counted only while booted and running."""
    today = dt.datetime.fromtimestamp(now, dt.UTC).date()
    created = dt.datetime.fromtimestamp(inst["created_at"], dt.UTC).date()
    day = max(today.replace(day=1), created)
    booted_at = inst["ip_at"]
    out: dict[str, dict[str, int]] = {}
    while day <= today:
        start = dt.datetime.combine(day, dt.time(), dt.UTC).timestamp()
        end = min(start + 86400, now)
        seconds = 0.0
        for run_start, run_end in inst["runs"]:
            lo = max(start, run_start, booted_at)
            hi = min(end, now if run_end is None else run_end)
            seconds += max(0.0, hi - lo)
        out[day.isoformat()] = {"incoming_bytes": int(seconds * in_rate), "outgoing_bytes": int(seconds * out_rate)}
        day += dt.timedelta(days=1)
    return out


def paginate(items: list[tuple[int, dict[str, Any]]], req: Request, key: str) -> dict[str, Any]:
    """One page of ``(seq, view)`` pairs sorted by seq; cursors stay valid across deletes."""
    try:
        per_page = int(req.arg("per_page") or DEFAULT_PER_PAGE)
    except ValueError:
        raise HttpError(400, "Invalid per_page value.") from None
    if not 1 <= per_page <= MAX_PER_PAGE:
        raise HttpError(400, "Invalid per_page value.")
    start = 0
    cursor = req.arg("cursor") or ""
    if cursor:
        direction, seq = _decode_cursor(cursor)
        seqs = [s for s, _ in items]
        first_after = next((i for i, s in enumerate(seqs) if s > seq), len(items))
        if direction == "next":
            start = first_after
        else:
            first_at = next((i for i, s in enumerate(seqs) if s >= seq), len(items))
            start = max(0, first_at - per_page)
    page = items[start:start + per_page]
    has_next = start + per_page < len(items)
    return {
        key: [view for _, view in page],
        "meta": {"total": len(items), "links": {
            "next": _encode_cursor("next", page[-1][0]) if page and has_next else "",
            "prev": _encode_cursor("prev", page[0][0]) if page and start > 0 else "",
        }},
    }


def _encode_cursor(direction: str, seq: int) -> str:
    return base64.urlsafe_b64encode(f"{direction}__{seq}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[str, int]:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        direction, seq = text.split("__")
        if direction not in ("next", "prev"):
            raise ValueError(direction)
        return direction, int(seq)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise HttpError(400, "Invalid cursor.") from None
