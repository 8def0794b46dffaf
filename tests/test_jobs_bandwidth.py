"""Bandwidth: counters from the sandbox's Vultr (per UTC day, only while running), carried bytes,
the UTC month boundary, 80 %/100 % alerts once a month, the cap policies, the monthly reset.

Most tests drive the simulated Vultr with a fake clock (traffic is exactly
``bandwidth_in/out_per_second`` while an instance runs); the last one runs the whole
product (create, rebuild, suspend, reset) on a clock that can jump to the month's end.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select
from sqlalchemy.orm import Session, sessionmaker

from jobs.bandwidth import (
    BandwidthReport,
    SyncPace,
    reset_bandwidth_monthly,
    rows_to_sync,
    sync_bandwidth,
    sync_bandwidth_paced,
)
from jobs.driver import drive_until_idle
from provisioner import db, notify
from provisioner.bandwidth import month_of, month_total, usage_days
from provisioner.cloud.vultr import VultrCloud
from provisioner.models import BandwidthDay, OutboxMessage, Server, ServerEvent
from provisioner.sandbox.app import Sandbox
from provisioner.settings import load_settings
from provisioner.settings.schema import Product
from provisioner.storefront import eddschema
from provisioner.wiring import App
from tests.fixtures.sandbox import DEBIAN_12, FakeClock, calls, make_vultr, sandbox_config
from tests.fixtures.stack import Stack, build_stack, point_at

UTC = dt.UTC
MB = 1_000_000
START = dt.datetime(2026, 11, 30, 20, 0, tzinfo=UTC)   # four hours before the UTC month turns


def product(policy: str = "notify") -> dict[str, Product]:
    return {"1": Product(id="1", name="The VPS VPN", plan="vc2-1c-1gb", os="Debian 12 x64 (bookworm)",
                         regions=("ewr", "ams"), default_region="ewr", bandwidth_cap_gb=1, cap_policy=policy)}


@dataclass
class Recorder:
    """The notification hook: remembers every call."""

    calls: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)

    def __call__(self, session: Session, server: Server, kind: str, context: dict[str, Any]) -> None:
        assert session.is_active
        self.calls.append((server.id, kind, context))

    @property
    def kinds(self) -> list[str]:
        return [k for _, k, _ in self.calls]


class World:
    """The simulated Vultr on a fake clock, our database, and helpers to run the jobs at the clock's time."""

    def __init__(self, sb: Sandbox, clock: FakeClock, sessions: sessionmaker[Session]) -> None:
        self.sb, self.clock, self.sessions = sb, clock, sessions
        self.vultr: VultrCloud = make_vultr(sb)
        self.rate = sb.config.bandwidth_in_per_second + sb.config.bandwidth_out_per_second
        self.notified = Recorder()

    @property
    def now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.clock(), UTC)

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def advance_to(self, when: dt.datetime) -> None:
        self.clock.advance(when.timestamp() - self.clock())

    def server(self, *, limit: int = 0, status: str = "Running", **fields: Any) -> int:
        with self.sessions() as s:
            n = len(list(s.scalars(select(Server.id)))) + 1
            inst = self.vultr.create_instance(f"prov-{n}-g0", region="ewr", plan="vc2-1c-1gb", user_data="#!/bin/sh\n",
                                              tags=["provisioner"], os_id=DEBIAN_12)
            row = Server(customer_id=str(n), product_id="1", subscription_id=str(n), user_email=f"c{n}@example.com",
                         server_name=f"g0{n:03d}.vpn.example.test", status=status, instance_id=inst.id,
                         bandwidth_limit_this_month=limit, **fields)
            s.add(row)
            s.commit()
            rid = row.id
        self.advance(self.sb.config.boot_seconds)   # booted: counting starts now
        return rid

    def sync(self, policy: str = "notify") -> BandwidthReport:
        with self.sessions() as s:
            report = sync_bandwidth(s, self.vultr, self.now, product(policy), on_event=self.notified)
            s.commit()
        return report

    def reset(self) -> BandwidthReport:
        with self.sessions() as s:
            report = reset_bandwidth_monthly(s, self.vultr, self.now, on_event=self.notified)
            s.commit()
        return report

    def row(self, rid: int) -> Server:
        with self.sessions() as s:
            found = s.get(Server, rid)
            assert found is not None
            return found

    def events(self, rid: int) -> list[tuple[str, str]]:
        with self.sessions() as s:
            q = select(ServerEvent).where(ServerEvent.server_id == rid).order_by(ServerEvent.id)
            return [(e.what, e.outcome) for e in s.scalars(q)]

    def power(self, rid: int) -> str:
        iid = self.row(rid).instance_id
        return next(i["power_status"] for i in self.sb.describe()["instances"] if i["id"] == iid)

    def instance_total(self, rid: int) -> int:
        return month_total(self.vultr.bandwidth(self.row(rid).instance_id or ""), month_of(self.now))


