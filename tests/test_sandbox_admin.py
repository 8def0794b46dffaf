"""The sandbox's admin API and its lifecycle: state, call log, faults, reset, loopback only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import requests

from provisioner.sandbox.app import Sandbox
from provisioner.sandbox.config import SandboxConfig
from provisioner.sandbox.faults import FaultInjector
from tests.fixtures.sandbox import DEBIAN_12, make_vultr


def test_it_shows_state_and_calls_without_user_data(sandbox: Sandbox) -> None:
    make_vultr(sandbox).create_instance("seen", region="ewr", plan="vc2-1c-1gb", user_data="secret: yes",
                                        os_id=DEBIAN_12)
    state = requests.get(f"{sandbox.admin_url}/state", timeout=5).json()
    (inst,) = state["instances"]
    assert inst["label"] == "seen" and inst["sandbox"]["user_data_bytes"] == len("secret: yes")
    assert "secret" not in str(state)
    log = requests.get(f"{sandbox.admin_url}/calls", params={"service": "vultr"}, timeout=5).json()["calls"]
    assert [(c["method"], c["path"], c["status"], c["label"]) for c in log] == [
        ("POST", "/v2/instances", 202, "seen")]
    assert log[0]["instance_id"] == inst["id"]
    # the newest call's number, with none of the log when asked for what came after it
    newest = requests.get(f"{sandbox.admin_url}/calls", params={"since": 10**9}, timeout=5).json()
    assert newest == {"calls": [], "last_seq": log[-1]["seq"]}


def test_it_sets_changes_and_clears_faults_while_running(sandbox: Sandbox) -> None:
    url = f"{sandbox.admin_url}/faults"
    doc: dict[str, Any] = {"seed": 1, "faults": {"GET /v2/regions": {"error_first": 2, "error_status": 502}}}
    assert requests.post(url, json=doc, timeout=5).status_code == 200
    headers = {"Authorization": "Bearer sandbox-vultr-token"}
    statuses = [requests.get(f"{sandbox.vultr_url}/regions", headers=headers, timeout=5).status_code
                for _ in range(3)]
    assert statuses == [502, 502, 200]
    assert requests.get(url, timeout=5).json()["faults"]["GET /v2/regions"]["error_first"] == 0
    assert requests.delete(url, timeout=5).json() == {"faults": {}}


def test_it_rejects_a_malformed_fault_document_whole(sandbox: Sandbox) -> None:
    url = f"{sandbox.admin_url}/faults"
    bad = {"faults": {"GET /v2/os": {"error_rate": 0.5}, "*": {"eror_rate": 0.5}}}
    reply = requests.post(url, json=bad, timeout=5)
    assert reply.status_code == 400 and "eror_rate" in reply.json()["error"]
    assert requests.get(url, timeout=5).json() == {"faults": {}}


def test_it_resets_to_an_empty_cloud(sandbox: Sandbox) -> None:
    make_vultr(sandbox).create_instance("tmp", region="ewr", plan="vc2-1c-1gb", user_data="", os_id=DEBIAN_12)
    assert requests.post(f"{sandbox.admin_url}/reset", timeout=5).json() == {"ok": True}
    assert requests.get(f"{sandbox.admin_url}/state", timeout=5).json()["instances"] == []
    assert sandbox.calls() == []


def test_it_refuses_to_bind_anything_but_loopback() -> None:
    with pytest.raises(ValueError, match="loopback"):
        SandboxConfig(host="0.0.0.0")
    with pytest.raises(ValueError, match="loopback"):
        SandboxConfig(ip_pool="10.0.0.0/16")


def test_its_command_line_refuses_a_bad_limit_with_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    from provisioner.sandbox.app import main

    assert main(["--cloudflare-limit", "-1"]) == 2
    assert main(["--tick-seconds", "0"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["sandbox: cloudflare_limit must be >= 0, cloudflare_window_seconds > 0 and call_log_limit >= 1",
                   "sandbox: boot_seconds/snapshot_seconds must be >= 0 and tick_seconds > 0"]


def test_it_draws_the_same_faults_from_the_same_seed() -> None:
    def draws(seed: int) -> list[str]:
        injector = FaultInjector()
        injector.configure({"seed": seed, "faults": {"*": {"error_rate": 0.3, "timeout_rate": 0.2}}})
        return [injector.decide("GET /x").kind for _ in range(50)]

    assert draws(5) == draws(5)
    assert draws(5) != draws(6)
    assert {"none", "error", "timeout"} == set(draws(5))


def test_its_command_line_refuses_a_bad_fault_document_with_one_clear_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from provisioner.sandbox.app import main

    not_utf8 = tmp_path / "faults.json"
    not_utf8.write_bytes(b"\xff\xfe")
    for given in ("{bad", '{"vultr.create": {"kind": "nope"}}', str(tmp_path / "missing.json"), str(not_utf8),
                  '{"faults": {"vultr.create": {"kind": "no-such-fault"}}}'):
        assert main(["--faults", given]) == 2, given
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 5 and all(line.startswith("sandbox: --faults: ") for line in err), err
    assert "not JSON" in err[0] and "unknown top-level key 'vultr.create'" in err[1] and "cannot read" in err[2]
