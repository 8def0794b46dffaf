"""One planning pass over 1,000 / 10,000 / 100,000 subscriptions, ours vs the seed's per-row loop.

    .venv/bin/python bench/reconcile.py                         # 1k, 10k, 100k on SQLite and MariaDB
    .venv/bin/python bench/reconcile.py --quick                 # 1k and 10k only
    .venv/bin/python bench/reconcile.py --sizes 1000,50000 --backends sqlite --repeat 5
    .venv/bin/python bench/reconcile.py --lean-rows --profile   # rows without secrets; cProfile one pass

"Ours" is exactly ``App.plan_once()``: read the EDD storefront (one SELECT joining
subscriptions, customers and users, plus the site time zone), read the planner's columns of
every server row (one Core SELECT), then ``reconcile.plan_rows()``. Wall time is the median of
``--repeat`` passes after one warm-up pass; peak memory is the tracemalloc peak of the
warm-up pass (tracemalloc slows Python down, so that pass is not timed).

Before/after in the same run: ``--baseline DIR`` (another commit's tree) and ``--rounds``
interleaved rounds of one process per tree and mode (``bench/_plan_pass.py``): ``App.plan_once()``
and the pass as the worker runs it (``on_read=keep_standing``), with wall, CPU and peak RSS.

"Per-row" is a literal reading of the seed's server_check.py: one SELECT of the
subscriptions, then for each subscription one ``SELECT * FROM provisioner_servers WHERE
subscription_id = ?`` (decide build/destroy), then one SELECT of the server ids and for each
server one ``SELECT rebuild_now_status ... WHERE id = ?``. One query per row, on one
connection (the per-row version's most favourable case). If it would take longer than
``--per-row-budget`` seconds, a seeded random sample of the rows is measured and the time
extrapolated linearly; the output says so.

Data: ~85% active + 5% cancelled/trialling subscriptions with a Running server row, 3% ended
(expired) with a Running row, 4% active without a row (to build), 3% long expired with a
Destroyed row; 2% of the Running rows ask for a rebuild. Expirations are 23:59:59 site time (as
EDD Recurring writes them) on days spread over the year ahead (ended ones: 10-30 days ago).
Running rows carry secrets and .ovpn blobs of the sizes the product itself produces
(``--lean-rows`` leaves them NULL).
The MariaDB runs use a database ``prov_bench_<random>`` that is dropped at the end.
Figures only: nothing here asserts on speed.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import datetime as dt
import gc
import io
import os
import pstats
import random
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    fmt_s,
    log,
    median,
    mysql_database,
    mysql_server_url,
    mysql_unreachable_reason,
    parse_sizes,
    print_table,
    recreate_mysql_database,
    settings_for_tree,
    timed,
    write_settings,
)
from sqlalchemy import Engine, text  # noqa: E402

from provisioner import db  # noqa: E402
from provisioner.models import Status  # noqa: E402
from provisioner.storefront import eddschema  # noqa: E402
from provisioner.storefront.edd import utc_to_site_local  # noqa: E402
from provisioner.wiring import App  # noqa: E402

PREFIX = "wp_"
SITE_ZONE = "America/New_York"
DEFAULT_SIZES = "1000,10000,100000"
QUICK_SIZES = "1000,10000"
CHUNK = 2000
ENTITLING = ("active", "trialling", "cancelled")
MAX_REPEAT = 20
T = TypeVar("T")


@dataclass
class Row:
    backend: str
    n: int
    load_s: float = float("nan")
    ours: list[float] = field(default_factory=list)
    ours_cpu: list[float] = field(default_factory=list)
    loadavg: list[float] = field(default_factory=list)
    peak_mb: float = float("nan")
    per_row_s: float = float("nan")
    per_row_note: str = ""
    ours_counts: str = ""
    per_row_counts: str = ""
    error: str = ""
    trees: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)


# --- the data ----------------------------------------------------------------------------------

def kind_of(i: int) -> str:
    """What subscription ``i`` is (stable, so every size has the same mix)."""
    r = i % 100
    if r < 85:
        return "active"
    if r < 88:
        return "cancelled"       # cancelled at period end: still entitled, has a server
    if r < 90:
        return "trialling"
    if r < 93:
        return "ended"           # expired, but its server is still Running -> destroy
    if r < 97:
        return "new"             # active, no server row yet -> build
    return "gone"                # expired long ago, row kept as Destroyed


def blob_sizes() -> tuple[int, int]:
    """The sizes of the sealed secrets and .ovpn the product writes for one real server."""
    from cryptography.fernet import Fernet

    from provisioner.cloudinit import generate_host_key
    from provisioner.secrets import SecretBox
    from provisioner.steps import ServerSecrets
    from provisioner.vpn import config as vpn_config
    from provisioner.vpn import pki as vpn_pki

    box = SecretBox([Fernet.generate_key().decode()])
    name = "g0001.vpn.example.test"
    pki = vpn_pki.generate_pki(name)
    host = generate_host_key()
    sealed = ServerSecrets(pki=vpn_pki.to_bytes(pki), host_private=host.private_pem,
                           host_public=host.public_line).seal(box)
    ovpn = box.seal(vpn_config.render_client_ovpn(pki, name))
    return len(sealed), len(ovpn)


def _filler(size: int, seed: int) -> str:
    import base64
    import random

    rng = random.Random(seed)  # noqa: S311 - filler bytes, not secrets
    return base64.urlsafe_b64encode(rng.randbytes(size))[:size].decode("ascii")


def load(engine: Engine, n: int, now: dt.datetime, lean: bool, revision: str = "head") -> dict[str, int]:
    """Create the EDD tables and ours (migrations up to ``revision``), and bulk-load ``n``
    subscriptions. The sealed tokens go where that revision keeps them: in the server rows
    (before 0010) or in ``provisioner_server_sealed``."""
    from zoneinfo import ZoneInfo

    from sqlalchemy import MetaData, Table

    zone = ZoneInfo(SITE_ZONE)
    eddschema.create_edd_tables(engine, PREFIX)
    db.upgrade(engine, revision)
    secrets_len, ovpn_len = blob_sizes()
    secrets_blob = None if lean else _filler(secrets_len, 1)
    ovpn_blob = None if lean else _filler(ovpn_len, 2)
    password_blob = None if lean else _filler(140, 3)
    def edd_day(days: int) -> str:
        """What EDD Recurring writes: 23:59:59 site time of the day the period ends."""
        return utc_to_site_local(now + dt.timedelta(days=days), zone).strftime("%Y-%m-%d 23:59:59")

    # expirations spread over a year of days, as a shop with monthly and yearly plans has them
    future = [edd_day(2 + d) for d in range(365)]
    soon = [edd_day(2 + d) for d in range(28)]
    past = [edd_day(-10 - d) for d in range(20)]
    long_ago = [edd_day(-40 - d) for d in range(300)]
    counts = {"subscriptions": 0, "running": 0, "destroyed": 0}

    t = lambda name: eddschema.table_name(engine, PREFIX, name)  # noqa: E731
    sub_cols = [c[0] for c in eddschema.SUBSCRIPTIONS]
    sub_sql = text(f"INSERT INTO {t('edd_subscriptions')} ({', '.join(sub_cols)}) "
                   f"VALUES ({', '.join(':' + c for c in sub_cols)})")
    cust_sql = text(f"INSERT INTO {t('edd_customers')} (id, user_id, email, name) "
                    "VALUES (:id, :user_id, :email, :name)")
    user_sql = text(f"INSERT INTO {t('users')} (ID, user_login, user_pass, user_nicename, user_email, user_url, "
                    "user_registered, user_activation_key, user_status, display_name) VALUES (:ID, :login, '', "
                    ":login, :email, '', '2024-01-01 00:00:00', '', 0, :login)")
    meta = MetaData()
    servers = Table("provisioner_servers", meta, autoload_with=engine)
    inline = "secrets_enc" in servers.c
    sealed_table = None if inline else Table("provisioner_server_sealed", meta, autoload_with=engine)

    def chunks() -> Iterator[range]:
        for start in range(1, n + 1, CHUNK):
            yield range(start, min(n, start + CHUNK - 1) + 1)

    with engine.begin() as conn, eddschema.wordpress_sql_mode(conn):
        eddschema.set_option(conn, PREFIX, "timezone_string", SITE_ZONE)
        eddschema.set_option(conn, PREFIX, "gmt_offset", "")
        for ids in chunks():
            users, customers, subs, rows, sealed = [], [], [], [], []
            for i in ids:
                kind = kind_of(i)
                email = f"customer{i}@example.test"
                user_id = i if i % 2 else 0          # half are guests (user_id 0), half WordPress users
                if user_id:
                    users.append({"ID": user_id, "login": f"customer{i}", "email": email})
                customers.append({"id": i, "user_id": user_id, "email": email, "name": f"Customer {i}"})
                status = {"ended": "expired", "new": "active", "gone": "expired"}.get(kind, kind)
                spread = {"ended": past, "gone": long_ago, "cancelled": soon}.get(kind, future)
                expiration = spread[i * 7919 % len(spread)]
                subs.append({
                    "id": i, "customer_id": i, "period": "month", "initial_amount": "9.99", "initial_tax_rate": "",
                    "initial_tax": "", "recurring_amount": "9.99", "recurring_tax_rate": "", "recurring_tax": "",
                    "bill_times": 0, "transaction_id": f"txn-{i}", "parent_payment_id": 0, "product_id": 1,
                    "price_id": 0, "created": "2024-01-01 00:00:00", "expiration": expiration, "trial_period": "",
                    "status": status, "profile_id": f"sub_{i:012d}", "notes": "",
                })
                counts["subscriptions"] += 1
                if kind == "new":
                    continue
                live = kind != "gone"
                counts["running" if live else "destroyed"] += 1
                tokens = {"root_password_enc": password_blob if live else None,
                          "ovpn_file_enc": ovpn_blob if live else None,
                          "secrets_enc": secrets_blob if live else None}
                if not inline and live and not lean:
                    sealed.append({"server_id": i, **tokens})
                # the account the planner has already copied from the storefront (none: every pass
                # would find half the rows' contacts changed, which only a first pass does)
                account = {"account_id": str(user_id) if user_id else None} if "account_id" in servers.c else {}
                rows.append({**(tokens if inline else {}), **account,
                    "id": i, "customer_id": str(i), "product_id": "1", "subscription_id": str(i),
                    "server_ip": f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" if live else None,
                    "user_email": email, "server_name": f"g0{i:03d}.vpn.example.test",
                    "bandwidth_this_month": 123_456_789 if live else 0,
                    "bandwidth_limit_this_month": 1000 * 10**9, "rebuild_schedule": "none",
                    "current_location": "ewr" if live else None, "rebuild_schedule_location": "random",
                    "status": Status.RUNNING.value if live else Status.DESTROYED.value,
                    "rebuild_now_location": "random" if live and i % 50 == 7 else None,
                    "rebuild_now_status": live and i % 50 == 7,
                    "instance_id": f"{i:08x}-0000-4000-8000-000000000000" if live else None,
                    "instance_label": f"prov-{i}-g0", "generation": 0, "old_instance_id": None,
                    "target_location": "ewr", "dns_record_id": f"{i:032x}" if live else None, "snapshot_id": None,
                    "action": None, "step": None,
                    "step_deadline": None, "attempts": 0, "next_attempt_at": None, "last_error": None,
                    "needs_human": False, "paused": False, "version": 3, "lease_owner": None, "lease_until": None,
                    "bandwidth_month": now.strftime("%Y-%m"), "bandwidth_carried": 0,
                    "last_rebuilt_at": None, "rebuild_requested_at": None, "schedule_slot_done": None,
                    "rebuild_due_at": None, "bandwidth_synced_at": now, "bandwidth_alerted": 0,
                    "suspended_by_cap": False, "language": "en", "created_at": now, "updated_at": now,
                    "destroyed_at": None if live else now - dt.timedelta(days=30),
                })
            if users:
                conn.execute(user_sql, users)
            conn.execute(cust_sql, customers)
            conn.execute(sub_sql, subs)
            if rows:
                conn.execute(servers.insert(), rows)
            if sealed and sealed_table is not None:
                conn.execute(sealed_table.insert(), sealed)
    return counts


# A covering index for the planner's read of our servers (not in the schema: what a migration could
# add; --planner-index creates it in the benchmark's database only, to measure what it is worth).
PLANNER_INDEX = "ix_bench_servers_planner"
PLANNER_INDEX_COLUMNS = ("subscription_id, status, server_name, user_email, account_id, action, step_deadline, "
                         "rebuild_now_status, paused, needs_human, rebuild_due_at, ended_seen_at, planned_destroy_at, "
                         "operator_hold_at")


def create_planner_index(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text(f"CREATE INDEX {PLANNER_INDEX} ON provisioner_servers ({PLANNER_INDEX_COLUMNS})"))


# --- ours: App.plan_once() ---------------------------------------------------------------------

def make_app(tmp: Path, url: str) -> tuple[App, Path]:
    tmp.mkdir(parents=True, exist_ok=True)
    path, settings = write_settings(tmp, database={"url": url}, storefront={"edd_url": url, "site_timezone": ""})
    return App(settings), path


# --- before and after, in processes of their own -------------------------------------------------

HERE = Path(__file__).resolve().parent
MODES = {"pass": "App.plan_once()", "worker": "plan_once(on_read=keep_standing)"}


def tree_pass(tree: Path, settings: Path, mode: str) -> dict[str, Any]:
    """One process of bench/_plan_pass.py on ``tree``: a warm-up pass and one timed pass."""
    import json
    import subprocess

    cmd = [sys.executable, str(HERE / "_plan_pass.py"), "--tree", str(tree), "--settings", str(settings)]
    if mode == "worker":
        cmd.append("--worker")
    load_before = os.getloadavg()[0]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)  # noqa: S603 - our script
    if done.returncode != 0:
        raise RuntimeError(f"{tree} {mode}: {done.stderr.strip().splitlines()[-1:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["load"] = load_before
    return result


def compare_trees(row: Row, settings: Path, args: argparse.Namespace, baseline_settings: Path | None = None) -> None:
    """``--rounds`` rounds; in each, every mode on the baseline tree and on this one, interleaved.
    The baseline reads its own database (``baseline_settings``) when it was loaded at another revision."""
    trees = [("ours", HERE.parent, settings)]
    if args.baseline:
        tree = Path(args.baseline)
        source = baseline_settings or settings
        stripped = source.with_name(f"for-baseline-{source.name}")    # only the keys that tree knows
        stripped.write_text(settings_for_tree(source.read_text(), tree))
        trees.append(("baseline", tree, stripped))
    for index in range(args.rounds):
        for mode in args.mode_list:
            for label, tree, tree_settings in (trees if index % 2 else trees[::-1]):
                result = tree_pass(tree, tree_settings, mode)
                row.trees.setdefault((label, mode), []).append(result)
                log(f"{row.backend} n={row.n} round {index + 1} {mode} {label}: {result['wall'][0]:.3f}s wall, "
                    f"{result['cpu'][0]:.3f}s CPU, peak RSS {result['peak_rss_mb']:.0f} MB, "
                    f"load {result['load']:.1f}; {result['decided']}")


def print_trees(results: list[Row], args: argparse.Namespace) -> None:
    table = []
    for r in results:
        for (label, mode), runs in r.trees.items():
            table.append([r.backend, r.n, MODES[mode], label, fmt_s(median([x["wall"][0] for x in runs])),
                          fmt_s(median([x["cpu"][0] for x in runs])),
                          f"{median([x['peak_rss_mb'] for x in runs]):.0f}",
                          f"{median([x['rss_before_mb'] for x in runs]):.0f}",
                          "/".join(f"{x['load']:.1f}" for x in runs), runs[-1]["decided"]])
    if not table:
        return
    print()
    print(f"One planning pass in a process of its own per tree (bench/_plan_pass.py: warm-up pass, then the timed "
          f"one); medians of {args.rounds} interleaved rounds; baseline = {args.baseline or '(none)'}")
    print_table(["backend", "N", "what", "tree", "wall (s)", "CPU (s)", "peak RSS MB", "RSS before MB",
                 "load per round", "decided"], table)


def ours_pass(app: App) -> str:
    result, error = app.plan_once()
    if error:
        raise RuntimeError(f"the storefront could not be read: {error}")
    return (f"build {len(result.build)}, destroy {len(result.destroy)}, rebuild {len(result.rebuild)}, "
            f"held {len(result.held)}")


def dispose(app: App) -> None:
    app.engine.dispose()
    engine = getattr(app.__dict__.get("storefront"), "_engine", None)
    if engine is not None:
        engine.dispose()


# --- per-row: the seed's loop, literally ---------------------------------------------------------

@dataclass
class PerRowResult:
    seconds: float
    subs_done: int
    servers_done: int
    build: int = 0
    destroy: int = 0
    rebuild: int = 0


def per_row_pass(engine: Engine, now_local: dt.datetime, fraction: float = 1.0) -> PerRowResult:
    """One query per row. With ``fraction`` < 1 only a seeded random sample of the rows is visited."""
    subs_table = eddschema.table_name(engine, PREFIX, "edd_subscriptions")
    now_text = now_local.strftime("%Y-%m-%d %H:%M:%S")
    server_by_sub = text("SELECT * FROM provisioner_servers WHERE subscription_id = :sub")
    rebuild_flag = text("SELECT rebuild_now_status FROM provisioner_servers WHERE id = :id")
    t0 = time.perf_counter()
    build = destroy = rebuild = subs_done = servers_done = 0
    with engine.connect() as conn:
        subs = conn.execute(text(f"SELECT id, status, expiration FROM {subs_table} ORDER BY id")).all()
        for sub_id, status, expiration in _sample(subs, fraction):
            row = conn.execute(server_by_sub, {"sub": str(sub_id)}).mappings().first()
            exp = expiration if isinstance(expiration, str) else expiration.strftime("%Y-%m-%d %H:%M:%S")
            active = status in ENTITLING and exp > now_text
            has_server = row is not None and row["status"] != Status.DESTROYED.value
            if active and not has_server:
                build += 1                       # servers_to_build.append(server)
            elif not active and has_server:
                destroy += 1                     # servers_to_destroy.append(server)
            subs_done += 1
        server_ids = conn.execute(text("SELECT id FROM provisioner_servers ORDER BY id")).scalars().all()
        for server_id in _sample(server_ids, fraction):
            if conn.execute(rebuild_flag, {"id": server_id}).scalar():
                rebuild += 1                     # servers_to_rebuild.append(server)
            servers_done += 1
    return PerRowResult(time.perf_counter() - t0, subs_done, servers_done, build, destroy, rebuild)


def _sample(items: Sequence[T], fraction: float) -> Sequence[T]:
    """All of ``items``, or a seeded random subset in table order (no stride that could alias the data's
    period of 100)."""
    if fraction >= 1.0:
        return items
    k = max(1, round(len(items) * fraction))
    return [items[i] for i in sorted(random.Random(len(items)).sample(range(len(items)), k))]


def measure_per_row(engine: Engine, n: int, now_local: dt.datetime, budget: float,
                    repeat: int) -> tuple[float, str, str]:
    """(seconds for all rows, note, counts). Extrapolates from a sample when over ``budget``."""
    probe = per_row_pass(engine, now_local, min(1.0, 2000 / n))
    per_query = probe.seconds / max(1, probe.subs_done + probe.servers_done)
    estimate = per_query * n * 1.97      # ~n subscriptions + ~0.97 n server rows
    log(f"  per-row probe: {probe.subs_done + probe.servers_done} queries in {probe.seconds:.2f}s "
        f"-> ~{estimate:.1f}s for all rows")
    if estimate <= budget:
        runs: list[PerRowResult] = []
        spent = 0.0
        while len(runs) < repeat and spent + estimate <= budget:
            runs.append(per_row_pass(engine, now_local))
            spent += runs[-1].seconds
        if not runs:
            runs.append(per_row_pass(engine, now_local))
        last = runs[-1]
        note = f"all rows, median of {len(runs)}" if len(runs) > 1 else "all rows, 1 run"
        return median([r.seconds for r in runs]), note, f"build {last.build}, destroy {last.destroy}, " \
                                                        f"rebuild {last.rebuild}"
    fraction = min(0.5, (budget / 2) / estimate)
    sample = per_row_pass(engine, now_local, fraction)
    scale = n / max(1, sample.subs_done)
    total = sample.seconds * scale
    pct = 100.0 * sample.subs_done / n
    note = f"EXTRAPOLATED from a random {pct:.1f}% of the rows ({sample.seconds:.1f}s measured)"
    counts = f"~build {round(sample.build * scale)}, ~destroy {round(sample.destroy * scale)}, " \
             f"~rebuild {round(sample.rebuild * scale)}"
    return total, note, counts


# --- one (backend, size) -------------------------------------------------------------------------

@contextlib.contextmanager
def baseline_database(backend: str, n: int, now: dt.datetime, tmp: Path,
                      args: argparse.Namespace) -> Iterator[Path | None]:
    """With ``--baseline-revision``: the same data loaded at that revision of our schema into a
    database of its own (the baseline tree's layout), and its settings file; else None (the
    baseline reads the same database)."""
    if not (args.baseline and args.baseline_revision):
        yield None
        return
    with contextlib.ExitStack() as stack:
        if backend == "sqlite":
            base_url = f"sqlite:///{tmp / f'baseline-{n}.db'}"
        else:
            base_url = stack.enter_context(mysql_database(mysql_server_url()))
        engine = db.make_engine(base_url)
        log(f"{backend} n={n}: loading the baseline's database at revision {args.baseline_revision}")
        load(engine, n, now, args.lean_rows, args.baseline_revision)
        if args.planner_index:
            create_planner_index(engine)
        engine.dispose()
        base_app, path = make_app(tmp / f"{backend}-{n}-baseline", base_url)
        dispose(base_app)
        yield path
        for leftover in tmp.glob(f"baseline-{n}.db*"):
            leftover.unlink()


def run_one(backend: str, url: str, n: int, tmp: Path, args: argparse.Namespace) -> Row:
    row = Row(backend, n)
    now = dt.datetime.now(dt.UTC)
    engine = db.make_engine(url)
    app: App | None = None
    try:
        log(f"{backend} n={n}: loading {n} subscriptions ({'lean' if args.lean_rows else 'full'} server rows)")
        row.load_s, counts = timed(lambda: load(engine, n, now, args.lean_rows))
        log(f"{backend} n={n}: loaded in {row.load_s:.1f}s: {counts}")
        if args.planner_index:
            seconds, _ = timed(lambda: create_planner_index(engine))
            log(f"{backend} n={n}: created the bench-only covering index {PLANNER_INDEX} in {seconds:.1f}s")
        app, settings_path = make_app(tmp / f"{backend}-{n}", url)
        if args.rounds:
            with baseline_database(backend, n, now, tmp, args) as baseline_settings:
                compare_trees(row, settings_path, args, baseline_settings)
        # warm-up pass under tracemalloc: connection set-up, statement caches; its peak is the memory figure
        gc.collect()
        tracemalloc.start()
        row.ours_counts = ours_pass(app)
        row.peak_mb = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        gc.collect()
        log(f"{backend} n={n}: ours {row.ours_counts}; tracemalloc peak {row.peak_mb:.1f} MB")
        row.loadavg.append(os.getloadavg()[0])
        for _ in range(args.repeat):
            cpu0 = time.process_time()
            seconds, _counts = timed(lambda: ours_pass(app))  # noqa: B023 - called at once
            row.ours_cpu.append(time.process_time() - cpu0)
            row.ours.append(seconds)
            gc.collect()
        log(f"{backend} n={n}: ours {', '.join(f'{s:.3f}' for s in row.ours)} s")
        if args.profile and n == max(args.size_list):
            profile_pass(app, backend, n)
        from zoneinfo import ZoneInfo

        if args.no_per_row:
            return row
        now_local = utc_to_site_local(now, ZoneInfo(SITE_ZONE))
        row.per_row_s, row.per_row_note, row.per_row_counts = measure_per_row(
            engine, n, now_local, args.per_row_budget, args.repeat)
        row.loadavg.append(os.getloadavg()[0])
        log(f"{backend} n={n}: per-row {row.per_row_s:.2f}s ({row.per_row_note}); {row.per_row_counts}")
    except Exception as exc:  # noqa: BLE001 - report this cell and carry on with the others
        row.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        log(f"{backend} n={n}: FAILED: {row.error}")
    finally:
        if app is not None:
            dispose(app)
        engine.dispose()
    return row


def profile_pass(app: App, backend: str, n: int) -> None:
    profiler = cProfile.Profile()
    profiler.enable()
    ours_pass(app)
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(18)
    print(f"\n=== cProfile of one App.plan_once(), {backend}, n={n} (top by own time) ===")
    print("\n".join(line for line in out.getvalue().splitlines() if line.strip())[:6000])


# --- main ---------------------------------------------------------------------------------------

def backends(args: argparse.Namespace) -> list[str]:
    wanted = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = sorted(set(wanted) - {"sqlite", "mysql"})
    if unknown:
        raise SystemExit(f"unknown backend {unknown[0]!r}; use sqlite and/or mysql")
    return wanted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help=f"subscription counts (default {DEFAULT_SIZES})")
    parser.add_argument("--quick", action="store_true", help=f"sizes {QUICK_SIZES} only")
    parser.add_argument("--backends", default="sqlite,mysql", help="sqlite,mysql (default both)")
    parser.add_argument("--repeat", type=int, default=3, help="timed passes per cell (median; default 3)")
    parser.add_argument("--per-row-budget", type=float, default=120.0,
                        help="seconds the per-row version may take per cell before it is sampled (default 120)")
    parser.add_argument("--lean-rows", action="store_true", help="server rows without secrets/.ovpn blobs")
    parser.add_argument("--profile", action="store_true", help="cProfile one pass at the largest size")
    parser.add_argument("--baseline", default="",
                        help="another source tree (e.g. `git archive main | tar -x -C DIR`) to time next to this one")
    parser.add_argument("--baseline-revision", default="",
                        help="load the baseline tree's own database at this revision of our schema "
                             "(e.g. 0009: sealed tokens inside the server rows); default: the same database")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds of one-pass processes per tree and mode (0: none; default 3)")
    parser.add_argument("--modes", default="pass,worker",
                        help="pass (App.plan_once()) and/or worker (with the worker's keep_standing); default both")
    parser.add_argument("--no-per-row", action="store_true", help="skip the seed's per-row loop")
    parser.add_argument("--planner-index", action="store_true",
                        help="create a covering index for the planner's server columns (benchmark database only)")
    args = parser.parse_args(argv)
    args.size_list = parse_sizes(QUICK_SIZES if args.quick else args.sizes)
    args.repeat = max(1, min(MAX_REPEAT, args.repeat))
    args.per_row_budget = max(1.0, min(3600.0, args.per_row_budget))
    args.rounds = max(0, min(MAX_REPEAT, args.rounds))
    args.mode_list = [m.strip() for m in args.modes.split(",") if m.strip()]
    if set(args.mode_list) - set(MODES):
        raise SystemExit(f"--modes takes {', '.join(MODES)}")
    results: list[Row] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="prov-bench-reconcile-") as tmp_name:
        tmp = Path(tmp_name)
        for backend in backends(args):
            if backend == "sqlite":
                for n in args.size_list:
                    path = tmp / f"bench-{n}.db"
                    results.append(run_one("sqlite", f"sqlite:///{path}", n, tmp, args))
                    for leftover in tmp.glob(f"bench-{n}.db*"):
                        leftover.unlink()
                continue
            server = mysql_server_url()
            reason = mysql_unreachable_reason(server)
            if reason:
                note = f"MariaDB skipped: not reachable at {server.split('@')[-1]} ({reason})"
                print(note)
                notes.append(note)
                continue
            with mysql_database(server) as url:
                for index, n in enumerate(args.size_list):
                    if index:
                        recreate_mysql_database(url)
                    results.append(run_one("mariadb", url, n, tmp, args))
    print()
    print(f"One planning pass (App.plan_once: storefront read + server read + plan) vs the seed's per-row loop; "
          f"ours = median of {args.repeat} after a warm-up; peak = tracemalloc peak of the warm-up pass; "
          f"server rows {'WITHOUT' if args.lean_rows else 'with'} secrets/.ovpn blobs"
          f"{'; with the bench-only covering index ' + PLANNER_INDEX if args.planner_index else ''}")
    table = []
    for r in results:
        if r.error:
            table.append([r.backend, r.n, "ERROR", "", "", "", "", "", r.error])
            continue
        ours = median(r.ours)
        table.append([r.backend, r.n, fmt_s(ours), fmt_s(median(r.ours_cpu)), f"{r.peak_mb:.1f}", fmt_s(r.per_row_s),
                      f"{r.per_row_s / ours:.1f}x" if ours > 0 and r.per_row_s == r.per_row_s else "-",
                      "/".join(f"{x:.1f}" for x in r.loadavg), r.per_row_note])
    print_table(["backend", "N", "ours (s)", "ours CPU (s)", "ours peak MB", "per-row (s)", "ratio", "load avg",
                 "per-row measured"], table)
    print_trees(results, args)
    print()
    print_table(["backend", "N", "load (s)", "ours decided", "per-row decided"],
                [[r.backend, r.n, fmt_s(r.load_s), r.ours_counts, r.per_row_counts] for r in results if not r.error])
    for note in notes:
        print(note)
    print("ratio = per-row seconds / ours seconds (higher: ours is faster). The per-row loop decides less than "
          "plan() does (no grace, circuit breaker, resume, products), so the ratio flatters it. "
          "ours CPU = this process's CPU time (the database server's is not in it); load avg = the machine's "
          f"1-minute load before ours / after per-row ({os.cpu_count()} cores): above that, other work was "
          "competing and wall times are inflated.")
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
