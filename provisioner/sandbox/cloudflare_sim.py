"""SIMULATOR ONLY: a local imitation of the Cloudflare API v4 (zones, DNS records).

Envelopes follow REFERENCE §2.3 (``success``/``errors``/``messages``/``result`` and
``result_info`` on lists), with real 4xx codes because the SDK looks only at the status.
List pages honour ``page``/``per_page`` and return ``result: []`` past the end -- the
SDK's iterator stops only on an empty page (§2.6).  Creating an A record whose name
already has an A record gives 81057 (other content) or 81058 (same content), HTTP 400
-- stricter than the real API, which allows round-robin A records.  Deleting or reading
a missing record gives 404 with 81044.  ``POST dns_records/batch`` applies deletes, patches,
puts and posts in that order, all or nothing, at most 200 records (the free plan's limit), as
one request against the limit.  Only bearer tokens are accepted (403 9109 for a
wrong one, 403 9103 if X-Auth-Email/X-Auth-Key are sent), and each token may make
``cloudflare_limit`` requests per ``cloudflare_window_seconds`` (then 429 + retry-after).
"""

from __future__ import annotations

import collections
import datetime as dt
import ipaddress
import math
import re
import uuid
from collections.abc import Callable
from typing import Any

from provisioner.sandbox.config import SandboxConfig
from provisioner.sandbox.faults import FaultInjector
from provisioner.sandbox.httpbase import HttpError, Request, Response, Service
from provisioner.sandbox.state import SimState

PREFIX = "/client/v4"
TYPES = frozenset({"A", "AAAA", "CNAME", "TXT", "MX", "NS", "CAA", "SRV"})
PROXIABLE = frozenset({"A", "AAAA", "CNAME"})
ZONE_ID = re.compile(r"^[0-9a-f]{32}$")
ACCOUNT = {"id": "0" * 31 + "1", "name": "Sandbox account"}
OWNER = {"id": "0" * 31 + "2", "name": "Sandbox owner", "type": "user"}
BATCH_LIMIT = 200    # records one batch may carry on the free plan


