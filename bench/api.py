"""Throughput and latency of the dashboard API's ``GET /api/servers`` over 100,000 servers,
measured with ``wrk`` (the server, not a Python client), against a minimal FastAPI route on
the same uvicorn in the same run.

    .venv/bin/python bench/api.py                          # 100k servers, wrk -t1 -c4, 3 rounds x 10 s
    .venv/bin/python bench/api.py --servers 20000 --seconds 5 --rounds 2
    .venv/bin/python bench/api.py --baseline /tmp/base     # + the same route served by another source tree

One SQLite database in a temporary directory: one customer owns a handful of servers (with
events), everyone else owns one each. Separate uvicorn processes on 127.0.0.1 serve:

* ``minimal``  -- a FastAPI app with one async JSON route, on the same uvicorn settings
  (uvloop, httptools) as the product: the framework's ceiling on this machine;
* ``ours``     -- the real app (``dashboard_api.server.serve``), ``GET /api/servers``;
* ``baseline`` -- with ``--baseline DIR``: the same, served by the source tree in DIR (e.g.
  ``git archive <commit> | tar -x -C DIR``) through its own ``serve`` (the ``before``).

``wrk`` (Debian package) drives each target in turn, ``--rounds`` times interleaved (the
machine is shared: interleaving spreads the noise), and the medians are printed with the
ratios ours/minimal and ours/baseline, next to the load average. Without ``wrk`` the script
says so and stops. Also prints the query plan and the time of the customer query with the
email index against a forced full scan.

Everything is bounded (rounds x seconds) and local. Prints figures; exits non-zero only when
something crashes or the query does not use the index.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "bench"))

import httpx  # noqa: E402
from _common import MYSQL_ENV, mysql_database, mysql_server_url, settings_for_tree  # noqa: E402
from sqlalchemy import insert, make_url, text  # noqa: E402

from dashboard_api.queries import customer_servers_query  # noqa: E402
from dashboard_api.tokens import mint_token  # noqa: E402
from provisioner import db  # noqa: E402
from provisioner.models import Server, ServerEvent, ServerSealed  # noqa: E402
from provisioner.settings import load_settings  # noqa: E402
from provisioner.wiring import App  # noqa: E402
from tests.fixtures.config import write_config  # noqa: E402
from tests.fixtures.net import free_port  # noqa: E402

OWNER = "Bench.Owner@example.com"
OWNER_ACCOUNT = "1"                  # the owner's storefront account: what the token's sub names
INDEX = "ix_provisioner_servers_account"
OWNED = 5
MAX_SECONDS, MAX_CLIENTS, MAX_SERVERS = 60.0, 32, 1_000_000
REGIONS = ["ewr", "lax", "ord", "ams", "fra", "lhr", "cdg", "nrt", "sgp", "syd"]


MINIMAL_APP = """
from fastapi import FastAPI
app = FastAPI()

@app.get("/min")
async def minimal() -> dict[str, str]:
    return {"status": "ok"}
"""
# The same uvicorn settings as dashboard_api.server.serve (uvloop, httptools, one worker).
MINIMAL_SERVE = ("import sys, uvicorn; sys.path.insert(0, sys.argv[2]); from minimal_app import app; "
                 "uvicorn.run(app, host='127.0.0.1', port=int(sys.argv[1]), loop='uvloop', http='httptools', "
                 "log_config=None, access_log=False, server_header=False)")
OURS_SERVE = ("import sys; from provisioner.settings import load_settings; from dashboard_api.server import serve; "
              "sys.exit(serve(load_settings(sys.argv[1], env={})))")
# The baseline tree's own serve, as it runs: since uvloop/httptools are pinned dependencies its
# serve asks for them by name (hiding them, as this script once did, makes uvicorn refuse to start).
BASELINE_SERVE = OURS_SERVE


@dataclass
class Run:
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int


@dataclass
class Target:
    name: str
    url: str
    headers: dict[str, str]
    script: Path | None = None          # a wrk Lua script (--customers: a token per request, in turn)
    runs: list[Run] = field(default_factory=list)

    def median(self, attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in self.runs) if self.runs else float("nan")


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip())
    if not m:
        raise ValueError(f"unreadable wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def run_wrk(wrk: str, target: Target, threads: int, connections: int, seconds: float) -> Run:
    cmd = [wrk, f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--latency", "--timeout", "5s"]
    for k, v in target.headers.items():
        cmd += ["-H", f"{k}: {v}"]
    if target.script is not None:
        cmd += ["-s", str(target.script)]
    out = subprocess.run([*cmd, target.url], capture_output=True, text=True, timeout=seconds + 30,  # noqa: S603
                         check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return Run(rps, p50, p99, int(bad.group(1)) if bad else 0)


ROTATE_TOKENS = """
tokens = {%s}
i = 0
request = function()
  i = i %% #tokens + 1
  return wrk.format("GET", nil, {["Authorization"] = "Bearer " .. tokens[i]})
