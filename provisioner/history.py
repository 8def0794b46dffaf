"""The customer's history of their server, in plain words, read from the audit trail.

The audit trail (``provisioner_server_events``) is written for operators: every step, started
and done. A customer wants to know what happened to *their* server: "Moved from New Jersey to
Amsterdam", "Root password viewed", "Device 'phone' revoked". :func:`item` turns one event
into one :class:`Item` (a stable ``kind`` and its parameters, which the page words in the
customer's language), or None for the events a customer has no use for. :data:`WHATS` is the
set of event names that can become an item, so a page of history is one indexed query.

The details this module reads are written through its own helpers (:func:`note`,
:func:`moved`, :func:`rebuild_target`), so the format lives in one place.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass, field
from typing import Any

WHATS = frozenset({
    "create.requested", "create.done", "rebuild.requested", "rebuild.dns", "schedule.changed",
    "destroy.requested", "destroy.done", "root_password.viewed", "ssh_key.added", "ssh_key.removed",
    "ssh.key_only", "device.added", "device.revoked", "sync.done", "restart.requested", "restart.done",
    "bandwidth.80", "bandwidth.100", "bandwidth.suspend", "bandwidth.resume",
    "operator.paused", "operator.resumed", "operator.held", "operator.released",
})
# Besides those: a step of any action that stopped for a human (outcome "failed", this detail).
NEEDS_A_HUMAN = "needs a human"
_MOVED = re.compile(r"moved from (\S+) to (\S+)")
_TARGET = re.compile(r"^to ([^\s,]+)(?:, (\w+) schedule)?")
_SCHEDULE = re.compile(r"^(\w+)/(\S+) -> (\w+)/(\S+)$")


@dataclass(frozen=True)
class Item:
    id: int
    at: dt.datetime
    kind: str
    by: str                                   # you | support | schedule | system
    params: dict[str, str] = field(default_factory=dict)


def note(**fields: Any) -> str:
    """An event detail the history reads back: compact JSON of plain values."""
    return json.dumps({k: str(v) for k, v in fields.items()}, ensure_ascii=False, sort_keys=True)


def moved(old: str | None, new: str | None) -> str:
    return f"moved from {old or '-'} to {new or '-'}"


def rebuild_target(target: str, schedule: str | None = None) -> str:
    return f"to {target}" + (f", {schedule} schedule" if schedule else "")


def who(actor: str) -> str:
    if actor == "customer":
        return "you"
    if actor.startswith("operator"):
        return "support"
    if actor == "scheduler":
        return "schedule"
    return "system"


def _fields(detail: str) -> dict[str, str]:
    if not detail.startswith("{"):
        return {}
    try:
        data = json.loads(detail)
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def item(event_id: int, at: dt.datetime, actor: str, what: str, outcome: str, detail: str) -> Item | None:
    """The customer's line for one audit event, or None when it is the operator's business only."""
    by = who(actor)
    made = _kind(what, outcome, by, detail or "")
    if made is None:
        return None
    kind, params = made
    return Item(id=event_id, at=at, kind=kind, by=by, params=params)


def _kind(what: str, outcome: str, by: str, detail: str) -> tuple[str, dict[str, str]] | None:
    if outcome == "failed":
        # only a stop for a human concerns the customer; retried hiccups are noise
        return ("problem", {}) if detail.startswith(NEEDS_A_HUMAN) else None
    simple = {
        "create.requested": "ordered", "create.done": "ready", "destroy.done": "removed",
        "root_password.viewed": "password_viewed", "sync.done": "changes_applied",
        "restart.requested": "restart_requested", "restart.done": "restarted",
        "bandwidth.80": "usage_80", "bandwidth.100": "usage_100", "bandwidth.suspend": "suspended",
        "bandwidth.resume": "resumed", "destroy.requested": "removal_started",
        "operator.paused": "support_paused", "operator.resumed": "support_resumed",
        "operator.held": "support_held", "operator.released": "support_released",
    }
    if what in ("bandwidth.suspend", "bandwidth.resume") and outcome != "ok":
        return None
    if what in simple:
        return simple[what], {}
    fields = _fields(detail)
    if what == "rebuild.requested":
        return _rebuild_requested(by, detail)
    if what == "rebuild.dns" and outcome == "ok":
        found = _MOVED.search(detail)
        if found and found.group(1) != found.group(2):
            return "moved", {"from": found.group(1), "to": found.group(2)}
        return "rebuilt", {"location": found.group(2)} if found else {}
    if what == "schedule.changed":
        parsed = _SCHEDULE.match(detail)
        return "schedule_set", {"schedule": parsed.group(3), "location": parsed.group(4)} if parsed else {}
    if what in ("ssh_key.added", "ssh_key.removed"):
        return what.replace(".", "_"), {"name": fields.get("name") or fields.get("fingerprint", "")}
    if what == "ssh.key_only":
        return ("key_only_on" if fields.get("key_only") == "True" else "key_only_off"), {}
    if what in ("device.added", "device.revoked"):
        return what.replace(".", "_"), {"name": fields.get("name", "")}
    return None


def _rebuild_requested(by: str, detail: str) -> tuple[str, dict[str, str]] | None:
    if by == "you":
        # The click is recorded ("location X"); the start that follows within seconds is not news.
        if detail.startswith("location "):
            return "rebuild_requested", {"location": detail.removeprefix("location ").strip()}
        return None
    target = _TARGET.match(detail)
    params = {"location": target.group(1)} if target else {}
    if by == "schedule":
        if target and target.group(2):
            params["schedule"] = target.group(2)
        return "scheduled_rebuild", params
    return "rebuild_started", params
