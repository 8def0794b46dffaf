"""Vultr v2: what VultrCloud sends and what the simulator answers, checked against Vultr's
published OpenAPI document (tests/contract/specs/vultr-v2.openapi.json) on the wire.

Every public adapter method runs once through a recording proxy in front of the sandbox;
every request and reply must validate (see tests/contract/openapi.py for what is checked).
Routes the adapter does not use are exercised with plain HTTP, so every route the simulator
serves is held to the document too.  429 and 5xx replies are not in Vultr's document (its
introduction only says a 429 may come above 30 requests/s) and are not checked here.
"""

from __future__ import annotations

from typing import Any

import pytest
import requests

from provisioner.cloud.vultr import VultrAuthError, VultrCloud, VultrNotFound, VultrPermanent
from provisioner.sandbox.app import Sandbox
from tests.contract.conftest import Called, public_methods
from tests.contract.openapi import Contract
from tests.contract.recorder import RecordingProxy
from tests.fixtures.sandbox import DEBIAN_12, VULTR_KEY, FakeClock, make_vultr


def amend(document: dict[str, Any]) -> None:
    """Where the document (2023-12) is wrong about today's live API, with the evidence."""
    schemas = document["components"]["schemas"]
    # Plans cost fractions of a dollar: the live list has vc2-1c-0.5gb-v6 at 2.5 and *-sc1 plans
    # at 7.5 and 22.5, and govultr reads monthly_cost as float32; the document says integer.
    schemas["plans"]["properties"]["monthly_cost"]["type"] = "number"
    # The bandwidth reply is a map keyed by UTC date; the document spells two example dates
    # ("2020-10-10", "2020-10-11") as if they were fixed property names.
    days = document["paths"]["/instances/{instance-id}/bandwidth"]["get"]["responses"]["200"]["content"][
        "application/json"]["schema"]["properties"]["bandwidth"]
    days["additionalProperties"] = days.pop("properties")["2020-10-10"]


# Fields the live API sends that the document's schemas omit -- all three are in the
# document's own reply examples (and in govultr's Instance and Snapshot structs).
LIVE_ONLY_FIELDS = {
    **{f"{where}.{name}": "in the document's own instance examples; govultr Instance has it"
       for where in ("instance", "instances") for name in ("v6_main_ip", "v6_network", "v6_network_size")},
    **{f"{where}.compressed_size": "in the document's own snapshot example; govultr Snapshot has it"
       for where in ("snapshot", "snapshots")},
}


@pytest.fixture(scope="module")
def contract() -> Contract:
    return Contract("vultr-v2.openapi.json", "https://api.vultr.com", amend=amend, live_only_fields=LIVE_ONLY_FIELDS)


def test_every_adapter_method_sends_and_gets_what_the_document_describes(
        sandbox: Sandbox, sandbox_clock: FakeClock, vultr_wire: RecordingProxy, contract: Contract) -> None:
    # Given the adapter talking to the sandbox through the recording proxy (2 per page: the cursor is used)
    vultr = Called(make_vultr(sandbox, base_url=f"{vultr_wire.url}/v2", per_page=2))

    # When every public method runs once
    inst = vultr.create_instance("contract-1", region="ewr", plan="vc2-1c-1gb", user_data="#cloud-config\n",
                                 os_id=DEBIAN_12, tags=["provisioner"], ssh_key_ids=["k-1"], hostname="g1.example")
    vultr.create_instance("contract-2", region="ams", plan="vc2-1c-1gb", user_data="", os_id=DEBIAN_12,
                          tags=["provisioner"])
    vultr.create_instance("contract-3", region="fra", plan="vc2-1c-1gb", user_data="", os_id=DEBIAN_12,
                          tags=["provisioner"])
    sandbox_clock.advance(sandbox.config.boot_seconds + 60)
    assert vultr.get_instance(inst.id).is_ready
    assert [i.label for i in vultr.list_instances(tag="provisioner")] == ["contract-1", "contract-2", "contract-3"]
    assert [i.id for i in vultr.list_instances(label="contract-1")] == [inst.id]
    vultr.halt_instance(inst.id)
    vultr.start_instance(inst.id)
    vultr.reboot_instance(inst.id)
    vultr.reinstall_instance(inst.id, hostname="g1.example")
    assert vultr.bandwidth(inst.id)
    snap = vultr.create_snapshot(inst.id, "contract-golden")
    sandbox_clock.advance(sandbox.config.snapshot_seconds)
    assert vultr.get_snapshot(snap.id).status == "complete"
    assert [s.id for s in vultr.list_snapshots(description="contract-golden")] == [snap.id]
    vultr.create_instance("contract-4", region="ewr", plan="vc2-1c-1gb", user_data="", snapshot_id=snap.id)
    assert vultr.delete_snapshot(snap.id)
    assert "ewr" in {r.id for r in vultr.regions()}
    assert vultr.plans() and vultr.operating_systems()
    assert vultr.os_id("Debian 12 x64 (bookworm)") == DEBIAN_12
    assert vultr.delete_instance(inst.id)

    # Then every method was covered, and every exchange keeps the published contract
    assert vultr.names == public_methods(VultrCloud)
    contract.assert_kept(vultr_wire.take())


