"""CloudflareDNS against the simulator, through the official SDK: idempotent upserts,
read-back on 81057/81058, deletes that tolerate "already gone", env credentials ignored."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cloudflare as cf_sdk
import pytest
from cloudflare import Cloudflare

from provisioner.cloud.cloudflare import (
    CloudflareAuthError,
    CloudflareDNS,
    CloudflarePermanent,
    CloudflareRateLimited,
    CloudflareTransient,
    DnsRecord,
)
from provisioner.cloud.retry import RetryPolicy
from provisioner.sandbox.app import Sandbox
from tests.fixtures.sandbox import CLOUDFLARE_TOKEN, ZONE_ID, RecordingSleep, calls, make_cloudflare

ROOT = Path(__file__).resolve().parents[1]
ZONE = "vpn.example.test"
RECORDS = "/client/v4/zones/{zone_id}/dns_records"
ONE = RECORDS + "/{record_id}"
TRANSIENT_MIX = {"seed": 4, "faults": {"* /client/v4/*": {
    "error_rate": 0.1, "rate_limit_rate": 0.1, "retry_after": 0.01, "timeout_rate": 0.1, "timeout_seconds": 0.4}}}


def writes(sb: Sandbox) -> list[str]:
    return [c["method"] for c in sb.calls("cloudflare") if c["method"] in ("POST", "PUT", "PATCH", "DELETE")]


def test_it_creates_once_and_then_leaves_equal_content_alone(sandbox: Sandbox, cloudflare: CloudflareDNS) -> None:
    first = cloudflare.upsert_a(f"g0-a.{ZONE}", "127.77.0.2")
    assert cloudflare.upsert_a(f"G0-A.{ZONE}.", "127.77.0.2") == first
    assert writes(sandbox) == ["POST"]
    (record,) = cloudflare.list_by_name(f"g0-a.{ZONE}")
    assert record == DnsRecord(first, f"g0-a.{ZONE}", "A", "127.77.0.2", 60, False)


def test_it_updates_other_content_in_place(sandbox: Sandbox, cloudflare: CloudflareDNS) -> None:
    first = cloudflare.upsert_a(f"g0-b.{ZONE}", "127.77.0.2")
    assert cloudflare.upsert_a(f"g0-b.{ZONE}", "127.77.0.3") == first
    assert writes(sandbox) == ["POST", "PUT"]
    assert [r.content for r in cloudflare.list_by_name(f"g0-b.{ZONE}")] == ["127.77.0.3"]


def test_it_resolves_81058_after_a_lost_create_reply(sandbox: Sandbox, cloudflare: CloudflareDNS) -> None:
    sandbox.set_faults({"faults": {f"POST {RECORDS}": {"lost_reply_first": 1}}})
    record_id = cloudflare.upsert_a(f"g0-c.{ZONE}", "127.77.0.4")
    assert [c["status"] for c in calls(sandbox, f"POST {RECORDS}")] == [200, 400]  # lost, then 81058
    assert [r.id for r in cloudflare.list_by_name(f"g0-c.{ZONE}")] == [record_id]


def test_it_points_a_name_with_one_write_when_it_knows_the_record(sandbox: Sandbox,
                                                                    cloudflare: CloudflareDNS) -> None:
    first = cloudflare.point_a(f"g0-p.{ZONE}", "127.77.0.2")                 # new name: POST, no read
    assert cloudflare.point_a(f"g0-p.{ZONE}", "127.77.0.3", first) == first   # known record: PUT, no read
    assert [c["method"] for c in sandbox.calls("cloudflare")] == ["POST", "PUT"]
    assert [r.content for r in cloudflare.list_by_name(f"g0-p.{ZONE}")] == ["127.77.0.3"]


def test_it_points_a_name_after_a_lost_reply_or_a_vanished_record_by_reading_back(
        sandbox: Sandbox, cloudflare: CloudflareDNS) -> None:
    sandbox.set_faults({"faults": {f"POST {RECORDS}": {"lost_reply_first": 1}}})
    record_id = cloudflare.point_a(f"g0-q.{ZONE}", "127.77.0.4")     # lost, then 81058: read back
    assert [r.id for r in cloudflare.list_by_name(f"g0-q.{ZONE}")] == [record_id]
    cloudflare.delete(record_id)
    again = cloudflare.point_a(f"g0-q.{ZONE}", "127.77.0.5", record_id)   # PUT 404: read back, create
    assert again != record_id
    assert [(r.id, r.content) for r in cloudflare.list_by_name(f"g0-q.{ZONE}")] == [(again, "127.77.0.5")]


class StaleFirstRead(CloudflareDNS):
    """Sees no record on its first read, as if another worker created one just after it."""

    stale_reads = 1

    def list_by_name(self, name: str) -> list[DnsRecord]:
        if self.stale_reads:
            self.stale_reads -= 1
            return []
        return super().list_by_name(name)


def test_it_resolves_81057_by_reading_back_and_updating(sandbox: Sandbox) -> None:
    other = make_cloudflare(sandbox)
    theirs = other.upsert_a(f"g0-d.{ZONE}", "127.77.0.5")
    ours = make_cloudflare(sandbox, cls=StaleFirstRead)
    assert ours.upsert_a(f"g0-d.{ZONE}", "127.77.0.6") == theirs
    assert [c["status"] for c in calls(sandbox, f"POST {RECORDS}")] == [200, 400]
    assert [r.content for r in ours.list_by_name(f"g0-d.{ZONE}")] == ["127.77.0.6"]


def test_it_treats_a_missing_record_as_already_deleted(sandbox: Sandbox, cloudflare: CloudflareDNS) -> None:
    record_id = cloudflare.upsert_a(f"g0-e.{ZONE}", "127.77.0.7")
    assert cloudflare.delete(record_id) is True
    assert cloudflare.delete(record_id) is False
    assert [c["status"] for c in calls(sandbox, f"DELETE {ONE}")] == [200, 404]


def test_it_removes_duplicate_a_records_while_upserting(sandbox: Sandbox, cloudflare: CloudflareDNS) -> None:
    keep = cloudflare.upsert_a(f"g0-f.{ZONE}", "127.77.0.8")
    with sandbox.state.lock:  # a leftover the real API would allow (round-robin); the simulator's API would not
        dup = dict(sandbox.state.records[keep], id="f" * 32, content="127.77.0.9", seq=10_000)
        sandbox.state.records[dup["id"]] = dup
    assert cloudflare.upsert_a(f"g0-f.{ZONE}", "127.77.0.8") == keep
    assert [r.id for r in cloudflare.list_by_name(f"g0-f.{ZONE}")] == [keep]


def test_it_lists_every_record_across_pages_and_by_suffix(sandbox: Sandbox) -> None:
    dns = make_cloudflare(sandbox, per_page=5)
    for i in range(12):
        dns.upsert_a(f"n{i}.fleet.{ZONE}", f"127.77.1.{i + 2}")
    dns.upsert_a(f"other.{ZONE}", "127.77.2.2")
    before = len(calls(sandbox, f"GET {RECORDS}"))
    assert len(dns.list_records(f"fleet.{ZONE}")) == 12
    assert len(calls(sandbox, f"GET {RECORDS}")) - before == 3
    assert len(dns.list_records()) == 13


def test_it_only_ever_writes_unproxied_records(sandbox: Sandbox, cloudflare: CloudflareDNS) -> None:
    raw = Cloudflare(api_token=CLOUDFLARE_TOKEN, base_url=sandbox.cloudflare_url, max_retries=0)
    raw.dns.records.create(zone_id=ZONE_ID, name=f"g0-g.{ZONE}", type="A", content="127.77.0.10", ttl=1,
                           proxied=True)
    cloudflare.upsert_a(f"g0-g.{ZONE}", "127.77.0.10")
    assert [r.proxied for r in cloudflare.list_by_name(f"g0-g.{ZONE}")] == [False]
    assert all(not r["proxied"] for r in sandbox.state.records.values())


def test_it_sends_only_the_bearer_token_whatever_the_environment_says(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLOUDFLARE_EMAIL", "someone@example.com")
    monkeypatch.setenv("CLOUDFLARE_API_KEY", "global-api-key")
    monkeypatch.setenv("CLOUDFLARE_API_USER_SERVICE_KEY", "v1.0-service-key")
    monkeypatch.setenv("CLOUDFLARE_CUSTOM_HEADERS", "X-Auth-Key: from-custom-headers")
    naive = Cloudflare(api_token=CLOUDFLARE_TOKEN, base_url=sandbox.cloudflare_url, max_retries=0)
    with pytest.raises(cf_sdk.PermissionDeniedError):  # the SDK's precedence: email/key beat the token
        naive.zones.list()
    dns = make_cloudflare(sandbox)
    assert dns.zone_name() == ZONE
    assert dns.upsert_a(f"g0-h.{ZONE}", "127.77.0.11")


def test_it_honours_retry_after_on_429(sandbox: Sandbox, cloudflare: CloudflareDNS,
                                       adapter_sleep: RecordingSleep) -> None:
    sandbox.set_faults({"faults": {f"GET {RECORDS}": {"rate_limit_first": 1, "retry_after": 2}}})
    assert cloudflare.list_records() == []
    assert adapter_sleep.waits == [2.0]


def test_it_gives_up_on_a_5_minute_lockout_beyond_its_budget(sandbox: Sandbox) -> None:
    dns = make_cloudflare(sandbox, retry_policy=RetryPolicy(max_attempts=5, max_total_seconds=60))
    sandbox.set_faults({"faults": {f"GET {RECORDS}": {"rate_limit_first": 1, "retry_after": 300}}})
    with pytest.raises(CloudflareRateLimited) as caught:
        dns.list_records()
    assert caught.value.retry_after == 300
    assert len(calls(sandbox, f"GET {RECORDS}")) == 1


def test_it_rides_out_30_percent_transient_faults(sandbox: Sandbox, adapter_sleep: RecordingSleep) -> None:
    dns = make_cloudflare(sandbox, timeout=0.3, sleep=adapter_sleep)
    sandbox.set_faults(TRANSIENT_MIX)
    ids = [dns.upsert_a(f"t{i}.{ZONE}", f"127.77.3.{i + 2}") for i in range(6)]
    assert sorted(r.id for r in dns.list_records()) == sorted(ids)
    for record_id in ids[:3]:
        dns.delete(record_id)
    sandbox.clear_faults()
    assert len(dns.list_records()) == 3
    kinds = {c["fault"] for c in sandbox.calls("cloudflare")}
    assert {"error", "rate_limit", "timeout"} <= kinds, "the fault mix must really have hit"


def test_it_surfaces_a_4xx_at_once_and_the_sdk_never_retries(sandbox: Sandbox) -> None:
    wrong_zone = make_cloudflare(sandbox, zone_id="0" * 32)
    with pytest.raises(CloudflareAuthError) as caught:
        wrong_zone.list_records()
    assert caught.value.codes == (10000,)
    assert len(sandbox.calls("cloudflare")) == 1
    once = make_cloudflare(sandbox, retry_policy=RetryPolicy(max_attempts=1))
    sandbox.set_faults({"faults": {f"GET {RECORDS}": {"error_first": 1}}})
    with pytest.raises(CloudflareTransient):
        once.list_records()
    assert len(calls(sandbox, f"GET {RECORDS}")) == 2  # one per adapter: no SDK-level retry


def test_it_keeps_the_token_out_of_reprs_and_errors(sandbox: Sandbox) -> None:
    dns = make_cloudflare(sandbox, api_token="a-secret-token")
    with pytest.raises(CloudflareAuthError) as caught:
        dns.list_records()
    assert "a-secret-token" not in str(caught.value) + repr(caught.value) + repr(dns)


def test_a_reply_that_is_not_a_v4_json_object_is_refused_as_unusable(sandbox: Sandbox,
                                                                      cloudflare: CloudflareDNS) -> None:
    # A proxy's page, or a reply whose Content-Type is not JSON: the SDK hands back its text.
    sandbox.set_faults({"faults": {f"GET {RECORDS}": {"content_type": "text/html"}}})
    with pytest.raises(CloudflarePermanent, match="unusable reply"):
        cloudflare.list_by_name(f"g0-u.{ZONE}")
    assert len(calls(sandbox, f"GET {RECORDS}")) == 1          # permanent: not retried
    sandbox.clear_faults()
    assert cloudflare.point_a(f"g0-u.{ZONE}", "127.77.0.12")


def test_the_adapter_keeps_the_sdks_typed_resources_out_of_the_process(sandbox: Sandbox) -> None:
    # Every call the worker makes, in a fresh interpreter: the SDK's typed resources (client.dns,
    # client.zones: hundreds of modules and pydantic models) would stay resident for good.
    script = """