class CloudflareSimulator(Service):
    name = "cloudflare"

    def __init__(self, config: SandboxConfig, state: SimState, faults: FaultInjector,
                 clock: Callable[[], float]) -> None:
        super().__init__(faults, state.record_call)
        self.config = config
        self.state = state
        self.clock = clock
        self._window: dict[str, collections.deque[float]] = {}
        r = self.router.add
        r("GET", f"{PREFIX}/zones", self.list_zones)
        r("GET", f"{PREFIX}/zones/{{zone_id}}", self.get_zone)
        r("GET", f"{PREFIX}/zones/{{zone_id}}/dns_records", self.list_records)
        r("POST", f"{PREFIX}/zones/{{zone_id}}/dns_records", self.create_record)
        r("POST", f"{PREFIX}/zones/{{zone_id}}/dns_records/batch", self.batch)
        r("GET", f"{PREFIX}/zones/{{zone_id}}/dns_records/{{record_id}}", self.get_record)
        r("PUT", f"{PREFIX}/zones/{{zone_id}}/dns_records/{{record_id}}", self.update_record)
        r("PATCH", f"{PREFIX}/zones/{{zone_id}}/dns_records/{{record_id}}", self.update_record)
        r("DELETE", f"{PREFIX}/zones/{{zone_id}}/dns_records/{{record_id}}", self.delete_record)

    def error(self, exc: HttpError) -> Response:
        body = {"success": False, "errors": [{"code": exc.code or 1000, "message": exc.message}],
                "messages": [], "result": None}
        return Response(exc.status, body, dict(exc.headers))

    def authenticate(self, request: Request) -> None:
        if request.headers.get("X-Auth-Email") or request.headers.get("X-Auth-Key"):
            raise HttpError(403, "Unknown X-Auth-Key or X-Auth-Email", 9103)
        auth = request.headers.get("Authorization") or ""
        if not auth:
            raise HttpError(400, "Missing X-Auth-Key, X-Auth-Email or Authorization headers", 9106)
        token = auth[7:] if auth.startswith("Bearer ") else ""
        if token not in self.config.cloudflare_tokens:
            raise HttpError(403, "Invalid access token", 9109)
        self._throttle(token)

    def _throttle(self, token: str) -> None:
        limit, window = self.config.cloudflare_limit, self.config.cloudflare_window_seconds
        if limit <= 0:
            return
        now = self.clock()
        with self.state.lock:
            seen = self._window.setdefault(token, collections.deque())
            while seen and seen[0] <= now - window:
                seen.popleft()
            if len(seen) >= limit:
                wait = max(1, math.ceil(seen[0] + window - now))
                raise HttpError(429, "Rate limited. Please wait and consider throttling your request speed", 971,
                                {"retry-after": str(wait)})
            seen.append(now)

    # -- zones -----------------------------------------------------------------------

    def _zone_view(self) -> dict[str, Any]:
        # The zone object of the published document (its required fields; no status/paused/type: it has none).
        return {"id": self.config.zone_id, "name": self.config.zone_name, "development_mode": 0,
                "owner": OWNER, "account": ACCOUNT, "meta": {"step": 2, "page_rule_quota": 3,
                                                             "custom_certificate_quota": 0, "phishing_detected": False},
                "name_servers": ["ada.ns.cloudflare.com", "bob.ns.cloudflare.com"], "original_name_servers": None,
                "original_registrar": None, "original_dnshost": None, "created_on": _iso(0), "modified_on": _iso(0),
                "activated_on": _iso(0)}

    def list_zones(self, req: Request) -> Response:
        zones = [self._zone_view()]
        wanted = req.arg("name")
        if wanted is not None:
            zones = [z for z in zones if z["name"] == wanted.lower()]
        return Response(200, _page(zones, req))

    def get_zone(self, req: Request) -> Response:
        self._check_zone(req)
        return Response(200, _ok(self._zone_view()))

    def _check_zone(self, req: Request) -> None:
        zone_id = req.params["zone_id"]
        if not ZONE_ID.match(zone_id):
            raise HttpError(400, f"Could not route to /zones/{zone_id}, perhaps your object identifier is invalid?",
                            7003)
        if zone_id != self.config.zone_id:
            raise HttpError(403, "Authentication error", 10000)  # what a token without this zone gets

    # -- records ---------------------------------------------------------------------

    def list_records(self, req: Request) -> Response:
        self._check_zone(req)
        tests = _filters(req)
        any_match = req.arg("match") == "any"
        with self.state.lock:
            records = [r for r in self.state.records.values()
                       if not tests or (any if any_match else all)(t(r) for t in tests)]
        order = req.arg("order")
        if order in ("type", "name", "content", "ttl", "proxied"):
            records.sort(key=lambda r: (r[order], r["seq"]), reverse=req.arg("direction") == "desc")
        else:
            records.sort(key=lambda r: r["seq"])
        body = _page(records, req)   # views for the page only
        body["result"] = [_view(r) for r in body["result"]]
        return Response(200, body, subject=_only_name(req))

    def create_record(self, req: Request) -> Response:
        self._check_zone(req)
        fields = self._validate(req.json(), None)
        now = self.clock()
        with self.state.lock:
            self._conflicts(fields, None)
            record = {"id": uuid.uuid4().hex, "seq": self.state.next_seq(), "zone_id": self.config.zone_id,
                      "created_on": _iso(now), "modified_on": _iso(now), **fields}
            self.state.records[record["id"]] = record
            self.state.save()
            return Response(200, _ok(_view(record)), subject=_subject(record))

    def get_record(self, req: Request) -> Response:
        self._check_zone(req)
        with self.state.lock:
            record = self._record(req)
            return Response(200, _ok(_view(record)), subject=_subject(record))

    def update_record(self, req: Request) -> Response:
        self._check_zone(req)
        body = req.json()
        with self.state.lock:
            record = self._record(req)
            base = None if req.method == "PUT" else record
            fields = self._validate(body, base)
            self._conflicts(fields, record["id"])
            record.update(fields, modified_on=_iso(self.clock()))
            self.state.save()
            return Response(200, _ok(_view(record)), subject=_subject(record))

    def delete_record(self, req: Request) -> Response:
        self._check_zone(req)
        with self.state.lock:
            record = self._record(req)
            del self.state.records[record["id"]]
            self.state.save()
        return Response(200, _ok({"id": record["id"]}), subject=_subject(record))

    def batch(self, req: Request) -> Response:
        """Deletes, patches, puts, then posts, in one transaction: the first refusal answers for
        the whole batch and changes nothing (as Cloudflare's database transaction does)."""
        self._check_zone(req)
        body = req.json()
        ops = {kind: body.get(kind) or [] for kind in ("deletes", "patches", "puts", "posts")}
        if not all(isinstance(v, list) and all(isinstance(o, dict) for o in v) for v in ops.values()):
            raise HttpError(400, "Batch operations must be lists of objects.", 9207)
        if sum(len(v) for v in ops.values()) > BATCH_LIMIT:
            raise HttpError(400, f"A batch may hold at most {BATCH_LIMIT} records on this plan.", 81000)
        now = self.clock()
        done: dict[str, list[dict[str, Any]]] = {kind: [] for kind in ops}
        with self.state.lock:
            staged = {rid: dict(r) for rid, r in self.state.records.items()}
            for op in ops["deletes"]:
                record = self._staged(staged, op)
                del staged[record["id"]]
                done["deletes"].append(_view(record))
            for kind in ("patches", "puts"):
                for op in ops[kind]:
                    record = self._staged(staged, op)
                    fields = self._validate({k: v for k, v in op.items() if k != "id"},
                                            record if kind == "patches" else None)
                    self._conflicts(fields, record["id"], staged)
                    record.update(fields, modified_on=_iso(now))
                    done[kind].append(_view(record))
            for op in ops["posts"]:
                fields = self._validate(op, None)
                self._conflicts(fields, None, staged)
                record = {"id": uuid.uuid4().hex, "seq": self.state.next_seq(), "zone_id": self.config.zone_id,
                          "created_on": _iso(now), "modified_on": _iso(now), **fields}
                staged[record["id"]] = record
                done["posts"].append(_view(record))
            self.state.records.clear()
            self.state.records.update(staged)
            self.state.save()
        # the call log names what each kind wrote ("posts": "a.zone b.zone"), like a single write's "name"
        return Response(200, _ok(done), subject={kind: " ".join(r["name"] for r in written)
                                                 for kind, written in done.items() if written})

    @staticmethod
    def _staged(staged: dict[str, dict[str, Any]], op: dict[str, Any]) -> dict[str, Any]:
        record = staged.get(str(op.get("id") or ""))
        if record is None:
            raise HttpError(404, "Record does not exist.", 81044)
        return record

    def _record(self, req: Request) -> dict[str, Any]:
        record = self.state.records.get(req.params["record_id"])
        if record is None:
            raise HttpError(404, "Record does not exist.", 81044)
        return record

    def _validate(self, body: dict[str, Any], base: dict[str, Any] | None) -> dict[str, Any]:
        merged = {**(base or {}), **body}
        rtype, name, content = merged.get("type"), merged.get("name"), merged.get("content")
        if rtype not in TYPES:
            raise HttpError(400, "DNS record type is invalid.", 9000)
        if not isinstance(name, str) or not name.strip():
            raise HttpError(400, "DNS record name is required.", 9007)
        if not isinstance(content, str) or not content:
            raise HttpError(400, "DNS record content is required.", 9005)
        if rtype in ("A", "AAAA"):
            version = 4 if rtype == "A" else 6
            try:
                ok = ipaddress.ip_address(content).version == version
            except ValueError:
                ok = False
            if not ok:
                raise HttpError(400, f"Content for {rtype} record is invalid. Must be a valid IPv{version} address.",
                                9005 if version == 4 else 9006)
        ttl = merged.get("ttl", 1)
        if not isinstance(ttl, int | float) or not (ttl == 1 or 60 <= ttl <= 86400):
            raise HttpError(400, "Invalid TTL. Must be between 60 and 86400 seconds, or 1 for Automatic.", 9021)
        proxied = bool(merged.get("proxied", False))
        if proxied and rtype not in PROXIABLE:
            raise HttpError(400, f"{rtype} records cannot be proxied.", 9004)
        return {"type": rtype, "name": self._fqdn(name), "content": content, "ttl": int(ttl), "proxied": proxied,
                "comment": merged.get("comment"), "tags": list(merged.get("tags") or [])}

    def _fqdn(self, name: str) -> str:
        zone = self.config.zone_name
        name = name.strip().rstrip(".").lower()
        if name == "@" or name == zone:
            return zone
        return name if name.endswith("." + zone) else f"{name}.{zone}"

    def _conflicts(self, fields: dict[str, Any], own_id: str | None,
                   records: dict[str, dict[str, Any]] | None = None) -> None:
        for other in (self.state.records if records is None else records).values():
            if other["id"] == own_id or other["name"] != fields["name"]:
                continue
            if other["type"] == fields["type"] and other["content"] == fields["content"]:
                raise HttpError(400, "An identical record already exists.", 81058)
            if fields["type"] in ("A", "AAAA") and other["type"] == fields["type"]:
                raise HttpError(400, "Record already exists.", 81057)
            if "CNAME" in (other["type"], fields["type"]) and {other["type"], fields["type"]} & PROXIABLE:
                raise HttpError(400, "An A, AAAA, or CNAME record with that host already exists.", 81053)


