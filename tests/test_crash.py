"""Crash safety: a real worker process is SIGKILLed right after a step's side effect and
before its result is recorded; a restarted worker converges to exactly one instance, one
DNS record, and nothing leaked."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from provisioner.models import Server
from tests.fixtures.stack import Stack

CREATE_POINTS = ["create.prepare", "create.instance:posted", "create.instance", "create.boot", "create.install",
                 "create.dns", "create.snapshot", "create.finish"]
REBUILD_POINTS = ["rebuild.instance:posted", "rebuild.instance", "rebuild.boot", "rebuild.install", "rebuild.dns",
                  "rebuild.carry", "rebuild.retire", "rebuild.finish"]
DESTROY_POINTS = ["destroy.instances", "destroy.dns", "destroy.snapshot", "destroy.wipe"]

pytestmark = pytest.mark.slow


def cli(stack: Stack, *args: str, crash_at: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONER_")}
    if crash_at:
        env["PROVISIONER_CRASH_AT"] = crash_at
    return subprocess.run([sys.executable, "-m", "provisioner", "--config", str(stack.config_path), *args],
                          env=env, capture_output=True, text=True, timeout=120, cwd=stack.tmp)


def row(stack: Stack) -> Server:
    with stack.app.sessions() as s:
        found = s.query(Server).one()
        return found


def ours(stack: Stack) -> tuple[list[dict], list[dict], list[dict]]:
    st = stack.state()
    return ([i for i in st["instances"] if "provisioner" in i["tags"]], st["records"],
            [s for s in st["snapshots"] if s["description"].startswith("prov-")])


def assert_killed(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == -signal.SIGKILL, f"expected a SIGKILL, got {proc.returncode}: {proc.stderr[-2000:]}"


def resume(stack: Stack) -> None:
    proc = cli(stack, "check", "--apply", "--wait", "60")
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.parametrize("point", CREATE_POINTS)
def test_it_converges_after_a_crash_during_create(stack: Stack, point: str) -> None:
    stack.add_subscription(1, "ann@example.com")
    assert_killed(cli(stack, "create", "1", "--wait", "60", crash_at=point))
    resume(stack)
    server = row(stack)
    assert server.status == "Running", server.last_error
    instances, records, snapshots = ours(stack)
    assert [i["id"] for i in instances] == [server.instance_id]
    assert [(r["name"], r["content"]) for r in records] == [(server.server_name, server.server_ip)]
    assert [s["id"] for s in snapshots] == [server.snapshot_id]


@pytest.mark.parametrize("point", REBUILD_POINTS)
def test_it_converges_after_a_crash_during_rebuild(stack: Stack, point: str) -> None:
    stack.create_server()
    before = row(stack)
    ovpn = stack.app.secret_box.open(before.ovpn_file_enc or "")
    assert_killed(cli(stack, "rebuild", before.server_name or "", "--location", "fra", "--wait", "60",
                      crash_at=point))
    resume(stack)
    after = row(stack)
    assert (after.status, after.current_location, after.generation) == ("Running", "fra", 1), after.last_error
    instances, records, _ = ours(stack)
    assert [(i["id"], i["region"]) for i in instances] == [(after.instance_id, "fra")]
    assert [(r["name"], r["content"]) for r in records] == [(after.server_name, after.server_ip)]
    assert stack.app.secret_box.open(after.ovpn_file_enc or "") == ovpn


@pytest.mark.parametrize("point", DESTROY_POINTS)
def test_it_converges_after_a_crash_during_destroy(stack: Stack, point: str) -> None:
    stack.create_server()
    stack.set_subscription(1, status="expired", days=-1)
    assert_killed(cli(stack, "destroy", row(stack).server_name or "", "--wait", "60", crash_at=point))
    resume(stack)
    assert row(stack).status == "Destroyed"
    assert ours(stack) == ([], [], [])
