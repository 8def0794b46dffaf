"""`provisioner job NAME` (for cron): every job exits 0 after success with a one-line
summary, and its run is recorded for `provisioner status` like the worker's own runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from jobs.catalog import NAMES
from provisioner.models import WorkerStatus
from tests.fixtures.stack import Stack


def test_every_job_run_once_exits_0_with_one_line_and_is_recorded(stack: Stack) -> None:
    stack.create_server(1, "ann@example.com")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONER_")}
    for name in NAMES:
        proc = subprocess.run([sys.executable, "-m", "provisioner", "--config", str(stack.config_path), "job", name],
                              env=env, capture_output=True, text=True, timeout=120, cwd=stack.tmp)
        assert proc.returncode == 0, (name, proc.stdout, proc.stderr[-2000:])
        assert proc.stdout.count("\n") == 1 and proc.stdout.startswith(f"{name}: "), (name, proc.stdout)
        assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, (name, proc.stderr)
        with stack.app.sessions() as s:
            row = s.get(WorkerStatus, f"job:{name}")
            assert row is not None, name
            record = json.loads(row.value)
        assert record["ok"] is True and record["result"] == proc.stdout.strip(), (name, record)
