"""The Cloudflare simulator keeps the documented v4 contract (REFERENCE §2), checked through
the official SDK (with its own retries off) and raw HTTP."""

from __future__ import annotations

import itertools
from pathlib import Path

import cloudflare
import pytest
import requests
from cloudflare import Cloudflare

from provisioner.sandbox.app import Sandbox
from tests.fixtures.sandbox import CLOUDFLARE_TOKEN, ZONE_ID, FakeClock, calls, sandbox_config

RECORDS = "GET /client/v4/zones/{zone_id}/dns_records"


def sdk(sb: Sandbox, token: str = CLOUDFLARE_TOKEN) -> Cloudflare:
    return Cloudflare(api_token=token, base_url=sb.cloudflare_url, max_retries=0)


def add_a(sb: Sandbox, name: str, ip: str) -> str:
    record = sdk(sb).dns.records.create(zone_id=ZONE_ID, name=name, type="A", content=ip, ttl=60, proxied=False)
    assert record is not None
    return str(record.id)


def test_it_wraps_results_in_v4_envelopes(sandbox: Sandbox) -> None:
    headers = {"Authorization": f"Bearer {CLOUDFLARE_TOKEN}"}
    reply = requests.get(f"{sandbox.cloudflare_url}/zones", params={"name": "vpn.example.test"}, headers=headers,
                         timeout=5)
    body = reply.json()
    assert reply.headers["Content-Type"] == "application/json"
    assert (body["success"], body["errors"], body["messages"]) == (True, [], [])
    assert [z["id"] for z in body["result"]] == [ZONE_ID]
    assert body["result_info"] == {"page": 1, "per_page": 100, "count": 1, "total_count": 1, "total_pages": 1}


def test_it_ends_the_sdk_iterator_with_an_empty_page(sandbox: Sandbox) -> None:
    for i in range(7):
        add_a(sandbox, f"p{i}", f"127.0.0.{i + 1}")
    pages = sdk(sandbox).dns.records.list(zone_id=ZONE_ID, per_page=3)
    names = [r.name for r in itertools.islice(pages, 50)]  # a simulator that ignores `page` never ends
    assert len(names) == 7
    asked = [c["query"].get("page", "1") for c in calls(sandbox, RECORDS)]
    assert asked == ["1", "2", "3", "4"]  # page 4 is the empty one


def test_it_names_records_by_fqdn_and_ids_them_with_32_hex(sandbox: Sandbox) -> None:
    record_id = add_a(sandbox, "short", "127.0.0.1")
    record = sdk(sandbox).dns.records.get(record_id, zone_id=ZONE_ID)
    assert record is not None and record.name == "short.vpn.example.test"
    assert len(record_id) == 32 and int(record_id, 16) >= 0


def test_it_answers_81058_for_an_identical_record_and_81057_for_other_content(sandbox: Sandbox) -> None:
    add_a(sandbox, "dup", "127.0.0.1")
    for ip, code in (("127.0.0.1", 81058), ("127.0.0.2", 81057)):
        with pytest.raises(cloudflare.BadRequestError) as caught:
            add_a(sandbox, "dup", ip)
        assert [e.code for e in caught.value.errors] == [code]


def test_it_answers_404_with_81044_for_a_missing_record(sandbox: Sandbox) -> None:
    with pytest.raises(cloudflare.NotFoundError) as caught:
        sdk(sandbox).dns.records.delete("0" * 32, zone_id=ZONE_ID)
    assert [e.code for e in caught.value.errors] == [81044]


def test_it_returns_the_id_when_deleting(sandbox: Sandbox) -> None:
    record_id = add_a(sandbox, "gone", "127.0.0.1")
    deleted = sdk(sandbox).dns.records.delete(record_id, zone_id=ZONE_ID)
    assert deleted is not None and deleted.id == record_id


def test_it_refuses_a_wrong_token_with_403_9109(sandbox: Sandbox) -> None:
    with pytest.raises(cloudflare.PermissionDeniedError) as caught:
        sdk(sandbox, token="wrong").zones.list()
    assert [e.code for e in caught.value.errors] == [9109]


