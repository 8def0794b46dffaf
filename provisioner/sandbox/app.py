"""SIMULATOR ONLY: the sandbox -- simulated Vultr v2 + Cloudflare v4 + an admin API, on loopback.

Test and demo fixture; production code never imports this package.

In-process (tests)::

    with Sandbox(SandboxConfig(boot_seconds=0.2, state_file=tmp / "state.json")) as sb:
        VultrCloud(SANDBOX_KEY, sb.vultr_url, ...); CloudflareDNS(..., base_url=sb.cloudflare_url)
        sb.calls("vultr"); sb.set_faults({...}); sb.tick()

As a process: ``python -m provisioner.sandbox [--config config/sandbox.toml]`` or
``provisioner sandbox serve`` (both end in :func:`serve`), until SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from provisioner.sandbox.admin import AdminService
from provisioner.sandbox.cloudflare_sim import CloudflareSimulator
from provisioner.sandbox.config import SandboxConfig, config_from_settings
from provisioner.sandbox.faults import FaultInjector
from provisioner.sandbox.hostapi import HostRunner, NoopHostRunner
from provisioner.sandbox.httpbase import SimServer
from provisioner.sandbox.mailcatcher import MailCatcher
from provisioner.sandbox.state import SimState
from provisioner.sandbox.vultr_sim import VultrSimulator
from provisioner.sandbox.vultr_views import snapshot_view

log = logging.getLogger(__name__)

FLUSH_EVERY_SECONDS = 1.0


class Sandbox:
    def __init__(self, config: SandboxConfig | None = None, host_runner: HostRunner | None = None, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config or SandboxConfig()
        self.clock = clock
        self.state = SimState(self.config.state_file, call_log_limit=self.config.call_log_limit, clock=clock)
        self.faults = FaultInjector(self.config.seed)
        if self.config.faults:
            self.faults.configure(self.config.faults)
        self.hosts = host_runner or NoopHostRunner()
        self.vultr = VultrSimulator(self.config, self.state, self.faults, self.hosts, clock)
        self.cloudflare = CloudflareSimulator(self.config, self.state, self.faults, clock)
        self.mail = MailCatcher(self.config.host, self.config.smtp_port) if self.config.smtp_port is not None \
            else None
        self.admin = AdminService(self.state, self.faults, self.describe, self.reset, self.hosts,
                                  mail=self.mail.messages if self.mail is not None else list)
        self._servers: list[SimServer] = []
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._last_flush = 0.0

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> Sandbox:
        host = self.config.host
        try:
            for service, port in ((self.vultr, self.config.vultr_port), (self.cloudflare, self.config.cloudflare_port),
                                  (self.admin, self.config.admin_port)):
                self._servers.append(SimServer(service, host, port, self.clock))
        except OSError as exc:
            self._close_servers()
            raise OSError(f"sandbox cannot listen on {host}: {exc.strerror}; is another sandbox running?") from exc
        for server in self._servers:
            server.start()
        if self.mail is not None:
            self.mail.start()
        self.tick()
        self._ticker = threading.Thread(target=self._tick_loop, name="sandbox-ticker", daemon=True)
        self._ticker.start()
        log.info("sandbox up: vultr %s, cloudflare %s, admin %s", self.vultr_url, self.cloudflare_url, self.admin_url)
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=5)
        self._close_servers()
        if self.mail is not None:
            self.mail.stop()
        self.vultr.forget_hosts()
        self.state.save()

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def _close_servers(self) -> None:
        for server in self._servers:
            server.stop()
        self._servers.clear()

    def _tick_loop(self) -> None:
        while not self._stop.wait(self.config.tick_seconds):
            self.tick()

    def tick(self) -> None:
        """One unit of background work: host start/stop, call-log flush.  Tests may call it."""
        self.vultr.sync_hosts()
        now = time.monotonic()
        if now - self._last_flush >= FLUSH_EVERY_SECONDS:
            self._last_flush = now
            self.state.flush()

    # -- addresses -------------------------------------------------------------------

    def _url(self, index: int, suffix: str) -> str:
        server = self._servers[index]
        return f"http://{server.host}:{server.port}{suffix}"

    @property
    def vultr_url(self) -> str:
        return self._url(0, "/v2")

    @property
    def cloudflare_url(self) -> str:
        return self._url(1, "/client/v4")

    @property
    def admin_url(self) -> str:
        return self._url(2, "/_sandbox")

    # -- inspection and control (also served by the admin API) -----------------------

    def calls(self, service: str | None = None, since: int = 0) -> list[dict[str, Any]]:
        return self.state.calls_since(since, service)

    def last_call_seq(self) -> int:
        return self.state.last_call_seq()

    def set_faults(self, document: dict[str, Any]) -> None:
        self.faults.configure(document)

    def clear_faults(self, key: str | None = None) -> None:
        self.faults.clear(key)

    def reset(self) -> None:
        self.vultr.forget_hosts()
        self.state.reset()

    def describe(self) -> dict[str, Any]:
        now = self.clock()
        with self.state.lock:
            instances = []
            for inst in sorted(self.state.instances.values(), key=lambda i: i["seq"]):
                sandbox_only = {"ip": inst["ip"], "boot_until": inst["boot_until"], "runs": inst["runs"],
                                "user_data_bytes": len(inst["user_data"].encode("utf-8"))}
                instances.append({**self.vultr.view(inst, now), "sandbox": sandbox_only})
            snapshots = [snapshot_view(s, now) for s in self.state.snapshots.values()]
            records = [dict(r) for r in self.state.records.values()]
        return {"now": now, "instances": instances, "snapshots": snapshots, "records": records,
                "faults": self.faults.describe()}


def serve(config: SandboxConfig, host_runner: HostRunner | None = None,
          stop: threading.Event | None = None) -> None:
    """Run the sandbox until ``stop`` is set or SIGINT/SIGTERM arrives (main thread only)."""
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    with Sandbox(config, host_runner) as sb:
        print(f"sandbox vultr      {sb.vultr_url}", flush=True)
        print(f"sandbox cloudflare {sb.cloudflare_url}", flush=True)
        print(f"sandbox admin      {sb.admin_url}", flush=True)
        if sb.mail is not None:
            print(f"sandbox mail       smtp://{config.host}:{sb.mail.port} (`provisioner sandbox mail` lists it)",
                  flush=True)
        # Timed waits: the main thread must get back to the interpreter to run signal handlers.
        while not stop.wait(0.5):
            pass
    log.info("sandbox stopped")


def fault_document(given: str) -> dict[str, Any]:
    """``--faults``: inline JSON or a file's name, checked as ``POST /_sandbox/faults`` checks it."""
    if given.lstrip().startswith("{"):
        text = given
    else:
        try:
            text = Path(given).read_text("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"--faults: cannot read {given}: {exc}") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--faults: not JSON: {exc}") from None
    try:
        FaultInjector().configure(document)
    except ValueError as exc:
        raise ValueError(f"--faults: {exc}") from None
    return document


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="provisioner-sandbox",
                                     description="Simulated Vultr v2 + Cloudflare v4 on loopback (test/demo only).")
    parser.add_argument("--config", help="a provisioner settings file (keys, zone, ports, state file)")
    parser.add_argument("--no-hosts", action="store_true", help="with --config: do not run simulated SSH hosts")
    for name in ("vultr-port", "cloudflare-port", "admin-port"):
        parser.add_argument(f"--{name}", type=int)
    parser.add_argument("--state-file")
    parser.add_argument("--boot-seconds", type=float)
    parser.add_argument("--snapshot-seconds", type=float)
    parser.add_argument("--ip-pool")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--tick-seconds", type=float)
    parser.add_argument("--call-log-limit", type=int)
    parser.add_argument("--cloudflare-limit", type=int, help="requests per window per token (0: unlimited)")
    parser.add_argument("--cloudflare-window", type=float, help="the Cloudflare window in seconds")
    parser.add_argument("--faults", help="a fault document: a JSON file name or inline JSON")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides: dict[str, Any] = {k: v for k, v in {
        "vultr_port": args.vultr_port, "cloudflare_port": args.cloudflare_port, "admin_port": args.admin_port,
        "state_file": args.state_file, "boot_seconds": args.boot_seconds, "snapshot_seconds": args.snapshot_seconds,
        "ip_pool": args.ip_pool, "seed": args.seed, "tick_seconds": args.tick_seconds,
        "call_log_limit": args.call_log_limit, "cloudflare_limit": args.cloudflare_limit,
        "cloudflare_window_seconds": args.cloudflare_window}.items() if v is not None}
    host_runner: HostRunner | None = None
    try:   # a settings file or fault document refused, a value out of range: one line (ConfigError is a ValueError)
        if args.faults:
            overrides["faults"] = fault_document(args.faults)
        if args.config:
            from provisioner.settings import load_settings

            settings = load_settings(args.config)
            config = config_from_settings(settings, **overrides)
            if not args.no_hosts:
                from provisioner.sandbox.hosts import SimulatedHosts

                host_runner = SimulatedHosts(root_dir=Path(settings.sandbox.host_root), ssh_port=settings.ssh.port,
                                             install_seconds=settings.sandbox.install_seconds)
        else:
            config = SandboxConfig(**{"vultr_port": 18080, "cloudflare_port": 18081, "admin_port": 18082, **overrides})
    except ValueError as exc:
        print(f"sandbox: {exc}", file=sys.stderr)
        return 2
    try:
        serve(config, host_runner)
    except OSError as exc:
        print(f"sandbox: {exc}", file=sys.stderr)
        return 1
    return 0
