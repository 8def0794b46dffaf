"""The worker's jobs at 10,000 and 100,000 servers: provider calls, wall time, and each job's
share of its period and of the provider's budget, against the sandbox with its rate limits on.

    .venv/bin/python bench/scale.py                        # 10k and 100k servers
    .venv/bin/python bench/scale.py --sizes 10000 --slice 60
    .venv/bin/python bench/scale.py --no-before            # skip the before-side measurements

Per size: a SQLite database with N Running servers (instance, A record, sealed blobs of
``--blob-bytes``), and the sandbox (simulated Vultr + Cloudflare on loopback, Cloudflare's
1,200 requests / 300 s enforced) holding their N instances, N A records and N/100 snapshots,
seeded straight into its state. The worker's adapters talk to it over HTTP with the
production rate limiters (Vultr 30 requests/s, Cloudflare 1,200 / 300 s).

Jobs (what the worker runs, through ``jobs.registry``):

* ``sync_bandwidth`` (every 60 min): one Vultr call per row it reads. A full run at 100k
  would take hours at its pace, so a slice of ``--slice`` rows runs at the real pace and the
  run is extrapolated (rows per run = min(N, the pace's rows), seconds = rows / measured
  rate): printed as "slice".
* ``destroy`` (per server): three destroys through the lifecycle's steps.
* ``sweep`` (every 30 min): the whole listing at the providers' largest pages.
* ``due rows`` / ``due schedules``: the driver's and the schedule marker's queries: the plan
  (EXPLAIN, on SQLite and, when reachable, MariaDB) and the median time.

"Before" rows (``--no-before`` skips them) run the previous call patterns on the same data:
the sweep at 100 per page with only the shared limiters, and the destroy's listing of every
instance of the tag; the previous bandwidth sync (every row, one by one, through the shared
30/s bucket) is printed from its call count.

Columns: ``V``/``CF calls``, ``wall s``; ``period %`` = run seconds / the job's period;
``V %``/``CF %`` = the run's call rate / the provider's rate (its share of the budget while it
runs; goal <= 25 %). Figures only, nothing asserted; the load average is printed with them.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import logging
import math
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    fmt_s,
    log,
    mysql_database,
    mysql_server_url,
    mysql_unreachable_reason,
    parse_sizes,
    print_table,
    write_settings,
)
from sqlalchemy import insert, text  # noqa: E402

from jobs import registry  # noqa: E402
from jobs.bandwidth import SyncPace, rows_to_sync  # noqa: E402
from provisioner import db, operations, wiring  # noqa: E402
from provisioner.cloudinit import generate_client_key  # noqa: E402
from provisioner.models import Server, ServerSealed  # noqa: E402
from provisioner.sandbox.app import Sandbox  # noqa: E402
from provisioner.sandbox.config import SandboxConfig  # noqa: E402
from provisioner.wiring import App  # noqa: E402

VULTR_RATE = 30.0
CF_RATE = 1200 / 300
SYNC_PERIOD, SWEEP_PERIOD = 3600.0, 1800.0
DESTROYS = 3
MAX_SIZE = 200_000


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg()[:2])


class World:
    def __init__(self, tmp: Path, n: int, blob_bytes: int) -> None:
        key = generate_client_key()
        (tmp / "worker_ed25519").write_text(key.private_pem)
        (tmp / "worker_ed25519").chmod(0o600)
        self.sb = Sandbox(SandboxConfig(boot_seconds=0, snapshot_seconds=0, ip_pool="127.33.0.0/16",
                                        state_file=None, call_log_limit=2_000_000, cloudflare_limit=1200,
                                        # no simulated SSH hosts here: the ticker's host sync would
                                        # walk every instance 20 times a second for nothing
                                        cloudflare_window_seconds=300, tick_seconds=3600))
        self.sb.__enter__()
        _, settings = write_settings(tmp, vultr={"base_url": self.sb.vultr_url},
                                     cloudflare={"base_url": self.sb.cloudflare_url},
                                     lifecycle={"snapshots": False}, sandbox={"state_file": ""})
        self.settings = settings
        self.app = App(settings)
        db.upgrade(self.app.engine)
        self.lc = wiring.lifecycle(self.app, owner="bench")
        self.n = n
        self._rows: list[dict[str, Any]] = []
        self._sealed: list[dict[str, Any]] = []
        self._snapshots: dict[int, str] = {}
        self._seed(n, blob_bytes)

    def close(self) -> None:
        self.app.engine.dispose()
        self.sb.__exit__(None, None, None)

    def _seed(self, n: int, blob_bytes: int) -> None:
        started = time.perf_counter()
        vultr, dns = self.lc.ctx.vultr, self.lc.ctx.dns
        prefix, tag, domain = self.settings.vultr.label_prefix, self.settings.vultr.tag, self.settings.cloudflare.domain
        # One of each through the API, then copies straight into the simulator's state.
        proto_inst = vultr.create_instance(f"{prefix}-0-g1", region="ewr", plan="vc2-1c-1gb", user_data="#!/bin/sh\n",
                                           tags=[tag], os_id=vultr.os_id(self.settings.products["1"].os))
        proto_rec = dns.point_a(f"proto.{domain}", "127.33.0.1")
        state = self.sb.state
        with state.lock:
            inst0 = state.instances.pop(proto_inst.id)
            rec0 = state.records.pop(proto_rec)
            for i in range(1, n + 1):
                inst = copy.deepcopy(inst0)
                inst.update(id=str(uuid.uuid4()), seq=state.next_seq(), label=f"{prefix}-{i}-g1",
                            hostname=f"g{i:06d}", ip=f"127.33.{i // 250 % 250}.{i % 250 + 1}")
                state.instances[inst["id"]] = inst
                rec = dict(rec0, id=uuid.uuid4().hex, seq=state.next_seq(), name=f"g{i:06d}.{domain}",
                           content=inst["ip"])
                state.records[rec["id"]] = rec
                if i % 100 == 0:
                    sid = self._snapshots[i] = uuid.uuid4().hex[:16]
                    state.snapshots[sid] = {"id": sid, "seq": state.next_seq(), "instance_id": inst["id"],
                                            "description": f"{prefix}-{i}-snapshot", "created_at": 0.0,
                                            "complete_at": 0.0, "size": 1, "compressed_size": 1, "os_id": 0,
                                            "app_id": 0}
                self._row(i, inst["id"], rec["id"], inst["ip"], blob_bytes)
        self._flush()
        log(f"seeded {n:,} servers (rows, instances, records, {n // 100} snapshots) in "
            f"{time.perf_counter() - started:.0f}s")


    def _row(self, i: int, inst: str, rec: str, ip: str, blob_bytes: int) -> None:
        now = dt.datetime.now(dt.UTC)
        blob = "x" * (blob_bytes // 2)
        self._rows.append({
            "id": i, "subscription_id": f"sub-{i}", "customer_id": str(i), "product_id": "1",
            "user_email": f"user{i}@example.com", "server_name": f"g{i:06d}.{self.settings.cloudflare.domain}",
            "status": "Running", "server_ip": ip, "instance_id": inst, "instance_label": f"x-{i}-g1",
            "dns_record_id": rec, "generation": 1, "current_location": "ewr", "target_location": "ewr",
            "bandwidth_this_month": (i * 7919) % 10**9, "bandwidth_limit_this_month": 10**12,
            "bandwidth_month": now.strftime("%Y-%m"), "rebuild_schedule": ("none", "daily", "weekly")[i % 3],
            "rebuild_schedule_location": "random", "version": 1,
            "rebuild_now_status": False, "attempts": 0, "needs_human": False, "paused": False,
            "bandwidth_carried": 0, "bandwidth_alerted": 0, "suspended_by_cap": False, "created_at": now,
            "updated_at": now, "schedule_slot_done": now, "bandwidth_synced_at": now - dt.timedelta(hours=i % 5),
            "snapshot_id": self._snapshots.get(i)})
        self._sealed.append({"server_id": i, "secrets_enc": blob, "ovpn_file_enc": blob})
        if len(self._rows) >= 5000:
            self._flush()

    def _flush(self) -> None:
        if self._rows:
            with self.app.engine.begin() as conn:
                conn.execute(insert(Server), self._rows)
                conn.execute(insert(ServerSealed), self._sealed)
            self._rows, self._sealed = [], []

    def calls(self, since: int) -> tuple[int, int, int]:
        log_ = self.sb.state.calls_since(since)
        v = sum(1 for c in log_ if c["service"] == "vultr")
        return v, len(log_) - v, since + len(log_)

    def mark(self) -> int:
        return len(self.sb.state.calls_since(0))


def row(job: str, n: int, v: int, cf: int, wall: float, period: float | None, note: str) -> list[str]:
    """A periodic job's row: its share of the period, and of each provider's budget both while
    it runs (its call rate / the provider's rate) and over its period (calls / what the
    provider allows in one period). A per-server cost (no period) shows calls and time only."""
    if not period:
        return [job, f"{n:,}", str(v), str(cf), fmt_s(wall), "-", "-", "-", "-", "-", note]

    def pct(x: float) -> str:
        return f"{100 * x:.1f}"

    return [job, f"{n:,}", str(v), str(cf), fmt_s(wall), pct(wall / period),
            pct(v / wall / VULTR_RATE) if wall else "-", pct(cf / wall / CF_RATE) if wall else "-",
            pct(v / (VULTR_RATE * period)), pct(cf / (CF_RATE * period)), note]


def bench_sync(w: World, n: int, slice_rows: int) -> list[list[str]]:
    pace = SyncPace.for_period(w.settings.vultr.requests_per_second, w.settings.worker.bandwidth_sync_minutes * 60)
    with w.app.sessions() as s:
        t0 = time.perf_counter()
        chosen = rows_to_sync(s, pace.max_rows)
        select_s = time.perf_counter() - t0
    from jobs import bandwidth

    mark = w.mark()
    sliced = SyncPace(pace.calls_per_second, min(slice_rows, n), pace.threads)
    t0 = time.perf_counter()
    report = bandwidth.sync_bandwidth_paced(w.app.sessions, w.lc.ctx.vultr, w.app.clock(), w.settings.products,
                                            sliced)
    wall = time.perf_counter() - t0
    v, cf, _ = w.calls(mark)
    rate = v / wall
    rows_per_run = min(n, pace.max_rows)
    run_s = rows_per_run / rate
    every = math.ceil(n / rows_per_run)
    out = [row("sync_bandwidth slice", n, v, cf, wall, None,
               f"{report.checked} rows at {rate:.1f} calls/s ({100 * rate / VULTR_RATE:.0f} % of Vultr's rate), "
               f"{report.failed} failed"),
           row("sync_bandwidth run", n, rows_per_run, 0, run_s, SYNC_PERIOD,
               f"extrapolated; each row read every {every} run(s); picking the rows {select_s * 1e3:.0f} ms, "
               f"{len(chosen):,} ids")]
    return out


def bench_destroy(w: World, n: int) -> list[list[str]]:
    ids = [n - k for k in range(DESTROYS)]
    with w.app.sessions() as s:
        for rid in ids:
            found = s.get(Server, rid)
            assert found is not None
            w.lc.begin_destroy(s, found, actor="bench", reason="bench")
        s.commit()
    mark = w.mark()
    t0 = time.perf_counter()
    outcomes = operations.drive(w.lc, ids, threads=DESTROYS)
    wall = time.perf_counter() - t0
    v, cf, _ = w.calls(mark)
    return [row("destroy (per server)", n, v // DESTROYS, cf // DESTROYS, wall / DESTROYS, None,
                f"{DESTROYS} destroys: {sorted(set(outcomes.values()))}")]


def bench_destroy_before(w: World, n: int) -> list[list[str]]:
    # The previous destroy listed every instance of the tag (100 a page) to find lost creates.
    mark = w.mark()
    t0 = time.perf_counter()
    w.lc.ctx.vultr.list_instances(tag=w.settings.vultr.tag)
    wall = time.perf_counter() - t0
    v, cf, _ = w.calls(mark)
    return [row("destroy BEFORE (listing)", n, v + 2, cf + 2, wall, None, "+ get, delete; + DNS delete, list")]


def bench_sweep(w: World, n: int, *, before: bool) -> list[list[str]]:
    from jobs import sweep

    mark = w.mark()
    t0 = time.perf_counter()
    if before:
        with w.app.sessions() as s:
            report = sweep.sweep(s, w.lc.ctx.vultr, w.lc.ctx.dns, w.settings, w.app.clock())
    else:
        report = registry.job(w.app, "sweep", w.lc)()
    wall = time.perf_counter() - t0
    v, cf, _ = w.calls(mark)
    name = "sweep BEFORE (100/page)" if before else "sweep"
    return [row(name, n, v, cf, wall, SWEEP_PERIOD, f"listed {report.listed}, {len(report.new)} new orphans")]


def explain(w: World, url: str | None) -> list[list[str]]:
    """Plans and times of the driver's and the schedule marker's queries."""
    from zoneinfo import ZoneInfo

    from jobs import schedules

    now = dt.datetime.now(dt.UTC)
    out: list[list[str]] = []
    engines = [("sqlite", w.app.engine)]
    mysql_engine = None
    if url:
        mysql_engine = db.make_engine(url)
        engines.append(("mariadb", mysql_engine))
    for name, engine in engines:
        sessions = db.session_factory(engine)
        queries = {
            "due rows": lambda sessions=sessions: operations.due_rows(sessions, now, limit=32),
            "next due": lambda sessions=sessions: operations.next_due_at(sessions, now),
            "due schedules": lambda sessions=sessions: _schedules(sessions, now, ZoneInfo(w.settings.worker.timezone),
                                                                  schedules),
        }
        for qname, fn in queries.items():
            fn()
            times = []
            for _ in range(15):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            out.append([f"{qname} ({name})", f"{w.n:,}", "-", "-", fmt_s(statistics.median(times)), "-", "-", "-",
                        "-", "-", _plan(engine, qname, now, w)])
    if mysql_engine is not None:
        mysql_engine.dispose()
    return out


def _schedules(sessions: Any, now: dt.datetime, tz: Any, schedules: Any) -> None:
    with sessions() as s:
        schedules._candidates(s, now, ("daily", "weekly", "monthly"), tz)


def _plan(engine: Any, qname: str, now: dt.datetime, w: World) -> str:
    if qname == "due rows":
        q: Any = operations.due_rows_query(now, limit=32)
    elif qname == "next due":
        q = operations.next_due_query(now)
    else:
        from jobs.schedules import candidates_query

        q = candidates_query("daily", now)
    sql = str(q.compile(engine, compile_kwargs={"literal_binds": True}))
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            return "; ".join(str(r[-1]) for r in conn.execute(text("EXPLAIN QUERY PLAN " + sql)))
        rows = conn.execute(text("EXPLAIN " + sql)).mappings().all()
        return "; ".join(f"{r['table']} {r['type']} key={r['key']} rows={r['rows']} {r['Extra'] or ''}".strip()
                         for r in rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="10000,100000")
    p.add_argument("--slice", type=int, default=150, help="bandwidth sync rows actually read per size (default 150)")
    p.add_argument("--blob-bytes", type=int, default=4000, help="sealed secrets + .ovpn bytes per row (default 4000)")
    p.add_argument("--no-before", action="store_true", help="skip the previous call patterns")
    p.add_argument("--no-mariadb", action="store_true", help="EXPLAIN on SQLite only")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)   # the sweep's per-orphan warnings are not figures
    sizes = [min(s, MAX_SIZE) for s in parse_sizes(args.sizes)]
    mysql_url = None if args.no_mariadb else mysql_server_url()
    if mysql_url and (why := mysql_unreachable_reason(mysql_url)):
        print(f"MariaDB unreachable ({why}): EXPLAIN on SQLite only")
        mysql_url = None
    headers = ["job", "servers", "V calls", "CF calls", "wall s", "period %", "V % run", "CF % run", "V % period",
               "CF % period", "note"]
    for n in sizes:
        rows: list[list[str]] = []
        print(f"\n{n:,} servers; Vultr 30/s and Cloudflare 1200/300s enforced; load {load()} at start")
        with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
            w = World(Path(tmp), n, args.blob_bytes)
            try:
                rows += bench_sync(w, n, args.slice)
                log("sync_bandwidth measured")
                if not args.no_before:
                    rows.append(row("sync_bandwidth BEFORE", n, n, 0, n / VULTR_RATE, SYNC_PERIOD,
                                    "every row, one by one, through the shared 30/s bucket: N calls at best 30/s"))
                rows += bench_destroy(w, n)
                if not args.no_before:
                    rows += bench_destroy_before(w, n)
                log("destroy measured")
                rows += bench_sweep(w, n, before=False)
                if not args.no_before:
                    rows += bench_sweep(w, n, before=True)
                log("sweep measured")
                if mysql_url:
                    with mysql_database(mysql_url) as url:
                        _copy_to_mysql(w, url)
                        rows += explain(w, url)
                else:
                    rows += explain(w, None)
            finally:
                w.close()
        print_table(headers, rows)
        print(f"load average at the end: {load()}")
    return 0


def _copy_to_mysql(w: World, url: str) -> None:
    """The same server rows on MariaDB (blobs left out: only the plans and times of the queries are read)."""
    engine = db.make_engine(url)
    db.upgrade(engine)
    with w.app.engine.connect() as src, engine.begin() as dst:
        result = src.execute(Server.__table__.select())
        while batch := result.fetchmany(5000):
            dst.execute(insert(Server), [dict(r._mapping) for r in batch])
        dst.execute(text("ANALYZE TABLE provisioner_servers"))
    engine.dispose()
    log("copied the rows to MariaDB")


if __name__ == "__main__":
    sys.exit(main())