@pytest.fixture
def world(tmp_path: Path, sqlite_url: str) -> Iterator[World]:
    clock = FakeClock(START.timestamp())
    engine = db.make_engine(sqlite_url)
    db.upgrade(engine)
    with Sandbox(sandbox_config(tmp_path), clock=clock) as sb:
        yield World(sb, clock, db.session_factory(engine))
    engine.dispose()


# --- counting ---------------------------------------------------------------------------------------

def test_it_attributes_each_utc_day_to_its_utc_month() -> None:
    days = {dt.date(2026, 11, 30): (1, 2), dt.date(2026, 12, 1): (30, 40), dt.date(2026, 12, 2): (500, 600)}
    assert month_total(days, "2026-12") == 1170
    assert month_total(days, "2026-11") == 3
    # 20:00 New York on Nov 30 is already December in UTC, and that is the counter's month
    assert month_of(dt.datetime(2026, 12, 1, 1, 0, tzinfo=UTC)) == "2026-12"


def test_it_counts_carried_bytes_plus_the_current_instance(world: World) -> None:
    # Given a server whose earlier instance this month used 5 MB, and 1,000 s of traffic on the current one
    rid = world.server(bandwidth_month="2026-11", bandwidth_carried=5 * MB, bandwidth_this_month=5 * MB)
    world.advance(1000)
    # When the counters are synced
    report = world.sync()
    # Then the month's total is both added up
    row = world.row(rid)
    assert world.instance_total(rid) == 1000 * world.rate
    assert row.bandwidth_this_month == 5 * MB + 1000 * world.rate
    assert row.bandwidth_synced_at == world.now
    assert (report.checked, report.updated, report.failed) == (1, 1, 0)


def test_it_keeps_each_days_bytes_for_the_usage_chart_without_counting_a_day_twice(world: World) -> None:
    rid = world.server()
    world.advance(1200)                                  # 20 min synced on Nov 30, then 10 min on Dec 1
    world.sync()
    world.advance_to(dt.datetime(2026, 12, 1, 0, 10, tzinfo=UTC))
    world.sync()
    world.sync()                                         # again: the same numbers, replaced, not added
    with world.sessions() as s:
        november, december = usage_days(s, rid, "2026-11"), usage_days(s, rid, "2026-12")
        rows = list(s.scalars(select(BandwidthDay).where(BandwidthDay.server_id == rid)))
    assert november == {dt.date(2026, 11, 30): 1200 * world.rate}     # as the November sync saw it
    assert december == {dt.date(2026, 12, 1): 600 * world.rate}
    assert sum(december.values()) == world.row(rid).bandwidth_this_month
    assert len(rows) == len({(r.instance_id, r.day) for r in rows}) == 2


def test_it_never_lowers_the_counter_within_a_month(world: World) -> None:
    # Mid-rebuild the old instance's bytes are not carried yet and the new one has none
    rid = world.server(bandwidth_month="2026-11", bandwidth_this_month=700 * MB)
    world.advance(10)
    world.sync()
    assert world.row(rid).bandwidth_this_month == 700 * MB


