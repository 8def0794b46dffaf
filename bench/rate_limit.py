"""Hammer the shared rate limiter from many threads and print configured vs achieved rates.

    .venv/bin/python bench/rate_limit.py                    # limiter alone, Vultr and Cloudflare presets
    .venv/bin/python bench/rate_limit.py --sandbox          # also through the adapters against the simulator
    .venv/bin/python bench/rate_limit.py --threads 16 --seconds 3 --rate 30 --burst 1

Everything is bounded (threads x seconds) and local (the simulator binds 127.0.0.1).
Prints figures only; exits non-zero only if something crashes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from provisioner.cloud.ratelimit import RateLimiter, RateLimitTimeout  # noqa: E402

MAX_SECONDS = 30.0
MAX_THREADS = 64


@dataclass
class Result:
    name: str
    configured: float  # requests per second the limiter allows in the long run
    burst: float
    seconds: float
    done: int
    errors: int

    def print(self) -> None:
        achieved = self.done / self.seconds
        ceiling = self.configured + self.burst / self.seconds
        print(f"{self.name:<34} configured {self.configured:8.2f}/s (burst {self.burst:g})  "
              f"achieved {achieved:8.2f}/s  ratio {achieved / self.configured:5.3f}  "
              f"(ceiling incl. burst {ceiling:7.2f}/s)  calls {self.done}  errors {self.errors}")


def hammer(name: str, limiter: RateLimiter, work: Callable[[], object] | None, threads: int, seconds: float,
           expected: tuple[type[Exception], ...] = ()) -> Result:
    """From many threads until the deadline: take tokens (``work=None``), or run ``work``, which
    takes its tokens from ``limiter`` itself.  ``expected`` errors are counted, not fatal."""
    deadline = time.monotonic() + seconds
    counts = [0] * threads
    errors = [0] * threads
    crashes: list[BaseException] = []

    def run(slot: int) -> None:
        try:
            while time.monotonic() < deadline:
                if work is None:
                    try:
                        limiter.acquire(timeout=max(0.0, deadline - time.monotonic()))
                    except RateLimitTimeout:
                        return
                else:
                    try:
                        work()
                    except expected:
                        errors[slot] += 1
                if time.monotonic() <= deadline:
                    counts[slot] += 1
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread below
            crashes.append(exc)

    pool = [threading.Thread(target=run, args=(i,), name=f"bench-{i}") for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=seconds + 60)
    if crashes:
        raise crashes[0]
    return Result(name, limiter.rate, limiter.burst, seconds, sum(counts), sum(errors))


def bench_limiters(args: argparse.Namespace) -> None:
    presets = [
        ("limiter: custom", RateLimiter(args.rate, args.burst)),
        ("limiter: vultr default (30/s)", RateLimiter.vultr_default()),
        ("limiter: cloudflare (1200/300s)", RateLimiter.cloudflare_default()),
    ]
    for name, limiter in presets:
        hammer(name, limiter, None, args.threads, args.seconds).print()


def bench_sandbox(args: argparse.Namespace) -> None:
    from provisioner.cloud.cloudflare import CloudflareDNS, CloudflareError
    from provisioner.cloud.retry import RetryPolicy
    from provisioner.cloud.vultr import VultrCloud, VultrError
    from provisioner.sandbox.app import Sandbox
    from provisioner.sandbox.config import DEFAULT_CLOUDFLARE_TOKEN, DEFAULT_VULTR_KEY, SandboxConfig

    with tempfile.TemporaryDirectory() as tmp, Sandbox(SandboxConfig(
        boot_seconds=0, state_file=str(Path(tmp) / "state.json"), cloudflare_limit=0,
    )) as sb:
        policy = RetryPolicy(max_attempts=3, base=0.05, cap=0.2, max_total_seconds=5)
        vultr_limiter = RateLimiter.vultr_default()
        vultr = VultrCloud(DEFAULT_VULTR_KEY, sb.vultr_url, vultr_limiter, policy, timeout=5)
        inst = vultr.create_instance("bench", region="ewr", plan="vc2-1c-1gb", user_data="", os_id=2136)
        before = len(sb.calls("vultr"))
        hammer("adapter: vultr get_instance", vultr_limiter, lambda: vultr.get_instance(inst.id),
               args.threads, args.seconds, (VultrError,)).print()
        print(f"{'':34} simulator saw {len(sb.calls('vultr')) - before} Vultr requests "
              "(incl. each thread's last call, which ends after the deadline)")
        cf_limiter = RateLimiter.per_second(20, burst=1, name="cloudflare-bench")
        cf = CloudflareDNS(DEFAULT_CLOUDFLARE_TOKEN, sb.config.zone_id, sb.cloudflare_url, 60, cf_limiter, policy)
        cf.upsert_a("bench", "127.77.0.2")
        before = len(sb.calls("cloudflare"))
        hammer("adapter: cloudflare list_by_name", cf_limiter, lambda: cf.list_by_name("bench"),
               args.threads, args.seconds, (CloudflareError,)).print()
        print(f"{'':34} simulator saw {len(sb.calls('cloudflare')) - before} Cloudflare requests")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rate", type=float, default=30.0, help="custom limiter: tokens per second")
    parser.add_argument("--burst", type=float, default=1.0, help="custom limiter: bucket size")
    parser.add_argument("--sandbox", action="store_true", help="also run the adapters against the simulator")
    args = parser.parse_args(argv)
    args.threads = max(1, min(args.threads, MAX_THREADS))
    args.seconds = max(0.5, min(args.seconds, MAX_SECONDS))
    print(f"{args.threads} threads, {args.seconds:g} s per run")
    bench_limiters(args)
    if args.sandbox:
        bench_sandbox(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
