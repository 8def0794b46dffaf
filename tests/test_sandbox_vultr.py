"""The Vultr simulator keeps the documented contract (REFERENCE §1), checked through the
real vultr-python SDK where it can speak, and raw HTTP where the SDK hides the detail."""

from __future__ import annotations

import base64
import ipaddress
from pathlib import Path
from typing import Any

import pytest
import requests
from vultr import Vultr, VultrException

from provisioner.cloud.vultr import VultrCloud, VultrPermanent
from provisioner.sandbox.app import Sandbox
from tests.fixtures.sandbox import (
    DEBIAN_12,
    VULTR_KEY,
    FakeClock,
    RecordingHostRunner,
    calls,
    make_vultr,
    sandbox_config,
)

AUTH = {"Authorization": f"Bearer {VULTR_KEY}"}
CREATE: dict[str, Any] = {"region": "ewr", "plan": "vc2-1c-1gb", "os_id": DEBIAN_12, "backups": "disabled"}


def sdk(sb: Sandbox, key: str = VULTR_KEY) -> Vultr:
    client = Vultr(key)
    client.url = sb.vultr_url
    return client


def create(sb: Sandbox, **body: Any) -> dict[str, Any]:
    return sdk(sb).create_instance(**{**CREATE, **body})


def test_it_answers_with_exactly_application_json(sandbox: Sandbox) -> None:
    reply = requests.get(f"{sandbox.vultr_url}/regions", headers=AUTH, timeout=5)
    assert reply.headers["Content-Type"] == "application/json"


def test_it_shows_why_the_exact_content_type_matters_to_vultr_python(sandbox: Sandbox, vultr: VultrCloud) -> None:
    inst = create(sandbox, label="charset")
    sandbox.set_faults({"faults": {"GET /v2/instances/{id}": {"content_type": "application/json; charset=utf-8"}}})
    with pytest.raises(TypeError):  # the SDK hands back text and then indexes it like a dict
        sdk(sandbox).get_instance(inst["id"])
    with pytest.raises(VultrPermanent, match="JSON object"):
        vultr.get_instance(inst["id"])


def test_it_rejects_a_create_without_an_explicit_backups_choice(sandbox: Sandbox) -> None:
    body = {k: v for k, v in CREATE.items() if k != "backups"}
    with pytest.raises(VultrException) as caught:
        sdk(sandbox).create_instance(**body)
    assert caught.value.status == 400
    assert caught.value.error == "Backups option must be either enabled or disabled."


@pytest.mark.parametrize("change", [
    {"region": "xyz"}, {"plan": "vc2-99c"}, {"os_id": 1}, {"region": "lhr", "plan": "vc2-1c-0.5gb"},
    {"snapshot_id": "nope"}, {"os_id": None}, {"user_data": "not base64!"}, {"backups": "yes"},
])
def test_it_rejects_bad_create_requests_with_400(sandbox: Sandbox, change: dict[str, Any]) -> None:
    with pytest.raises(VultrException) as caught:
        create(sandbox, **change)
    assert caught.value.status == 400
    assert sandbox.state.instances == {}


def test_it_answers_create_with_202_and_the_password_only_there(sandbox: Sandbox) -> None:
    reply = requests.post(f"{sandbox.vultr_url}/instances", json={**CREATE, "label": "pw"}, headers=AUTH, timeout=5)
    assert reply.status_code == 202
    created = reply.json()["instance"]
    assert created["default_password"]
    assert created["status"] == "pending" and created["main_ip"] == "0.0.0.0"
    assert "default_password" not in sdk(sandbox).get_instance(created["id"])
    assert all("default_password" not in i for i in sdk(sandbox).list_instances())


