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
SANDBOX_HOST = "127.0.0.1"              # where `provisioner sandbox serve` listens (SandboxConfig.host)
STOP_SECONDS = 4.0    # Ctrl-C: the children get this long in all (they stop in ~1-3 s), then are killed


def prepare_local_secrets(config_file: str) -> list[str]:
    """Create the secret files a sandbox config names, if they do not exist yet; which were made."""
    raw = tomllib.loads(Path(config_file).read_text(encoding="utf-8"))
    if not raw.get("sandbox", {}).get("enabled"):
        return []
    made = []
    keys = raw.get("secrets", {}).get("fernet_keys_file")
    if keys and not Path(keys).exists():
        from provisioner.secrets import generate_key

        _write_private(Path(keys), generate_key() + "\n")
        made.append(keys)
    jwt = raw.get("api", {}).get("jwt_secret_file")
    if jwt and not Path(jwt).exists():
        import secrets

        _write_private(Path(jwt), secrets.token_urlsafe(48) + "\n")
        made.append(jwt)
    ssh_key = raw.get("ssh", {}).get("private_key_file")
    if ssh_key and not Path(ssh_key).exists():
        from provisioner.cloudinit import generate_client_key

        key = generate_client_key()
        _write_private(Path(ssh_key), key.private_pem)
        Path(ssh_key + ".pub").write_text(key.public_line + "\n", encoding="utf-8")
        made.append(ssh_key)
    return made


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

    # The terminal shows what happens to servers, not every module's INFO line (the children's
    # logs go to the demo's log file).
    logging.getLogger().setLevel(logging.DEBUG if args.debug else logging.WARNING)
    path = config_path(args)
    assert path is not None
    made = prepare_local_secrets(path)
    settings = load_settings(path)
    if not settings.sandbox.enabled:
        raise ConfigError(f"sandbox.enabled: `provisioner demo` runs only on a sandbox config, and {path} is not one")
    check_ports_agree(settings)
    if not args.plan_only:
        check_ports_free(settings)   # before anything is printed or written: a second demo stops here
    app = App(settings)
    db.upgrade(app.engine)
    edd_engine = db.make_engine(settings.storefront.edd_url)
    seed_demo_storefront(edd_engine, prefix=settings.storefront.edd_table_prefix, now=dt.datetime.now(dt.UTC))
    edd_engine.dispose()
    print(f"Provisioner demo: config {path}, database {db.safe_url(settings.database.url)}", flush=True)
    if made:
        print(f"First start: made the sandbox's own secrets ({', '.join(made)})", flush=True)
    if args.plan_only:
        from provisioner.cli import display

        result, error = app.plan_once()
        print(display.plan_text(result))
        return 1 if error else 0
    return Supervisor(path, app).run()


# --- the demo's ports ---------------------------------------------------------------------------

def demo_ports(settings: Any) -> list[tuple[str, str, int]]:
    """(setting, host, port) of every listening socket the demo opens itself."""
    sb, api = settings.sandbox, settings.api
    return [("sandbox.vultr_port", SANDBOX_HOST, sb.vultr_port),
            ("sandbox.cloudflare_port", SANDBOX_HOST, sb.cloudflare_port),
            ("sandbox.admin_port", SANDBOX_HOST, sb.admin_port),
            ("api.listen_port", api.listen_host, api.listen_port)]


def check_ports_agree(settings: Any) -> None:
    """The URLs the worker and the page use must name the ports the demo serves on; a mismatch
    would otherwise send every server to "needs a human" with a bare HTTP 404."""
    from urllib.parse import urlsplit

    from provisioner.settings import ConfigError

    sb, api = settings.sandbox, settings.api
    for key, url, port, what in (("vultr.base_url", settings.vultr.base_url, sb.vultr_port, "sandbox.vultr_port"),
                                 ("cloudflare.base_url", settings.cloudflare.base_url, sb.cloudflare_port,
                                  "sandbox.cloudflare_port"),
                                 ("api.public_url", api.public_url, api.listen_port, "api.listen_port")):
        parts = urlsplit(url)
        try:
            at = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            at = -1
        if parts.hostname not in ("127.0.0.1", "localhost") or at != port:
            raise ConfigError(f"{key} is {url}, but the demo serves it on 127.0.0.1:{port} ({what}); set only "
                              "sandbox.port_base (or PROVISIONER_SANDBOX_PORT_BASE) and remove the ports and URLs "
                              "set one by one")