def test_it_moves_to_the_new_utc_month_by_itself_and_the_reset_then_changes_nothing(world: World) -> None:
    # Given a server synced late on Nov 30 (UTC) with 20 min of traffic
    rid = world.server()
    world.advance(1200)
    world.sync()
    assert world.row(rid).bandwidth_month == "2026-11"
    assert world.row(rid).bandwidth_this_month == 1200 * world.rate
    # When the next sync runs at 01:00 UTC on Dec 1 (still Nov 30 in New York)
    world.advance_to(dt.datetime(2026, 12, 1, 1, 0, tzinfo=UTC))
    report = world.sync()
    # Then the counter is December's only: one hour, nothing of November
    row = world.row(rid)
    assert (row.bandwidth_month, row.bandwidth_this_month, row.bandwidth_carried) == ("2026-12", 3600 * world.rate, 0)
    assert report.reset == 1
    assert ("bandwidth.reset", "info") in world.events(rid)
    # And the seed's reset job at 00:00 New York does not wipe what December has already counted
    world.advance_to(dt.datetime(2026, 12, 1, 5, 0, 30, tzinfo=UTC))
    assert world.reset().reset == 0
    assert world.row(rid).bandwidth_this_month == 3600 * world.rate


def test_it_rolls_over_a_row_whose_rebuild_carried_into_the_new_month_first(world: World) -> None:
    # Given November ended at 95 % alerted, and a rebuild's carry step ran at 00:10 UTC on Dec 1 before any sync:
    # it set the month and carried December's 2 MB but left November's total and alert level
    rid = world.server(limit=1000 * MB, bandwidth_month="2026-11", bandwidth_this_month=950 * MB,
                       bandwidth_alerted=80, bandwidth_synced_at=START)
    world.advance_to(dt.datetime(2026, 12, 1, 0, 10, tzinfo=UTC))
    with world.sessions() as s:
        row = s.get(Server, rid)
        assert row is not None
        row.bandwidth_month, row.bandwidth_carried = "2026-12", 2 * MB
        s.commit()
    # When the sync runs
    world.sync()
    # Then December starts from what was carried into it plus the current instance's December bytes
    row = world.row(rid)
    assert row.bandwidth_this_month == 2 * MB + 600 * world.rate
    assert (row.bandwidth_carried, row.bandwidth_alerted) == (2 * MB, 0)


# --- alerts and the cap -----------------------------------------------------------------------------

def test_it_alerts_at_80_and_100_percent_once_a_month_under_the_notify_policy(world: World) -> None:
    rid = world.server(limit=100 * MB)
    world.advance(790)                                  # 79 MB
    assert world.sync().alerted_80 == 0
    world.advance(10)                                   # 80 MB
    assert world.sync().alerted_80 == 1
    world.sync()
    world.advance(100)                                  # 90 MB
    world.sync()
    assert world.notified.kinds == ["bandwidth_80"]
    world.advance(100)                                  # 100 MB
    report = world.sync()
    world.sync()
    assert (report.alerted_100, report.suspended) == (1, 0)
    assert world.notified.kinds == ["bandwidth_80", "bandwidth_100"]
    assert world.notified.calls[1] == (rid, "bandwidth_100", {"month": "2026-11", "used_bytes": 100 * MB,
                                                              "cap_bytes": 100 * MB, "percent": 100,
                                                              "suspended": False})
    assert [e for e in world.events(rid) if e[0].startswith("bandwidth.")] == [
        ("bandwidth.80", "info"), ("bandwidth.100", "info")]
    # notify only: the server keeps running
    assert (world.row(rid).status, world.power(rid)) == ("Running", "running")
    # And next month the customer hears that the counter started again, and the alerts start over
    world.advance_to(dt.datetime(2026, 12, 1, 0, 0, tzinfo=UTC))
    world.sync()
    assert world.row(rid).bandwidth_alerted == 0
    assert world.notified.calls[-1] == (rid, "bandwidth_reset", {"month": "2026-12", "cap_bytes": 100 * MB})
    world.advance(800)
    world.sync()
    assert world.notified.kinds == ["bandwidth_80", "bandwidth_100", "bandwidth_reset", "bandwidth_80"]
    assert world.notified.calls[-1][2]["month"] == "2026-12"