def test_it_boots_each_instance_onto_its_own_loopback_address(sandbox: Sandbox, sandbox_clock: FakeClock) -> None:
    ids = [create(sandbox, label=f"boot{i}")["id"] for i in range(3)]
    assert {sdk(sandbox).get_instance(i)["server_status"] for i in ids} == {"installingbooting"}
    sandbox_clock.advance(sandbox.config.boot_seconds)
    booted = [sdk(sandbox).get_instance(i) for i in ids]
    assert {(b["status"], b["power_status"], b["server_status"]) for b in booted} == {("active", "running", "ok")}
    ips = [b["main_ip"] for b in booted]
    assert len(set(ips)) == 3
    assert all(ipaddress.ip_address(ip) in ipaddress.ip_network(sandbox.config.ip_pool) for ip in ips)


def test_it_never_hands_out_the_address_of_a_live_instance(sandbox: Sandbox, sandbox_clock: FakeClock) -> None:
    tiny = Sandbox(sandbox_config(Path(sandbox.config.state_file or "").parent / "tiny", ip_pool="127.88.0.0/29"),
                   clock=sandbox_clock)
    with tiny:
        first = [create(tiny, label=f"t{i}")["id"] for i in range(5)]  # /29 = 5 usable after the gateway
        with pytest.raises(VultrException):
            create(tiny, label="one-too-many")
        sdk(tiny).delete_instance(first[0])
        create(tiny, label="reuse")
        ips = [i["ip"] for i in tiny.state.instances.values()]
        assert len(ips) == len(set(ips)) == 5


def test_it_pages_with_a_cursor_and_ends_on_an_empty_next(sandbox: Sandbox) -> None:
    made = [create(sandbox, label=f"page{i}")["id"] for i in range(5)]
    seen, cursor, pages = [], "", 0
    while True:
        params = {"per_page": 2, **({"cursor": cursor} if cursor else {})}
        page = sdk(sandbox).get("/instances", params)
        pages += 1
        seen += [i["id"] for i in page["instances"]]
        assert page["meta"]["total"] == 5
        cursor = page["meta"]["links"]["next"]
        if cursor == "":
            break
    assert (pages, seen) == (3, made)


def test_it_filters_lists_by_exact_label_tag_and_region(sandbox: Sandbox) -> None:
    create(sandbox, label="web", tags=["a", "b"])
    create(sandbox, label="web2", tags=["b"], region="ams")
    client = sdk(sandbox)
    assert [i["label"] for i in client.list_instances({"label": "web"})] == ["web"]
    assert [i["label"] for i in client.list_instances({"tag": "a"})] == ["web"]
    assert len(client.list_instances({"tag": "b"})) == 2
    assert [i["label"] for i in client.list_instances({"region": "ams"})] == ["web2"]


def test_it_deletes_with_204_and_an_empty_body(sandbox: Sandbox) -> None:
    inst = create(sandbox, label="bye")
    reply = requests.delete(f"{sandbox.vultr_url}/instances/{inst['id']}", headers=AUTH, timeout=5)
    assert (reply.status_code, reply.content) == (204, b"")
    again = requests.delete(f"{sandbox.vultr_url}/instances/{inst['id']}", headers=AUTH, timeout=5)
    assert again.status_code == 404
    assert again.json() == {"error": "Invalid instance-id.", "status": 404}


def test_it_refuses_a_wrong_bearer_token_with_401(sandbox: Sandbox) -> None:
    with pytest.raises(VultrException) as caught:
        sdk(sandbox, key="wrong").list_instances()
    assert caught.value.status == 401


def test_it_grows_bandwidth_only_while_running(sandbox: Sandbox, sandbox_clock: FakeClock) -> None:
    inst = create(sandbox, label="traffic")
    client = sdk(sandbox)

    def today() -> tuple[int, int]:
        (day,) = client.get(f"/instances/{inst['id']}/bandwidth")["bandwidth"].values()
        return day["incoming_bytes"], day["outgoing_bytes"]

    assert today() == (0, 0)
    sandbox_clock.advance(sandbox.config.boot_seconds + 100)
    grown = today()
    assert grown == (int(100 * sandbox.config.bandwidth_in_per_second),
                     int(100 * sandbox.config.bandwidth_out_per_second))
    client.post(f"/instances/{inst['id']}/halt")
    sandbox_clock.advance(500)
    assert today() == grown
    client.post(f"/instances/{inst['id']}/start")
    sandbox_clock.advance(10)
    assert today()[0] == grown[0] + int(10 * sandbox.config.bandwidth_in_per_second)