def test_it_filters_by_exact_name_type_and_content(sandbox: Sandbox) -> None:
    add_a(sandbox, "a", "127.0.0.1")
    add_a(sandbox, "ab", "127.0.0.2")
    records = sdk(sandbox).dns.records
    assert [r.name for r in records.list(zone_id=ZONE_ID, name={"exact": "a.vpn.example.test"})] == [
        "a.vpn.example.test"]
    assert len(list(records.list(zone_id=ZONE_ID, type="A", content={"exact": "127.0.0.2"}))) == 1
    assert len(list(records.list(zone_id=ZONE_ID, name={"endswith": ".vpn.example.test"}))) == 2


def test_it_rate_limits_each_token_with_retry_after(tmp_path: Path, sandbox_clock: FakeClock) -> None:
    config = sandbox_config(tmp_path, cloudflare_limit=3, cloudflare_window_seconds=300)
    with Sandbox(config, clock=sandbox_clock) as sb:
        for _ in range(3):
            sdk(sb).zones.list()
        sandbox_clock.advance(100)
        with pytest.raises(cloudflare.RateLimitError) as caught:
            sdk(sb).zones.list()
        assert caught.value.response.headers["retry-after"] == "200"
        sandbox_clock.advance(200)
        sdk(sb).zones.list()


def test_a_batch_applies_deletes_puts_and_posts_as_one_request(sandbox: Sandbox) -> None:
    # Given two records, one to move and one to drop
    moved, dropped = add_a(sandbox, "moved", "127.0.0.1"), add_a(sandbox, "dropped", "127.0.0.2")
    before = len(calls(sandbox, "POST /client/v4/zones/{zone_id}/dns_records/batch"))

    # When one batch drops one, moves the other and creates two names
    reply = sdk(sandbox).dns.records.batch(
        zone_id=ZONE_ID, deletes=[{"id": dropped}],
        puts=[{"id": moved, "name": "moved", "type": "A", "content": "127.0.0.9", "ttl": 60, "proxied": False}],
        posts=[{"name": f"new{i}", "type": "A", "content": f"127.0.1.{i}", "ttl": 60, "proxied": False}
               for i in range(2)])

    # Then the reply lists each write in its kind's order, and the zone holds exactly that
    assert reply is not None and [r.id for r in reply.puts or []] == [moved]
    assert [r.name for r in reply.posts or []] == ["new0.vpn.example.test", "new1.vpn.example.test"]
    zone = {r.name: r.content for r in sdk(sandbox).dns.records.list(zone_id=ZONE_ID)}
    assert zone == {"moved.vpn.example.test": "127.0.0.9", "new0.vpn.example.test": "127.0.1.0",
                    "new1.vpn.example.test": "127.0.1.1"}
    assert len(calls(sandbox, "POST /client/v4/zones/{zone_id}/dns_records/batch")) == before + 1


@pytest.mark.parametrize(("posts", "code"), [
    ([{"name": "kept", "type": "A", "content": "127.0.0.7", "ttl": 60}], 81058),      # already there
    ([{"name": "x", "type": "A", "content": "not-an-ip", "ttl": 60}], 9005),         # invalid
    ([{"name": f"m{i}", "type": "A", "content": "127.0.0.1", "ttl": 60} for i in range(201)], 81000),  # too many
])
def test_a_refused_batch_changes_nothing(sandbox: Sandbox, posts: list[dict[str, object]], code: int) -> None:
    # Given a zone with one record, and a batch whose first post is fine but another is refused
    kept = add_a(sandbox, "kept", "127.0.0.7")
    body = {"deletes": [{"id": kept}], "posts": [{"name": "fine", "type": "A", "content": "127.0.0.8", "ttl": 60},
                                                 *posts]}
    if code == 81058:   # the delete would make room: the refusal must come from a post that conflicts in the batch
        body = {"posts": [{"name": "fine", "type": "A", "content": "127.0.0.8", "ttl": 60}, *posts]}

    # When it is sent
    reply = requests.post(f"{sandbox.cloudflare_url}/zones/{ZONE_ID}/dns_records/batch", json=body,
                          headers={"Authorization": f"Bearer {CLOUDFLARE_TOKEN}"}, timeout=5)

    # Then it is refused with the code of the failing record, and nothing of it happened
    assert reply.status_code == 400 and reply.json()["errors"][0]["code"] == code
    zone = {r.name: r.content for r in sdk(sandbox).dns.records.list(zone_id=ZONE_ID)}
    assert zone == {"kept.vpn.example.test": "127.0.0.7"}
