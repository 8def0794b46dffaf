"""VultrCloud against the simulator, through the real vultr-python SDK: what it sends,
how it pages, and how it behaves under injected faults (measured by the call log)."""

from __future__ import annotations

import datetime as dt
import logging

import pytest

from provisioner.cloud.ratelimit import RateLimiter
from provisioner.cloud.retry import RetryPolicy
from provisioner.cloud.vultr import (
    VultrAuthError,
    VultrCloud,
    VultrNotFound,
    VultrPermanent,
    VultrRateLimited,
    VultrTransient,
)
from provisioner.sandbox.app import Sandbox
from tests.fixtures.sandbox import DEBIAN_12, VULTR_KEY, FakeClock, RecordingSleep, calls, make_vultr

CREATE = "POST /v2/instances"
TRANSIENT_MIX = {"seed": 11, "faults": {"* /v2/*": {
    "error_rate": 0.1, "rate_limit_rate": 0.1, "retry_after": 0.01, "timeout_rate": 0.1, "timeout_seconds": 0.4}}}


def make(vultr: VultrCloud, label: str, **kw: object) -> str:
    return vultr.create_instance(label, region="ewr", plan="vc2-1c-1gb", user_data="#cloud-config\n",
                                 os_id=DEBIAN_12, **kw).id  # type: ignore[arg-type]


def test_it_sends_backups_disabled_and_base64_user_data(sandbox: Sandbox, vultr: VultrCloud) -> None:
    cloud_config = "#cloud-config\nusers: []\n# ünïcode\n"
    inst = vultr.create_instance("sent", region="ams", plan="vc2-1c-1gb", user_data=cloud_config, os_id=DEBIAN_12,
                                 tags=["provisioner"], ssh_key_ids=["k1"], hostname="sent.example")
    stored = sandbox.state.instances[inst.id]
    assert stored["backups"] == "disabled"
    assert stored["user_data"] == cloud_config
    assert (stored["tags"], stored["sshkey_id"], stored["hostname"]) == (["provisioner"], ["k1"], "sent.example")