def test_it_creates_snapshots_with_201_and_completes_them_later(sandbox: Sandbox, sandbox_clock: FakeClock) -> None:
    inst = create(sandbox, label="snap-src")
    reply = requests.post(f"{sandbox.vultr_url}/snapshots", json={"instance_id": inst["id"], "description": "golden"},
                          headers=AUTH, timeout=5)
    assert reply.status_code == 201
    snap = reply.json()["snapshot"]
    assert snap["status"] == "pending"
    with pytest.raises(VultrException, match="not complete"):
        create(sandbox, os_id=None, snapshot_id=snap["id"])
    sandbox_clock.advance(sandbox.config.snapshot_seconds)
    listed = sdk(sandbox).get("/snapshots", {"description": "golden"})
    assert [s["status"] for s in listed["snapshots"]] == ["complete"]
    clone = create(sandbox, os_id=None, snapshot_id=snap["id"], label="from-snap")
    assert sandbox.state.instances[clone["id"]]["snapshot_id"] == snap["id"]
    sdk(sandbox).delete(f"/snapshots/{snap['id']}")
    assert [c["status"] for c in calls(sandbox, "DELETE /v2/snapshots/{id}")] == [204]


def test_it_survives_a_restart_from_its_state_file(tmp_path: Path, sandbox_clock: FakeClock) -> None:
    config = sandbox_config(tmp_path, boot_seconds=60)
    with Sandbox(config, clock=sandbox_clock) as first:
        inst = create(first, label="durable")
        sdk(first).get_instance(inst["id"])
    sandbox_clock.advance(30)
    with Sandbox(config, clock=sandbox_clock) as second:
        again = sdk(second).get_instance(inst["id"])
        assert again["status"] == "pending"  # the boot timer kept running, it did not restart
        sandbox_clock.advance(30)
        assert sdk(second).get_instance(inst["id"])["status"] == "active"
        assert [c["label"] for c in calls(second, "POST /v2/instances")] == ["durable"]


def test_it_tells_the_host_runner_when_instances_come_and_go(tmp_path: Path, sandbox_clock: FakeClock) -> None:
    hosts = RecordingHostRunner()
    config = sandbox_config(tmp_path, tick_seconds=3600)  # only explicit ticks
    with Sandbox(config, hosts, clock=sandbox_clock) as sb:
        user_data = "#cloud-config\nhostname: h1\n"
        inst = create(sb, label="h1", user_data=base64.b64encode(user_data.encode()).decode())
        sb.tick()
        assert hosts.events == []  # still booting
        sandbox_clock.advance(config.boot_seconds)
        sb.tick()
        ip = sb.state.instances[inst["id"]]["ip"]
        assert hosts.events == [("start", inst["id"], ip, user_data)]
        client = sdk(sb)
        client.post(f"/instances/{inst['id']}/halt")
        client.post(f"/instances/{inst['id']}/start")
        client.delete_instance(inst["id"])
        assert [e[0] for e in hosts.events] == ["start", "stop", "start", "stop"]


def test_it_keeps_the_vultr_adapter_and_raw_sdk_views_consistent(sandbox: Sandbox) -> None:
    cloud = make_vultr(sandbox)
    made = cloud.create_instance("same", region="fra", plan="vc2-1c-2gb", user_data="x", os_id=DEBIAN_12,
                                 tags=["t"])
    raw = sdk(sandbox).get_instance(made.id)
    assert (raw["label"], raw["region"], raw["plan"], raw["tags"]) == ("same", "fra", "vc2-1c-2gb", ["t"])
