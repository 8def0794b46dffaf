"""SIMULATOR ONLY: the sandbox's admin API (no token; loopback only), under ``/_sandbox``.

    GET    /  and  /_sandbox          this list, and how to write a fault document (JSON)
    GET    /_sandbox/health           {"ok": true}
    GET    /_sandbox/state            instances (with their sandbox-only fields), snapshots,
                                      records, faults; user_data shown as its length only
    GET    /_sandbox/calls            ?since=<seq>&service=vultr|cloudflare -> {"calls": [...], "last_seq": N}
    GET    /_sandbox/faults           the fault specs in force (with counters left)
    POST   /_sandbox/faults           body: a fault document (see faults.py) -> 200 / 400
    DELETE /_sandbox/faults           ?key=<endpoint> to drop one, else all
    POST   /_sandbox/host-faults      body: {"target": "<host ip>" | "*", "kind": "<fault>", params...}
                                      a fault of the simulated SSH hosts (see hosts.py) -> 200 / 400
    DELETE /_sandbox/host-faults      clear every host fault
    POST   /_sandbox/reset            empty cloud, empty call log, hosts stopped
    GET    /_sandbox/mail             {"mail": [{at, from, to, subject, kind, body}]}: what the mail
                                      catcher caught (customer mail and operator alerts), oldest first
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from provisioner.sandbox.faults import EXAMPLE_DOCUMENT, FIELD_HELP, FaultInjector
from provisioner.sandbox.hostapi import HostRunner
from provisioner.sandbox.httpbase import HttpError, Request, Response, Service
from provisioner.sandbox.state import SimState


class AdminService(Service):
    name = "admin"

    def __init__(self, state: SimState, faults: FaultInjector, describe: Callable[[], dict[str, Any]],
                 reset: Callable[[], None], hosts: HostRunner,
                 mail: Callable[[], list[dict[str, Any]]] = list) -> None:
        # Faults never apply to the admin API itself, and its calls are not logged.
        super().__init__(FaultInjector(), lambda entry: None)
        self.state = state
        self.cloud_faults = faults
        self._describe = describe
        self._reset = reset
        self.hosts = hosts
        self._mail = mail
        r = self.router.add
        r("GET", "/", lambda req: Response(200, index()))
        r("GET", "/_sandbox", lambda req: Response(200, index()))
        r("GET", "/_sandbox/health", lambda req: Response(200, {"ok": True}))
        r("GET", "/_sandbox/state", lambda req: Response(200, self._describe()))
        r("GET", "/_sandbox/calls", self.calls)
        r("GET", "/_sandbox/faults", lambda req: Response(200, {"faults": self.cloud_faults.describe()}))
        r("POST", "/_sandbox/faults", self.set_faults)
        r("DELETE", "/_sandbox/faults", self.clear_faults)
        r("POST", "/_sandbox/reset", self.reset)
        r("POST", "/_sandbox/host-faults", self.set_host_fault)
        r("DELETE", "/_sandbox/host-faults", self.clear_host_faults)
        r("GET", "/_sandbox/mail", lambda req: Response(200, {"mail": self._mail()}))

    def calls(self, req: Request) -> Response:
        try:
            since = int(req.arg("since") or 0)
        except ValueError:
            raise HttpError(400, "since must be a whole number") from None
        return Response(200, {"calls": self.state.calls_since(since, req.arg("service")),
                              "last_seq": self.state.last_call_seq()})

    def set_faults(self, req: Request) -> Response:
        try:
            self.cloud_faults.configure(req.json())
        except ValueError as exc:
            raise HttpError(400, str(exc)) from None
        return Response(200, {"faults": self.cloud_faults.describe()})

    def set_host_fault(self, req: Request) -> Response:
        body = req.json()
        if not isinstance(body, dict) or not isinstance(body.get("kind"), str):
            raise HttpError(400, 'expected {"target": "<ip>" | "*", "kind": "<fault>", ...params}')
        params = {k: v for k, v in body.items() if k not in ("target", "kind")}
        try:
            self.hosts.set_fault(str(body.get("target", "*")), body["kind"], **params)
        except (ValueError, TypeError) as exc:
            raise HttpError(400, str(exc)) from None
        return Response(200, {"ok": True})

    def clear_host_faults(self, req: Request) -> Response:
        self.hosts.clear_faults()
        return Response(200, {"ok": True})

    def clear_faults(self, req: Request) -> Response:
        self.cloud_faults.clear(req.arg("key"))
        return Response(200, {"faults": self.cloud_faults.describe()})

    def reset(self, req: Request) -> Response:
        self._reset()
        return Response(200, {"ok": True})


# What GET / answers: every endpoint, and the fault documents they accept.
ENDPOINTS = [
    ("GET", "/_sandbox/health", "{\"ok\": true}"),
    ("GET", "/_sandbox/state", "instances (with sandbox-only fields), snapshots, DNS records, faults in force"),
    ("GET", "/_sandbox/calls", "the call log: ?since=<seq>&service=vultr|cloudflare; last_seq: the newest call's"),
    ("GET", "/_sandbox/faults", "the cloud faults in force, with the counters they have left"),
    ("POST", "/_sandbox/faults", "set cloud faults: body is a fault document (below); 400 names what is wrong"),
    ("DELETE", "/_sandbox/faults", "drop the cloud faults: ?key=<endpoint> for one, else all"),
    ("POST", "/_sandbox/host-faults", "fault the simulated SSH hosts: body is a host fault (below)"),
    ("DELETE", "/_sandbox/host-faults", "clear every host fault (hung commands are released)"),
    ("POST", "/_sandbox/reset", "an empty cloud: no instances, records or snapshots; call log emptied"),
    ("GET", "/_sandbox/mail", "what the mail catcher received: [{at, from, to, subject, kind, body}]"),
]
HOST_FAULTS = {
    "refuse": "the host stops listening (connection refused)",
    "hang": "TCP is accepted but no SSH banner is ever sent",
    "wrong_host_key": "the host presents another ed25519 key (a pinned client must refuse it)",
    "command_hang": "commands never answer (params: match = only commands containing this text)",
    "slow_install": "installs take longer (params: seconds; count = only the next N installs)",
}


def index() -> dict[str, Any]:
    return {
        "sandbox": "SIMULATOR ONLY: local Vultr v2 + Cloudflare v4 APIs and simulated SSH hosts (test and demo)",
        "endpoints": [{"method": m, "path": p, "what": w} for m, p, w in ENDPOINTS],
        "fault_document": {
            "how": "POST it to /_sandbox/faults. Keys of \"faults\" are endpoints as \"<METHOD> <route template>\" "
                   "(e.g. \"POST /v2/instances\", \"GET /v2/instances/{id}\", "
                   "\"POST /client/v4/zones/{zone_id}/dns_records\"; the call log names them) or shell wildcards "
                   "(\"* /v2/*\", \"*\"); an exact key wins over a wildcard. \"seed\" re-seeds the random faults; "
                   "\"replace\": true drops the faults not named. A bad document changes nothing.",
            "fields": dict(FIELD_HELP),
            "example": EXAMPLE_DOCUMENT,
        },
        "host_fault": {
            "how": "POST {\"target\": \"<host ip>\" | \"*\", \"kind\": \"<kind>\", ...params} to "
                   "/_sandbox/host-faults",
            "kinds": dict(HOST_FAULTS),
            "example": {"target": "*", "kind": "slow_install", "seconds": 30, "count": 1},
        },
    }
