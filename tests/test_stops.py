"""Clean stops: SIGINT/SIGTERM stop `demo`, `run`, `api` and `sandbox serve` within 5 s, every
time, at any moment (the timed waits let the signal handlers run), and leave nothing behind."""

from __future__ import annotations

import datetime as dt
import os
import random
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import httpx
import pytest

from tests.fixtures.config import dump_toml, write_config
from tests.fixtures.net import free_port
from tests.fixtures.stack import Stack, wait_until

pytestmark = pytest.mark.slow

STOP_SECONDS = 5.0


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONER_")}


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def _stop_within(proc: subprocess.Popen[bytes], sig: int, *, group: bool) -> float:
    """Send ``sig`` (to the whole process group, as a terminal's Ctrl-C does, when ``group``);
    the seconds until the process (and its group) is gone. Kills and fails past the limit."""
    started = time.monotonic()
    if group:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    try:
        proc.wait(STOP_SECONDS)
        if group:
            assert wait_until(lambda: _group_gone(proc.pid), max(0.0, STOP_SECONDS - (time.monotonic() - started)),
                              poll=0.05), "a child outlived its parent"
    finally:
        if proc.poll() is None or (group and not _group_gone(proc.pid)):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
            pytest.fail(f"not stopped within {STOP_SECONDS}s of {signal.Signals(sig).name}")
    return time.monotonic() - started


@pytest.fixture
def demo_config(tmp_path: Path) -> Path:
    """The demo's own configuration, on free ports (the sandbox, its mail catcher, SSH, the API) and a
    random loopback pool: a parallel worker's hosts may hold the SSH port on a shared pool's addresses."""
    api = free_port()
    pool = f"127.{random.randint(100, 250)}.{random.randint(0, 255)}.0/24"
    cfg = write_config(tmp_path, sandbox={"vultr_port": free_port(), "cloudflare_port": free_port(),
                                          "admin_port": free_port(), "smtp_port": free_port(),
                                          "ip_pool": pool},
                       ssh={"port": free_port()}, api={"listen_port": api, "public_url": f"http://127.0.0.1:{api}"})
    data = tomllib.loads(cfg.read_text())
    sb = data["sandbox"]
    data["vultr"]["base_url"] = f"http://127.0.0.1:{sb['vultr_port']}/v2"
    data["cloudflare"]["base_url"] = f"http://127.0.0.1:{sb['cloudflare_port']}/client/v4"
    data["notify"].update(smtp_host="127.0.0.1", smtp_port=sb["smtp_port"], smtp_security="none",
                          operator_email="operator@example.test")
    cfg.write_text(dump_toml(data))
    return cfg