end
"""


def rotation_script(directory: Path, settings: Any, customers: int) -> Path:
    """A wrk script that sends each request with the next of ``customers`` tokens in turn:
    the one-server customers of :func:`populate` (accounts 1000 + i), each polling."""
    tokens = [mint_token(settings, f"user{i:06d}@example{i % 97}.com", str(1000 + i), ttl_seconds=3600)
              for i in range(1, customers + 1)]
    path = directory / "rotate_tokens.lua"
    path.write_text(ROTATE_TOKENS % ", ".join(f'"{t}"' for t in tokens))
    return path


def populate(app: App, servers: int) -> None:
    now = dt.datetime.now(dt.UTC)
    box = app.secret_box
    ovpn = box.seal(b"client\ndev tun\n" + b"x" * 4000)
    rows: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    owned = 0
    for i in range(servers):
        mine = i % (servers // OWNED) == 0 and owned < OWNED
        owned += mine
        rows.append({
            "id": i + 1, "subscription_id": f"sub-{i}", "customer_id": str(i), "product_id": "1",
            "user_email": OWNER if mine else f"user{i:06d}@example{i % 97}.com", "server_name": f"g{i:06d}.vpn.test",
            "account_id": OWNER_ACCOUNT if mine else str(1000 + i),
            "status": "Running", "server_ip": f"127.77.{i // 256 % 256}.{i % 256}", "current_location": REGIONS[i % 10],
            "bandwidth_this_month": i * 1000, "bandwidth_limit_this_month": 10**12, "rebuild_schedule": "weekly",
            "rebuild_schedule_location": "random", "version": 1, "generation": 1,
            "rebuild_now_status": False, "attempts": 0, "needs_human": False, "paused": False,
            "bandwidth_carried": 0, "bandwidth_alerted": 0, "suspended_by_cap": False, "created_at": now,
            "updated_at": now, "last_rebuilt_at": now})
        for k in range(12 if mine else 1):
            events.append({"server_id": i + 1, "at": now - dt.timedelta(hours=k), "actor": "worker",
                           "what": "create.finish", "outcome": "ok", "detail": ""})
    with app.engine.begin() as conn:
        for start in range(0, len(rows), 5000):
            conn.execute(insert(Server), rows[start:start + 5000])
        for start in range(0, len(rows), 5000):
            conn.execute(insert(ServerSealed), [{"server_id": r["id"], "ovpn_file_enc": ovpn}
                                                for r in rows[start:start + 5000]])
        for start in range(0, len(events), 5000):
            conn.execute(insert(ServerEvent), events[start:start + 5000])
        conn.execute(text("ANALYZE" if app.engine.dialect.name == "sqlite" else "ANALYZE TABLE provisioner_servers"))


def query_plan_and_timing(app: App) -> tuple[str, float, float]:
    q = customer_servers_query(OWNER_ACCOUNT)
    sql = str(q.compile(app.engine, compile_kwargs={"literal_binds": True}))
    sqlite = app.engine.dialect.name == "sqlite"
    scan = sql.replace("FROM provisioner_servers", "FROM provisioner_servers NOT INDEXED" if sqlite
                       else "FROM provisioner_servers IGNORE INDEX (ix_provisioner_servers_account)")
    with app.engine.connect() as conn:
        if sqlite:
            plan = "; ".join(str(r[-1]) for r in conn.execute(text("EXPLAIN QUERY PLAN " + sql)))
        else:
            plan = "; ".join(f"{r['type']} USING INDEX {r['key']} rows={r['rows']}"
                             for r in conn.execute(text("EXPLAIN " + sql)).mappings())
        found = conn.execute(text(sql)).all()
        assert len(found) == OWNED, f"expected {OWNED} servers for the owner, found {len(found)}"

        def timed(statement: str, n: int) -> float:
            started = time.perf_counter()
            for _ in range(n):
                conn.execute(text(statement)).all()
            return (time.perf_counter() - started) / n

        return plan, timed(sql, 200), timed(scan, 5)


def wait_for(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"a server exited with {proc.returncode}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not start in time")


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def _database_at(url: str, revision: str) -> str:
    """A copy of the (SQLite) benchmark database rolled back to ``revision`` of our schema: the
    layout an older tree reads (its migrations move the data back, e.g. 0010 the sealed tokens)."""
    import shutil

    source = Path(make_url(url).database or "")
    copy = source.with_name(f"baseline-{revision}.db")
    shutil.copyfile(source, copy)
    engine = db.make_engine(f"sqlite:///{copy}")
    db.downgrade(engine, revision)
    engine.dispose()
    return f"sqlite:///{copy}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--servers", type=int, default=100_000)
    p.add_argument("--seconds", type=float, default=10.0, help="per wrk run")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are printed")
    p.add_argument("--threads", type=int, default=1, help="wrk threads")
    p.add_argument("--connections", type=int, default=4, help="wrk connections")
    p.add_argument("--baseline", type=Path, help="a source tree whose API to measure side by side")
    p.add_argument("--baseline-revision", default="",
                   help="serve the baseline from a copy of the database rolled back to this revision of our "
                        "schema (SQLite only; e.g. 0009 for a tree from before the sealed table)")
    p.add_argument("--customers", type=int, default=0,
                   help="rotate over this many one-server customers, a token per request in turn, instead of the "
                        "one customer with 5 servers (their remembered bodies stop fitting the API's 8 MiB "
                        "somewhere above 3,000: every poll then makes its body afresh)")
    p.add_argument("--wrk", default=shutil.which("wrk") or "", help="the wrk binary")
    p.add_argument("--mariadb", action="store_true",
                   help=f"the database on the MariaDB of {MYSQL_ENV} (a fresh prov_bench_* database) instead of SQLite")
    args = p.parse_args(argv)
    if not args.wrk:
        print("wrk not found (apt-get install wrk): this benchmark measures the server with wrk; nothing run")
        return 0
    if args.baseline_revision and (args.mariadb or not args.baseline):
        raise SystemExit("--baseline-revision needs --baseline and SQLite (a copy of the database file)")
    servers = max(OWNED * 2, min(args.servers, MAX_SERVERS))
    seconds = max(1.0, min(args.seconds, MAX_SECONDS))
    rounds = max(1, min(args.rounds, 10))
    connections = max(1, min(args.connections, MAX_CLIENTS))
    customers = max(0, min(args.customers, servers - OWNED - 1))

    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-api-"))
        database = ({"database": {"url": stack.enter_context(mysql_database(mysql_server_url()))}} if args.mariadb
                    else {})
        ports = {"minimal": free_port(), "ours": free_port(), "baseline": free_port()}
        config = write_config(Path(tmp), api={"listen_host": "127.0.0.1", "listen_port": ports["ours"],
                                              "requests_per_minute": 100_000, "cors_origin": ""}, **database)
        settings = load_settings(config, env={})
        app = App(settings)
        db.upgrade(app.engine)
        started = time.perf_counter()
        populate(app, servers)
        print(f"database: {app.engine.dialect.name}, {servers:,} servers ({OWNED} owned by the benchmark customer), "
              f"filled in {time.perf_counter() - started:.1f} s")
        plan, indexed, scanned = query_plan_and_timing(app)
        ranges = plan.count(f"USING INDEX {INDEX}") + plan.count(f"USING COVERING INDEX {INDEX}")
        print(f"query plan: {ranges} range search(es) on {INDEX}"
              f"{' (MULTI-INDEX OR)' if 'MULTI-INDEX OR' in plan else ''}"
              f"{'; FULL TABLE SCAN' if 'SCAN provisioner_servers' in plan else ', no table scan'}")
        print(f"customer query: {indexed * 1e3:.3f} ms with the account index, {scanned * 1e3:.2f} ms as a full scan "
              f"(x{scanned / indexed:.0f})")
        app.engine.dispose()

        token = mint_token(settings, OWNER.lower(), OWNER_ACCOUNT, ttl_seconds=3600)
        auth = {"Authorization": f"Bearer {token}"}
        script = rotation_script(Path(tmp), settings, customers) if customers else None
        if script is not None:    # the first request of each run is checked with the owner's token
            print(f"customers: {customers:,} one-server customers in turn, one token per request")
        (Path(tmp) / "minimal_app.py").write_text(MINIMAL_APP)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        procs: dict[str, subprocess.Popen[bytes]] = {}
        targets = [Target("minimal", f"http://127.0.0.1:{ports['minimal']}/min", {}),
                   Target("ours", f"http://127.0.0.1:{ports['ours']}/api/servers", auth, script)]
        try:
            procs["minimal"] = subprocess.Popen([sys.executable, "-c", MINIMAL_SERVE, str(ports["minimal"]), tmp],  # noqa: S603
                                                env=env, cwd=tmp)
            procs["ours"] = subprocess.Popen([sys.executable, "-c", OURS_SERVE, str(config)], env=env, cwd=tmp)  # noqa: S603
            if args.baseline:
                base_config = Path(tmp) / "baseline.toml"
                base_text = config.read_text().replace(f"listen_port = {ports['ours']}",
                                                       f"listen_port = {ports['baseline']}")
                if args.baseline_revision:
                    base_text = base_text.replace(settings.database.url,
                                                  _database_at(settings.database.url, args.baseline_revision))
                base_config.write_text(settings_for_tree(base_text, args.baseline))
                base_env = {**os.environ, "PYTHONPATH": str(args.baseline.resolve())}
                procs["baseline"] = subprocess.Popen(  # noqa: S603
                    [sys.executable, "-c", BASELINE_SERVE, str(base_config)], env=base_env, cwd=tmp)
                targets.append(Target("baseline", f"http://127.0.0.1:{ports['baseline']}/api/servers", auth, script))
            for t in targets:
                wait_for(t.url, procs[t.name])
                check = httpx.get(t.url, headers=t.headers, timeout=10)
                assert check.status_code == 200, (t.name, check.text[:200])
                if t.name != "minimal":
                    assert len(check.json()) == OWNED, check.text[:200]
            print(f"wrk -t{args.threads} -c{connections} -d{seconds:g}s, {rounds} interleaved round(s); "
                  f"one uvicorn process per target; {load()}")
            for r in range(rounds):
                for t in targets:
                    run = run_wrk(args.wrk, t, args.threads, connections, seconds)
                    t.runs.append(run)
                    print(f"  round {r + 1} {t.name:<9} {run.rps:8.0f} req/s  p50 {run.p50_ms:6.2f} ms  "
                          f"p99 {run.p99_ms:6.2f} ms  non-2xx {run.non_2xx}  ({load()})", file=sys.stderr)
        finally:
            for proc in procs.values():
                proc.terminate()
            for proc in procs.values():
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
        print(f"{'target':<10} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}   (medians of {rounds}; {load()})")
        for t in targets:
            print(f"{t.name:<10} {t.median('rps'):8.0f} {t.median('p50_ms'):8.2f} {t.median('p99_ms'):8.2f}"
                  f"{'   NON-2XX ANSWERS' if any(r.non_2xx for r in t.runs) else ''}")
        by = {t.name: t for t in targets}
        print(f"ratio ours / minimal route: {by['ours'].median('rps') / by['minimal'].median('rps'):.2f}")
        if "baseline" in by:
            print(f"ratio ours / baseline: {by['ours'].median('rps') / by['baseline'].median('rps'):.2f} "
                  f"(p99 {by['ours'].median('p99_ms') / by['baseline'].median('p99_ms'):.2f}x)")
    if INDEX not in plan:
        print(f"FAIL: the customer query does not use {INDEX}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
