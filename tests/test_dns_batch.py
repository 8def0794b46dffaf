"""DNS writes from many servers' steps at once leave as one Cloudflare batch (provisioner.cloud.dns_batch):
fewer requests against Cloudflare's 1,200 / 5 min, the same records, the same errors."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from provisioner.cloud.cloudflare import CloudflareDNS, CloudflarePermanent
from provisioner.cloud.dns_batch import DnsBatcher
from provisioner.sandbox.app import Sandbox
from tests.fixtures.sandbox import calls, make_cloudflare

ZONE = "vpn.example.test"
BATCH = "POST /client/v4/zones/{zone_id}/dns_records/batch"
ONE_POST = "POST /client/v4/zones/{zone_id}/dns_records"


class HeldFirstWrite(CloudflareDNS):
    """Its first point_a waits until the test lets it go: the request in flight while others queue."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.release = threading.Event()
        self.held = threading.Event()

    def point_a(self, name: str, ip: str, record_id: str | None = None) -> str:
        if not self.held.is_set():
            self.held.set()
            assert self.release.wait(10)
        return super().point_a(name, ip, record_id)


def wait_until(check: Any, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def zone(dns: CloudflareDNS) -> dict[str, tuple[str, str]]:
    return {r.name: (r.id, r.content) for r in dns.list_records()}


def test_writes_that_arrive_while_one_is_in_flight_leave_together_in_one_request(sandbox: Sandbox) -> None:
    # Given a write in flight (held), and a record made earlier that one of the next writes moves
    dns = make_cloudflare(sandbox, cls=HeldFirstWrite)
    moved = CloudflareDNS.point_a(dns, f"old.{ZONE}", "127.77.0.1")     # not held: made before the test
    batcher = DnsBatcher(dns)
    with ThreadPoolExecutor(20) as pool:
        first = pool.submit(batcher.point_a, f"g0.{ZONE}", "127.77.1.0")
        assert dns.held.wait(5)

        # When 19 more servers write their names meanwhile (one of them an update of a known record)
        rest = {f"g{i}.{ZONE}": pool.submit(batcher.point_a, f"g{i}.{ZONE}", f"127.77.1.{i}") for i in range(1, 19)}
        rest[f"old.{ZONE}"] = pool.submit(batcher.point_a, f"old.{ZONE}", "127.77.2.2", moved)
        wait_until(lambda: batcher.queued == 19)
        dns.release.set()
        ids = {name: f.result(10) for name, f in rest.items()}
        ids[f"g0.{ZONE}"] = first.result(10)

    # Then the 19 left in one batch after the single write, and every name points where it should
    batches = calls(sandbox, BATCH)
    assert len(batches) == 1 and len(calls(sandbox, ONE_POST)) == 2     # "old" before, then g0 alone
    records = zone(dns)
    assert ids[f"old.{ZONE}"] == moved
    assert {name: records[name] for name in ids} == {
        name: (ids[name], "127.77.2.2" if name.startswith("old") else f"127.77.1.{name[1:].split('.')[0]}")
        for name in ids}


def test_a_refused_batch_is_written_name_by_name_and_ends_the_same(sandbox: Sandbox) -> None:
    # Given a name whose record already exists with the same address (a lost reply earlier): a batch
    # that creates it again is refused as a whole (81058)
    dns = make_cloudflare(sandbox, cls=HeldFirstWrite)
    existing = CloudflareDNS.point_a(dns, f"g5.{ZONE}", "127.77.1.5")
    batcher = DnsBatcher(dns)
    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(batcher.point_a, f"g0.{ZONE}", "127.77.1.0")
        assert dns.held.wait(5)
        rest = {f"g{i}.{ZONE}": pool.submit(batcher.point_a, f"g{i}.{ZONE}", f"127.77.1.{i}") for i in range(1, 7)}
        wait_until(lambda: batcher.queued == 6)
        dns.release.set()
        ids = {name: f.result(10) for name, f in rest.items()}
        first.result(10)

    # Then each name was written on its own after the refusal, and the zone is what it would be unbatched
    assert len(calls(sandbox, BATCH)) == 1
    assert ids[f"g5.{ZONE}"] == existing
    records = zone(dns)
    assert {name: records[name] for name in ids} == {
        name: (ids[name], f"127.77.1.{name[1]}") for name in ids}
    assert len(records) == 7


def test_a_write_refused_on_its_own_raises_to_its_caller(sandbox: Sandbox) -> None:
    batcher = DnsBatcher(make_cloudflare(sandbox))
    with pytest.raises(CloudflarePermanent, match="9005"):
        batcher.point_a(f"bad.{ZONE}", "not-an-address")
    assert batcher.point_a(f"good.{ZONE}", "127.77.0.9")     # the next write is not stuck behind it


def test_a_batch_never_writes_one_name_twice(sandbox: Sandbox) -> None:
    # Given two writes of the same name queued behind a write in flight
    dns = make_cloudflare(sandbox, cls=HeldFirstWrite)
    batcher = DnsBatcher(dns)
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(batcher.point_a, f"g0.{ZONE}", "127.77.1.0")
        assert dns.held.wait(5)
        a = pool.submit(batcher.point_a, f"twice.{ZONE}", "127.77.3.1")
        wait_until(lambda: batcher.queued == 1)
        b = pool.submit(batcher.point_a, f"TWICE.{ZONE}.", "127.77.3.2")
        c = pool.submit(batcher.point_a, f"other.{ZONE}", "127.77.3.3")
        wait_until(lambda: batcher.queued == 3)
        dns.release.set()
        first.result(10), a.result(10), b.result(10), c.result(10)

    # Then the second write of the name went in a later request, and the name holds the last address
    assert zone(dns)[f"twice.{ZONE}"][1] == "127.77.3.2"
    assert len(calls(sandbox, BATCH)) == 1
