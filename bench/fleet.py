"""Fleet makespan against the sandbox, then a soak under injected faults.

    .venv/bin/python bench/fleet.py                       # 10, 100, 1000 servers; soak 200
    .venv/bin/python bench/fleet.py --quick               # 10, 100; soak 50
    .venv/bin/python bench/fleet.py --sizes 10,300 --soak 0 --rate 60 --threads 64
    .venv/bin/python bench/fleet.py --cf-limit 0          # Cloudflare unthrottled: only Vultr's limit binds

MAKESPAN. For each size N: a fresh stack (SQLite database + demo EDD storefront in a temp
directory, the sandbox's simulated Vultr + Cloudflare on loopback ports, simulated SSH hosts on
127.x.y.z, in a process of their own unless ``--sandbox in-process``), N active subscriptions,
then the real path: ``App.plan_once()`` ->
``operations.start_plan`` -> ``jobs.driver.drive_until_idle(threads=...)`` with the production
adapters built by ``wiring.lifecycle``. The clock runs from the plan until every row is Running.
Instances boot in ``--boot`` s, the install script takes ``--install`` s, snapshots are off.

The floor is ``max(critical path, Vultr calls / Vultr rate, Cloudflare calls over the window
limit)``: the critical path is the median makespan of three 1-server runs; the call counts
come from the sandbox's call log (``sandbox.calls()``) of the same run. The brief's floor
``max(critical path, API calls / rate limit)`` leaves Cloudflare out; both ratios are printed,
because with Cloudflare's real limit (1,200 requests / 300 s) DNS, not Vultr, binds from about
a hundred servers up.

SOAK. ``--soak N`` subscriptions under ``--fault-rate`` (default 20%) injected faults on every
Vultr and Cloudflare endpoint (half 503s, a quarter 429s with Retry-After, a quarter timeouts
where the simulator holds the request ``--fault-hold`` s and hangs up without doing the work).
Planning ticks (plan -> start -> drive until idle) repeat until all N are Running or
``--soak-timeout`` passes. Then the invariants: N rows Running with no action and no human
needed; exactly one instance per server, labelled for its generation, with the row's id; one A
record per server with the row's IP and record id; no instance, record or snapshot that does
not belong to a live row. Exit status is non-zero only when an invariant fails or something
crashes; speed is reported, never asserted.

Everything is bounded: each run has a deadline, every loop a count; the progress monitor ends
with its run. Nothing leaves the machine (loopback only).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime as dt
import ipaddress
import json
import logging
import math
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
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
from sqlalchemy import func, select, text  # noqa: E402

from jobs.driver import drive_until_idle  # noqa: E402
from provisioner import db, operations, wiring  # noqa: E402
from provisioner.cloudinit import generate_client_key  # noqa: E402
from provisioner.lifecycle import Lifecycle  # noqa: E402
from provisioner.models import Server, Status  # noqa: E402
from provisioner.sandbox.app import Sandbox  # noqa: E402
from provisioner.sandbox.config import config_from_settings  # noqa: E402
from provisioner.sandbox.hosts import SimulatedHosts  # noqa: E402
from provisioner.storefront import eddschema  # noqa: E402
from provisioner.wiring import App  # noqa: E402
from tests.fixtures.net import free_port  # noqa: E402

DEFAULT_SIZES = "10,100,1000"
QUICK_SIZES = "10,100"
CRITICAL_PATH_RUNS = 3
MAX_SIZE = 5000
MAX_TICKS = 200
MONITOR_SECONDS = 15.0
CALL_LOG_LIMIT = 1_000_000


@dataclass
class RunResult:
    n: int
    makespan: float = float("nan")
    running: int = 0
    vultr_calls: int = 0
    cf_calls: int = 0
    first_dns: float = float("nan")    # seconds from the plan to the first Cloudflare call
    faults: collections.Counter[str] = field(default_factory=collections.Counter)
    cpu_seconds: float = 0.0           # this process: the product's lifecycle (and the sandbox, in-process)
    sandbox_cpu: float = float("nan")  # the sandbox process's (--sandbox process)
    vultr_wait: float = 0.0
    cf_wait: float = 0.0
    rounds: int = 0
    worker_errors: collections.Counter[str] = field(default_factory=collections.Counter)
    loadavg: tuple[float, float] = (float("nan"), float("nan"))
    error: str = ""
    invariants: list[str] = field(default_factory=list)


# --- errors the worker logs ----------------------------------------------------------------------


class ErrorCounter(logging.Handler):
    """Counts ERROR records from the provisioner (and its sandbox) during a run, by logger and exception."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.counts: collections.Counter[str] = collections.Counter()

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        what = f"{type(exc).__name__}: {str(exc)[:60]}" if exc else record.getMessage()[:80]
        self.counts[f"{record.name}: {what}"] += 1