import sys
from provisioner.cloud.cloudflare import CloudflareDNS
dns = CloudflareDNS(sys.argv[1], sys.argv[2], sys.argv[3], ttl=60)
zone = dns.zone_name()
first = dns.point_a("r1." + zone, "127.77.0.20")
dns.point_a_many([("r1." + zone, "127.77.0.21", first), ("r2." + zone, "127.77.0.22", None)])
assert [r.content for r in dns.list_by_name("r1." + zone)] == ["127.77.0.21"]
assert len(dns.list_records(zone)) == 2 and dns.delete(first)
print(sorted(m for m in sys.modules if m.startswith("cloudflare.resources.")))
"""
    out = subprocess.run([sys.executable, "-c", script, CLOUDFLARE_TOKEN, ZONE_ID, sandbox.cloudflare_url],
                         capture_output=True, text=True, timeout=60, check=True, cwd=ROOT)  # noqa: S603
    assert out.stdout.strip() == "[]"
    assert {r["name"] for r in sandbox.state.records.values()} == {f"r2.{ZONE}"}


def test_it_goes_through_the_proxy_the_environment_names(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    """An operator behind an HTTP proxy sets HTTP(S)_PROXY for the service: the DNS writes go
    through it (the SDK's HTTP client reads it when the adapter is made)."""
    from tests.fixtures.proxy import recording_proxy

    with recording_proxy() as (proxy_url, seen):
        for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTP_PROXY", proxy_url)
        dns = make_cloudflare(sandbox)
        record_id = dns.point_a("proxied.vpn.example.test", "127.0.0.9")
        assert seen == [f"POST /client/v4/zones/{ZONE_ID}/dns_records"]
        assert [r["id"] for r in sandbox.state.records.values() if r["name"] == "proxied.vpn.example.test"] == [
            record_id]
