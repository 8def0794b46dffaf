"""The systemd units verify, run our binary, and keep their hardening."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.services import require_or_skip

UNITS = sorted((Path(__file__).resolve().parents[1] / "systemd").glob("*.service"))


def test_there_are_units_for_the_worker_and_the_api() -> None:
    assert {u.name for u in UNITS} == {"provisioner-worker.service", "provisioner-api.service"}


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_it_verifies_with_systemd_analyze(unit: Path, tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        require_or_skip("systemd-analyze is not installed")
    binary = Path(sys.executable).parent / "provisioner"
    copy = tmp_path / unit.name
    copy.write_text(unit.read_text().replace("/opt/provisioner/bin/provisioner", str(binary)))
    proc = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert unit.name not in proc.stderr, proc.stderr


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_it_is_hardened_notify_with_a_watchdog_and_credentials(unit: Path) -> None:
    text = unit.read_text()
    for line in ("Type=notify", "Restart=on-failure", "NoNewPrivileges=yes", "ProtectSystem=strict",
                 "PrivateTmp=yes", "LoadCredential=fernet.keys:"):
        assert line in text, f"{unit.name} lacks {line}"
    assert "WatchdogSec=" in text