ERRORS = ErrorCounter()


# --- the stack -------------------------------------------------------------------------------------

class SandboxProcess:
    """The sandbox (simulated Vultr, Cloudflare and SSH hosts) in a process of its own, as
    ``python -m provisioner.sandbox --config`` runs it: in production the providers are not in the
    worker's process, and in this one their CPU took the driver's GIL (a third of a burst's CPU).
    The same few methods as :class:`Sandbox`, over its admin API."""

    def __init__(self, cfg: Path, args: argparse.Namespace, faults: dict[str, Any] | None, log_file: Path) -> None:
        import tomllib

        sb = tomllib.loads(cfg.read_text())["sandbox"]
        self.vultr_url = f"http://127.0.0.1:{sb['vultr_port']}/v2"
        self.cloudflare_url = f"http://127.0.0.1:{sb['cloudflare_port']}/client/v4"
        self._admin_port = int(sb["admin_port"])
        argv = [sys.executable, "-m", "provisioner.sandbox", "--config", str(cfg), "--log-level", "WARNING",
                "--snapshot-seconds", "0", "--tick-seconds", "0.05", "--seed", str(args.seed),
                "--call-log-limit", str(CALL_LOG_LIMIT), "--cloudflare-limit", str(max(0, args.cf_limit)),
                "--cloudflare-window", str(args.cf_window)]
        if faults is not None:
            argv += ["--faults", json.dumps(faults)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONER_")}
        self.proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=log_file.open("ab"),  # noqa: S603 - ours
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                self._get("/health")
                return
            except OSError:
                time.sleep(0.1)
        self.close()
        raise RuntimeError(f"the sandbox process did not come up (see {log_file})")

    def _get(self, path: str, method: str = "GET") -> Any:
        return sandbox_admin(self._admin_port, path, method=method)

    def last_call_seq(self) -> int:
        return int(self._get(f"/calls?since={2**62}")["last_seq"])

    def calls(self, since: int = 0) -> list[dict[str, Any]]:
        calls: list[dict[str, Any]] = self._get(f"/calls?since={since}")["calls"]
        return calls

    def describe(self) -> dict[str, Any]:
        state: dict[str, Any] = self._get("/state")
        return state

    def clear_faults(self) -> None:
        self._get("/faults", method="DELETE")

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the sandbox process so far."""
        return cpu_seconds(self.proc.pid)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@dataclass
class Stack:
    app: App
    sandbox: Sandbox | SandboxProcess
    lc: Lifecycle


def loopback_pool(text: str) -> str:
    """An address pool inside 127.0.0.0/8: the simulated hosts listen on these addresses."""
    net = ipaddress.ip_network(text, strict=False)
    if not net.subnet_of(ipaddress.ip_network("127.0.0.0/8")):  # type: ignore[arg-type]
        raise argparse.ArgumentTypeError(f"{text}: the pool must be inside 127.0.0.0/8 (nothing leaves the machine)")
    return str(net)


def cf_client_limits(args: argparse.Namespace) -> tuple[int, float]:
    if args.cf_limit <= 0:  # "unthrottled": a bucket far larger than anything we send
        return 10_000_000, 1.0
    return args.cf_limit, args.cf_window


@contextlib.contextmanager
def stack(tmp: Path, args: argparse.Namespace, faults: dict[str, Any] | None = None) -> Iterator[Stack]:
    tmp.mkdir(parents=True, exist_ok=True)
    key = generate_client_key()
    key_file = tmp / "worker_ed25519"
    key_file.write_text(key.private_pem)
    key_file.chmod(0o600)
    ssh_port = free_port()
    # By default a /16 of loopback addresses (65k hosts), away from the tests' 127.100-250.x.0/24 pools
    pool = args.pool or f"127.{random.randint(10, 60)}.0.0/16"
    url = f"sqlite:///{tmp}/provisioner.db"
    cf_limit, cf_window = cf_client_limits(args)
    ports = {"vultr_port": free_port(), "cloudflare_port": free_port(), "admin_port": free_port()}
    cfg, settings = write_settings(
        tmp,
        database={"url": url}, storefront={"edd_url": url, "site_timezone": "UTC"},
        vultr={"base_url": f"http://127.0.0.1:{ports['vultr_port']}/v2", "requests_per_second": args.rate},
        cloudflare={"base_url": f"http://127.0.0.1:{ports['cloudflare_port']}/client/v4", "ttl": 60,
                    "requests_per_window": cf_limit, "window_seconds": cf_window},
        ssh={"port": ssh_port, "private_key_file": str(key_file), "connect_timeout": 10,
             "command_timeout": 60},
        lifecycle={"snapshots": False, "poll_seconds": args.poll, "backoff_base_seconds": args.backoff_base,
                   "backoff_cap_seconds": args.backoff_cap, "lease_seconds": 120},
        worker={"threads": args.threads},
        sandbox={"enabled": True, **ports, "boot_seconds": args.boot, "install_seconds": args.install,
                 "ip_pool": pool, "host_root": str(tmp / "hosts"), "smtp_port": 0},   # 0: no mail catcher
    )
    with contextlib.ExitStack() as cleanup:
        sb: Sandbox | SandboxProcess
        if args.sandbox == "process":
            sb = SandboxProcess(cfg, args, faults, tmp / "sandbox.log")
            cleanup.callback(sb.close)
        else:
            # the same sandbox the process gets from the settings file and its command line
            sb_config = config_from_settings(settings, snapshot_seconds=0.0, tick_seconds=0.05, state_file=None,
                                             call_log_limit=CALL_LOG_LIMIT, faults=faults, seed=args.seed,
                                             cloudflare_limit=max(0, args.cf_limit),
                                             cloudflare_window_seconds=args.cf_window)
            hosts = cleanup.enter_context(SimulatedHosts(root_dir=tmp / "hosts", ssh_port=ssh_port,
                                                         install_seconds=args.install))
            sb = cleanup.enter_context(Sandbox(sb_config, hosts))
        app = App(settings)
        db.upgrade(app.engine)
        eddschema.create_edd_tables(app.engine, "wp_")
        try:
            yield Stack(app, sb, wiring.lifecycle(app, owner="bench"))
        finally:
            app.engine.dispose()
            engine = getattr(app.__dict__.get("storefront"), "_engine", None)
            if engine is not None:
                engine.dispose()


def add_subscriptions(app: App, n: int) -> None:
    """``n`` active EDD subscriptions (guest customers), bulk-inserted."""
    expiration = (dt.datetime.now(dt.UTC) + dt.timedelta(days=30)).strftime("%Y-%m-%d %H:%M:%S")
    cols = [c[0] for c in eddschema.SUBSCRIPTIONS]
    subs = [{"id": i, "customer_id": i, "period": "month", "initial_amount": "9.99", "initial_tax_rate": "",
             "initial_tax": "", "recurring_amount": "9.99", "recurring_tax_rate": "", "recurring_tax": "",
             "bill_times": 0, "transaction_id": f"txn-{i}", "parent_payment_id": 0, "product_id": 1, "price_id": 0,
             "created": "2024-01-01 00:00:00", "expiration": expiration, "trial_period": "", "status": "active",
             "profile_id": f"sub_{i:012d}", "notes": ""} for i in range(1, n + 1)]
    customers = [{"id": i, "user_id": 0, "email": f"customer{i}@example.test", "name": ""} for i in range(1, n + 1)]
    with app.engine.begin() as conn:
        conn.execute(text("INSERT INTO wp_edd_customers (id, user_id, email, name) VALUES (:id, :user_id, :email, "
                          ":name)"), customers)
        conn.execute(text(f"INSERT INTO wp_edd_subscriptions ({', '.join(cols)}) "
                          f"VALUES ({', '.join(':' + c for c in cols)})"), subs)
        eddschema.set_option(conn, "wp_", "timezone_string", "UTC")


# --- progress ---------------------------------------------------------------------------------------

def open_fds() -> list[int]:
    try:
        return [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        return []


@contextlib.contextmanager
def monitor(st: Stack, label: str, n: int) -> Iterator[None]:
    """Print a progress line every MONITOR_SECONDS until the block ends."""
    stop = threading.Event()
    t0, cpu0 = time.monotonic(), time.process_time()

    def loop() -> None:
        while not stop.wait(MONITOR_SECONDS):
            try:
                with st.app.sessions() as s:
                    by: dict[Any, Any] = dict(s.execute(select(Server.status, func.count())
                                                        .group_by(Server.status)).tuples().all())
                    steps: dict[Any, Any] = dict(s.execute(select(Server.step, func.count())
                                                           .where(Server.action.is_not(None))
                                                           .group_by(Server.step)).tuples().all())
            except Exception as exc:  # noqa: BLE001 - progress only
                by, steps = {"?": str(exc)[:60]}, {}
            elapsed = time.monotonic() - t0
            cpu = (time.process_time() - cpu0) / max(elapsed, 1e-9)
            fds = open_fds()
            low = sum(1 for fd in fds if fd < 1024)
            log(f"  {label}: {elapsed:5.0f}s  {by.get('Running', 0)}/{n} Running  steps {steps}  "
                f"calls {st.sandbox.last_call_seq()}  cpu {cpu:.0%} of one core  "
                f"fds {len(fds)} ({low} below 1024)  threads {threading.active_count()}")

    thread = threading.Thread(target=loop, name="bench-monitor", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=MONITOR_SECONDS + 5)


# --- one run ---------------------------------------------------------------------------------------

def count_running(app: App) -> int:
    with app.sessions() as s:
        return int(s.scalar(select(func.count()).select_from(Server).where(
            Server.status == Status.RUNNING.value, Server.action.is_(None))) or 0)


def limiter_wait(client: Any) -> float:
    limiter = getattr(client, "_limiter", None)
    return float(limiter.stats().total_wait_seconds) if limiter is not None else 0.0


def drive(st: Stack, n: int, deadline: float, label: str, threads: int) -> int:
    """Planning ticks (plan -> start_plan -> drive_until_idle) until all n run or the deadline passes."""
    ticks = 0
    with monitor(st, label, n):
        while ticks < MAX_TICKS and time.monotonic() < deadline:
            ticks += 1
            result, error = st.app.plan_once()
            if error:
                raise RuntimeError(f"storefront: {error}")
            applied = operations.start_plan(st.lc, result)
            for line in applied.refused:
                log(f"  {label}: plan refused: {line}")
            left = deadline - time.monotonic()
            if left <= 0:
                break
            drive_until_idle(st.lc, timeout=left, threads=threads)
            if count_running(st.app) >= n:
                break
            with st.app.sessions() as s:
                stuck = s.scalar(select(func.count()).select_from(Server).where(Server.needs_human.is_(True))) or 0
            if stuck:
                log(f"  {label}: {stuck} row(s) need a human; they will not converge")
                break
            time.sleep(0.5)
    return ticks


def run_fleet(tmp: Path, n: int, args: argparse.Namespace, label: str,
              faults: dict[str, Any] | None = None) -> RunResult:
    res = RunResult(n)
    ERRORS.counts.clear()
    try:
        with stack(tmp, args, faults) as st:
            add_subscriptions(st.app, n)
            seq0 = st.sandbox.last_call_seq()
            load0 = os.getloadavg()[0]
            cpu0 = time.process_time()
            sb_cpu0 = st.sandbox.cpu_seconds() if isinstance(st.sandbox, SandboxProcess) else math.nan
            t0, wall0 = time.monotonic(), time.time()   # the call log's times are wall clock
            res.rounds = drive(st, n, t0 + (args.soak_timeout if faults else args.timeout), label, args.threads)
            res.running = count_running(st.app)
            res.makespan = time.monotonic() - t0
            res.cpu_seconds = time.process_time() - cpu0
            if isinstance(st.sandbox, SandboxProcess):
                res.sandbox_cpu = st.sandbox.cpu_seconds() - sb_cpu0
            res.loadavg = (load0, os.getloadavg()[0])
            calls = st.sandbox.calls(since=seq0)
            res.vultr_calls = sum(1 for c in calls if c["service"] == "vultr")
            res.cf_calls = sum(1 for c in calls if c["service"] == "cloudflare")
            res.first_dns = min((c["time"] - wall0 for c in calls if c["service"] == "cloudflare"), default=math.nan)
            res.faults = collections.Counter(f"{c['service']} {c['fault']}" for c in calls if c.get("fault"))
            res.vultr_wait = limiter_wait(st.lc.ctx.vultr)
            res.cf_wait = limiter_wait(st.lc.ctx.dns)
            if res.running < n:
                res.error = f"only {res.running}/{n} Running after {res.makespan:.0f}s"
            if faults is not None or args.check_all:
                st.sandbox.clear_faults()
                res.invariants = check_invariants(st, n)
    except Exception as exc:  # noqa: BLE001 - reported as this size's result; larger sizes are skipped
        res.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        logging.getLogger("bench").debug("run failed", exc_info=True)
    res.worker_errors = collections.Counter(ERRORS.counts)
    return res


def check_invariants(st: Stack, n: int) -> list[str]:
    """Problems found (empty = every invariant holds)."""
    problems: list[str] = []
    with st.app.sessions() as s:
        rows = list(s.scalars(select(Server)))
    live = [r for r in rows if r.status != Status.DESTROYED.value]
    if len(rows) != n:
        problems.append(f"{len(rows)} server rows for {n} subscriptions")
    for r in rows:
        if r.status != Status.RUNNING.value or r.action or r.needs_human:
            problems.append(f"row {r.id}: status {r.status}, action {r.action}, needs_human {r.needs_human}, "
                            f"last error {r.last_error!r}")
    state = st.sandbox.describe()
    prefix = st.app.settings.vultr.label_prefix
    by_row: dict[int, list[dict[str, Any]]] = collections.defaultdict(list)
    for inst in state["instances"]:
        label = inst["label"]
        parts = label.split("-")
        rid = int(parts[1]) if len(parts) == 3 and parts[0] == prefix and parts[1].isdigit() else None
        if rid is None:
            problems.append(f"instance {inst['id']} has a label that is not ours: {label!r}")
            continue
        by_row[rid].append(inst)
    live_ids = {r.id for r in live}
    for rid in sorted(set(by_row) - live_ids):
        problems.append(f"LEAK: {len(by_row[rid])} instance(s) for row {rid}, which is not live")
    for r in live:
        mine = by_row.get(r.id, [])
        if len(mine) != 1:
            problems.append(f"row {r.id}: {len(mine)} instances (want exactly 1)")
        elif mine[0]["id"] != r.instance_id or mine[0]["label"] != f"{prefix}-{r.id}-g{r.generation}":
            problems.append(f"row {r.id}: instance {mine[0]['id']} ({mine[0]['label']}) is not the row's "
                            f"{r.instance_id} (g{r.generation})")
    names = {r.server_name: r for r in live if r.server_name}
    records: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for rec in state["records"]:
        records[rec["name"]].append(rec)
    for name in sorted(set(records) - set(names)):
        problems.append(f"LEAK: DNS record(s) {name} for no live server")
    for name, r in names.items():
        mine = records.get(name, [])
        if len(mine) != 1:
            problems.append(f"{name}: {len(mine)} DNS records (want exactly 1)")
        elif mine[0]["id"] != r.dns_record_id or mine[0]["content"] != r.server_ip:
            problems.append(f"{name}: record {mine[0]['id']} -> {mine[0]['content']} is not the row's "
                            f"{r.dns_record_id} -> {r.server_ip}")
    snapshot_ids = {r.snapshot_id for r in live if r.snapshot_id}
    for snap in state["snapshots"]:
        if snap["id"] not in snapshot_ids:
            problems.append(f"LEAK: snapshot {snap['id']} ({snap.get('description')}) belongs to no live row")
    return problems


# --- main -----------------------------------------------------------------------------------------

def fault_document(args: argparse.Namespace) -> dict[str, Any]:
    rate = args.fault_rate
    return {"seed": args.seed, "replace": True, "faults": {"*": {
        "error_rate": rate / 2, "error_status": 503,
        "rate_limit_rate": rate / 4, "retry_after": 0.5,
        "timeout_rate": rate / 4, "timeout_seconds": args.fault_hold,
    }}}


def ensure_fd_room(n: int) -> str | None:
    """Raise the soft open-files limit if n hosts need it; a reason if the machine cannot."""
    want = 2 * n + 2048   # each simulated host: a listener and its clients' sockets
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= want:
        return None
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft >= want else f"open-files limit {soft} < {want} needed for {n} simulated hosts"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help=f"fleet sizes (default {DEFAULT_SIZES})")
    parser.add_argument("--soak", type=int, default=None, help="soak size (default 200; 50 with --quick; 0 = none)")
    parser.add_argument("--quick", action="store_true", help=f"sizes {QUICK_SIZES}, soak 50")
    parser.add_argument("--threads", type=int, default=32, help="drive threads (worker.threads; default 32)")
    parser.add_argument("--rate", type=float, default=30.0, help="Vultr client requests/second (default 30)")
    parser.add_argument("--cf-limit", type=int, default=1200,
                        help="Cloudflare requests per window, client and simulator (default 1200; 0 = unthrottled)")
    parser.add_argument("--cf-window", type=float, default=300.0, help="Cloudflare window seconds (default 300)")
    parser.add_argument("--boot", type=float, default=2.0, help="simulated boot seconds (default 2)")
    parser.add_argument("--install", type=float, default=1.0, help="simulated install.sh seconds (default 1)")
    parser.add_argument("--poll", type=float, default=1.0, help="lifecycle.poll_seconds (default 1, as sandbox.toml)")
    parser.add_argument("--backoff-base", type=float, default=2.0, help="lifecycle.backoff_base_seconds (default 2)")
    parser.add_argument("--backoff-cap", type=float, default=30.0, help="lifecycle.backoff_cap_seconds (default 30)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="deadline per makespan run (default 1800 s)")
    parser.add_argument("--soak-timeout", type=float, default=900.0, help="soak deadline (default 900 s)")
    parser.add_argument("--fault-rate", type=float, default=0.2, help="soak fault probability per call (default 0.2)")
    parser.add_argument("--fault-hold", type=float, default=2.0, help="seconds a 'timeout' fault holds (default 2)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--pool", type=loopback_pool, default=None,
                        help="the simulated instances' address pool, a loopback network (default a random "
                             "127.N.0.0/16 with N in 10-60, away from the tests' pools)")
    parser.add_argument("--check-all", action="store_true", help="check the invariants after makespan runs too")
    parser.add_argument("--sandbox", choices=("process", "in-process"), default="process",
                        help="where the simulated providers run: a process of their own (default; as in "
                             "production, their CPU is not this process's) or this process's threads (before "
                             "2026-11-29: they shared the driver's GIL)")
    parser.add_argument("--log-level", default="CRITICAL",
                        help="provisioner log lines shown on stderr (default CRITICAL; ERRORs are counted anyway)")
    args = parser.parse_args(argv)
    sizes = parse_sizes(QUICK_SIZES if args.quick else args.sizes)
    soak = args.soak if args.soak is not None else (50 if args.quick else 200)
    if any(n > MAX_SIZE for n in sizes) or not 0 <= soak <= MAX_SIZE:
        raise SystemExit(f"sizes are limited to {MAX_SIZE}")
    if not 0 <= args.fault_rate <= 1:
        raise SystemExit("--fault-rate must be within 0..1")
    args.threads = max(1, min(256, args.threads))
    args.timeout = max(10.0, min(7200.0, args.timeout))
    args.soak_timeout = max(10.0, min(7200.0, args.soak_timeout))
    console = logging.StreamHandler()
    console.setLevel(args.log_level.upper())
    console.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(console)
    root.setLevel(min(logging.ERROR, console.level))
    logging.getLogger("provisioner").addHandler(ERRORS)

    failed = False
    notes: list[str] = []
    table: list[list[Any]] = []
    with tempfile.TemporaryDirectory(prefix="prov-bench-fleet-") as tmp_name:
        tmp = Path(tmp_name)
        log(f"critical path: {CRITICAL_PATH_RUNS} runs of 1 server (boot {args.boot}s, install {args.install}s, "
            f"poll {args.poll}s)")
        singles = [run_fleet(tmp / f"one-{i}", 1, args, f"1 server #{i + 1}") for i in range(CRITICAL_PATH_RUNS)]
        bad = [r.error for r in singles if r.error]
        if bad:
            print(f"the 1-server run failed: {bad[0]}; no floor can be measured")
            return 1
        critical = median([r.makespan for r in singles])
        dns_start = median([r.first_dns for r in singles])   # the earliest a DNS write can start
        log(f"critical path {critical:.2f}s ({', '.join(f'{r.makespan:.2f}' for r in singles)}); "
            f"{singles[0].vultr_calls} Vultr + {singles[0].cf_calls} Cloudflare calls per server")
        cf_limit, cf_window = cf_client_limits(args)
        cf_burst = max(1.0, min(20.0, cf_limit / 60))
        cf_rate = (cf_limit - cf_burst) / cf_window
        largest_ok = 0
        for n in sizes:
            room = ensure_fd_room(n)
            if room:
                notes.append(f"N={n} not measured: {room}")
                break
            log(f"makespan: {n} servers, {args.threads} threads, Vultr {args.rate:g}/s, "
                f"Cloudflare {'unthrottled' if args.cf_limit <= 0 else f'{cf_limit}/{cf_window:g}s'}")
            r = run_fleet(tmp / f"fleet-{n}", n, args, f"{n} servers")
            vultr_bound = r.vultr_calls / args.rate
            cf_bound = max(0.0, r.cf_calls - cf_burst) / cf_rate
            floor_brief = max(critical, vultr_bound)
            floor = max(floor_brief, cf_bound)
            status = "ok" if not r.error and not r.invariants else (r.error or f"{len(r.invariants)} invariant(s) fail")
            log(f"  {n} servers: {r.makespan:.1f}s, {r.running}/{n} Running; {status}")
            for p in r.invariants[:10]:
                log(f"    {p}")
            table.append([n, fmt_s(r.makespan), r.running, r.vultr_calls, fmt_s(vultr_bound), r.cf_calls,
                          fmt_s(cf_bound), fmt_s(floor), f"{r.makespan / floor:.2f}", fmt_s(r.first_dns),
                          fmt_s(dns_start + cf_bound),
                          f"{r.makespan / floor_brief:.2f}", fmt_s(r.vultr_wait), fmt_s(r.cf_wait),
                          fmt_s(r.cpu_seconds), fmt_s(r.sandbox_cpu), f"{r.loadavg[0]:.1f}/{r.loadavg[1]:.1f}",
                          sum(r.worker_errors.values()), status])
            for what, count in r.worker_errors.most_common(3):
                notes.append(f"N={n}: {count} x {what}")
            if r.invariants:
                failed = True
            if r.error:
                notes.append(f"N={n} did not complete ({r.error}); larger sizes were not attempted. "
                             f"Largest size that completed: {largest_ok or 'none'}")
                break
            largest_ok = n

        soak_result: RunResult | None = None
        if soak:
            doc = fault_document(args)
            log(f"soak: {soak} subscriptions, {args.fault_rate:.0%} faults on every endpoint "
                f"(503 {args.fault_rate / 2:.0%}, 429 {args.fault_rate / 4:.0%}, timeout {args.fault_rate / 4:.0%})")
            soak_result = run_fleet(tmp / "soak", soak, args, f"soak {soak}", faults=doc)

    print()
    print(f"Makespan of creating N servers (boot {args.boot:g}s, install {args.install:g}s, snapshots off, "
          f"poll {args.poll:g}s, {args.threads} threads, Vultr {args.rate:g} req/s, Cloudflare "
          f"{'unthrottled' if args.cf_limit <= 0 else f'{args.cf_limit}/{args.cf_window:g}s'}); "
          f"critical path (median of {CRITICAL_PATH_RUNS} 1-server runs) = {critical:.2f}s")
    print_table(["N", "makespan s", "Running", "Vultr calls", "V bound s", "CF calls", "CF bound s", "floor s",
                 "ratio", "1st DNS s", "DNS start + CF s", "ratio (V only)", "V wait s", "CF wait s", "CPU s",
                 "sandbox CPU s", "load avg", "errors", "result"], table)
    print("floor = max(critical path, Vultr calls / Vultr rate, (CF calls - burst) / CF rate); "
          "'ratio (V only)' = makespan / max(critical path, Vultr calls / rate), the brief's floor. "
          f"1st DNS s = the run's first Cloudflare call after the plan; 'DNS start + CF s' = the 1-server runs' "
          f"first DNS write ({dns_start:.2f}s: no name is written before its server is installed) + CF bound, "
          "the least makespan when Cloudflare binds (a diagnostic: the floor and ratio leave it out). "
          "V/CF wait = seconds threads spent waiting in the client rate limiters (summed over threads); "
          "CPU s = this process's CPU time (the lifecycle; the simulator too with --sandbox in-process); "
          "sandbox CPU s = the sandbox process's; load avg = the "
          f"machine's 1-minute load at start/end ({os.cpu_count()} cores; above that other work competed); "
          "errors = ERROR log records from the provisioner during the run (retried API faults log WARNING, "
          "not ERROR).")
    for note in notes:
        print(note)
    if soak_result is not None:
        r = soak_result
        injected = sum(r.faults.values())
        print()
        print(f"Soak: {soak} subscriptions, {args.fault_rate:.0%} injected faults (seed {args.seed})")
        verdict = "PASS" if not r.error and not r.invariants else "FAIL"
        print_table(["converged in s", "Running", "Vultr calls", "CF calls", "faults injected", "by kind",
                     "planning ticks", "load avg", "invariants"],
                    [[fmt_s(r.makespan) if not r.error else f"not ({fmt_s(r.makespan)})", f"{r.running}/{soak}",
                      r.vultr_calls, r.cf_calls, injected,
                      ", ".join(f"{k} {v}" for k, v in sorted(r.faults.items())), r.rounds,
                      f"{r.loadavg[0]:.1f}/{r.loadavg[1]:.1f}",
                      verdict if not r.invariants else f"FAIL ({len(r.invariants)})"]])
        for what, count in r.worker_errors.most_common(5):
            print(f"  worker ERROR log records: {count} x {what}")
        if r.error:
            print(f"soak error: {r.error}")
        for p in r.invariants[:30]:
            print(f"  invariant: {p}")
        if r.error or r.invariants:
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
