"""The worker's Prometheus metrics: the real `provisioner run`, scraped while it builds a server
and while Vultr fails."""

from __future__ import annotations

import re
import signal
import tomllib
import urllib.request

import pytest

from tests.fixtures.config import dump_toml
from tests.fixtures.net import free_port
from tests.fixtures.stack import Stack, start_worker, wait_until


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:  # noqa: S310 - loopback
        text = reply.read().decode()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        m = re.fullmatch(r"([a-z_]+(?:\{[^}]*\})?) (\S+)", line)
        if m and not line.startswith("#"):
            samples[m.group(1)] = float(m.group(2))
    return samples


def _config(stack: Stack, port: int) -> None:
    data = tomllib.loads(stack.config_path.read_text())
    data["worker"].update({"tick_seconds": 1.0, "metrics_port": port, "metrics_listen": "127.0.0.1"})
    stack.config_path.write_text(dump_toml(data))


@pytest.mark.slow
def test_it_counts_ticks_steps_provider_calls_and_the_fleet(stack: Stack) -> None:
    port = free_port()
    _config(stack, port)
    stack.add_subscription(1, "ann@example.com")
    log = stack.tmp / "worker.log"
    worker = start_worker(stack.config_path, log)
    try:
        # When the worker has built the subscription's server
        def running() -> bool:
            try:
                return scrape(port).get('provisioner_servers{action="",status="Running"}', 0) == 1
            except OSError:
                return False
        assert wait_until(running, 60), log.read_text()
        m = scrape(port)
        # Then its metrics tell how: one install, provider calls that went through, passes, leadership
        assert m['provisioner_worker_steps_total{action="create",outcome="ok",step="install"}'] == 1
        assert m['provisioner_worker_step_duration_seconds_count{action="create",step="install"}'] >= 1
        assert m['provisioner_provider_calls_total{outcome="ok",provider="vultr"}'] >= 2
        assert m['provisioner_provider_calls_total{outcome="ok",provider="cloudflare"}'] >= 1
        assert m['provisioner_provider_calls_total{outcome="ok",provider="ssh"}'] >= 1
        assert m['provisioner_worker_ticks_total{outcome="ok"}'] >= 1
        assert m["provisioner_worker_leader"] == 1
        assert m["provisioner_servers_needing_human"] == 0

        # When Vultr answers 503 to everything for a while, and a second server is wanted
        stack.sandbox.set_faults({"faults": {"*": {"error_rate": 1.0, "error_status": 503}}})
        stack.add_subscription(2, "bob@example.com")
        assert wait_until(lambda: scrape(port).get('provisioner_provider_calls_total{outcome="failed",'
                                                   'provider="vultr"}', 0) >= 1, 60), log.read_text()
        # Then the failures are counted as failures (worth retrying), and the step as a retry (the
        # step's outcome is counted when the step returns, a moment after its failed call)
        def retried() -> bool:
            return any(k.startswith("provisioner_worker_steps_total{") and 'outcome="retry"' in k and v >= 1
                       for k, v in scrape(port).items())
        assert wait_until(retried, 30), [k for k in scrape(port) if "steps_total" in k]
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)


def test_a_metrics_port_in_use_stops_the_worker_with_one_line(stack: Stack) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        _config(stack, taken.getsockname()[1])
        log = stack.tmp / "worker.log"
        worker = start_worker(stack.config_path, log)
        assert worker.wait(30) == 2
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    assert lines[-1].startswith("provisioner: error: worker.metrics_port: cannot listen on 127.0.0.1:"), lines


def test_a_worker_stopped_and_started_again_in_one_process_gets_its_metrics_port_back(stack: Stack) -> None:
    # The systemd restart case in one process: a stopped worker must let go of the port it served on
    from jobs.worker import Worker
    from provisioner import wiring
    from provisioner.settings import load_settings

    port = free_port()
    _config(stack, port)
    app = wiring.App(load_settings(stack.config_path, env={}))
    for _ in range(2):
        worker = Worker(app, wiring.lifecycle(app, owner="test"))
        worker.start()
        try:
            assert "provisioner_worker_leader" in scrape(port)
        finally:
            worker.shutdown()
