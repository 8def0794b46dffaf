"""`provisioner status`: is the automation itself healthy?

Facts: the last tick and its duration, work queued, the oldest unfinished step, servers
needing a human, the last success of the storefront read and of each provider job, the
sweeper's open findings. Problems make the command exit 1 (for monitoring).
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from sqlalchemy import func, select

from provisioner.models import Orphan, Server, WorkerStatus
from provisioner.wiring import App


def health(app: App) -> dict[str, Any]:
    now = app.clock()
    w = app.settings.worker
    problems: list[str] = []
    facts: dict[str, Any] = {}
    with app.sessions() as s:
        status: dict[str, tuple[dict[str, Any], dt.datetime | None]] = {
            r.name: (json.loads(r.value or "{}"), r.updated_at) for r in s.scalars(select(WorkerStatus))}
        queued = s.scalar(select(func.count()).select_from(Server).where(Server.action.is_not(None))) or 0
        humans = list(s.scalars(select(Server).where(Server.needs_human.is_(True), Server.status != "Destroyed")))
        oldest = s.scalar(select(func.min(Server.updated_at)).where(Server.action.is_not(None)))
        orphans = s.scalar(select(func.count()).select_from(Orphan).where(Orphan.deleted_at.is_(None))) or 0
    tick, tick_at = status.get("last_tick", ({}, None))
    facts["last tick"] = f"{tick_at:%Y-%m-%d %H:%M:%S} UTC, {tick.get('seconds')}s" if tick_at else "never"
    if tick_at is None or now - tick_at > dt.timedelta(seconds=3 * w.tick_seconds + 30):
        problems.append("the worker has not ticked recently (is `provisioner run` running?)")
    facts["work queued"] = queued
    if oldest is not None:
        facts["oldest unfinished action since"] = f"{oldest:%Y-%m-%d %H:%M:%S} UTC"
        if now - oldest > dt.timedelta(hours=2):
            problems.append(f"an action has been unfinished since {oldest:%Y-%m-%d %H:%M} UTC")
    facts["servers needing a human"] = ", ".join(r.server_name or f"#{r.id}" for r in humans) or "none"
    if humans:
        problems.append(f"{len(humans)} server(s) need a human: `provisioner events NAME` shows why")
    _, store_at = status.get("storefront_ok", ({}, None))
    facts["storefront last read"] = f"{store_at:%Y-%m-%d %H:%M:%S} UTC" if store_at else "never"
    if tick_at and (store_at is None or now - store_at > dt.timedelta(seconds=5 * w.tick_seconds + 60)):
        problems.append("the storefront has not been read successfully recently")
    for name in ("sync_bandwidth", "sweep", "send_outbox"):
        _, at = status.get(f"job:{name}", ({}, None))
        facts[f"{name} last ran"] = f"{at:%Y-%m-%d %H:%M:%S} UTC" if at else "never"
    facts["orphans found (not deleted)"] = orphans
    if orphans:
        problems.append(f"{orphans} provider resource(s) carry our tag but belong to no server (see sweeper log)")
    return {"healthy": not problems, "problems": problems, "facts": facts, "at": now.isoformat()}
