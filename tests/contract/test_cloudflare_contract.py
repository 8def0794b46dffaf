"""Cloudflare v4 DNS: what CloudflareDNS sends and what the simulator answers, checked against
Cloudflare's published OpenAPI document (tests/contract/specs/cloudflare-v4-dns.openapi.json)
on the wire, through a recording proxy in front of the sandbox.

Every public adapter method runs; every request and reply must validate (see
tests/contract/openapi.py).  Routes the adapter does not use are exercised with plain HTTP.
"""

from __future__ import annotations

from typing import Any

import pytest
import requests

from provisioner.cloud.cloudflare import CloudflareAuthError, CloudflareDNS
from provisioner.sandbox.app import Sandbox
from tests.contract.conftest import Called, public_methods
from tests.contract.openapi import Contract
from tests.contract.recorder import RecordingProxy
from tests.fixtures.sandbox import CLOUDFLARE_TOKEN, ZONE_ID, make_cloudflare

ZONE = "vpn.example.test"
RECORDS = "/zones/{zone_id}/dns_records"
RECORD = RECORDS + "/{dns_record_id}"
BATCH = RECORDS + "/batch"


def amend(document: dict[str, Any]) -> None:
    """Where the document (api-schemas, 2024-08) is wrong about today's live API, with the evidence."""
    schemas = document["components"]["schemas"]
    # The DNS record operations list only the legacy X-Auth-Email + X-Auth-Key pair, yet the
    # zone operations beside them and Cloudflare's docs take an API token (Zone.DNS:Edit), and
    # the official SDK sends it as a bearer token -- the only credential this project uses.
    for template in (RECORDS, RECORD):
        for op in document["paths"][template].values():
            op["security"] = [{"api_token": []}, *op["security"]]
    # Records without a comment come back with "comment": null (REFERENCE §2.3, observed; the
    # SDK types it Optional[str]); the document's string is not nullable.
    schemas["dns-records_comment"]["nullable"] = True
    # Create, overwrite and edit take the reply's own record schema as their body, whose required
    # list includes the server-assigned id, proxiable, created_on and modified_on.  Those are
    # readOnly (id only by meaning), which frees a request of them -- but the validator cannot see
    # readOnly through the document's oneOf/allOf nesting.  The request bodies drop them here.
    record = schemas["dns-records_dns-record"]
    server_assigned = ("id", "proxiable", "created_on", "modified_on")
    schemas["dns-records_dns-record-request"] = {
        **record, "required": [f for f in record["required"] if f not in server_assigned]}
    for template, method in ((RECORDS, "post"), (RECORD, "put"), (RECORD, "patch")):
        document["paths"][template][method]["requestBody"]["content"]["application/json"]["schema"] = {
            "$ref": "#/components/schemas/dns-records_dns-record-request"}
    # Their 4xx replies are allOf(success envelope, failure envelope), which no reply can meet
    # ("success" would be both true and false); the live API answers the failure envelope
    # {"success": false, "errors": [...], "messages": [], "result": null} alone (REFERENCE §2.3).
    for template in (RECORDS, RECORD):
        for op in document["paths"][template].values():
            op["responses"]["4XX"]["content"]["application/json"]["schema"] = {
                "$ref": "#/components/schemas/dns-records_api-response-common-failure"}
    # The delete reply is the usual v4 envelope around {"id"}; the document shows only "result".
    delete = document["paths"][RECORD]["delete"]["responses"]["200"]["content"]["application/json"]
    delete["schema"] = {"allOf": [{"$ref": "#/components/schemas/dns-records_api-response-common"},
                                  delete["schema"]]}
    # DELETE carries no body (the SDK sends none, the API needs none); the document marks one required.
    delete_body = document["paths"][RECORD]["delete"].get("requestBody")
    if delete_body is not None:
        delete_body["required"] = False
    document["paths"][BATCH] = batch_operation()