def _lines_until(proc: subprocess.Popen[bytes], needle: bytes, timeout: float) -> bool:
    """Read the demo's output until ``needle`` (the output is a pipe the test owns)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    os.set_blocking(proc.stdout.fileno(), False)
    seen = b""
    while time.monotonic() < deadline:
        chunk = proc.stdout.read() or b""
        seen += chunk
        if needle in seen:
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


def test_the_demo_stops_on_ctrl_c_within_5s_eight_times(demo_config: Path) -> None:
    # Eight tries (two while starting, six at different moments once running): the hang this
    # guards against struck 3 tries in 11, so eight miss it with a chance of about 8 %; twenty
    # cost ~170 s of a suite that must stay under 15 minutes.
    worst = 0.0
    for attempt in range(8):
        proc = subprocess.Popen([sys.executable, "-m", "provisioner", "--config", str(demo_config), "demo"],
                                cwd=demo_config.parent, env=_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            if attempt % 4 == 3:
                time.sleep(0.3 + attempt / 40)           # Ctrl-C while it is still starting
            else:
                assert _lines_until(proc, b"Ctrl-C stops everything", 60), f"attempt {attempt}: no banner"
                time.sleep((attempt % 3) / 4)             # and at different moments once it runs
            worst = max(worst, _stop_within(proc, signal.SIGINT, group=True))
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
    assert worst <= STOP_SECONDS


def test_the_worker_stops_within_5s_even_with_a_step_blocked(stack: Stack) -> None:
    stack.hosts.set_fault("*", "command_hang", match="install")   # the install never answers
    stack.add_subscription(1, "ann@example.com")
    log = stack.tmp / "worker.log"
    worker = subprocess.Popen([sys.executable, "-m", "provisioner", "--config", str(stack.config_path), "run"],
                              env=_env(), stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=stack.tmp,
                              start_new_session=True)
    try:
        assert wait_until(lambda: b"create.install started" in log.read_bytes(), 60), log.read_text()[-2000:]
        _stop_within(worker, signal.SIGTERM, group=False)
        assert worker.returncode == 0, log.read_text()[-2000:]
        assert b"worker stopped" in log.read_bytes()
    finally:
        stack.hosts.clear_faults()
        if worker.poll() is None:
            worker.kill()


def _start_api(tmp: Path) -> tuple[subprocess.Popen[bytes], int, Path]:
    """`provisioner api` on a free port, answering; (the process, its port, its log)."""
    port = free_port()
    cfg = write_config(tmp, api={"listen_port": port, "public_url": f"http://127.0.0.1:{port}"})
    assert subprocess.run([sys.executable, "-m", "provisioner", "--config", str(cfg), "db", "upgrade"],
                          env=_env(), capture_output=True, timeout=60).returncode == 0
    log = tmp / "api.log"
    api = subprocess.Popen([sys.executable, "-m", "provisioner", "--config", str(cfg), "api"], env=_env(),
                           stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=tmp, start_new_session=True)
    if not wait_until(lambda: _answers(f"http://127.0.0.1:{port}/healthz"), 30):
        api.kill()
        pytest.fail(f"the API did not start: {log.read_text()[-2000:]}")
    return api, port, log


@pytest.mark.parametrize("sig", [signal.SIGTERM])       # SIGINT: in the demo's test (Ctrl-C reaches it too)
def test_the_api_stops_within_5s_with_a_client_connected(tmp_path: Path, sig: int) -> None:
    api, port, _ = _start_api(tmp_path)
    try:
        with httpx.Client() as keep_alive:       # an idle keep-alive connection must not hold the exit up
            keep_alive.get(f"http://127.0.0.1:{port}/healthz")
            _stop_within(api, sig, group=False)
    finally:
        if api.poll() is None:
            api.kill()


@pytest.mark.parametrize("sig", [signal.SIGTERM])       # SIGINT: in the demo's test (Ctrl-C reaches it too)
def test_the_sandbox_stops_within_5s(demo_config: Path, sig: int) -> None:
    log = demo_config.parent / "sandbox.log"
    sandbox = subprocess.Popen([sys.executable, "-m", "provisioner", "--config", str(demo_config), "sandbox",
                                "serve"], env=_env(), stdout=log.open("wb"), stderr=subprocess.STDOUT,
                               cwd=demo_config.parent, start_new_session=True)
    try:
        assert wait_until(lambda: b"sandbox mail" in log.read_bytes(), 30), log.read_text()
        _mail_and_list(demo_config)     # while it runs: its mail catcher keeps what the demo sends
        _stop_within(sandbox, sig, group=False)
    finally:
        if sandbox.poll() is None:
            sandbox.kill()


def _mail_and_list(cfg: Path) -> None:
    import json

    from provisioner.cloud.mail import SmtpConfig, SmtpMailer
    from provisioner.notify.outbox import Claimed, email_message

    port = tomllib.loads(cfg.read_text())["sandbox"]["smtp_port"]
    msg = Claimed(id=1, kind="needs_attention", channel="email", recipient="operator@example.test", language="en",
                  subject="[provisioner] g0001 needs attention", body="Server g0001 stopped.\n", payload={},
                  dedupe_key="k", attempts=1, created_at=dt.datetime.now(dt.UTC))
    SmtpMailer(SmtpConfig("127.0.0.1", port, security="none")).send(
        email_message(msg, "Provisioner <noreply@example.test>", dt.datetime.now(dt.UTC)))
    listed = subprocess.run([sys.executable, "-m", "provisioner", "--config", str(cfg), "sandbox", "mail", "--json"],
                            env=_env(), capture_output=True, text=True, timeout=60, cwd=cfg.parent)
    assert listed.returncode == 0, listed.stderr
    [caught] = json.loads(listed.stdout)
    assert caught["to"] == ["operator@example.test"] and caught["kind"] == "needs_attention"
    assert "g0001 needs attention" in caught["subject"] and "stopped" in caught["body"]


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_the_token_in_a_query_string_never_reaches_the_access_log(tmp_path: Path) -> None:
    api, port, log = _start_api(tmp_path)
    try:
        secret = "eyJhbGciOiJIUzI1NiJ9.c2VjcmV0LXRva2Vu.c2lnbmF0dXJl"
        httpx.get(f"http://127.0.0.1:{port}/api/servers?token={secret}", timeout=5)
        httpx.get(f"http://127.0.0.1:{port}/?{secret}", timeout=5)
        assert wait_until(lambda: b"/api/servers?" in log.read_bytes(), 10), log.read_text()
    finally:
        api.send_signal(signal.SIGTERM)
        api.wait(10)
    text = log.read_text()
    assert secret not in text and "c2VjcmV0LXRva2Vu" not in text
    assert '"GET /api/servers?… HTTP/1.1" 401' in text