def test_it_records_only_the_100_percent_alert_when_a_sync_jumps_past_it(world: World) -> None:
    rid = world.server(limit=10 * MB)
    world.advance(500)
    world.sync()
    assert world.notified.kinds == ["bandwidth_100"]
    assert world.row(rid).bandwidth_alerted == 100


def test_it_suspends_at_the_cap_and_the_monthly_reset_starts_it_again(world: World) -> None:
    # Given a server of a product whose policy is to suspend at the cap
    rid = world.server(limit=100 * MB)
    world.advance(1000)
    # When the sync finds it at 100 %
    report = world.sync("suspend")
    # Then the instance is halted and the row says why
    row = world.row(rid)
    assert (report.alerted_100, report.suspended) == (1, 1)
    assert (row.status, row.suspended_by_cap, world.power(rid)) == ("Suspended", True, "stopped")
    assert [e for e in world.events(rid) if e[0] == "bandwidth.suspend"] == [
        ("bandwidth.suspend", "started"), ("bandwidth.suspend", "ok")]
    # And a halted instance uses nothing more; later syncs change nothing
    world.advance(3600)
    assert world.sync("suspend").suspended == 0
    assert world.row(rid).bandwidth_this_month == 1000 * world.rate
    # When the month turns and the reset job runs (00:00:30 New York on the 1st)
    world.advance_to(dt.datetime(2026, 12, 1, 5, 0, 30, tzinfo=UTC))
    report = world.reset()
    row = world.row(rid)
    assert (report.reset, report.resumed, report.failed) == (1, 1, 0)
    assert (row.bandwidth_this_month, row.bandwidth_carried, row.bandwidth_alerted) == (0, 0, 0)
    assert (row.bandwidth_month, row.status, row.suspended_by_cap, world.power(rid)) == (
        "2026-12", "Running", False, "running")
    assert world.notified.kinds == ["bandwidth_100", "bandwidth_reset"]
    assert world.notified.calls[0][2]["suspended"] is True
    assert ("bandwidth.resume", "ok") in world.events(rid)
    # And running it again in the same month is a no-op (no second start, no new events)
    starts = len(calls(world.sb, "POST /v2/instances/{id}/start"))
    events = world.events(rid)
    again = world.reset()
    assert (again.reset, again.resumed) == (0, 0)
    assert len(calls(world.sb, "POST /v2/instances/{id}/start")) == starts == 1
    assert world.events(rid) == events


def test_it_halts_again_a_capped_server_started_behind_its_back(world: World) -> None:
    rid = world.server(limit=10 * MB)
    world.advance(200)
    world.sync("suspend")
    world.vultr.start_instance(world.row(rid).instance_id or "")
    assert world.power(rid) == "running"
    world.advance(60)
    world.sync("suspend")
    assert world.power(rid) == "stopped"
    assert world.row(rid).status == "Suspended"


def test_it_keeps_the_cap_when_the_reset_is_run_again_mid_month(world: World) -> None:
    rid = world.server(limit=10 * MB)
    world.advance(200)
    world.sync("suspend")
    world.advance(3600)
    report = world.reset()   # an operator running `provisioner job reset_bandwidth_monthly` by hand
    assert (report.reset, report.resumed) == (0, 0)
    assert (world.row(rid).status, world.power(rid)) == ("Suspended", "stopped")


def test_it_resumes_a_capped_server_when_the_operator_raises_its_limit(world: World) -> None:
    rid = world.server(limit=10 * MB)
    world.advance(200)
    world.sync("suspend")
    with world.sessions() as s:
        row = s.get(Server, rid)
        assert row is not None
        row.bandwidth_limit_this_month = 1000 * MB
        s.commit()
    assert world.sync("suspend").resumed == 1
    assert (world.row(rid).status, world.power(rid)) == ("Running", "running")


def test_it_applies_the_cap_only_once_a_rebuild_is_over(world: World) -> None:
    rid = world.server(limit=10 * MB, status="Rebuilding", action="rebuild", step="boot")
    world.advance(200)
    report = world.sync("suspend")
    assert (report.alerted_100, report.suspended) == (1, 0)
    assert (world.row(rid).status, world.power(rid)) == ("Rebuilding", "running")
    with world.sessions() as s:
        row = s.get(Server, rid)
        assert row is not None
        row.action, row.step, row.status = None, None, "Running"
        s.commit()
    assert world.sync("suspend").suspended == 1
    assert world.power(rid) == "stopped"
    assert world.notified.kinds == ["bandwidth_100"]