def batch_operation() -> dict[str, Any]:
    """``POST /zones/{zone_id}/dns_records/batch`` (Cloudflare, 2024-11) is newer than this cut of
    the document. Its shape here is the SDK's (cloudflare 5.9, generated from Cloudflare's newer
    document: ``RecordBatchParams``, ``RecordBatchResponse``): four optional lists in -- deletes by
    id, patches and puts as records with their id, posts as new records -- and the same four lists
    of records out, in the usual v4 envelope; the records are this document's own schemas."""
    ref = "#/components/schemas/"
    identifier = {"$ref": ref + "dns-records_identifier"}
    request = {"$ref": ref + "dns-records_dns-record-request"}
    with_id = {"allOf": [request, {"type": "object", "required": ["id"], "properties": {"id": identifier}}]}
    records = {"type": "array", "items": {"$ref": ref + "dns-records_dns-record"}}
    body = {"type": "object", "properties": {
        "deletes": {"type": "array", "items": {"type": "object", "required": ["id"], "properties": {"id": identifier}}},
        "patches": {"type": "array", "items": with_id}, "puts": {"type": "array", "items": with_id},
        "posts": {"type": "array", "items": request}}}
    result = {"type": "object", "properties": {kind: records for kind in ("deletes", "patches", "puts", "posts")}}
    reply = {"allOf": [{"$ref": ref + "dns-records_api-response-common"},
                       {"type": "object", "properties": {"result": result}}]}
    return {"post": {
        "operationId": "dns-records-for-a-zone-batch-dns-records", "summary": "Batch DNS Records",
        "parameters": [{"in": "path", "name": "zone_id", "required": True, "schema": identifier}],
        "security": [{"api_token": []}],
        "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
        "responses": {"200": {"description": "Batch DNS Records response", "content": {"application/json": {
                          "schema": reply}}},
                      "4XX": {"description": "Batch DNS Records response failure", "content": {"application/json": {
                          "schema": {"$ref": ref + "dns-records_api-response-common-failure"}}}}}}}


# Query filters the live API has that the document predates: Cloudflare added the name.exact /
# .contains / .startswith / .endswith filters after this cut; the SDK (5.9, generated from the
# newer document) types `name` only as those sub-filters (record_list_params.Name).
LIVE_ONLY_QUERY = {
    "name.exact": "newer than the document; the SDK's only way to filter by name",
    "name.endswith": "newer than the document; same family as name.exact",
}
# total_pages is in every live list reply (REFERENCE §2.3) and the adapter stops paging on it.
LIVE_ONLY_FIELDS = {"result_info.total_pages": "sent by the live API; the document's result_info lacks it"}


@pytest.fixture(scope="module")
def contract() -> Contract:
    return Contract("cloudflare-v4-dns.openapi.json", "https://api.cloudflare.com", amend=amend,
                    live_only_query=LIVE_ONLY_QUERY, live_only_fields=LIVE_ONLY_FIELDS)


def proxied(sandbox: Sandbox, wire: RecordingProxy, **changes: Any) -> CloudflareDNS:
    return make_cloudflare(sandbox, base_url=f"{wire.url}/client/v4", **changes)


def test_every_adapter_method_sends_and_gets_what_the_document_describes(
        sandbox: Sandbox, cloudflare_wire: RecordingProxy, contract: Contract) -> None:
    # Given the adapter talking to the sandbox through the recording proxy (2 per page: it pages)
    dns = Called(proxied(sandbox, cloudflare_wire, per_page=2))

    # When every public method runs: create, leave alone, update in place, list, delete
    assert dns.zone_name() == ZONE
    record_id = dns.upsert_a(f"g0001.{ZONE}", "127.77.0.2")
    assert dns.upsert_a(f"g0001.{ZONE}", "127.77.0.2") == record_id
    assert dns.upsert_a(f"g0001.{ZONE}", "127.77.0.3") == record_id
    for n in (2, 3):
        dns.upsert_a(f"g000{n}.{ZONE}", f"127.77.0.{n + 10}")
    assert [r.content for r in dns.list_by_name(f"g0001.{ZONE}")] == ["127.77.0.3"]
    assert len(dns.list_records(ZONE)) == 3 and len(dns.list_records()) == 3
    moved = dns.point_a(f"g0004.{ZONE}", "127.77.0.20")             # a new name: one POST
    assert dns.point_a(f"g0004.{ZONE}", "127.77.0.21", moved) == moved  # the known record: one PUT
    batched = dns.point_a_many([(f"g0004.{ZONE}", "127.77.0.22", moved), (f"g0005.{ZONE}", "127.77.0.23", None)])
    assert batched[0] == moved and [r.content for r in dns.list_by_name(f"g0005.{ZONE}")] == ["127.77.0.23"]
    assert dns.delete(record_id) is True

    # Then every method was covered, and every exchange keeps the published contract
    assert dns.names == public_methods(CloudflareDNS)
    contract.assert_kept(cloudflare_wire.take())


