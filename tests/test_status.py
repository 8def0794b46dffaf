"""`provisioner status` tells operators whether the automation itself is healthy."""

from __future__ import annotations

import json
import subprocess
import sys

from jobs.server_check import server_check
from provisioner import operations
from tests.fixtures.stack import Stack


def status(stack: Stack) -> tuple[int, dict]:
    proc = subprocess.run([sys.executable, "-m", "provisioner", "--config", str(stack.config_path), "status",
                           "--json"], capture_output=True, text=True, timeout=60, cwd=stack.tmp)
    return proc.returncode, json.loads(proc.stdout)


def test_it_is_unhealthy_before_the_worker_ever_ticked(stack: Stack) -> None:
    code, report = status(stack)
    assert code == 1 and not report["healthy"]
    assert any("has not ticked" in p for p in report["problems"])


def test_it_is_healthy_after_a_good_tick_and_reports_work(stack: Stack) -> None:
    stack.add_subscription(1, "ann@example.com")
    lc = stack.lifecycle()
    server_check(stack.app, lc)
    operations.drive_until_idle(lc, timeout=60)
    code, report = status(stack)
    assert code == 0, report
    assert report["facts"]["work queued"] == 0
    assert report["facts"]["servers needing a human"] == "none"


def test_it_names_servers_that_need_a_human(stack: Stack) -> None:
    stack.add_subscription(1, "ann@example.com", product_id=99)  # not configured → held, not built
    stack.add_subscription(2, "bob@example.com")
    lc = stack.lifecycle()
    stack.sandbox.set_faults({"faults": {"POST /v2/instances": {"error_first": 1, "error_status": 400}}})
    server_check(stack.app, lc)
    operations.drive_until_idle(lc, timeout=30)
    code, report = status(stack)
    assert code == 1
    assert report["facts"]["servers needing a human"] == "g0001.vpn.example.test"