# --- failures and concurrency -----------------------------------------------------------------------

def test_it_goes_on_when_one_servers_api_call_fails(world: World) -> None:
    # Given three servers, read in this order: one whose calls fail on every retry, one fine, one whose
    # instance is gone (404)
    flaky, fine, gone = world.server(), world.server(), world.server()
    with world.sessions() as s:
        row = s.get(Server, gone)
        assert row is not None
        row.instance_id = "00000000-0000-0000-0000-000000000000"
        s.commit()
    world.advance(100)
    world.sb.set_faults({"faults": {"GET /v2/instances/{id}/bandwidth": {"error_first": 8}}})
    # When syncing: `flaky` eats all eight 503s the retry policy allows, `fine` is read, `gone` answers 404
    report = world.sync()
    # Then the failures are recorded on their servers and did not stop the third one
    assert (report.checked, report.failed, report.updated) == (3, 2, 1)
    assert world.row(fine).bandwidth_this_month == world.instance_total(fine) > 0
    assert world.row(flaky).bandwidth_this_month == 0 and world.row(flaky).bandwidth_synced_at is None
    assert ("bandwidth.sync", "failed") in world.events(flaky)
    assert ("bandwidth.sync", "failed") in world.events(gone)


def test_it_leaves_a_row_a_lifecycle_worker_holds_right_now(world: World) -> None:
    rid = world.server(limit=1 * MB, lease_owner="worker-2", lease_until=START + dt.timedelta(hours=1))
    world.advance(100)
    report = world.sync("suspend")
    assert (report.skipped, report.updated) == (1, 0)
    assert world.row(rid).bandwidth_this_month == 0 and world.power(rid) == "running"


def test_it_survives_a_failing_notification_hook(world: World) -> None:
    first, second = world.server(limit=1 * MB), world.server(limit=1 * MB)
    world.advance(100)
    told: list[int] = []

    def broken(session: Session, server: Server, kind: str, context: dict[str, Any]) -> None:
        told.append(server.id)
        if server.id == first:
            raise RuntimeError("template missing")

    with world.sessions() as s:
        report = sync_bandwidth(s, world.vultr, world.now, product(), on_event=broken)
    assert told == [first, second] and report.alerted_100 == 2
    assert world.row(first).bandwidth_alerted == world.row(second).bandwidth_alerted == 100


def test_it_accepts_no_notification_hook(world: World) -> None:
    rid = world.server(limit=1 * MB)
    world.advance(100)
    with world.sessions() as s:
        sync_bandwidth(s, world.vultr, world.now, product(), on_event=None)
        reset_bandwidth_monthly(s, world.vultr, world.now)
    assert world.row(rid).bandwidth_alerted == 100


# --- the whole product across a month boundary ------------------------------------------------------

class JumpClock:
    """Epoch seconds: real time plus an offset that jumps forward on demand, or frozen at a point.

    Lifecycle steps need time to pass (boot timers); counting needs it to stand still."""

    def __init__(self, start: dt.datetime) -> None:
        self._lock = threading.Lock()
        self._offset = start.timestamp() - time.time()
        self._frozen: float | None = None

    def __call__(self) -> float:
        with self._lock:
            return self._frozen if self._frozen is not None else time.time() + self._offset

    def freeze(self) -> None:
        with self._lock:
            if self._frozen is None:
                self._frozen = time.time() + self._offset

    def run(self) -> None:
        with self._lock:
            if self._frozen is not None:
                self._offset, self._frozen = self._frozen - time.time(), None

    def jump(self, seconds: float) -> None:
        with self._lock:
            if self._frozen is not None:
                self._frozen += seconds
            else:
                self._offset += seconds

    def utc(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self(), UTC)