def check_ports_free(settings: Any) -> None:
    from provisioner.settings import ConfigError

    for key, host, port in demo_ports(settings):
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do: TIME_WAIT is no clash
            try:
                sock.bind((host, port))
            except OSError:
                raise ConfigError(f"{key}: port {port} on {host} is already in use (another `make run`?); stop it, "
                                  f"or move this demo: PROVISIONER_SANDBOX_PORT_BASE={_free_base(settings)} make run")\
                    from None


def _free_base(settings: Any) -> int:
    base = settings.sandbox.port_base or settings.sandbox.vultr_port
    return base + 100 if base + 100 <= 65500 else 20000


# --- the supervisor -----------------------------------------------------------------------------

class Supervisor:
    """Runs the sandbox, the worker and the API as child processes until Ctrl-C.

    The children log to ``<var>/demo.log``; the terminal gets one line per meaningful event
    (read from the audit trail), the children's errors, and the login link once the API is
    listening and again when the demo's servers are all Running."""

    def __init__(self, config: str, app: Any) -> None:
        self.config, self.app = config, app
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.stop = threading.Event()
        self.log_path = Path(app.settings.sandbox.state_file or "var/sandbox-state.json").parent / "demo.log"
        self.feed = EventFeed(app)
        self._log_offset = 0

    def spawn(self, name: str, *argv: str) -> None:
        cmd = [sys.executable, "-m", "provisioner", "--config", self.config, *argv]
        with self.log_path.open("ab") as log_file:
            self.children[name] = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT)  # noqa: S603

    def run(self) -> int:
        s = self.app.settings
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self.stop.set())
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.feed.skip_history()
        try:
            self.spawn("sandbox", "sandbox", "serve")
            if not _wait_for_port(SANDBOX_HOST, s.sandbox.admin_port, 30, self.children["sandbox"], self.stop):
                return 0 if self.stop.is_set() else self._failed("the sandbox did not start")
            if self.stop.is_set():
                return 0
            self.spawn("worker", "run")
            self.spawn("api", "api")
            if not _wait_for_api(s.api.listen_host, s.api.listen_port, 30, self.children["api"], self.stop):
                return 0 if self.stop.is_set() else self._failed("the dashboard API did not start")
            self._banner()
            return self._watch()
        finally:
            self._terminate()

    def _banner(self) -> None:
        s = self.app.settings
        print("\nThe sandbox clouds, the worker and the dashboard API are running.")
        print(f"Dashboard for demo customer {DEMO_LOGIN_EMAIL} (valid for an hour):\n  "
              f"{_dashboard_url(self.app, DEMO_LOGIN_EMAIL)}")
        print(f"Sandbox admin (state, call log, faults): http://{SANDBOX_HOST}:{s.sandbox.admin_port}/")
        print(f"Logs of the sandbox, the worker and the API: {self.log_path}")
        print(f"In another terminal: .venv/bin/provisioner --config {self.config} servers")
        print("Ctrl-C stops everything.\n", flush=True)

    def _watch(self) -> int:
        settled = False
        while not self.stop.wait(1.0):
            for name, proc in self.children.items():
                if proc.poll() is not None:
                    return self._failed(f"the {name} stopped (exit {proc.returncode})")
            for line in self.feed.new_lines():
                print(line, flush=True)
            self._echo_log_errors()
            if not settled and self.feed.all_running():
                settled = True
                print(f"\nAll {self.feed.live} demo servers are Running. Dashboard for {DEMO_LOGIN_EMAIL}:\n  "
                      f"{_dashboard_url(self.app, DEMO_LOGIN_EMAIL)}\n", flush=True)
        print("\nstopping…", flush=True)
        return 0

    def _echo_log_errors(self) -> None:
        """The children's ERROR lines reach the terminal too (the rest stays in the log file)."""
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(self._log_offset)
                chunk = fh.read()
        except OSError:
            return
        complete = chunk.rfind(b"\n") + 1
        self._log_offset += complete
        for raw in chunk[:complete].decode("utf-8", "replace").splitlines():
            fields = raw.split(" ", 3)
            if len(fields) == 4 and fields[2] in ("ERROR", "CRITICAL"):
                print(f"{_clock()}  log: {fields[3]}", flush=True)

    def _failed(self, what: str) -> int:
        print(f"provisioner: error: {what}; its log: {self.log_path}", file=sys.stderr, flush=True)
        return 1

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


