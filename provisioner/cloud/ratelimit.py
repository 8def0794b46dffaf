"""Client-side rate limiting: one token bucket per provider, shared by every thread.

A bucket holds at most ``burst`` tokens and refills at ``rate`` tokens per second.
:meth:`RateLimiter.acquire` takes one token, waiting if there is none.  Waiters reserve
their token *before* sleeping (the balance may go negative), so they are served in
arrival order and the lock is never held while sleeping.

Guarantee: in any interval of ``t`` seconds at most ``burst + rate * t`` tokens are
handed out.  :meth:`RateLimiter.per_window` uses that to honour "N requests per window"
limits exactly: rate = (N - burst) / window.

Defaults (REFERENCE §1.1, §2.3):

* Vultr: 30 requests/second per IP -> ``RateLimiter.per_second(30)``
* Cloudflare: 1,200 requests / 300 s per token -> ``RateLimiter.per_window(1200, 300)``

Clock and sleep are injectable so tests measure waits without real time passing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)

VULTR_REQUESTS_PER_SECOND = 30.0
CLOUDFLARE_REQUESTS_PER_WINDOW = 1200
CLOUDFLARE_WINDOW_SECONDS = 300.0


class RateLimitTimeout(Exception):
    """acquire(timeout=...) could not get a token in time; nothing was consumed."""


@dataclass(frozen=True)
class RateLimiterStats:
    acquired: int
    waited: int
    total_wait_seconds: float


class RateLimiter:
    """Thread-safe token bucket."""

    def __init__(
        self,
        rate: float,
        burst: float = 1.0,
        *,
        name: str = "api",
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self.rate = float(rate)
        self.burst = float(burst)
        self.name = name
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = self.burst
        self._updated = clock()
        self._acquired = 0
        self._waited = 0
        self._wait_total = 0.0

    @classmethod
    def per_second(
        cls,
        requests_per_second: float,
        burst: float = 1.0,
        *,
        name: str = "api",
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> RateLimiter:
        return cls(requests_per_second, burst, name=name, clock=clock, sleep=sleep)

    @classmethod
    def per_window(
        cls,
        limit: int,
        window_seconds: float,
        burst: float | None = None,
        *,
        name: str = "api",
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> RateLimiter:
        """At most ``limit`` acquisitions in any ``window_seconds``-long interval."""
        if burst is None:
            burst = max(1.0, min(20.0, limit / 60))
        if limit <= burst:
            raise ValueError("limit must be larger than burst")
        return cls((limit - burst) / window_seconds, burst, name=name, clock=clock, sleep=sleep)

    @classmethod
    def vultr_default(
        cls, *, clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep
    ) -> RateLimiter:
        return cls.per_second(VULTR_REQUESTS_PER_SECOND, name="vultr", clock=clock, sleep=sleep)

    @classmethod
    def cloudflare_default(
        cls, *, clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep
    ) -> RateLimiter:
        return cls.per_window(
            CLOUDFLARE_REQUESTS_PER_WINDOW, CLOUDFLARE_WINDOW_SECONDS, name="cloudflare", clock=clock, sleep=sleep
        )

    def _refill(self, now: float) -> None:
        elapsed = now - self._updated
        if elapsed > 0:
            self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
            self._updated = now

    def acquire(self, timeout: float | None = None) -> float:
        """Take one token; return the seconds waited for it.

        With ``timeout``, raise :class:`RateLimitTimeout` (consuming nothing) instead of
        waiting longer than that.
        """
        with self._lock:
            now = self._clock()
            self._refill(now)
            wait = 0.0 if self._tokens >= 1 else (1 - self._tokens) / self.rate
            if timeout is not None and wait > timeout:
                raise RateLimitTimeout(f"{self.name}: no request slot within {timeout:.2f}s")
            self._tokens -= 1
            self._acquired += 1
            if wait > 0:
                self._waited += 1
                self._wait_total += wait
        if wait > 0:
            log.debug("%s rate limiter: waiting %.3fs", self.name, wait)
            self._sleep(wait)
        return wait

    def stats(self) -> RateLimiterStats:
        with self._lock:
            return RateLimiterStats(self._acquired, self._waited, self._wait_total)

    def __repr__(self) -> str:
        return f"RateLimiter(name={self.name!r}, rate={self.rate:g}/s, burst={self.burst:g})"


class Limiter(Protocol):
    """What the adapters need of a limiter."""

    def acquire(self, timeout: float | None = None) -> float: ...


class Shared:
    """A job's own share of a provider's budget in front of the process's shared bucket:
    every call takes a token from ``own`` (the job's ceiling) and then from ``shared`` (what
    keeps the whole process under the provider's limit)."""

    def __init__(self, own: Limiter, shared: Limiter) -> None:
        self.own, self.shared = own, shared

    def acquire(self, timeout: float | None = None) -> float:
        return self.own.acquire(timeout) + self.shared.acquire(timeout)