@pytest.fixture
def jump_stack(tmp_path: Path) -> Iterator[tuple[Stack, JumpClock]]:
    """tests/fixtures/stack.py's stack, with the sandbox and the app on one jumpable clock."""
    clock = JumpClock(dt.datetime(2026, 11, 30, 12, 0, tzinfo=UTC))
    cfg, sb_config, hosts = build_stack(tmp_path, products={"1": {"bandwidth_cap_gb": 1, "cap_policy": "suspend"}})
    with hosts, Sandbox(sb_config, hosts, clock=clock) as sb:
        point_at(cfg, sb)
        settings = load_settings(cfg, env={})
        app = App(settings, clock=clock.utc)
        db.upgrade(app.engine)
        eng = db.make_engine(settings.storefront.edd_url)
        eddschema.create_edd_tables(eng, "wp_")
        eng.dispose()
        yield Stack(tmp_path, cfg, app, sb, hosts), clock
        app.engine.dispose()


def test_it_carries_a_rebuild_suspends_at_the_cap_and_resumes_next_month(
        jump_stack: tuple[Stack, JumpClock]) -> None:
    stack, clock = jump_stack
    app, lc = stack.app, stack.lifecycle()
    vultr, products, recorded = make_vultr(stack.sandbox), app.settings.products, Recorder()

    def notified(session: Session, server: Server, kind: str, context: dict[str, Any]) -> None:
        # what jobs/registry.py plugs in: the real outbox, so the context must be what notify accepts
        recorded(session, server, kind, context)
        notify.enqueue(session, kind, server=server, context=context, settings=app.settings,
                       dedupe_key=f"{kind}:{server.id}:{context.get('month', '')}")

    def sync() -> BandwidthReport:
        with app.sessions() as s:
            report = sync_bandwidth(s, vultr, clock.utc(), products, on_event=notified)
            s.commit()
        return report

    def server() -> Server:
        with app.sessions() as s:
            found = s.get(Server, rid)
            assert found is not None
            return found

    def power() -> str:
        return next(i["power_status"] for i in stack.state()["instances"] if i["id"] == server().instance_id)

    # Given a real server, created at noon UTC on Nov 30 and running for two hours (720 MB)
    rid = stack.create_server(lc=lc)
    assert server().status == "Running" and server().bandwidth_limit_this_month == 1000 * MB
    clock.jump(7200)
    first = server().instance_id or ""
    # When the customer rebuilds it, the old instance's November bytes are carried
    with app.sessions() as s:
        row = s.get(Server, rid)
        assert row is not None
        lc.begin_rebuild(s, row, "ams", actor="customer")
        s.commit()
    drive_until_idle(lc, [rid], timeout=60)
    clock.freeze()
    row = server()
    assert row.status == "Running" and row.instance_id != first and row.bandwidth_month == "2026-11"
    assert row.bandwidth_carried >= 7200 * 100_000
    # Then the sync counts carried + the new instance, and nothing has alerted yet
    report = sync()
    new_total = month_total(vultr.bandwidth(server().instance_id or ""), "2026-11")
    assert server().bandwidth_this_month == row.bandwidth_carried + new_total
    assert report.alerted_80 == 0 and recorded.kinds == []
    # And the usage chart's days hold both instances: the old one's (carried) and the new one's (synced)
    with app.sessions() as s:
        days = usage_days(s, rid, "2026-11")
        instances = set(s.scalars(select(BandwidthDay.instance_id).where(BandwidthDay.server_id == rid)))
    assert instances == {first, server().instance_id} and sum(days.values()) == server().bandwidth_this_month
    # When the new instance pushes the month past 80 %, then past the cap
    clock.jump((800 * MB - server().bandwidth_this_month) / 100_000 + 1)
    assert sync().alerted_80 == 1
    clock.jump(200 * MB / 100_000)
    report = sync()
    # Then the customer was told twice and the server is halted
    assert (report.alerted_100, report.suspended) == (1, 1)
    assert recorded.kinds == ["bandwidth_80", "bandwidth_100"]
    assert (server().status, server().suspended_by_cap, power()) == ("Suspended", True, "stopped")
    # When the month turns and the reset job runs at 00:00:30 New York
    clock.jump(dt.datetime(2026, 12, 1, 5, 0, 30, tzinfo=UTC).timestamp() - clock())
    with app.sessions() as s:
        reset = reset_bandwidth_monthly(s, vultr, clock.utc(), on_event=notified)
        s.commit()
    # Then the month starts from zero and the server runs again
    row = server()
    assert (reset.reset, reset.resumed) == (1, 1)
    assert (row.bandwidth_month, row.bandwidth_this_month, row.bandwidth_carried, row.bandwidth_alerted) == (
        "2026-12", 0, 0, 0)
    assert (row.status, row.suspended_by_cap, power()) == ("Running", False, "running")
    assert recorded.kinds[-1] == "bandwidth_reset"
    with app.sessions() as s:   # and notify accepted every context (a refused one is only logged)
        queued = list(s.scalars(select(OutboxMessage.kind).order_by(OutboxMessage.id)))
    # the lifecycle's own messages (server ready, rebuild done) come first
    assert queued == ["server_ready", "rebuild_done", "bandwidth_80", "bandwidth_100", "bandwidth_reset"]
    # And December counts only December
    clock.jump(600)
    sync()
    assert server().bandwidth_this_month == 600 * 100_000


