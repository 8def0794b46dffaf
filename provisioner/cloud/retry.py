"""The one retry policy for every outside API call, as data.

What is retried is decided by the *type* of the error an adapter raises, never by the
call site: a :class:`~provisioner.cloud.errors.ProviderError` that is ``transient``
(timeouts, connection errors, HTTP 5xx, 429 with its ``retry_after``). Every other
exception (the ``PermanentError`` family: 4xx other than 429, bad input, unexpected
bodies) escapes on the first attempt.

How long to wait is :func:`backoff`, the one backoff rule of the product (the retry
policy here, the lifecycle's retries of a failed step, the outbox's resends): capped
exponential backoff with "equal jitter" (a random point in the upper half of
``min(cap, base * 2**(n-1))``), never shorter than what the provider asked for.  A ``retry_after``
carried by the error replaces the backoff for that wait.  The whole call gives up when
``max_attempts`` is reached or when the next wait would end past ``max_total_seconds``
(measured on the injectable ``clock``) -- then the last error is re-raised unchanged.

Non-idempotent operations (Vultr ``POST /instances``) are called with ``idempotent=False``:
exactly one attempt whatever the error, because a timeout or a lost reply may hide a
create that happened.  The caller resolves that ambiguity (list by label), not this module.
"""

from __future__ import annotations

import email.utils
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception

from provisioner.cloud.errors import ProviderError, TransientError

__all__ = ["TransientError", "RetryPolicy", "backoff", "call", "is_transient", "parse_retry_after"]

log = logging.getLogger(__name__)

T = TypeVar("T")

Clock = Callable[[], float]
Sleep = Callable[[float], None]


def backoff(attempt: int, base: float, cap: float, *, retry_after: float | None = None,
            rng: random.Random | None = None) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based): equal jitter under
    ``min(cap, base * 2**(attempt-1))``, and at least ``retry_after`` when the provider said so
    (retrying sooner only extends a lockout such as Cloudflare's 300 s)."""
    ceiling = min(cap, base * (2 ** max(0, attempt - 1)))
    wait = ceiling / 2 + (rng or _RNG).uniform(0, ceiling / 2)
    return max(wait, retry_after) if retry_after else wait


_RNG = random.Random()  # noqa: S311 - jitter, not crypto


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try one idempotent call.  Pure data; :func:`call` interprets it."""

    max_attempts: int = 5
    base: float = 0.5
    cap: float = 8.0
    max_total_seconds: float = 60.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.base < 0 or self.cap < 0 or self.max_total_seconds < 0:
            raise ValueError("base, cap and max_total_seconds must not be negative")

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Wait after failed attempt number ``attempt`` (1-based), jitter included."""
        return backoff(attempt, self.base, self.cap, rng=rng)


# Defaults chosen for a background worker: a call may take a minute, never hours.
DEFAULT_POLICY = RetryPolicy()
# For tests and for callers that must not wait (e.g. a dashboard request).
NO_RETRY = RetryPolicy(max_attempts=1)


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, ProviderError) and exc.transient


def call(
    operation: Callable[[], T],
    policy: RetryPolicy,
    *,
    idempotent: bool = True,
    what: str = "call",
    sleep: Sleep = time.sleep,
    clock: Clock = time.monotonic,
    rng: random.Random | None = None,
) -> T:
    """Run ``operation`` under ``policy``; return its result or raise its last error.

    ``idempotent=False`` means a single attempt, whatever the policy says.
    ``what`` names the operation in log lines (never put secrets in it).
    """
    if not idempotent:
        return operation()
    jitter = rng or random.Random()  # noqa: S311 - jitter, not crypto
    started = clock()

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        hinted = getattr(exc, "retry_after", None)
        if isinstance(hinted, int | float) and hinted >= 0:
            return float(hinted)
        return policy.backoff(state.attempt_number, jitter)

    def stop(state: RetryCallState) -> bool:
        if state.attempt_number >= policy.max_attempts:
            return True
        return clock() - started + state.upcoming_sleep > policy.max_total_seconds

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning(
            "%s failed (attempt %d of %d, %s); retrying in %.2fs",
            what, state.attempt_number, policy.max_attempts, _describe(exc), state.upcoming_sleep,
        )

    retrying = Retrying(
        retry=retry_if_exception(is_transient),
        wait=wait,
        stop=stop,
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )
    return retrying(operation)


def retrying(
    policy: RetryPolicy, *, idempotent: bool = True, what: str | None = None, sleep: Sleep = time.sleep
) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Decorator form of :func:`call` for module-level functions."""

    def decorate(fn: Callable[..., T]) -> Callable[..., T]:
        label = what or fn.__qualname__

        def wrapper(*args: object, **kwargs: object) -> T:
            return call(lambda: fn(*args, **kwargs), policy, idempotent=idempotent, what=label, sleep=sleep)

        wrapper.__name__ = fn.__name__
        wrapper.__qualname__ = fn.__qualname__
        wrapper.__doc__ = fn.__doc__
        return wrapper

    return decorate


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), or None."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


def _describe(exc: BaseException | None) -> str:
    # Adapter errors carry no secrets in their messages; keep it that way here too.
    if exc is None:
        return "no error"
    return f"{type(exc).__name__}: {exc}"