def test_its_error_replies_keep_the_contract(sandbox: Sandbox, vultr_wire: RecordingProxy,
                                             contract: Contract) -> None:
    vultr = make_vultr(sandbox, base_url=f"{vultr_wire.url}/v2")
    with pytest.raises(VultrPermanent):
        vultr.create_instance("bad", region="mars", plan="vc2-1c-1gb", user_data="", os_id=DEBIAN_12)
    with pytest.raises(VultrNotFound):
        vultr.get_instance("no-such-instance")
    assert vultr.delete_snapshot("no-such-snapshot") is False
    with pytest.raises(VultrAuthError):
        make_vultr(sandbox, base_url=f"{vultr_wire.url}/v2", api_key="not-the-key").list_instances()
    exchanges = vultr_wire.take()
    assert sorted(e.status for e in exchanges) == [400, 401, 404, 404]
    contract.assert_kept(exchanges)


def test_every_route_the_simulator_serves_keeps_the_contract(sandbox: Sandbox, vultr_wire: RecordingProxy,
                                                             contract: Contract) -> None:
    # Given the routes the adapter does not use, called with plain HTTP
    vultr = make_vultr(sandbox, base_url=f"{vultr_wire.url}/v2")
    inst = vultr.create_instance("raw", region="ewr", plan="vc2-1c-1gb", user_data="", os_id=DEBIAN_12)
    snap = vultr.create_snapshot(inst.id, "raw")
    auth = {"Authorization": f"Bearer {VULTR_KEY}"}
    base = f"{vultr_wire.url}/v2"
    for method, path, body in (("PATCH", f"/instances/{inst.id}", {"label": "raw-2", "tags": ["a"]}),
                               ("PUT", f"/snapshots/{snap.id}", {"description": "raw-2"})):
        assert requests.request(method, base + path, json=body, headers=auth, timeout=5).status_code < 300
    exchanges = vultr_wire.take()
    contract.assert_kept(exchanges)

    # Then, with the adapter's own test above, every simulated route has been held to the document
    served = {route.key.replace("/v2", "", 1).replace("{id}", "{x}") for route in sandbox.vultr.router.routes}
    checked = {r.replace("{instance-id}", "{x}").replace("{snapshot-id}", "{x}") for r in contract.routes(exchanges)}
    assert served - checked <= ADAPTER_ROUTES


# The routes the adapter test above covers (kept here so the check above stays one module).
ADAPTER_ROUTES = {
    "POST /instances", "GET /instances", "GET /instances/{x}", "DELETE /instances/{x}", "POST /instances/{x}/halt",
    "POST /instances/{x}/start", "POST /instances/{x}/reboot", "POST /instances/{x}/reinstall",
    "GET /instances/{x}/bandwidth",
    "POST /snapshots", "GET /snapshots", "GET /snapshots/{x}", "DELETE /snapshots/{x}", "GET /regions",
    "GET /plans", "GET /os",
}
