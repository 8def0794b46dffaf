"""Throughput and latency of the dashboard API's ``GET /api/servers`` over 100,000 servers.

    .venv/bin/python bench/api.py                          # 100k servers, 4 clients, 20 s per phase
    .venv/bin/python bench/api.py --servers 20000 --clients 8 --seconds 5

One SQLite database in a temporary directory: one customer owns a handful of servers (with
events), everyone else owns one each. One uvicorn process serves the real app
(``dashboard_api.server.serve``) on 127.0.0.1; a few threads, each with its own keep-alive
httpx client, request as fast as they can for a bounded time. Phases: ``/healthz`` (the
floor: routing, middleware, one ``SELECT 1``), then ``/api/servers``. Also prints the query
plan and the time of the customer query with the email index against a forced full scan.

Everything is bounded (clients x seconds) and local. Prints figures; exits non-zero only when
something crashes or the query does not use the index.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from sqlalchemy import insert, text  # noqa: E402

from dashboard_api.queries import customer_servers_query  # noqa: E402
from dashboard_api.tokens import mint_token  # noqa: E402
from provisioner import db  # noqa: E402
from provisioner.models import Server, ServerEvent  # noqa: E402
from provisioner.settings import load_settings  # noqa: E402
from provisioner.wiring import App  # noqa: E402
from tests.fixtures.config import write_config  # noqa: E402
from tests.fixtures.net import free_port  # noqa: E402

OWNER = "Bench.Owner@example.com"
OWNER_ACCOUNT = "1"                  # the owner's storefront account: what the token's sub names
OWNED = 5
MAX_SECONDS, MAX_CLIENTS, MAX_SERVERS = 60.0, 32, 1_000_000
REGIONS = ["ewr", "lax", "ord", "ams", "fra", "lhr", "cdg", "nrt", "sgp", "syd"]


@dataclass
class Phase:
    name: str
    seconds: float
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.seconds

    def pct(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    def print(self) -> None:
        mean = statistics.fmean(self.latencies) * 1000 if self.latencies else float("nan")
        print(f"{self.name:<26} {self.rps:9.1f} req/s   p50 {self.pct(0.50):7.2f} ms   p99 {self.pct(0.99):7.2f} ms   "
              f"mean {mean:7.2f} ms   requests {len(self.latencies)}   statuses {dict(sorted(self.statuses.items()))}"
              f"   errors {self.errors}")


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
            "rebuild_schedule_location": "random", "ovpn_file_enc": ovpn, "version": 1, "generation": 1,
            "rebuild_now_status": False, "attempts": 0, "needs_human": False, "paused": False,
            "bandwidth_carried": 0, "bandwidth_alerted": 0, "suspended_by_cap": False, "created_at": now,
            "updated_at": now, "last_rebuilt_at": now})
        for k in range(12 if mine else 1):
            events.append({"server_id": i + 1, "at": now - dt.timedelta(hours=k), "actor": "worker",
                           "what": "create.finish", "outcome": "ok", "detail": ""})
    with app.engine.begin() as conn:
        for start in range(0, len(rows), 5000):
            conn.execute(insert(Server), rows[start:start + 5000])
        for start in range(0, len(events), 5000):
            conn.execute(insert(ServerEvent), events[start:start + 5000])
        conn.execute(text("ANALYZE"))


def query_plan_and_timing(app: App) -> tuple[str, float, float]:
    q = customer_servers_query(OWNER_ACCOUNT)
    sql = str(q.compile(app.engine, compile_kwargs={"literal_binds": True}))
    scan = sql.replace("FROM provisioner_servers", "FROM provisioner_servers NOT INDEXED")
    with app.engine.connect() as conn:
        plan = "; ".join(str(r[-1]) for r in conn.execute(text("EXPLAIN QUERY PLAN " + sql)))
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
            raise RuntimeError(f"the API exited with {proc.returncode}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError("the API did not start in time")


def hammer(name: str, url: str, headers: dict[str, str], clients: int, seconds: float) -> Phase:
    phase = Phase(name, seconds)
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def run() -> None:
        lat: list[float] = []
        statuses: dict[int, int] = {}
        errors = 0
        with httpx.Client(headers=headers, timeout=10) as client:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                try:
                    status = client.get(url).status_code
                except httpx.HTTPError:
                    errors += 1
                    continue
                lat.append(time.perf_counter() - started)
                statuses[status] = statuses.get(status, 0) + 1
        with lock:
            phase.latencies += lat
            phase.errors += errors
            for k, v in statuses.items():
                phase.statuses[k] = phase.statuses.get(k, 0) + v

    threads = [threading.Thread(target=run) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return phase


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--servers", type=int, default=100_000)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--seconds", type=float, default=20.0, help="per phase")
    args = p.parse_args(argv)
    servers = max(OWNED * 2, min(args.servers, MAX_SERVERS))
    clients, seconds = max(1, min(args.clients, MAX_CLIENTS)), max(1.0, min(args.seconds, MAX_SECONDS))

    with tempfile.TemporaryDirectory(prefix="bench-api-") as tmp:
        port = free_port()
        config = write_config(Path(tmp), api={"listen_host": "127.0.0.1", "listen_port": port,
                                              "requests_per_minute": 100000, "cors_origin": ""})
        settings = load_settings(config, env={})
        app = App(settings)
        db.upgrade(app.engine)
        started = time.perf_counter()
        populate(app, servers)
        print(f"database: {servers:,} servers ({OWNED} owned by the benchmark customer), "
              f"filled in {time.perf_counter() - started:.1f} s")
        plan, indexed, scanned = query_plan_and_timing(app)
        ranges = plan.count("USING INDEX ix_provisioner_servers_user_email") + plan.count(
            "USING COVERING INDEX ix_provisioner_servers_user_email")
        print(f"query plan: {ranges} range search(es) on ix_provisioner_servers_user_email"
              f"{' (MULTI-INDEX OR)' if 'MULTI-INDEX OR' in plan else ''}"
              f"{'; FULL TABLE SCAN' if 'SCAN provisioner_servers' in plan else ', no table scan'}")
        print(f"customer query: {indexed * 1e3:.3f} ms with the email index, {scanned * 1e3:.2f} ms as a full scan "
              f"(x{scanned / indexed:.0f})")
        app.engine.dispose()

        token = mint_token(settings, OWNER.lower(), OWNER_ACCOUNT, ttl_seconds=3600)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        code = ("import sys; from provisioner.settings import load_settings; from dashboard_api.server import serve; "
                "sys.exit(serve(load_settings(sys.argv[1], env={})))")
        proc = subprocess.Popen([sys.executable, "-c", code, str(config)], env=env, cwd=tmp)  # noqa: S603
        try:
            base = f"http://127.0.0.1:{port}"
            wait_for(base, proc)
            auth = {"Authorization": f"Bearer {token}"}
            check = httpx.get(base + "/api/servers", headers=auth, timeout=10)
            assert check.status_code == 200 and len(check.json()) == OWNED, check.text[:200]
            print(f"one uvicorn process on {base}; {clients} keep-alive clients; {seconds:g} s per phase")
            floor = hammer("GET /healthz", base + "/healthz", {}, clients, seconds)
            floor.print()
            listing = hammer("GET /api/servers", base + "/api/servers", auth, clients, seconds)
            listing.print()
            print(f"ratio /api/servers : /healthz   throughput {listing.rps / floor.rps:.2f}   "
                  f"p50 latency {listing.pct(0.5) / floor.pct(0.5):.2f}x   p99 latency "
                  f"{listing.pct(0.99) / floor.pct(0.99):.2f}x")
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
    if "ix_provisioner_servers_user_email" not in plan:
        print("FAIL: the customer query does not use the user_email index", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
