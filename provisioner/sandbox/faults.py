"""SIMULATOR ONLY: fault injection for the sandbox's simulated Vultr and Cloudflare APIs.

Faults are keyed by endpoint, written as ``"<METHOD> <route template>"``, e.g.
``"POST /v2/instances"``, ``"GET /v2/instances/{id}"``,
``"POST /client/v4/zones/{zone_id}/dns_records"``.  Keys may use shell wildcards
(``"* /v2/*"``, ``"*"``); an exact key wins over a wildcard, then wildcards in the order
they were set.  The JSON accepted by ``POST /_sandbox/faults`` and ``--faults``::

    {"seed": 7,                 # optional: re-seed the RNG (runs are reproducible)
     "replace": false,          # optional: true drops faults not named here
     "faults": {
       "POST /v2/instances": {"lost_reply_first": 1},
       "*": {"latency": 0.01, "error_rate": 0.1, "error_status": 503,
             "rate_limit_rate": 0.1, "retry_after": 0.5,
             "timeout_rate": 0.1, "timeout_seconds": 1.0}}}

Per key (all optional): ``latency`` seconds added to every request; ``*_first`` = the
next N requests get that fault (counted down, shown by GET); ``*_rate`` = probability per
request.  Kinds: ``error`` (status ``error_status``, default 503), ``rate_limit`` (429
with ``Retry-After: retry_after`` unless it is null), ``timeout`` (hold the request
``timeout_seconds``, at most 30, then close without answering), ``lost_reply`` (do the
work, then drop the connection without answering).  ``content_type`` overrides the
Content-Type of real replies (e.g. ``"application/json; charset=utf-8"``).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import random
import threading
from dataclasses import dataclass
from typing import Any, Literal

MAX_HOLD_SECONDS = 30.0
MAX_LATENCY_SECONDS = 10.0
Kind = Literal["none", "timeout", "lost_reply", "rate_limit", "error"]
KINDS: tuple[Kind, ...] = ("timeout", "lost_reply", "rate_limit", "error")


@dataclass
class FaultSpec:
    latency: float = 0.0
    error_status: int = 503
    error_first: int = 0
    error_rate: float = 0.0
    rate_limit_first: int = 0
    rate_limit_rate: float = 0.0
    retry_after: float | None = 1.0
    timeout_first: int = 0
    timeout_rate: float = 0.0
    timeout_seconds: float = 2.0
    lost_reply_first: int = 0
    lost_reply_rate: float = 0.0
    content_type: str | None = None

    @classmethod
    def from_dict(cls, key: str, data: Any) -> FaultSpec:
        if not isinstance(data, dict):
            raise ValueError(f"{key}: a fault spec must be a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{key}: unknown fault field {unknown[0]!r}; known: {', '.join(sorted(known))}")
        try:
            spec = cls(**data)
        except TypeError as exc:
            raise ValueError(f"{key}: {exc}") from None
        spec.validate(key)
        return spec

    def validate(self, key: str) -> None:
        rates = [self.error_rate, self.rate_limit_rate, self.timeout_rate, self.lost_reply_rate]
        if any(not 0 <= r <= 1 for r in rates) or sum(rates) > 1:
            raise ValueError(f"{key}: rates must be within 0..1 and add up to at most 1")
        counts = [self.error_first, self.rate_limit_first, self.timeout_first, self.lost_reply_first]
        if any(not isinstance(c, int) or c < 0 for c in counts):
            raise ValueError(f"{key}: *_first must be whole numbers >= 0")
        if not 0 <= self.latency <= MAX_LATENCY_SECONDS:
            raise ValueError(f"{key}: latency must be within 0..{MAX_LATENCY_SECONDS:g} s")
        if not 0 <= self.timeout_seconds <= MAX_HOLD_SECONDS:
            raise ValueError(f"{key}: timeout_seconds must be within 0..{MAX_HOLD_SECONDS:g} s")
        if not 400 <= self.error_status <= 599:
            raise ValueError(f"{key}: error_status must be an HTTP error status")
        if self.retry_after is not None and self.retry_after < 0:
            raise ValueError(f"{key}: retry_after must be >= 0 or null")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# What each field of a fault spec does (the admin API's index page shows it).
FIELD_HELP: dict[str, str] = {
    "latency": "seconds added to every request (0..10)",
    "error_status": "the status of an `error` fault (default 503)",
    "error_first": "the next N requests answer error_status",
    "error_rate": "probability per request of an error_status answer",
    "rate_limit_first": "the next N requests answer 429",
    "rate_limit_rate": "probability per request of a 429",
    "retry_after": "the 429's Retry-After seconds (null: no header)",
    "timeout_first": "the next N requests are held timeout_seconds, then closed unanswered",
    "timeout_rate": "probability per request of a timeout",
    "timeout_seconds": "how long a timeout holds the request (0..30)",
    "lost_reply_first": "the next N requests are carried out, then the connection is dropped unanswered",
    "lost_reply_rate": "probability per request of a lost reply",
    "content_type": "overrides the Content-Type of real replies (e.g. \"application/json; charset=utf-8\")",
}
EXAMPLE_DOCUMENT: dict[str, Any] = {
    "seed": 7, "replace": False,
    "faults": {"POST /v2/instances": {"lost_reply_first": 1},
               "*": {"latency": 0.01, "error_rate": 0.1, "error_status": 503, "rate_limit_rate": 0.1,
                     "retry_after": 0.5, "timeout_rate": 0.1, "timeout_seconds": 1.0}},
}


@dataclass(frozen=True)
class Decision:
    kind: Kind = "none"
    latency: float = 0.0
    status: int = 0
    retry_after: float | None = None
    hold: float = 0.0
    content_type: str | None = None


NO_FAULT = Decision()


class FaultInjector:
    """Thread-safe; faults can be changed while the servers run."""

    def __init__(self, seed: int = 0) -> None:
        self._lock = threading.Lock()
        self._rng = random.Random(seed)  # noqa: S311 - reproducible chaos, not crypto
        self._specs: dict[str, FaultSpec] = {}

    def configure(self, document: Any) -> None:
        """Apply a fault document (module docstring); all-or-nothing on a bad document."""
        if not isinstance(document, dict):
            raise ValueError("the fault document must be a JSON object")
        unknown = sorted(set(document) - {"seed", "replace", "faults"})
        if unknown:
            raise ValueError(f"unknown top-level key {unknown[0]!r}; expected seed, replace, faults")
        raw = document.get("faults", {})
        if not isinstance(raw, dict):
            raise ValueError("faults must be an object keyed by endpoint")
        specs = {str(k): FaultSpec.from_dict(str(k), v) for k, v in raw.items()}
        seed = document.get("seed")
        if seed is not None and not isinstance(seed, int):
            raise ValueError("seed must be an integer")
        with self._lock:
            if document.get("replace"):
                self._specs.clear()
            self._specs.update(specs)
            if seed is not None:
                self._rng.seed(seed)

    def clear(self, key: str | None = None) -> None:
        with self._lock:
            if key is None:
                self._specs.clear()
            else:
                self._specs.pop(key, None)

    def describe(self) -> dict[str, Any]:
        with self._lock:
            return {k: v.to_dict() for k, v in self._specs.items()}

    def decide(self, key: str) -> Decision:
        with self._lock:
            spec = self._specs.get(key)
            if spec is None:
                spec = next((s for pattern, s in self._specs.items() if fnmatch.fnmatchcase(key, pattern)), None)
            if spec is None:
                return NO_FAULT
            kind = self._pick(spec)
        if kind == "none":
            return Decision(latency=spec.latency, content_type=spec.content_type)
        return Decision(
            kind=kind, latency=spec.latency, content_type=spec.content_type,
            status=429 if kind == "rate_limit" else spec.error_status,
            retry_after=spec.retry_after if kind == "rate_limit" else None,
            hold=min(spec.timeout_seconds, MAX_HOLD_SECONDS) if kind == "timeout" else 0.0,
        )

    def _pick(self, spec: FaultSpec) -> Kind:
        for kind in KINDS:
            left = getattr(spec, f"{kind}_first")
            if left > 0:
                setattr(spec, f"{kind}_first", left - 1)
                return kind
        draw = self._rng.random()
        edge = 0.0
        for kind in KINDS:
            edge += getattr(spec, f"{kind}_rate")
            if draw < edge:
                return kind
        return "none"