def _filters(req: Request) -> list[Callable[[dict[str, Any]], bool]]:
    tests: list[Callable[[dict[str, Any]], bool]] = []
    for field in ("name", "content"):
        for op in ("", ".exact", ".contains", ".startswith", ".endswith"):
            value = req.arg(field + op)
            if value is None:
                continue
            want = value.lower().rstrip(".") if field == "name" else value
            tests.append(_matcher(field, op or ".exact", want))
    rtype = req.arg("type")
    if rtype is not None:
        tests.append(lambda r: r["type"] == rtype)
    proxied = req.arg("proxied")
    if proxied is not None:
        tests.append(lambda r: r["proxied"] == (proxied.lower() == "true"))
    return tests


def _matcher(field: str, op: str, want: str) -> Callable[[dict[str, Any]], bool]:
    def test(r: dict[str, Any]) -> bool:
        have = r[field].lower() if field == "name" else r[field]
        if op == ".contains":
            return want in have
        if op == ".startswith":
            return bool(have.startswith(want))
        if op == ".endswith":
            return bool(have.endswith(want))
        return bool(have == want)

    return test


def _page(items: list[dict[str, Any]], req: Request) -> dict[str, Any]:
    try:
        page = int(req.arg("page") or 1)
        per_page = int(req.arg("per_page") or 100)
    except ValueError:
        raise HttpError(400, "page and per_page must be whole numbers", 1004) from None
    if page < 1 or not 1 <= per_page <= 5_000_000:
        raise HttpError(400, "page must be >= 1 and per_page within 1..5000000", 1004)
    chunk = items[(page - 1) * per_page: page * per_page]  # [] past the end: the SDK stops on it
    return {**_ok(chunk), "result_info": {"page": page, "per_page": per_page, "count": len(chunk),
                                          "total_count": len(items),
                                          "total_pages": max(1, math.ceil(len(items) / per_page))}}


def _ok(result: Any) -> dict[str, Any]:
    return {"success": True, "errors": [], "messages": [], "result": result}


def _view(r: dict[str, Any]) -> dict[str, Any]:
    # No zone_id/zone_name: Cloudflare dropped them from record replies, and the document has neither.
    return {"id": r["id"], "name": r["name"], "type": r["type"], "content": r["content"],
            "proxiable": r["type"] in PROXIABLE, "proxied": r["proxied"], "ttl": r["ttl"], "meta": {},
            "comment": r["comment"], "tags": r["tags"], "created_on": r["created_on"], "modified_on": r["modified_on"]}


def _subject(r: dict[str, Any]) -> dict[str, str]:
    return {"record_id": r["id"], "name": r["name"]}


def _only_name(req: Request) -> dict[str, str]:
    name = req.arg("name.exact") or req.arg("name")
    return {"name": name} if name else {}


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
