"""`make run` (`provisioner demo`): a calm terminal, a login link that works when printed, one
setting that moves every port, and a clash or a mismatch stopped before anything is printed."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from provisioner.sandbox.app import Sandbox
from provisioner.sandbox.faults import FIELD_HELP, FaultSpec
from provisioner.sandbox.hosts import FAULT_KINDS
from provisioner.settings import ConfigError, load_settings
from tests.fixtures.config import SANDBOX_TOML
from tests.fixtures.stack import Stack

FEED = re.compile(r"^\d\d:\d\d:\d\d  \S")


def free_base(span: int = 5) -> int:
    """A port with ``span`` free ports from it on 127.0.0.1."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = int(probe.getsockname()[1])
        if base + span > 65500:
            continue
        try:
            socks = []
            for port in range(base, base + span):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no run of free ports")


def demo_env(base: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONER_")}
    env.update({"PROVISIONER_SANDBOX_PORT_BASE": str(base), "PROVISIONER_SANDBOX_BOOT_SECONDS": "0.5",
                "PROVISIONER_SANDBOX_INSTALL_SECONDS": "0.2", **extra})
    return env


@pytest.fixture
def demo_dir(tmp_path: Path) -> Path:
    shutil.copy(SANDBOX_TOML, tmp_path / "sandbox.toml")
    return tmp_path


def run_demo(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "provisioner", "--config", "sandbox.toml", "demo", *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=120)


# --- one setting moves every port ---------------------------------------------------------------

def test_one_setting_moves_every_port_and_url_of_the_demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from provisioner.cli.demo import prepare_local_secrets

    monkeypatch.chdir(tmp_path)             # the demo's secret files are made relative to the working directory
    prepare_local_secrets(str(SANDBOX_TOML))
    s = load_settings(SANDBOX_TOML, env={"PROVISIONER_SANDBOX_PORT_BASE": "19080"})
    assert (s.sandbox.vultr_port, s.sandbox.cloudflare_port, s.sandbox.admin_port, s.api.listen_port,
            s.ssh.port, s.sandbox.smtp_port, s.notify.smtp_port) == (19080, 19081, 19082, 19083, 19084, 19085, 19085)
    assert (s.vultr.base_url, s.cloudflare.base_url) == ("http://127.0.0.1:19080/v2",
                                                         "http://127.0.0.1:19081/client/v4")
    assert s.api.public_url == s.api.cors_origin == "http://127.0.0.1:19083"
    assert s.storefront.url == "http://127.0.0.1:19083/#pricing"
    default = load_settings(SANDBOX_TOML, env={})
    assert (default.sandbox.vultr_port, default.api.listen_port) == (18080, 18083)
    # a key set explicitly stays as set (and the demo then reports the mismatch)
    explicit = load_settings(SANDBOX_TOML, env={"PROVISIONER_SANDBOX_PORT_BASE": "19080",
                                                "PROVISIONER_VULTR_BASE_URL": "http://127.0.0.1:18080/v2"})
    assert explicit.vultr.base_url == "http://127.0.0.1:18080/v2"
    with pytest.raises(ConfigError, match="sandbox.port_base: must be at most 65500"):
        load_settings(SANDBOX_TOML, env={"PROVISIONER_SANDBOX_PORT_BASE": "65530"})


def test_a_port_mismatch_is_a_configuration_error_before_anything_starts(demo_dir: Path) -> None:
    base = free_base()
    proc = run_demo(demo_dir, demo_env(base, PROVISIONER_VULTR_BASE_URL=f"http://127.0.0.1:{base + 10}/v2"))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"provisioner: error: vultr.base_url is http://127.0.0.1:{base + 10}/v2, but the demo serves it on "
        f"127.0.0.1:{base} (sandbox.vultr_port)"), proc.stderr
    assert proc.stdout == "" and not (demo_dir / "var" / "provisioner.db").exists()


def test_a_clash_with_another_demo_is_reported_before_any_banner(demo_dir: Path) -> None:
    base = free_base()
    with socket.socket() as taken:  # another demo's admin API
        taken.bind(("127.0.0.1", base + 2))
        taken.listen()
        proc = run_demo(demo_dir, demo_env(base))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"sandbox.admin_port: port {base + 2} on 127.0.0.1 is already in use" in lines[0]
    assert "PROVISIONER_SANDBOX_PORT_BASE=" in lines[0]
    assert proc.stdout == "" and not (demo_dir / "var" / "provisioner.db").exists()


# --- the calm terminal --------------------------------------------------------------------------