def test_it_keeps_the_password_out_of_reprs_and_logs(vultr: VultrCloud, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    inst = vultr.create_instance("pw", region="ewr", plan="vc2-1c-1gb", user_data="", os_id=DEBIAN_12)
    assert inst.default_password
    assert inst.default_password not in repr(inst) and inst.default_password not in str(inst)
    assert inst.default_password not in caplog.text
    assert VULTR_KEY not in caplog.text and VULTR_KEY not in repr(vultr)
    assert vultr.get_instance(inst.id).default_password is None


def test_it_follows_the_cursor_to_the_last_page(sandbox: Sandbox) -> None:
    vultr = make_vultr(sandbox, per_page=2)
    made = [make(vultr, f"many-{i}", tags=["fleet"]) for i in range(5)]
    assert [i.id for i in vultr.list_instances(tag="fleet")] == made
    assert len(calls(sandbox, "GET /v2/instances")) == 3
    assert [i.label for i in vultr.list_instances(label="many-3")] == ["many-3"]


def test_it_reports_readiness_once_booted(sandbox: Sandbox, sandbox_clock: FakeClock, vultr: VultrCloud) -> None:
    inst_id = make(vultr, "ready")
    assert not vultr.get_instance(inst_id).is_ready
    sandbox_clock.advance(sandbox.config.boot_seconds)
    ready = vultr.get_instance(inst_id)
    assert ready.is_ready and ready.main_ip.startswith("127.77.")


def test_it_halts_starts_and_deletes(sandbox: Sandbox, vultr: VultrCloud) -> None:
    inst_id = make(vultr, "power")
    vultr.halt_instance(inst_id)
    assert vultr.get_instance(inst_id).power_status == "stopped"
    vultr.start_instance(inst_id)
    assert vultr.get_instance(inst_id).power_status == "running"
    assert vultr.delete_instance(inst_id) is True
    assert vultr.delete_instance(inst_id) is False  # 404: already gone
    with pytest.raises(VultrNotFound):
        vultr.get_instance(inst_id)


def test_it_reads_bandwidth_per_utc_day(sandbox: Sandbox, sandbox_clock: FakeClock, vultr: VultrCloud) -> None:
    inst_id = make(vultr, "bw")
    sandbox_clock.advance(sandbox.config.boot_seconds + 10)
    day = dt.datetime.fromtimestamp(sandbox_clock(), dt.UTC).date()
    assert vultr.bandwidth(inst_id) == {day: (int(10 * sandbox.config.bandwidth_in_per_second),
                                              int(10 * sandbox.config.bandwidth_out_per_second))}


def test_it_manages_snapshots(sandbox: Sandbox, sandbox_clock: FakeClock, vultr: VultrCloud) -> None:
    snap = vultr.create_snapshot(make(vultr, "src"), "golden-1")
    assert snap.status == "pending"
    sandbox_clock.advance(sandbox.config.snapshot_seconds)
    assert vultr.get_snapshot(snap.id).status == "complete"
    assert [s.id for s in vultr.list_snapshots(description="golden-1")] == [snap.id]
    assert vultr.list_snapshots(description="golden") == []
    from_snap = vultr.create_instance("clone", region="ewr", plan="vc2-1c-1gb", user_data="", snapshot_id=snap.id)
    assert sandbox.state.instances[from_snap.id]["snapshot_id"] == snap.id
    assert vultr.delete_snapshot(snap.id) is True


def test_it_caches_the_catalogue_for_its_ttl(sandbox: Sandbox) -> None:
    clock = FakeClock(0)
    vultr = make_vultr(sandbox, clock=clock, catalog_ttl=60)
    assert vultr.os_id("Ubuntu 24.04 LTS x64") == 2284
    assert vultr.os_id("Debian 12 x64 (bookworm)") == DEBIAN_12
    assert "ewr" in {r.id for r in vultr.regions()}
    assert len(calls(sandbox, "GET /v2/os")) == 1
    clock.advance(61)
    vultr.operating_systems()
    assert len(calls(sandbox, "GET /v2/os")) == 2
    with pytest.raises(VultrNotFound):
        vultr.os_id("TempleOS")


def test_it_rides_out_30_percent_transient_faults(sandbox: Sandbox, adapter_sleep: RecordingSleep) -> None:
    vultr = make_vultr(sandbox, timeout=0.3, sleep=adapter_sleep)
    made = [make(vultr, f"calm-{i}") for i in range(4)]
    sandbox.set_faults(TRANSIENT_MIX)
    for _ in range(3):
        assert [vultr.get_instance(i).id for i in made] == made
        assert len(vultr.list_instances()) == 4
    vultr.halt_instance(made[0])
    vultr.start_instance(made[0])
    vultr.delete_instance(made[1])
    assert [i.id for i in vultr.list_instances()] == [made[0], *made[2:]]
    kinds = {c["fault"] for c in sandbox.calls("vultr")}
    assert {"error", "rate_limit", "timeout"} <= kinds, "the fault mix must really have hit"
    assert len(adapter_sleep.waits) == sum(1 for c in sandbox.calls("vultr") if c["fault"])


def test_it_surfaces_a_4xx_at_once_as_permanent(sandbox: Sandbox, vultr: VultrCloud) -> None:
    with pytest.raises(VultrPermanent, match="Invalid region"):
        vultr.create_instance("bad", region="mars", plan="vc2-1c-1gb", user_data="", os_id=DEBIAN_12)
    sandbox.set_faults({"faults": {"GET /v2/instances/{id}": {"error_first": 1, "error_status": 400}}})
    with pytest.raises(VultrPermanent):
        vultr.get_instance("abc")
    assert len(calls(sandbox, CREATE)) == 1
    assert len(calls(sandbox, "GET /v2/instances/{id}")) == 1


def test_it_maps_a_bad_key_to_an_auth_error(sandbox: Sandbox) -> None:
    with pytest.raises(VultrAuthError) as caught:
        make_vultr(sandbox, api_key="not-the-key").list_instances()
    assert "not-the-key" not in str(caught.value)
    assert len(sandbox.calls("vultr")) == 1


def test_it_makes_one_create_attempt_even_on_a_5xx(sandbox: Sandbox, vultr: VultrCloud) -> None:
    sandbox.set_faults({"faults": {CREATE: {"error_first": 1}}})
    with pytest.raises(VultrTransient) as caught:
        make(vultr, "once")
    assert caught.value.outcome_unknown
    assert len(calls(sandbox, CREATE)) == 1


def test_it_resolves_a_lost_create_reply_by_listing_by_label(sandbox: Sandbox, vultr: VultrCloud) -> None:
    sandbox.set_faults({"faults": {CREATE: {"lost_reply_first": 1}}})
    with pytest.raises(VultrTransient) as caught:
        make(vultr, "prov-42")
    assert caught.value.outcome_unknown  # so the caller lists by label before creating again
    (found,) = vultr.list_instances(label="prov-42")
    assert found.label == "prov-42"
    assert [(c["status"], c["fault"]) for c in calls(sandbox, CREATE)] == [(202, "lost_reply")]


def test_it_honours_retry_after_on_429(sandbox: Sandbox, vultr: VultrCloud, adapter_sleep: RecordingSleep) -> None:
    sandbox.set_faults({"faults": {"GET /v2/instances": {"rate_limit_first": 2, "retry_after": 7}}})
    assert vultr.list_instances() == []
    assert adapter_sleep.waits == [7.0, 7.0]
    assert [c["status"] for c in calls(sandbox, "GET /v2/instances")] == [429, 429, 200]


def test_it_gives_up_on_429_when_retry_after_exceeds_the_budget(sandbox: Sandbox) -> None:
    vultr = make_vultr(sandbox, retry_policy=RetryPolicy(max_attempts=5, max_total_seconds=10))
    sandbox.set_faults({"faults": {"GET /v2/instances": {"rate_limit_first": 1, "retry_after": 30}}})
    with pytest.raises(VultrRateLimited) as caught:
        vultr.list_instances()
    assert caught.value.retry_after == 30
    assert len(calls(sandbox, "GET /v2/instances")) == 1


def test_it_uses_its_own_timeout_not_the_sdks_fixed_ten_seconds(sandbox: Sandbox) -> None:
    vultr = make_vultr(sandbox, timeout=0.2, retry_policy=RetryPolicy(max_attempts=1))
    sandbox.set_faults({"faults": {"GET /v2/regions": {"timeout_first": 1, "timeout_seconds": 3}}})
    with pytest.raises(VultrTransient, match=r"no reply within 0\.2s"):
        vultr.regions()


def test_it_takes_a_rate_limiter_token_per_attempt(sandbox: Sandbox) -> None:
    limiter = RateLimiter.per_second(10_000, burst=1000)
    vultr = make_vultr(sandbox, rate_limiter=limiter)
    sandbox.set_faults({"faults": {"GET /v2/plans": {"error_first": 2}}})
    vultr.plans()
    assert limiter.stats().acquired == 3


def test_it_turns_a_reply_the_sdk_cannot_parse_into_a_permanent_error(sandbox: Sandbox, vultr: VultrCloud) -> None:
    # Given replies labelled "application/json; charset=utf-8", which vultr-python hands back as text
    inst_id = make(vultr, "charset")
    snap_id = vultr.create_snapshot(inst_id, "charset").id
    sandbox.set_faults({"faults": {"GET /v2/*": {"content_type": "application/json; charset=utf-8"}}})
    # Then through the SDK's helpers and its generic get alike, the adapter's own error comes out
    for call in (lambda: vultr.get_instance(inst_id), vultr.list_instances, lambda: vultr.get_snapshot(snap_id)):
        with pytest.raises(VultrPermanent, match="reply"):
            call()


def test_it_goes_through_the_proxy_the_environment_names_unless_no_proxy_exempts_the_api(
        sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    """An operator behind an HTTP proxy sets HTTP(S)_PROXY for the service. The adapter reads it
    once for its base URL (not on every request) and still sends every call through the proxy;
    NO_PROXY still exempts the API's host."""
    from tests.fixtures.proxy import recording_proxy

    with recording_proxy() as (proxy_url, seen):
        for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTP_PROXY", proxy_url)
        before = len(calls(sandbox, "GET /v2/instances"))
        assert make_vultr(sandbox).list_instances() == []
        assert seen == ["GET /v2/instances"]
        assert len(calls(sandbox, "GET /v2/instances")) == before + 1      # and it reached the API

        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        assert make_vultr(sandbox).list_instances() == []
        assert len(seen) == 1 and len(calls(sandbox, "GET /v2/instances")) == before + 2
