"""SIMULATOR ONLY: the sandbox's simulated-cloud state, persisted atomically to JSON.

The simulated cloud must outlive a killed worker and a restarted sandbox, so every
mutation is written through (temp file + fsync + ``os.replace``).  Nothing time-driven is
stored as a status: instances keep ``created_at``/``boot_until``/power intervals and
snapshots ``complete_at``, and the simulators derive status from them and the clock, so
a restart does not reset boot timers.  The call log is kept in memory (bounded) and
written with the next mutation or by :meth:`SimState.flush`.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

VERSION = 1
COLLECTIONS = ("instances", "snapshots", "records")


def _fresh() -> dict[str, Any]:
    return {"version": VERSION, "seq": 0, "ip_cursor": 0, "call_seq": 0,
            "instances": {}, "snapshots": {}, "records": {}}


class SimState:
    """Shared by both simulators and the admin API; hold :attr:`lock` while touching data."""

    def __init__(self, path: str | os.PathLike[str] | None, *, call_log_limit: int = 10_000,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path) if path else None
        self.lock = threading.RLock()
        self.clock = clock
        self.data: dict[str, Any] = _fresh()
        self.calls: deque[dict[str, Any]] = deque(maxlen=call_log_limit)
        self._calls_dirty = False
        self.load()

    @property
    def instances(self) -> dict[str, dict[str, Any]]:
        return self.data["instances"]

    @property
    def snapshots(self) -> dict[str, dict[str, Any]]:
        return self.data["snapshots"]

    @property
    def records(self) -> dict[str, dict[str, Any]]:
        return self.data["records"]

    def next_seq(self) -> int:
        with self.lock:
            self.data["seq"] += 1
            return int(self.data["seq"])

    def load(self) -> None:
        if self.path is None or not self.path.exists():
            return
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
            if not isinstance(doc, dict) or doc.get("version") != VERSION:
                raise ValueError("unknown state version")
        except (OSError, ValueError) as exc:
            aside = self.path.with_name(f"{self.path.name}.unreadable-{int(time.time())}")
            log.error("sandbox state %s unreadable (%s); moved to %s, starting empty", self.path, exc, aside)
            self.path.replace(aside)
            return
        with self.lock:
            fresh = _fresh()
            fresh.update({k: v for k, v in doc.items() if k != "calls"})
            self.data = fresh
            self.calls.clear()
            self.calls.extend(doc.get("calls", []))
        log.info("sandbox state loaded from %s: %d instances, %d snapshots, %d records", self.path,
                 len(self.instances), len(self.snapshots), len(self.records))

    def save(self) -> None:
        """Write everything now (callers mutate under :attr:`lock`, then call this)."""
        if self.path is None:
            return
        with self.lock:
            doc = {**self.data, "calls": list(self.calls)}
            text = json.dumps(doc, indent=1, sort_keys=True)
            self._calls_dirty = False
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)

    def flush(self) -> None:
        """Save if only the call log changed since the last save."""
        with self.lock:
            if self._calls_dirty:
                self.save()

    def record_call(self, entry: dict[str, Any]) -> None:
        with self.lock:
            self.data["call_seq"] += 1
            self.calls.append({"seq": self.data["call_seq"], **entry})
            self._calls_dirty = True

    def last_call_seq(self) -> int:
        """The newest call's number (0 before any)."""
        with self.lock:
            return int(self.data["call_seq"])

    def calls_since(self, after: int = 0, service: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return [c for c in self.calls if c["seq"] > after and (service is None or c["service"] == service)]

    def reset(self) -> None:
        with self.lock:
            self.data = _fresh()
            self.calls.clear()
            self.save()
