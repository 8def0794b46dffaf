"""What the jobs write down for ``provisioner status`` (``provisioner_worker_status``):

- ``last_tick``, ``storefront_ok``, ``job:<name>``: each a small JSON document with its time;
- ``worker:<owner>``: one row per running worker (and per ``provisioner job`` run), rewritten
  every few seconds: when it was last alive, whether it leads, and how its calls to Vultr,
  Cloudflare, SSH and SMTP went in the last minutes (:class:`provisioner.cloud.calls.CallStats`).
"""

from __future__ import annotations

import datetime as dt
import json

from sqlalchemy import delete

from provisioner.models import WorkerStatus
from provisioner.wiring import App

HEARTBEAT_PREFIX = "worker:"
FORGET_WORKERS_AFTER = dt.timedelta(hours=1)


def record_status(app: App, name: str, value: dict[str, object]) -> None:
    with app.sessions() as s:
        row = s.get(WorkerStatus, name)
        text = json.dumps(value, default=str)
        if row is None:
            s.add(WorkerStatus(name=name, value=text, updated_at=app.clock()))
        else:
            row.value, row.updated_at = text, app.clock()
        s.commit()


def record_once(app: App, name: str, value: dict[str, object]) -> None:
    """Like :func:`record_status`, but never overwrites (when the worker first ticked)."""
    with app.sessions() as s:
        if s.get(WorkerStatus, name) is None:
            s.add(WorkerStatus(name=name, value=json.dumps(value, default=str), updated_at=app.clock()))
            s.commit()


def heartbeat(app: App, owner: str, *, leader: bool) -> None:
    """This process is alive, and this is how its outside calls went (raises SQLAlchemyError)."""
    now = app.clock()
    name = (HEARTBEAT_PREFIX + owner)[:64]
    value = json.dumps({"at": now.isoformat(), "leader": leader, "calls": app.calls.snapshot()})
    with app.sessions() as s:
        row = s.get(WorkerStatus, name)
        if row is None:
            s.add(WorkerStatus(name=name, value=value, updated_at=now))
        else:
            row.value, row.updated_at = value, now
        if leader:   # processes that stopped long ago: forget them
            s.execute(delete(WorkerStatus).where(WorkerStatus.name.like(HEARTBEAT_PREFIX + "%"),
                                                 WorkerStatus.updated_at < now - FORGET_WORKERS_AFTER))
        s.commit()
