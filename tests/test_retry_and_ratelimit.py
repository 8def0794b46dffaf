"""The one retry policy and the shared token bucket, with injected clocks and sleeps."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable

import pytest

from provisioner.cloud import retry
from provisioner.cloud.ratelimit import RateLimiter, RateLimitTimeout
from provisioner.cloud.retry import RetryPolicy, TransientError
from tests.fixtures.sandbox import FakeClock, RecordingSleep


class Flaky(TransientError):
    def __init__(self, retry_after: float | None = None) -> None:
        super().__init__("flaky")
        self.retry_after = retry_after


class Refused(Exception):
    pass


def failing(times: int, error: Exception) -> tuple[list[int], Callable[[], str]]:
    attempts: list[int] = []

    def op() -> str:
        attempts.append(1)
        if len(attempts) <= times:
            raise error
        return "done"

    return attempts, op


def test_it_retries_transient_errors_until_one_succeeds() -> None:
    attempts, op = failing(3, Flaky())
    sleep = RecordingSleep()
    assert retry.call(op, RetryPolicy(max_attempts=5), sleep=sleep) == "done"
    assert len(attempts) == 4
    assert len(sleep.waits) == 3


def test_it_never_retries_a_permanent_error() -> None:
    attempts, op = failing(1, Refused())
    sleep = RecordingSleep()
    with pytest.raises(Refused):
        retry.call(op, RetryPolicy(max_attempts=5), sleep=sleep)
    assert len(attempts) == 1
    assert sleep.waits == []


def test_it_makes_exactly_one_attempt_when_not_idempotent() -> None:
    attempts, op = failing(1, Flaky())
    with pytest.raises(Flaky):
        retry.call(op, RetryPolicy(max_attempts=5), idempotent=False, sleep=RecordingSleep())
    assert len(attempts) == 1


def test_it_offers_the_same_policy_as_a_decorator() -> None:
    attempts, op = failing(2, Flaky())
    sleep = RecordingSleep()

    @retry.retrying(RetryPolicy(max_attempts=3), sleep=sleep)
    def fetch(suffix: str) -> str:
        return op() + suffix

    @retry.retrying(RetryPolicy(max_attempts=3), idempotent=False, sleep=sleep)
    def create() -> str:
        return op()

    assert fetch("!") == "done!"
    assert (len(attempts), len(sleep.waits)) == (3, 2)
    attempts.clear()
    with pytest.raises(Flaky):
        create()
    assert len(attempts) == 1


def test_it_reraises_the_last_error_after_max_attempts() -> None:
    attempts, op = failing(99, Flaky())
    with pytest.raises(Flaky):
        retry.call(op, RetryPolicy(max_attempts=3), sleep=RecordingSleep())
    assert len(attempts) == 3


def test_it_waits_what_retry_after_says_instead_of_backing_off() -> None:
    _, op = failing(2, Flaky(retry_after=7.0))
    sleep = RecordingSleep()
    retry.call(op, RetryPolicy(max_attempts=5, base=0.1, cap=0.2), sleep=sleep)
    assert sleep.waits == [7.0, 7.0]


def test_it_gives_up_when_the_next_wait_would_pass_the_total_budget() -> None:
    clock = FakeClock(0)
    sleep = RecordingSleep(clock)
    attempts, op = failing(99, Flaky(retry_after=25.0))
    with pytest.raises(Flaky):
        retry.call(op, RetryPolicy(max_attempts=10, max_total_seconds=60), sleep=sleep, clock=clock)
    # waits of 25 s: after 0 s and 25 s; a third (ending at 75 s) would pass 60 s
    assert sleep.waits == [25.0, 25.0]
    assert len(attempts) == 3


def test_it_backs_off_exponentially_with_jitter_under_a_cap() -> None:
    policy = RetryPolicy(base=0.5, cap=8.0)
    rng = random.Random(1)
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 8.0), (9, 8.0)]:
        waits = [policy.backoff(attempt, rng) for _ in range(200)]
        assert all(ceiling / 2 <= w <= ceiling for w in waits)
        assert len(set(waits)) > 100  # jittered, not fixed


@pytest.mark.parametrize(("header", "seconds"), [
    ("3", 3.0), ("0.25", 0.25), ("-4", 0.0), ("", None), ("soon", None), (None, None),
    ("Wed, 21 Oct 2015 07:28:10 GMT", 10.0),
])
def test_it_parses_retry_after_as_seconds_or_http_date(header: str | None, seconds: float | None) -> None:
    now = 1445412480.0  # 07:28:00 GMT that day
    assert retry.parse_retry_after(header, now=now) == seconds


def test_it_lets_a_burst_through_then_paces_at_the_rate() -> None:
    clock = FakeClock(0)
    limiter = RateLimiter(rate=10, burst=3, clock=clock, sleep=RecordingSleep(clock))
    waits = [limiter.acquire() for _ in range(6)]
    assert waits[:3] == [0, 0, 0]
    assert waits[3:] == pytest.approx([0.1, 0.1, 0.1])
    assert clock() == pytest.approx(0.3)


def test_it_hands_out_each_slot_once_across_sixteen_threads() -> None:
    clock = FakeClock(0)  # frozen: every wait is a reservation further into the future
    limiter = RateLimiter(rate=100, burst=1, clock=clock, sleep=lambda s: None)
    waits: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(25):
            w = limiter.acquire()
            with lock:
                waits.append(round(w, 6))

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(waits) == [round(i / 100, 6) for i in range(400)]
    assert limiter.stats().acquired == 400


def test_it_keeps_any_window_within_the_cloudflare_limit() -> None:
    clock = FakeClock(0)
    limiter = RateLimiter.per_window(1200, 300, clock=clock, sleep=RecordingSleep(clock))
    stamps = []
    for _ in range(3000):
        limiter.acquire()
        stamps.append(clock())
    worst = max(sum(1 for s in stamps if start <= s < start + 300) for start in stamps[::50])
    assert worst <= 1200


def test_it_times_out_without_consuming_a_token() -> None:
    clock = FakeClock(0)
    limiter = RateLimiter(rate=1, burst=1, clock=clock, sleep=RecordingSleep(clock))
    limiter.acquire()
    with pytest.raises(RateLimitTimeout):
        limiter.acquire(timeout=0.5)
    assert limiter.acquire(timeout=1.0) == pytest.approx(1.0)


def test_it_ships_the_documented_defaults() -> None:
    assert RateLimiter.vultr_default().rate == 30
    cf = RateLimiter.cloudflare_default()
    assert cf.burst + cf.rate * 300 == pytest.approx(1200)