class EventFeed:
    """One terminal line per meaningful event of the audit trail: a server reached Running, a
    rebuild, a destroy, a failure, an operator's hold."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.last_id = 0
        self.live = 0

    def skip_history(self) -> None:
        from sqlalchemy import func, select

        from provisioner.models import ServerEvent

        with self.app.sessions() as s:
            self.last_id = s.scalar(select(func.max(ServerEvent.id))) or 0

    def new_lines(self) -> list[str]:
        from sqlalchemy import select

        from provisioner.models import Server, ServerEvent

        with self.app.sessions() as s:
            events = list(s.scalars(select(ServerEvent).where(ServerEvent.id > self.last_id)
                                    .order_by(ServerEvent.id).limit(500)))
            if events:
                self.last_id = events[-1].id
            servers = {e.server_id: s.get(Server, e.server_id) for e in events if e.server_id is not None}
        out = []
        for e in events:
            text = describe(e, servers.get(e.server_id))
            if text:
                out.append(f"{_clock(e.at)}  {text}")
        return out

    def all_running(self) -> bool:
        from provisioner.models import Status

        live = [r for r in self.app.all_servers() if r.status != Status.DESTROYED.value]
        self.live = len(live)
        return bool(live) and all(r.status == Status.RUNNING.value and not r.action for r in live)


def describe(e: Any, row: Any) -> str | None:
    """The line for one audit event, or None when it is a step on the way (those are in
    ``provisioner events NAME``)."""
    name = (row.server_name or f"#{row.id}").split(".")[0] if row is not None else "-"
    action, _, step = e.what.partition(".")
    if e.outcome == "failed":
        return f"{name:<6} {action} failed at {step}: {e.detail}"
    if e.what == "create.done":
        return f"{name:<6} Running in {row.current_location if row else '?'} ({row.user_email if row else '?'}, " \
               f"subscription {row.subscription_id if row else '?'})"
    if e.what == "rebuild.requested":
        return f"{name:<6} rebuild requested by {e.actor.split(':')[0]} ({e.detail})"
    if e.what == "rebuild.done":
        return f"{name:<6} rebuilt: Running in {row.current_location if row else '?'}"
    if e.what == "destroy.requested":
        return f"{name:<6} being destroyed: {e.detail}"
    if e.what == "destroy.done":
        return f"{name:<6} Destroyed"
    if step == "retry" or action == "operator":
        verb = HOLD_VERBS.get(e.what, e.what.replace(".", " "))
        who = e.actor.replace(":", " ", 1)  # "operator alice"
        return f"{name:<6} {verb} by {who}" + (f": {e.detail}" if e.detail else "")
    return None


HOLD_VERBS = {"operator.paused": "paused", "operator.resumed": "resumed", "operator.held": "taken down and held",
              "operator.released": "released", "create.retry": "create retried", "rebuild.retry": "rebuild retried",
              "destroy.retry": "destroy retried"}


def _clock(at: dt.datetime | None = None) -> str:
    """A time as the terminal shows it: the machine's local time."""
    return (at or dt.datetime.now(dt.UTC)).astimezone().strftime("%H:%M:%S")


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


def _wait_for_api(host: str, port: int, timeout: float, proc: subprocess.Popen[bytes],
                  stop: threading.Event) -> bool:
    """Until ``/healthz`` answers 200: the login link is printed only once it works."""
    import http.client

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not stop.is_set():
        if proc.poll() is not None:
            return False
        conn = http.client.HTTPConnection(host, port, timeout=1)
        try:
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return True
        except OSError:
            pass
        finally:
            conn.close()
        stop.wait(0.2)
    return False