def test_its_error_replies_keep_the_contract(sandbox: Sandbox, cloudflare_wire: RecordingProxy,
                                             contract: Contract) -> None:
    dns = proxied(sandbox, cloudflare_wire)
    record_id = dns.upsert_a(f"gone.{ZONE}", "127.77.0.2")
    assert dns.delete(record_id) is True
    assert dns.delete(record_id) is False                          # 404, 81044
    with pytest.raises(CloudflareAuthError):
        proxied(sandbox, cloudflare_wire, api_token="not-the-token").list_records()   # 403, 9109
    headers = {"Authorization": f"Bearer {CLOUDFLARE_TOKEN}"}
    body = {"type": "A", "name": f"dup.{ZONE}", "content": "127.77.0.9", "ttl": 60, "proxied": False}
    for _ in range(2):                                             # the second: 400, 81058
        requests.post(f"{cloudflare_wire.url}/client/v4/zones/{ZONE_ID}/dns_records", json=body, headers=headers,
                      timeout=5)
    exchanges = cloudflare_wire.take()
    assert {400, 403, 404} <= {e.status for e in exchanges}
    contract.assert_kept(exchanges)


def test_every_route_the_simulator_serves_keeps_the_contract(sandbox: Sandbox, cloudflare_wire: RecordingProxy,
                                                             contract: Contract) -> None:
    # Given every route, the adapter's and the others, called with plain HTTP
    headers = {"Authorization": f"Bearer {CLOUDFLARE_TOKEN}"}
    base = f"{cloudflare_wire.url}/client/v4"
    record = {"type": "A", "name": f"raw.{ZONE}", "content": "127.77.0.5", "ttl": 120, "proxied": False}

    def call(method: str, path: str, body: dict[str, Any] | None = None, **params: str) -> Any:
        reply = requests.request(method, base + path, json=body, params=params, headers=headers, timeout=5)
        assert reply.status_code == 200, reply.text
        return reply.json()["result"]

    assert [z["name"] for z in call("GET", "/zones", name=ZONE)] == [ZONE]
    call("GET", f"/zones/{ZONE_ID}")
    record_id = call("POST", f"/zones/{ZONE_ID}/dns_records", record)["id"]
    call("GET", f"/zones/{ZONE_ID}/dns_records", name=f"raw.{ZONE}", type="A")
    call("GET", f"/zones/{ZONE_ID}/dns_records/{record_id}")
    call("PUT", f"/zones/{ZONE_ID}/dns_records/{record_id}", {**record, "content": "127.77.0.6"})
    call("PATCH", f"/zones/{ZONE_ID}/dns_records/{record_id}",   # name and type too, as the SDK's edit()
         {"name": record["name"], "type": "A", "content": "127.77.0.7"})
    call("DELETE", f"/zones/{ZONE_ID}/dns_records/{record_id}")
    kept = call("POST", f"/zones/{ZONE_ID}/dns_records", record)["id"]
    dropped = call("POST", f"/zones/{ZONE_ID}/dns_records", {**record, "name": f"raw2.{ZONE}"})["id"]
    done = call("POST", f"/zones/{ZONE_ID}/dns_records/batch", {
        "deletes": [{"id": dropped}],
        "patches": [{"id": kept, "name": record["name"], "type": "A", "content": "127.77.0.8"}],
        "puts": [{**record, "id": kept, "content": "127.77.0.9"}],
        "posts": [{**record, "name": f"raw3.{ZONE}"}]})
    assert [len(done[kind]) for kind in ("deletes", "patches", "puts", "posts")] == [1, 1, 1, 1]
    exchanges = cloudflare_wire.take()
    contract.assert_kept(exchanges)

    # Then every simulated route has been held to the document
    served = {route.key.replace("/client/v4", "").replace("{record_id}", "{dns_record_id}")
              for route in sandbox.cloudflare.router.routes}
    assert served == contract.routes(exchanges)
