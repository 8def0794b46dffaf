"""`provisioner status` tells the truth about a running worker: each fault, injected while the
real `provisioner run` works, makes `status` exit 1 naming it, and 0 again once cleared.

One worker (SQLite, ticking every second), the sandbox clouds, a real SMTP server and an
operator address serve the whole module; each test injects one fault and clears it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text

from provisioner import db
from provisioner.models import Server
from provisioner.sandbox.app import Sandbox
from provisioner.storefront import eddschema
from provisioner.wiring import App
from tests.fixtures.readonly import database_refusing_writes
from tests.fixtures.smtp import Inbox, smtp_server
from tests.fixtures.stack import open_stack, start_worker, wait_until

# one worker under -n: the module's tests share one running stack and worker (`running`), set up once
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("status_faults")]

FAULT_SECONDS = 90          # how long a fault may take to show, or to clear (a job runs every minute)


@dataclass
class Running:
    tmp: Path
    config: Path
    app: App
    sandbox: Sandbox
    inbox: Inbox
    worker: subprocess.Popen[bytes]
    log: Path
    subs: int = 0

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONER_")}
        return subprocess.run([sys.executable, "-m", "provisioner", "--config", str(self.config), *args], env=env,
                              capture_output=True, text=True, timeout=60, cwd=self.tmp)

    def status(self) -> tuple[int, dict[str, Any]]:
        out = self.cli("status", "--json")
        return out.returncode, json.loads(out.stdout)

    def failing(self) -> set[str]:
        code, report = self.status()
        names = {c["name"] for c in report["checks"] if not c["ok"]}
        assert (code == 1) == bool(names), report
        return names

    def subscribe(self, email: str | None = None, **kw: Any) -> int:
        self.subs += 1
        eng = db.make_engine(self.app.settings.storefront.edd_url)
        expiration = dt.datetime.now(dt.UTC).replace(tzinfo=None) + dt.timedelta(days=kw.pop("days", 30))
        with eng.begin() as conn:
            eddschema.insert_customer(conn, "wp_", customer_id=self.subs, email=email or f"c{self.subs}@example.com")
            eddschema.insert_subscription(conn, "wp_", subscription_id=self.subs, customer_id=self.subs, product_id=1,
                                          status=kw.pop("status", "active"), expiration=expiration)
        eng.dispose()
        return self.subs

    def edd(self, sql: str, **params: Any) -> None:
        eng = db.make_engine(self.app.settings.storefront.edd_url)
        with eng.begin() as conn:
            conn.execute(text(sql), params)
        eng.dispose()

    def statuses(self) -> dict[str, str]:
        with self.app.sessions() as s:
            return {r.subscription_id: r.status for r in s.scalars(select(Server))}

    def settle(self) -> None:
        """Every server Running or Destroyed, and status healthy."""
        assert wait_until(lambda: set(self.statuses().values()) <= {"Running", "Destroyed"}, FAULT_SECONDS), \
            self.statuses()
        assert wait_until(lambda: not self.failing(), FAULT_SECONDS), self.status()


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    tmp = tmp_path_factory.mktemp("status-faults")
    with smtp_server() as (inbox, smtp_port), open_stack(
            tmp, lifecycle={"max_attempts": 100, "backoff_base_seconds": 1, "backoff_cap_seconds": 2,
                            "lease_seconds": 5, "install_deadline_minutes": 0.05, "api_deadline_minutes": 0.2},
            notify={"smtp_host": "127.0.0.1", "smtp_port": smtp_port, "smtp_security": "none",
                    "operator_email": "ops@example.com", "max_delay_minutes": 5},
            planner={"destroy_grace_hours": 0, "max_destroy_count": 1, "max_destroy_fraction": 1.0},
            worker={"tick_seconds": 1.0, "threads": 4, "sweep_minutes": 1, "bandwidth_sync_minutes": 1,
                    "shutdown_grace_seconds": 1}) as stack:
        log = tmp / "worker.log"
        worker = start_worker(stack.config_path, log)
        env = Running(tmp, stack.config_path, stack.app, stack.sandbox, inbox, worker, log)
        try:
            env.subscribe()
            env.subscribe()
            env.settle()
            yield env
        finally:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
                worker.wait(15)


def _shows(running: Running, check: str) -> None:
    assert wait_until(lambda: check in running.failing(), FAULT_SECONDS), (running.status(),
                                                                          running.log.read_text()[-3000:])


def test_a_provider_outage(running: Running) -> None:
    running.sandbox.set_faults({"faults": {"* /v2/*": {"error_rate": 1.0, "error_status": 503}}})
    try:
        for _ in range(3):                       # work that needs Vultr, in parallel
            running.subscribe()
        _shows(running, "providers")
        assert "vultr" in next(c["detail"] for c in running.status()[1]["checks"] if c["name"] == "providers")
    finally:
        running.sandbox.clear_faults()
    for job in ("sweep", "sync_bandwidth"):      # a job that ran into the outage need not wait its next turn
        assert running.cli("job", job).returncode == 0
    running.settle()


def test_a_failed_job_run_from_cron(running: Running) -> None:
    # Vultr refuses to list snapshots: the sweep cannot see everything, so it changes nothing and fails
    running.sandbox.set_faults({"faults": {"GET /v2/snapshots": {"error_rate": 1.0, "error_status": 400}}})
    try:
        out = running.cli("job", "sweep")        # as cron would: recorded too
        assert out.returncode == 1 and "incomplete" in out.stdout, out.stdout + out.stderr
        _shows(running, "jobs")
        assert "sweep failed" in next(c["detail"] for c in running.status()[1]["checks"] if c["name"] == "jobs")
    finally:
        running.sandbox.clear_faults()
    assert running.cli("job", "sweep").returncode == 0
    running.settle()


def test_a_failed_message_in_the_outbox(running: Running) -> None:
    running.inbox.rcpt_reply = "550 5.1.1 no such user"
    try:
        running.subscribe("nobody@example.com")
        assert wait_until(lambda: "Running" in running.statuses().get(str(running.subs), ""), FAULT_SECONDS)
        running.cli("job", "send_outbox")
        _shows(running, "outbox")
    finally:
        running.inbox.rcpt_reply = None
    assert running.cli("outbox", "retry", "--all-failed").returncode == 0
    assert running.cli("job", "send_outbox").returncode == 0
    running.settle()


def test_the_breaker_holding_destroys(running: Running) -> None:
    a, b = running.subscribe(), running.subscribe()
    running.settle()
    running.edd("UPDATE wp_edd_subscriptions SET status = 'expired', expiration = '2020-01-01 00:00:00' "
                "WHERE id IN (:a, :b)", a=a, b=b)
    _shows(running, "destroy_breaker")          # one goes, the other waits for the window (or an operator)
    assert running.cli("destroys", "approve", "--all").returncode == 0
    assert wait_until(lambda: running.statuses()[str(a)] == running.statuses()[str(b)] == "Destroyed",
                      FAULT_SECONDS), running.statuses()
    running.settle()


def test_the_storefront_cannot_be_read(running: Running) -> None:
    running.edd("ALTER TABLE wp_edd_subscriptions RENAME TO wp_edd_subscriptions_away")
    try:
        _shows(running, "storefront_read")
    finally:
        running.edd("ALTER TABLE wp_edd_subscriptions_away RENAME TO wp_edd_subscriptions")
    running.settle()


def test_an_emptied_customers_table(running: Running) -> None:
    running.edd("CREATE TABLE customers_saved AS SELECT * FROM wp_edd_customers")
    running.edd("DELETE FROM wp_edd_customers")
    try:
        _shows(running, "storefront_plausible")
    finally:
        running.edd("INSERT INTO wp_edd_customers SELECT * FROM customers_saved")
        running.edd("DROP TABLE customers_saved")
    running.settle()


def test_a_server_that_needs_a_human(running: Running) -> None:
    running.sandbox.set_faults({"faults": {"POST /v2/instances": {"error_first": 1, "error_status": 400}}})
    n = running.subscribe()
    _shows(running, "needs_human")
    with running.app.sessions() as s:
        name = s.scalars(select(Server.id).where(Server.subscription_id == str(n))).one()
    assert running.cli("retry", f"#{name}").returncode == 0
    running.settle()


def test_an_action_past_its_deadline(running: Running) -> None:
    running.sandbox.hosts.set_fault("*", "slow_install", seconds=12, count=1)
    try:
        running.subscribe()
        _shows(running, "action_deadlines")
    finally:
        running.sandbox.hosts.clear_faults()
    running.settle()


def test_a_read_only_database(running: Running) -> None:
    with database_refusing_writes(running.tmp / "provisioner.db"):
        _shows(running, "database")
    running.settle()
    assert running.worker.poll() is None, "the worker recovered rather than died"
