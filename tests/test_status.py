"""`provisioner status` tells operators whether the automation itself is healthy."""

from __future__ import annotations

import json
import subprocess
import sys

from jobs.driver import drive_until_idle
from jobs.server_check import server_check
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
    drive_until_idle(lc, timeout=60)
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
    drive_until_idle(lc, timeout=30)
    code, report = status(stack)
    assert code == 1
    assert report["facts"]["servers needing a human"] == "g0001.vpn.example.test"


def _failing(stack: Stack) -> dict[str, str]:
    from provisioner.cli.health import health

    return {c["name"]: c["detail"] for c in health(stack.app)["checks"] if not c["ok"]}


def _healthy_tick(stack: Stack) -> None:
    lc = stack.lifecycle()
    server_check(stack.app, lc)
    drive_until_idle(lc, timeout=60)


def test_it_names_a_job_whose_last_run_is_older_than_twice_its_period(stack: Stack) -> None:
    import datetime as dt

    from jobs import records

    _healthy_tick(stack)
    now = dt.datetime.now(dt.UTC)
    for name in ("sync_bandwidth", "send_outbox", "expire_identities"):
        records.record_status(stack.app, f"job:{name}", {"at": now.isoformat(), "ok": True, "result": "fine"})
    records.record_status(stack.app, "job:sweep", {"at": (now - dt.timedelta(minutes=61)).isoformat(), "ok": True,
                                                   "result": "sweep: fine"})
    assert "sweep last ran" in _failing(stack).get("jobs", "")          # every 30 min: 61 min is too old
    records.record_status(stack.app, "job:sweep", {"at": now.isoformat(), "ok": True, "result": "sweep: fine"})
    assert "jobs" not in _failing(stack)


def test_it_names_messages_stuck_in_the_outbox_and_failed_ones(stack: Stack) -> None:
    import datetime as dt

    from provisioner.models import OutboxMessage

    _healthy_tick(stack)
    old = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=31)           # notify.max_delay_minutes = 30
    with stack.app.sessions() as s:
        msg = OutboxMessage(kind="server_ready", channel="email", recipient="a@example.com", dedupe_key="k1",
                            status="pending", created_at=old, next_attempt_at=old)
        s.add(msg)
        s.commit()
        assert "waiting, the oldest since" in _failing(stack)["outbox"]
        msg.status = "failed"
        s.commit()
        assert "failed for good" in _failing(stack)["outbox"]
        msg.status = "sent"
        s.commit()
    assert "outbox" not in _failing(stack)


def test_an_action_retried_for_hours_looks_its_age_whatever_the_heartbeats(stack: Stack) -> None:
    import datetime as dt

    from provisioner.models import Server

    _healthy_tick(stack)
    now = dt.datetime.now(dt.UTC)
    with stack.app.sessions() as s:
        s.add(Server(subscription_id="9", customer_id="9", product_id="1", user_email="a@example.com",
                     status="Error", action="create", step="boot", action_started_at=now - dt.timedelta(hours=3),
                     step_deadline=now + dt.timedelta(minutes=5), lease_until=now, updated_at=now))
        s.commit()
    assert "unfinished since" in _failing(stack)["action_deadlines"]


def test_status_json_stays_machine_readable_when_the_database_is_unreachable(tmp_path) -> None:
    from tests.fixtures.config import write_config

    cfg = write_config(tmp_path, database={"url": "mysql+pymysql://prov:pw@127.0.0.1:1/prov"})
    proc = subprocess.run([sys.executable, "-m", "provisioner", "--config", str(cfg), "status", "--json"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    checks = {c["name"]: c for c in report["checks"]}
    assert not checks["database"]["ok"] and "does not take writes" in checks["database"]["detail"]
    assert "pw@" not in proc.stdout
