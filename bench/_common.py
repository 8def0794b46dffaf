"""Helpers shared by bench/reconcile.py and bench/fleet.py (not a benchmark itself).

Nothing here leaves the machine: MariaDB is reached on 127.0.0.1 only, the sandbox binds
loopback addresses only. Every helper is bounded; none asserts on speed.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import statistics
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sqlalchemy.engine import make_url  # noqa: E402

from provisioner.settings import load_settings  # noqa: E402
from provisioner.settings.schema import Settings  # noqa: E402
from tests.fixtures.config import dump_toml, sandbox_config  # noqa: E402

MYSQL_ENV = "PROVISIONER_TEST_MYSQL_URL"
MYSQL_DEFAULT = "mysql+pymysql://root@127.0.0.1:3306/test"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def log(message: str) -> None:
    """Progress lines go to stderr (stdout keeps the figures), stamped with elapsed seconds."""
    print(f"[{time.monotonic() - _T0:7.1f}s] {message}", file=sys.stderr, flush=True)


_T0 = time.monotonic()


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def parse_sizes(text: str) -> list[int]:
    sizes = [int(part.replace("_", "")) for part in text.split(",") if part.strip()]
    if not sizes or any(n < 1 for n in sizes):
        raise ValueError(f"sizes must be positive integers, got {text!r}")
    return sizes


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = "  ".join("-" * w for w in widths)
    for index, row in enumerate(cells):
        print("  ".join(c.rjust(w) if index and _numeric(c) else c.ljust(w) for c, w in zip(row, widths, strict=True)))
        if index == 0:
            print(line)
    sys.stdout.flush()


def _numeric(cell: str) -> bool:
    return bool(cell) and (cell[0].isdigit() or cell[0] in "-~" and cell[1:2].isdigit())


def fmt_s(seconds: float) -> str:
    if seconds != seconds:  # NaN
        return "-"
    if seconds >= 100:
        return f"{seconds:.0f}"
    if seconds >= 10:
        return f"{seconds:.1f}"
    if seconds >= 0.1:
        return f"{seconds:.2f}"
    return f"{seconds:.4f}"


def sandbox_admin(port: int, path: str, *, method: str = "GET", body: dict[str, Any] | None = None,
                  timeout: float = 60) -> Any:
    """A call to the sandbox's admin API on loopback (``path`` under ``/_sandbox``); its JSON reply."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}/_sandbox{path}", method=method,  # noqa: S310 - loopback
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"} if body is not None else {})
    with urllib.request.urlopen(req, timeout=timeout) as reply:  # noqa: S310 - loopback only
        return json.loads(reply.read())


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process so far, from /proc (NaN once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")   # utime, stime


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


# --- MariaDB ---------------------------------------------------------------------------------

def mysql_server_url() -> str:
    url = os.environ.get(MYSQL_ENV, MYSQL_DEFAULT)
    host = make_url(url).host or "localhost"
    if host not in LOOPBACK_HOSTS and not host.startswith("127."):
        raise SystemExit(f"{MYSQL_ENV} must point at a loopback MariaDB/MySQL (this benchmark never leaves "
                         f"the machine), not {host}")
    return url


def mysql_unreachable_reason(url: str) -> str | None:
    """None when we can connect; else a one-line reason (never the password)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import SQLAlchemyError

    try:
        engine = create_engine(url, connect_args={"connect_timeout": 5})
    except ImportError as exc:
        return f"driver missing: {exc}"
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        orig = getattr(exc, "orig", None)
        return str(orig or exc).splitlines()[0][:200]
    finally:
        engine.dispose()
    return None


@contextlib.contextmanager
def mysql_database(server_url: str, prefix: str = "prov_bench_") -> Iterator[str]:
    """A fresh database ``prov_bench_<random>`` on the server; dropped on the way out."""
    from sqlalchemy import create_engine, text

    name = f"{prefix}{secrets.token_hex(4)}"
    admin = create_engine(server_url, connect_args={"connect_timeout": 5})
    with admin.begin() as conn:
        conn.execute(text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"))
    log(f"created MariaDB database {name}")
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
        admin.dispose()
        log(f"dropped MariaDB database {name}")


def recreate_mysql_database(url: str) -> None:
    """Drop and re-create the (benchmark's own) database named in ``url``."""
    from sqlalchemy import create_engine, text

    parsed = make_url(url)
    name = parsed.database or ""
    if not name.startswith("prov_bench_"):
        raise ValueError(f"refusing to recreate {name!r}: not a benchmark database")
    admin = create_engine(parsed.set(database=""), connect_args={"connect_timeout": 5})
    try:
        with admin.begin() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
            conn.execute(text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"))
    finally:
        admin.dispose()


# --- settings ----------------------------------------------------------------------------------

def write_settings(tmp: Path, **sections: dict[str, Any]) -> tuple[Path, Settings]:
    """A valid settings file under ``tmp`` (the embedded sandbox default with ``sections`` merged)."""
    data = sandbox_config(tmp, **sections)
    path = tmp / "provisioner.toml"
    path.write_text(dump_toml(data))
    return path, load_settings(path, env={})


if __name__ == "__main__":  # `make bench` runs every bench/*.py; this one is only a helper
    print("bench/_common.py: helpers only; run bench/reconcile.py or bench/fleet.py")


def settings_for_tree(config_text: str, tree: Path) -> str:
    """Our config without the keys an older tree does not know (it refuses unknown keys): what a
    baseline tree of a before/after reads."""
    import json
    import subprocess
    import tomllib

    from tests.fixtures.config import dump_toml

    known = json.loads(subprocess.run(  # noqa: S603 - our own interpreter on the baseline's schema
        [sys.executable, "-c", "import json; from provisioner.settings.schema import SECTIONS; "
         "print(json.dumps({s: sorted(f) for s, f in SECTIONS.items()}))"],
        env={**os.environ, "PYTHONPATH": str(tree.resolve())}, cwd=tree, capture_output=True, text=True,
        check=True).stdout)
    data = tomllib.loads(config_text)
    kept = {s: {k: v for k, v in table.items() if k in known[s] or k.removesuffix("_file") in known[s]}
            for s, table in data.items() if s in known}
    kept["products"] = data.get("products", {})
    return dump_toml(kept)
