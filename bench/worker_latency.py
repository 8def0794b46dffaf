"""The worker's own latency: the real `provisioner run` against the sandbox (its own process,
as `provisioner sandbox serve` runs it), measured from the outside through the database.

For N = 1, 10 and 100 new subscriptions written to the EDD tables at once:

* **sale → Running**: from the moment the subscriptions are committed to each server's
  ``create.done`` event (the worker's clock is the wall clock), against the **critical path**
  of one server: the sandbox's boot time + its install time (DNS is one fast API call).
  Goal: every server ≤ 1.1 × critical path + 1 s.
* **click → rebuild started**: a customer's rebuild request recorded through the customer
  service (as the API records it) to the ``rebuild.instance started`` event. Goal ≤ 2 s.

Then the same with one new server whose install hangs for ten minutes (the sandbox's
``slow_install`` host fault, over its admin API): the other servers' figures must not move.

Each phase also reports the CPU seconds the worker process and the sandbox process spent from the
sale until the last server was Running (``/proc/PID/stat``): with one core's worth of GIL, the
worker's CPU per new server is what bounds a burst's makespan on this machine.

Everything is local: a temp directory, SQLite, the sandbox on free loopback ports and
127.x.y.z host addresses. Bounded: each phase gives up after ``--timeout`` seconds. Speed is
reported, never asserted. Run: ``.venv/bin/python bench/worker_latency.py [--sizes 1,10,100]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    ROOT,
    cpu_seconds,
    fmt_s,
    log,
    median,
    parse_sizes,
    print_table,
    sandbox_admin,
    write_settings,
)
from sqlalchemy import select  # noqa: E402

from provisioner import customer, db  # noqa: E402
from provisioner.cloudinit import generate_client_key  # noqa: E402
from provisioner.models import Server, ServerEvent  # noqa: E402
from provisioner.settings import load_settings  # noqa: E402
from provisioner.storefront import eddschema  # noqa: E402
from provisioner.wiring import App  # noqa: E402
from tests.fixtures.net import free_port  # noqa: E402

BOOT_SECONDS = 5.0
INSTALL_SECONDS = 2.0


def _settings(tmp: Path, threads: int) -> Path:
    """The sandbox default on free ports, a realistic boot and install time, a 60 s tick."""
    key = generate_client_key()
    (tmp / "worker_ed25519").write_text(key.private_pem)
    (tmp / "worker_ed25519").chmod(0o600)
    vultr_port, cloudflare_port = free_port(), free_port()
    path, _ = write_settings(
        tmp,
        sandbox={"enabled": True, "vultr_port": vultr_port, "cloudflare_port": cloudflare_port,
                 "admin_port": free_port(), "boot_seconds": BOOT_SECONDS, "install_seconds": INSTALL_SECONDS,
                 "ip_pool": f"127.{random.randint(100, 250)}.{random.randint(0, 255)}.0/24"},
        ssh={"port": free_port(), "connect_timeout": 10, "command_timeout": 900},
        lifecycle={"poll_seconds": 0.5, "snapshots": False, "retire_delay_seconds": 1},
        worker={"tick_seconds": 60.0, "threads": threads},
        cloudflare={"ttl": 60, "base_url": f"http://127.0.0.1:{cloudflare_port}/client/v4"},
        vultr={"base_url": f"http://127.0.0.1:{vultr_port}/v2"},
    )
    return path


def _spawn(cfg: Path, log_file: Path, *argv: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONER_")}
    return subprocess.Popen([sys.executable, "-m", "provisioner", "--config", str(cfg), *argv], env=env, cwd=ROOT,
                            stdout=log_file.open("ab"), stderr=subprocess.STDOUT)


def _wait(predicate: Any, timeout: float, poll: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll)
    return False


def _calls(app: App, since: int) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = sandbox_admin(app.settings.sandbox.admin_port, f"/calls?since={since}",
                                                timeout=10)["calls"]
    return calls


def rate_floor(app: App, calls: list[dict[str, Any]]) -> float:
    """The least time the providers' rate limits allow for these calls (the client's own buckets:
    Vultr ``requests_per_second`` with no burst; Cloudflare ``requests_per_window`` with its burst)."""
    from provisioner.cloud.ratelimit import RateLimiter

    cf = app.settings.cloudflare
    cf_bucket = RateLimiter.per_window(cf.requests_per_window, cf.window_seconds)
    vultr = sum(1 for c in calls if c.get("service") == "vultr")
    cloudflare = sum(1 for c in calls if c.get("service") == "cloudflare")
    return max(vultr / app.settings.vultr.requests_per_second,
               max(0.0, cloudflare - cf_bucket.burst) / cf_bucket.rate)


def _admin(app: App, path: str, body: dict[str, Any]) -> None:
    sandbox_admin(app.settings.sandbox.admin_port, path, method="POST", body=body, timeout=10)


class Bench:
    def __init__(self, tmp: Path, threads: int, timeout: float) -> None:
        self.tmp, self.timeout = tmp, timeout
        self.cfg = _settings(tmp, threads)
        self.app = App(load_settings(self.cfg, env={}))
        db.upgrade(self.app.engine)
        edd = db.make_engine(self.app.settings.storefront.edd_url)
        eddschema.create_edd_tables(edd, "wp_")
        edd.dispose()
        self.next_sub = 1
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        self.procs.append(_spawn(self.cfg, self.tmp / "sandbox.log", "sandbox", "serve"))
        worker_log = self.tmp / "worker.log"
        self.procs.append(_spawn(self.cfg, worker_log, "run"))
        if not _wait(lambda: b"now the leader" in worker_log.read_bytes(), 60):
            raise SystemExit(f"the worker did not start: {worker_log.read_text()[-2000:]}")
        time.sleep(1.5)  # past the first tick

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()

    def sell(self, n: int) -> tuple[list[str], dt.datetime]:
        edd = db.make_engine(self.app.settings.storefront.edd_url)
        expiration = dt.datetime.now(dt.UTC).replace(tzinfo=None) + dt.timedelta(days=30)
        ids = []
        with edd.begin() as conn:
            for _ in range(n):
                sid = self.next_sub
                self.next_sub += 1
                eddschema.insert_customer(conn, "wp_", customer_id=sid, email=f"c{sid}@example.com", user_id=0)
                eddschema.insert_subscription(conn, "wp_", subscription_id=sid, customer_id=sid, product_id=1,
                                              status="active", expiration=expiration)
                ids.append(str(sid))
        sold = dt.datetime.now(dt.UTC)
        edd.dispose()
        return ids, sold

    def running_at(self, subs: list[str]) -> dict[str, dt.datetime]:
        with self.app.sessions() as s:
            q = (select(Server.subscription_id, ServerEvent.at)
                 .join(ServerEvent, ServerEvent.server_id == Server.id)
                 .where(Server.subscription_id.in_(subs), ServerEvent.what == "create.done"))
            return {sub: at for sub, at in s.execute(q)}

    def latencies(self, subs: list[str], sold: dt.datetime) -> list[float]:
        _wait(lambda: len(self.running_at(subs)) == len(subs), self.timeout, poll=0.5)
        done = self.running_at(subs)
        return [(done[s] - sold).total_seconds() if s in done else float("nan") for s in subs]

    def milestones(self, subs: list[str], sold: dt.datetime) -> dict[str, float]:
        """Median seconds from the sale to each milestone of the create: where the time goes."""
        wanted = {("create.requested", "info"): "planned", ("create.instance", "ok"): "instance",
                  ("create.boot", "ok"): "booted", ("create.install", "ok"): "installed",
                  ("create.dns", "ok"): "dns", ("create.done", "ok"): "running"}
        seen: dict[str, list[float]] = {name: [] for name in wanted.values()}
        with self.app.sessions() as s:
            q = (select(ServerEvent.what, ServerEvent.outcome, ServerEvent.at)
                 .join(Server, ServerEvent.server_id == Server.id).where(Server.subscription_id.in_(subs)))
            for what, outcome, at in s.execute(q):
                name = wanted.get((what, outcome))
                if name:
                    seen[name].append((at - sold).total_seconds())
        return {name: median(values) for name, values in seen.items()}

    def rebuild_latencies(self, subs: list[str]) -> list[float]:
        out = []
        for sub in subs:
            with self.app.sessions() as s:
                row = s.scalars(select(Server).where(Server.subscription_id == sub)).one()
                customer.request_rebuild(s, self.app.settings, row, "random", now=dt.datetime.now(dt.UTC))
                s.commit()
                rid, asked = row.id, dt.datetime.now(dt.UTC)

            def started(rid: int = rid) -> dt.datetime | None:
                with self.app.sessions() as s:
                    return s.scalar(select(ServerEvent.at).where(ServerEvent.server_id == rid,
                                                                 ServerEvent.what == "rebuild.instance",
                                                                 ServerEvent.outcome == "started"))
            _wait(lambda: started() is not None, 30)
            at = started()
            out.append((at - asked).total_seconds() if at else float("nan"))
        return out


HUNG_NEW = 10     # new servers sold in the phase with one install hung


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", default="1,10,100", help="new subscriptions per phase (default 1,10,100)")
    parser.add_argument("--threads", type=int, default=0, help="worker.threads (default: the largest size, and "
                                                               "at least the hung phase's 11 + --rebuilds)")
    parser.add_argument("--rebuilds", type=int, default=5, help="customer rebuild clicks per phase")
    parser.add_argument("--timeout", type=float, default=300, help="give up on a phase after this many seconds")
    args = parser.parse_args(argv)
    sizes = parse_sizes(args.sizes)
    # As many threads as servers can be under way at once: an install holds its thread for its whole
    # run, so a phase with more servers than threads measures the wait for a free thread (the
    # boot polls queued behind the installs), not the worker's latency. The last phase has
    # HUNG_NEW new servers, the hung one, and the rebuilds clicked in the phase before it.
    threads = args.threads or max(8, max(sizes), HUNG_NEW + 1 + args.rebuilds)
    critical = BOOT_SECONDS + INSTALL_SECONDS
    goal = 1.1 * critical + 1
    rows: list[list[str]] = []
    with tempfile.TemporaryDirectory(prefix="prov-latency-") as tmp:
        bench = Bench(Path(tmp), threads, args.timeout)
        try:
            bench.start()
            log(f"worker and sandbox up; critical path {critical:.1f}s (boot {BOOT_SECONDS}s + install "
                f"{INSTALL_SECONDS}s), {threads} threads")
            for n, hung in [(n, False) for n in sizes] + [(HUNG_NEW, True)]:
                if hung:
                    _admin(bench.app, "/host-faults", {"target": "*", "kind": "slow_install",
                                                                "seconds": 600, "count": 1})
                    stuck, _ = bench.sell(1)
                    _wait(lambda stuck=stuck: bool(_stuck_installing(bench, stuck[0])), 60)
                seq = max((c["seq"] for c in _calls(bench.app, 0)), default=0)
                sandbox, worker = bench.procs      # as start() spawned them
                worker0, sandbox0 = cpu_seconds(worker.pid), cpu_seconds(sandbox.pid)
                subs, sold = bench.sell(n)
                lat = bench.latencies(subs, sold)
                worker_cpu, sandbox_cpu = cpu_seconds(worker.pid) - worker0, cpu_seconds(sandbox.pid) - sandbox0
                floor = max(critical, rate_floor(bench.app, _calls(bench.app, seq)))
                steps = bench.milestones(subs, sold)
                log("  where the time goes (median s after the sale): "
                    + ", ".join(f"{k} {v:.2f}" for k, v in steps.items()))
                rebuild = bench.rebuild_latencies(subs[: min(args.rebuilds, n)])
                load = os.getloadavg()[0]
                met = sum(1 for x in lat if x <= 1.1 * floor + 1)
                label = f"{n} new" + (" + 1 hung install" if hung else "")
                rows.append([label, fmt_s(median(lat)), fmt_s(max(lat)), fmt_s(floor), f"{max(lat) / floor:.2f}",
                             f"{met}/{n}", fmt_s(median(rebuild)), fmt_s(max(rebuild, default=float("nan"))),
                             f"{worker_cpu:.1f}", f"{worker_cpu / n * 1000:.0f}", f"{sandbox_cpu:.1f}",
                             f"{load:.2f}"])
                log(f"{label}: sale->Running median {median(lat):.2f}s max {max(lat):.2f}s; "
                    f"rebuild start median {median(rebuild):.2f}s")
                bench.app.engine.dispose()
        finally:
            bench.stop()
    print(f"\nworker latency (critical path {critical:.1f}s; floor = the larger of it and the providers' rate "
          f"limits for the calls made; goal: every server <= 1.1 x floor + 1s ({goal:.1f}s when the critical path "
          "binds), rebuild started <= 2s)")
    print_table(["phase", "sale->Running p50 (s)", "max (s)", "floor (s)", "max / floor", "within goal",
                 "click->rebuild p50 (s)", "max (s)", "worker CPU (s)", "ms a server", "sandbox CPU (s)",
                 "load 1m"], rows)
    return 0


def _stuck_installing(bench: Bench, sub: str) -> bool:
    with bench.app.sessions() as s:
        row = s.scalars(select(Server).where(Server.subscription_id == sub)).first()
        return row is not None and row.step == "install"


if __name__ == "__main__":
    sys.exit(main())
