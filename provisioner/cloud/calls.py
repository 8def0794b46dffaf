"""How the calls to each outside service went lately, in this process: what ``provisioner
status`` needs to say "Vultr is failing" while it is so.

:class:`CallStats` counts, per provider and per minute, the calls that went through
(``ok``, including answers such as "not found") and those that failed for reasons retrying
may fix (a :class:`~provisioner.cloud.errors.ProviderError` that is ``transient``:
timeouts, refused connections, 5xx, 429), and how many of the latest calls failed in a
row. :meth:`CallStats.observe` wraps an adapter (:meth:`CallStats.observe_call` one
callable) so that every public call is counted; errors pass through unchanged. The worker
writes :meth:`CallStats.snapshot` to the database every few seconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from provisioner.cloud.errors import ProviderError

T = TypeVar("T")


# (provider, outcome, seconds): "ok"; "failed" (worth retrying); "refused" (a permanent error)
CallListener = Callable[[str, str, float], None]


class CallStats:
    def __init__(self, clock: Callable[[], float] = time.time, keep_minutes: int = 15) -> None:
        self.listeners: list[CallListener] = []     # e.g. the worker's Prometheus counters
        self._clock = clock
        self._keep = keep_minutes
        self._lock = threading.Lock()
        self._minutes: dict[str, dict[int, list[int]]] = {}   # provider -> minute -> [ok, failed]
        self._streak: dict[str, list[float]] = {}             # provider -> [failures in a row, last failure]

    def record(self, provider: str, ok: bool) -> None:
        now = self._clock()
        minute = int(now // 60)
        with self._lock:
            buckets = self._minutes.setdefault(provider, {})
            counts = buckets.setdefault(minute, [0, 0])
            counts[0 if ok else 1] += 1
            for old in [m for m in buckets if m <= minute - self._keep]:
                del buckets[old]
            streak = self._streak.setdefault(provider, [0, 0.0])
            streak[:] = [0, streak[1]] if ok else [streak[0] + 1, now]

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """``{provider: {"minutes": {"<unix minute>": [ok, failed]}, "failing": [in a row, last unix]}}``."""
        with self._lock:
            return {p: {"minutes": {str(m): list(c) for m, c in b.items()},
                        "failing": list(self._streak.get(p, [0, 0.0]))}
                    for p, b in self._minutes.items() if b}

    def observe(self, provider: str, adapter: T) -> T:
        """``adapter`` with every public method counted (attributes pass through)."""
        return _Observed(adapter, provider, self)  # type: ignore[return-value]

    def observe_call(self, provider: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` with every call counted (and timed, for the listeners)."""
        def call(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                result = fn(*args, **kwargs)
            except ProviderError as exc:
                self.record(provider, not exc.transient)
                self._tell(provider, "failed" if exc.transient else "refused", started)
                raise
            self.record(provider, True)
            self._tell(provider, "ok", started)
            return result

        return call

    def _tell(self, provider: str, outcome: str, started: float) -> None:
        seconds = time.perf_counter() - started
        for listener in self.listeners:
            listener(provider, outcome, seconds)


class _Observed:
    """A stand-in for an adapter: attribute reads pass through, public methods are counted."""

    def __init__(self, target: Any, provider: str, stats: CallStats) -> None:
        self._target, self._provider, self._stats = target, provider, stats

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if name.startswith("_") or not callable(value):
            return value
        return self._stats.observe_call(self._provider, value)

    def __repr__(self) -> str:
        return f"observed({self._target!r})"