# --- at fleet scale: the paced sync ---------------------------------------------------------------

def test_a_pace_spends_its_share_of_the_budget_over_most_of_the_period() -> None:
    pace = SyncPace.for_period(30, 3600, share=0.25)
    assert pace.calls_per_second == 7.5
    assert pace.max_rows == int(7.5 * 3600 * 0.9)          # 24,300 rows an hour at most
    assert pace.max_rows / pace.calls_per_second < 3600      # so a run ends within its period


def test_it_reads_rows_near_their_cap_first_then_the_least_recently_read(world: World) -> None:
    # Given four servers: one read long ago, one never, one read just now but near its cap, one read just now
    old = world.server(limit=10**12, bandwidth_synced_at=world.now.replace(hour=1))
    never = world.server(limit=10**12)
    near = world.server(limit=1000, bandwidth_this_month=800, bandwidth_synced_at=world.now)
    fresh = world.server(limit=10**12, bandwidth_synced_at=world.now)
    with world.sessions() as s:
        # Then the order is: near its cap, never read, read long ago, read just now
        assert rows_to_sync(s, 10) == [near, never, old, fresh]
        assert rows_to_sync(s, 2) == [near, never]


def test_it_syncs_at_most_its_rows_in_parallel_without_reading_blobs(world: World) -> None:
    # Given five servers with sealed secrets and a .ovpn in their rows
    ids = [world.server(limit=10**12, secrets_enc="S" * 5000, ovpn_file_enc="O" * 3000) for _ in range(5)]
    statements: list[str] = []
    engine = world.sessions.kw["bind"]
    event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    before = len(calls(world.sb, "GET /v2/instances/{id}/bandwidth"))

    # When a paced sync may read three of them
    report = sync_bandwidth_paced(world.sessions, world.vultr, world.now, product(),
                                  SyncPace(calls_per_second=1000, max_rows=3, threads=3))

    # Then three were read (one call each), the rest wait for the next run, and no blob was read
    assert report.checked == 3 and report.failed == 0
    assert len(calls(world.sb, "GET /v2/instances/{id}/bandwidth")) - before == 3
    with world.sessions() as s:
        synced = set(s.scalars(select(Server.id).where(Server.bandwidth_synced_at.is_not(None))))
    assert len(synced) == 3 and synced < set(ids)
    assert statements and not [q for q in statements if "secrets_enc" in q or "ovpn_file_enc" in q]


def test_it_stops_at_the_next_row_when_the_worker_stops(world: World) -> None:
    for _ in range(3):
        world.server(limit=10**12)
    stop = threading.Event()
    stop.set()
    report = sync_bandwidth_paced(world.sessions, world.vultr, world.now, product(),
                                  SyncPace(calls_per_second=1000, max_rows=10), stop=stop)
    assert report.checked == 0


@pytest.mark.parametrize("share", [0.1, 0.25])
def test_the_share_scales_the_rows_per_run(share: float) -> None:
    assert SyncPace.for_period(30, 3600, share=share).calls_per_second == pytest.approx(30 * share)