class Terminal:
    """The demo's standard output, read line by line in a thread."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    def wait_for(self, needle: str, timeout: float, count: int = 1) -> int:
        """The index of the ``count``-th line containing ``needle``."""
        with self._cond:
            ok = self._cond.wait_for(lambda: sum(needle in ln for ln in self.lines) >= count, timeout)
            assert ok, "\n".join(self.lines)
            return [i for i, ln in enumerate(self.lines) if needle in ln][count - 1]


@pytest.fixture
def running_demo(demo_dir: Path) -> Iterator[tuple[subprocess.Popen[str], Terminal, int]]:
    base = free_base()
    proc = subprocess.Popen([sys.executable, "-m", "provisioner", "--config", "sandbox.toml", "demo"], cwd=demo_dir,
                            env=demo_env(base, PROVISIONER_LIFECYCLE_SNAPSHOTS="false"), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # one terminal, as a person sees it
    try:
        yield proc, Terminal(proc), base
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.mark.slow
def test_the_demo_prints_one_line_per_event_and_a_link_that_works(
        running_demo: tuple[subprocess.Popen[str], Terminal, int], demo_dir: Path) -> None:
    proc, term, base = running_demo
    link_at = term.wait_for("/#token=", 60)
    # The link is printed once the API answers: it works the moment it is read
    link = term.lines[link_at].strip()
    assert link.startswith(f"http://127.0.0.1:{base + 3}/#token=")
    with urllib.request.urlopen(f"http://127.0.0.1:{base + 3}/healthz", timeout=5) as reply:  # noqa: S310
        assert reply.status == 200
    # Every server that reaches Running gets one line, then the link again
    term.wait_for("All 4 demo servers are Running", 120)
    again = term.wait_for("/#token=", 5, count=2)
    assert again > link_at
    running = [ln for ln in term.lines if FEED.match(ln) and " Running in ewr (" in ln]
    assert len(running) == 4 and any("alice@example.com" in ln for ln in running)
    # Nothing else: the banner, the feed, blank lines; no module's log line
    banner = term.lines[:term.wait_for("Ctrl-C stops everything.", 5) + 1]
    rest = term.lines[len(banner):]
    assert all(FEED.match(ln) or not ln.strip() or "demo servers are Running" in ln or "/#token=" in ln
               for ln in rest), "\n".join(rest)
    assert not any(re.search(r"\b(INFO|DEBUG|WARNING)\b", ln) for ln in term.lines), "\n".join(term.lines)
    assert len(term.lines) <= len(banner) + 12
    # The admin URL it prints answers with its endpoints
    (admin,) = [ln for ln in banner if "Sandbox admin" in ln]
    index = requests.get(admin.split(": ", 1)[1], timeout=5).json()
    assert {"GET /_sandbox/state", "POST /_sandbox/faults"} <= {f"{e['method']} {e['path']}"
                                                               for e in index["endpoints"]}
    # The children's logs are kept in the file the banner names
    assert "create.done ok" in (demo_dir / "var" / "demo.log").read_text()
    # Ctrl-C stops it cleanly
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 0


# --- the sandbox's admin index ------------------------------------------------------------------

def test_the_admin_index_lists_every_endpoint_and_documents_the_fault_json(sandbox: Sandbox) -> None:
    root = sandbox.admin_url.removesuffix("/_sandbox")
    index = requests.get(f"{root}/", timeout=5).json()
    assert requests.get(sandbox.admin_url, timeout=5).json() == index
    served = {r.key for r in sandbox.admin.router.routes} - {"GET /", "GET /_sandbox"}
    assert {f"{e['method']} {e['path']}" for e in index["endpoints"]} == served
    assert set(index["fault_document"]["fields"]) == {f.name for f in dataclasses.fields(FaultSpec)}
    assert set(FIELD_HELP) == {f.name for f in dataclasses.fields(FaultSpec)}
    assert set(index["host_fault"]["kinds"]) == set(FAULT_KINDS)
    # the example it documents is one the sandbox accepts
    example = index["fault_document"]["example"]
    assert requests.post(f"{sandbox.admin_url}/faults", data=json.dumps(example), timeout=5).status_code == 200


def test_the_workers_jobs_carry_their_own_names(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    from jobs.catalog import NAMES
    from jobs.worker import Worker

    worker = Worker(stack.app)
    worker.start()
    try:
        jobs = {j.id: (j.name, getattr(j.func, "__qualname__", "")) for j in worker.scheduler.get_jobs()}
        worker._job_failed(type("Event", (), {"job_id": "sweep", "exception": RuntimeError("down")})())
    finally:
        worker.stop.set()
        worker.shutdown()
    assert set(NAMES) <= set(jobs)
    for name in NAMES:
        qualname = jobs[name][1]
        assert jobs[name][0] == name and (qualname == name or qualname.endswith(".tick")), jobs[name]
    assert "job sweep failed: RuntimeError: down" in caplog.text


def test_the_feed_has_a_line_for_what_matters_and_none_for_steps_on_the_way() -> None:
    from types import SimpleNamespace as NS

    from provisioner.cli.demo import describe

    row = NS(id=3, server_name="g0003.vpn.example.test", current_location="ams", user_email="carol@example.com",
             subscription_id="3")

    def line(what: str, outcome: str = "ok", detail: str = "", actor: str = "worker:w1") -> str | None:
        return describe(NS(what=what, outcome=outcome, detail=detail, actor=actor), row)

    assert line("create.done") == "g0003  Running in ams (carol@example.com, subscription 3)"
    assert line("rebuild.done") == "g0003  rebuilt: Running in ams"
    assert line("operator.held", "info", "chargeback", "operator:alice") == \
        "g0003  taken down and held by operator alice: chargeback"
    assert line("operator.resumed", "info", "", "operator:alice") == "g0003  resumed by operator alice"
    assert line("create.install", "failed", "attempt 1: SSH refused; retrying in 2s") == \
        "g0003  create failed at install: attempt 1: SSH refused; retrying in 2s"
    for step in ("create.boot", "create.install", "rebuild.dns", "destroy.wipe"):
        assert line(step) is None and line(step, "started") is None
