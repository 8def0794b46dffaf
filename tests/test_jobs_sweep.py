"""The orphan sweep against the sandbox: leaks made behind the worker's back are reported, counted,
deleted only when configured, live servers' resources are never touched, and a failed listing
changes nothing."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from jobs.sweep import Resource, SweepReport, sweep
from provisioner.cloud.cloudflare import CloudflareDNS
from provisioner.cloud.vultr import VultrCloud
from provisioner.models import Orphan, Server
from provisioner.settings.schema import Settings
from tests.fixtures.sandbox import DEBIAN_12, make_cloudflare, make_vultr
from tests.fixtures.stack import Stack

UTC = dt.UTC
T0 = dt.datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
LIST_ENDPOINTS = ["GET /v2/instances", "GET /client/v4/zones/{zone_id}/dns_records", "GET /v2/snapshots"]


@dataclasses.dataclass
class Leaks:
    instance: str
    record: str
    snapshot: str

    def resources(self) -> set[tuple[str, str]]:
        return {("instance", self.instance), ("dns", self.record), ("snapshot", self.snapshot)}


class Sweeper:
    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.vultr: VultrCloud = make_vultr(stack.sandbox)
        self.dns: CloudflareDNS = make_cloudflare(stack.sandbox)
        self.now = T0

    def settings(self, delete_after: int = 0) -> Settings:
        s = self.stack.app.settings
        return dataclasses.replace(s, worker=dataclasses.replace(s.worker, sweep_delete_after_sightings=delete_after))

    def run(self, delete_after: int = 0) -> SweepReport:
        self.now += dt.timedelta(minutes=30)
        with self.stack.app.sessions() as s:
            report = sweep(s, self.vultr, self.dns, self.settings(delete_after), self.now)
            s.commit()
        return report

    def orphans(self) -> dict[tuple[str, str], Orphan]:
        with self.stack.app.sessions() as s:
            return {(o.kind, o.provider_id): o for o in s.scalars(select(Orphan))}

    def existing(self) -> set[tuple[str, str]]:
        st = self.stack.state()
        return ({("instance", i["id"]) for i in st["instances"]} | {("dns", r["id"]) for r in st["records"]}
                | {("snapshot", s["id"]) for s in st["snapshots"]})

    def leak(self, n: int = 999) -> Leaks:
        """Resources with our tag / name / prefix that no row knows, made straight through the adapters."""
        inst = self.vultr.create_instance(f"prov-{n}-g0", region="ewr", plan="vc2-1c-1gb", user_data="#!/bin/sh\n",
                                          tags=["provisioner"], os_id=DEBIAN_12)
        record = self.dns.upsert_a(f"g0{n}.vpn.example.test", "127.1.2.3")
        snap = self.vultr.create_snapshot(inst.id, f"prov-{n}-snapshot")
        return Leaks(inst.id, record, snap.id)


@pytest.fixture
def sweeper(stack: Stack) -> Iterator[Sweeper]:
    yield Sweeper(stack)


def live_server(stack: Stack) -> Server:
    """A real server (instance, DNS record, snapshot) made by the lifecycle."""
    rid = stack.create_server()
    with stack.app.sessions() as s:
        row = s.get(Server, rid)
        assert row is not None and row.status == "Running", row and row.last_error
        assert row.instance_id and row.dns_record_id and row.snapshot_id
        return row


def test_it_reports_leaks_then_deletes_them_only_after_n_sightings_and_never_a_live_servers(
        sweeper: Sweeper, caplog: pytest.LogCaptureFixture) -> None:
    # Given a live server, and an instance, an A record and a snapshot of ours that no row references
    server = live_server(sweeper.stack)
    ours = {("instance", server.instance_id), ("dns", server.dns_record_id), ("snapshot", server.snapshot_id)}
    leaks = sweeper.leak()
    # When the sweep first sees them
    report = sweeper.run()
    # Then all three are reported (and logged), the live server's are not, and nothing is deleted
    assert report.complete and report.listed == {"instance": 2, "dns": 2, "snapshot": 2}
    assert {(r.kind, r.provider_id) for r in report.new} == leaks.resources()
    assert Resource("dns", leaks.record, "g0999.vpn.example.test") in report.new
    assert sum(1 for r in caplog.records if r.levelname == "WARNING" and "orphan" in r.getMessage()) == 3
    assert report.deleted == [] and report.orphans == 3
    assert set(sweeper.orphans()) == leaks.resources()
    # And with the default setting (report only) they stay however often they are seen
    for _ in range(4):
        again = sweeper.run()
        assert again.new == [] and again.deleted == [] and again.orphans == 3
    assert leaks.resources() | ours <= sweeper.existing()
    assert {o.sightings for o in sweeper.orphans().values()} == {5}
    # When deleting after 7 sightings is configured: the 6th sweep keeps them, the 7th deletes them
    assert sweeper.run(delete_after=7).deleted == []
    report = sweeper.run(delete_after=7)
    assert {(r.kind, r.provider_id) for r in report.deleted} == leaks.resources()
    assert report.orphans == 0
    # Then they are gone from the providers, the live server's resources are all still there
    assert not leaks.resources() & sweeper.existing()
    assert ours <= sweeper.existing()
    # And the orphan rows remain as the audit, with when they were deleted
    assert {o.deleted_at for o in sweeper.orphans().values()} == {sweeper.now}
    # And the live server is untouched in the database too
    with sweeper.stack.app.sessions() as s:
        row = s.get(Server, server.id)
        assert row is not None
        assert (row.instance_id, row.dns_record_id, row.snapshot_id, row.status) == (
            server.instance_id, server.dns_record_id, server.snapshot_id, "Running")
    # And a later sweep has nothing left to do
    assert not sweeper.run(delete_after=7).did_work


def test_it_deletes_on_first_sight_when_told_to(sweeper: Sweeper) -> None:
    leaks = sweeper.leak()
    report = sweeper.run(delete_after=1)
    assert {(r.kind, r.provider_id) for r in report.new} == leaks.resources()
    assert {(r.kind, r.provider_id) for r in report.deleted} == leaks.resources()
    assert not leaks.resources() & sweeper.existing()


def test_it_never_counts_what_a_server_in_the_middle_of_an_action_owns(sweeper: Sweeper) -> None:
    # Given a row mid-create whose instance POST's reply was lost (no instance_id yet, the instance exists),
    # and whose snapshot likewise exists under its description, and its A record by name only
    with sweeper.stack.app.sessions() as s:
        row = Server(customer_id="5", product_id="1", subscription_id="5", user_email="e@example.com",
                     status="Installing", action="create", step="instance", generation=0)
        s.add(row)
        s.flush()
        row.server_name = f"g0{row.id}.vpn.example.test"
        s.commit()
        rid = row.id
    leaks = sweeper.leak(rid)   # label prov-<id>-g0, snapshot prov-<id>-snapshot, record g0<id>.<domain>
    # When sweeping with deletion on first sight
    report = sweeper.run(delete_after=1)
    # Then nothing of the row's is an orphan
    assert report.new == [] and report.deleted == []
    assert leaks.resources() <= sweeper.existing()
    # But once the row is Destroyed, what it left behind is
    with sweeper.stack.app.sessions() as s:
        found = s.get(Server, rid)
        assert found is not None
        found.status, found.action, found.step = "Destroyed", None, None
        s.commit()
    report = sweeper.run()
    assert {(r.kind, r.provider_id) for r in report.new} == leaks.resources()


def test_it_leaves_other_records_in_the_zone_alone(sweeper: Sweeper) -> None:
    # The zone is often the shop's own domain: www, the apex, mail are never ours
    for name in ("www.vpn.example.test", "vpn.example.test", "mail.vpn.example.test", "g0x.vpn.example.test"):
        sweeper.dns.upsert_a(name, "127.9.9.9")
    report = sweeper.run(delete_after=1)
    assert report.listed["dns"] == 0 and report.new == [] and report.deleted == []
    assert len(sweeper.stack.state()["records"]) == 4


def test_it_forgets_an_orphan_that_a_server_references_again_or_that_went_away(sweeper: Sweeper) -> None:
    leaks = sweeper.leak()
    sweeper.run()
    # Given a row that now references the instance (an operator adopted it), and the snapshot deleted by hand
    with sweeper.stack.app.sessions() as s:
        s.add(Server(customer_id="9", product_id="1", subscription_id="9", user_email="n@example.com",
                     status="Running", instance_id=leaks.instance))
        s.commit()
    sweeper.vultr.delete_snapshot(leaks.snapshot)
    report = sweeper.run(delete_after=2)
    # Then both are forgotten, only the record is still an orphan (and deleted, second sighting)
    assert report.forgotten == 2
    assert [(r.kind, r.provider_id) for r in report.deleted] == [("dns", leaks.record)]
    assert ("instance", leaks.instance) in sweeper.existing()
    assert set(sweeper.orphans()) == {("dns", leaks.record)}


@pytest.mark.parametrize("endpoint", LIST_ENDPOINTS)
def test_it_changes_nothing_when_a_listing_fails(sweeper: Sweeper, endpoint: str,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    # Given known orphans, one sighting short of deletion
    leaks = sweeper.leak()
    sweeper.run()
    before = {k: o.sightings for k, o in sweeper.orphans().items()}
    # When one provider's listing fails on every retry
    sweeper.stack.sandbox.set_faults({"faults": {endpoint: {"error_rate": 1.0}}})
    report = sweeper.run(delete_after=2)
    # Then the sweep says it is incomplete, deletes nothing and counts nothing
    assert not report.complete and report.error
    assert report.deleted == [] and report.new == []
    assert leaks.resources() <= sweeper.existing()
    assert {k: o.sightings for k, o in sweeper.orphans().items()} == before
    assert any(r.levelname == "ERROR" and "incomplete" in r.getMessage() for r in caplog.records)
    # And once the provider answers again the sweep goes on where it was
    sweeper.stack.sandbox.clear_faults()
    assert {(r.kind, r.provider_id) for r in sweeper.run(delete_after=2).deleted} == leaks.resources()


def test_it_retries_a_failed_delete_on_the_next_sweep(sweeper: Sweeper) -> None:
    leaks = sweeper.leak()
    sweeper.stack.sandbox.set_faults({"faults": {"DELETE /v2/snapshots/{id}": {"error_status": 403,
                                                                                 "error_first": 1}}})
    report = sweeper.run(delete_after=1)
    assert report.delete_failed == 1 and report.orphans == 1
    assert ("snapshot", leaks.snapshot) in sweeper.existing()
    assert sweeper.orphans()[("snapshot", leaks.snapshot)].deleted_at is None
    assert [(r.kind, r.provider_id) for r in sweeper.run(delete_after=1).deleted] == [("snapshot", leaks.snapshot)]


def test_the_sweep_lists_at_the_largest_pages_within_its_share_of_the_budget(stack: Stack) -> None:
    from jobs.registry import job

    # Given a few servers (their instances and A records)
    for sub in (1, 2, 3):
        stack.create_server(sub, f"user{sub}@example.com")
    before = len(stack.sandbox.calls())

    # When the worker's sweep job runs
    job(stack.app, "sweep", stack.lifecycle())()

    # Then each listing asked for the providers' largest page, so one page each
    lists = [c for c in stack.sandbox.calls()[before:] if c["method"] == "GET"]
    per_page = {c["endpoint"]: c["query"].get("per_page") for c in lists}
    assert per_page == {"GET /v2/instances": "500", "GET /v2/snapshots": "500",
                        "GET /client/v4/zones/{zone_id}/dns_records": "50000"}
    assert len(lists) == 3


def test_a_jobs_share_waits_for_both_its_own_bucket_and_the_shared_one() -> None:
    from provisioner.cloud.ratelimit import RateLimiter, Shared

    waits: list[float] = []
    now = [0.0]
    own = RateLimiter(1.0, 1, clock=lambda: now[0], sleep=waits.append)        # the job: 1 call/s
    shared = RateLimiter(100.0, 1, clock=lambda: now[0], sleep=waits.append)   # the provider: 100/s
    both = Shared(own, shared)
    both.acquire()
    both.acquire()
    assert waits == [1.0, 0.01] and shared.stats().acquired == 2
