"""`provisioner demo` (what `make run` runs): the product on its embedded default.

SQLite, the sandbox clouds and a demo EDD storefront in the same SQLite file; no
credentials. On first start it makes the sandbox's own secrets under var/secrets/ (a Fernet
key and the worker's SSH key), which is the one place this program writes secrets for you.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEMO_LOGIN_EMAIL = "alice@example.com"  # an active subscription in the demo storefront
STOP_SECONDS = 4.0    # Ctrl-C: the children get this long in all (they stop in ~1-3 s), then are killed


def prepare_local_secrets(config_file: str) -> None:
    """Create the secret files a sandbox config names, if they do not exist yet."""
    raw = tomllib.loads(Path(config_file).read_text(encoding="utf-8"))
    if not raw.get("sandbox", {}).get("enabled"):
        return
    keys = raw.get("secrets", {}).get("fernet_keys_file")
    if keys and not Path(keys).exists():
        from provisioner.secrets import generate_key

        _write_private(Path(keys), generate_key() + "\n")
        log.info("made a Fernet key for the sandbox in %s", keys)
    jwt = raw.get("api", {}).get("jwt_secret_file")
    if jwt and not Path(jwt).exists():
        import secrets

        _write_private(Path(jwt), secrets.token_urlsafe(48) + "\n")
    ssh_key = raw.get("ssh", {}).get("private_key_file")
    if ssh_key and not Path(ssh_key).exists():
        from provisioner.cloudinit import generate_client_key

        key = generate_client_key()
        _write_private(Path(ssh_key), key.private_pem)
        Path(ssh_key + ".pub").write_text(key.public_line + "\n", encoding="utf-8")
        log.info("made the worker's SSH key for the sandbox in %s", ssh_key)


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)


def run_demo(args: argparse.Namespace) -> int:
    from provisioner import db
    from provisioner.cli.common import config_path
    from provisioner.settings import ConfigError, load_settings
    from provisioner.storefront.demo import seed_demo_storefront
    from provisioner.wiring import App

    path = config_path(args)
    assert path is not None
    prepare_local_secrets(path)
    settings = load_settings(path)
    if not settings.sandbox.enabled:
        raise ConfigError(f"sandbox.enabled: `provisioner demo` runs only on a sandbox config, and {path} is not one")
    app = App(settings)
    db.upgrade(app.engine)
    edd_engine = db.make_engine(settings.storefront.edd_url)
    seed_demo_storefront(edd_engine, prefix=settings.storefront.edd_table_prefix, now=dt.datetime.now(dt.UTC))
    edd_engine.dispose()
    print(f"Provisioner demo: config {path}, database {db.safe_url(settings.database.url)}", flush=True)
    if args.plan_only:
        from provisioner.cli import display

        result, error = app.plan_once()
        print(display.plan_text(result))
        return 1 if error else 0
    return Supervisor(path, app).run()


class Supervisor:
    """Runs the sandbox, the worker and the API as child processes until Ctrl-C."""

    def __init__(self, config: str, app: Any) -> None:
        self.config, self.app = config, app
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.stop = threading.Event()

    def spawn(self, name: str, *argv: str) -> None:
        cmd = [sys.executable, "-m", "provisioner", "--config", self.config, *argv]
        self.children[name] = subprocess.Popen(cmd)  # noqa: S603 - our own interpreter and module

    def run(self) -> int:
        s = self.app.settings
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self.stop.set())
        try:
            self.spawn("sandbox", "sandbox", "serve")
            if not _wait_for_port("127.0.0.1", s.sandbox.vultr_port, 30, self.children["sandbox"], self.stop):
                if self.stop.is_set():
                    return 0
                print("provisioner: error: the sandbox did not start (is another `make run` running?)", flush=True)
                return 1
            if self.stop.is_set():
                return 0
            self.spawn("worker", "run")
            self.spawn("api", "api")
            self._banner()
            return self._watch()
        finally:
            self._terminate()

    def _banner(self) -> None:
        s = self.app.settings
        print("\nThe sandbox clouds, the worker and the dashboard API are running.")
        url = _dashboard_url(self.app, DEMO_LOGIN_EMAIL)
        print(f"Dashboard for demo customer {DEMO_LOGIN_EMAIL}:\n  {url}")
        print(f"Sandbox admin (state, call log, faults): http://127.0.0.1:{s.sandbox.admin_port}/")
        print(f"In another terminal: .venv/bin/provisioner --config {self.config} servers")
        print("Ctrl-C stops everything.\n", flush=True)

    def _watch(self) -> int:
        last = ""
        while not self.stop.wait(2.0):
            for name, proc in self.children.items():
                if proc.poll() is not None:
                    print(f"provisioner: error: the {name} stopped (exit {proc.returncode})", flush=True)
                    return 1
            summary = _summary(self.app)
            if summary != last:
                print(summary, flush=True)
                last = summary
        print("\nstopping…", flush=True)
        return 0

    def _terminate(self) -> None:
        """SIGTERM to every child at once; whatever still runs after STOP_SECONDS in all is killed."""
        for proc in self.children.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_SECONDS
        for name, proc in self.children.items():
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in time; killing it", name)
                proc.kill()
                proc.wait(timeout=5)


def _summary(app: Any) -> str:
    from collections import Counter

    rows = app.all_servers()
    counts = Counter(r.status for r in rows)
    return "servers: " + (", ".join(f"{n} {st}" for st, n in sorted(counts.items())) or "none yet")


def _dashboard_url(app: Any, email: str) -> str:
    from dashboard_api.tokens import mint_token

    settings = app.settings
    account = next((s.account_id for s in app.storefront.read(app.clock()) if s.email == email and s.account_id), "0")
    token = mint_token(settings, email, user_id=account, ttl_seconds=3600)
    return f"{settings.api.public_url.rstrip('/')}/#token={token}"


def _wait_for_port(host: str, port: int, timeout: float, proc: subprocess.Popen[bytes],
                   stop: threading.Event) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not stop.is_set():
        if proc.poll() is not None:
            return False
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex((host, port)) == 0:
                return True
        stop.wait(0.2)
    return False
