"""SIMULATOR ONLY: a local imitation of the Vultr API v2 for tests and demos.

Shapes and status codes follow REFERENCE §1: 202 instance create/reinstall, 201 snapshot
create, 204 with an empty body for deletes and power actions, errors
``{"error": "...", "status": N}``, cursor pagination ending in ``meta.links.next == ""``,
exact-match list filters.  An instance is ``pending``/``installingbooting`` with
``main_ip`` ``0.0.0.0`` for ``boot_seconds``, then ``active``/``running``/``ok`` with its
own address from the loopback ``ip_pool`` (never shared with a live instance).
``default_password`` appears only in the create reply (the simulated host takes it as root's
password).  Running instances accumulate
bandwidth per UTC day; halted ones do not.  Reachability changes are passed to a
:class:`~provisioner.sandbox.hostapi.HostRunner` by :meth:`VultrSimulator.sync_hosts`.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import logging
import secrets
import threading
import uuid
from collections.abc import Callable
from typing import Any

from provisioner.sandbox import catalog
from provisioner.sandbox.config import SandboxConfig
from provisioner.sandbox.faults import FaultInjector
from provisioner.sandbox.hostapi import HostRunner
from provisioner.sandbox.httpbase import HttpError, Request, Response, Service
from provisioner.sandbox.state import SimState
from provisioner.sandbox.vultr_views import bandwidth_days, instance_view, paginate, snapshot_view

log = logging.getLogger(__name__)

SOURCES = ("os_id", "iso_id", "snapshot_id", "app_id", "image_id")


class VultrSimulator(Service):
    name = "vultr"

    def __init__(self, config: SandboxConfig, state: SimState, faults: FaultInjector, host_runner: HostRunner,
                 clock: Callable[[], float]) -> None:
        super().__init__(faults, state.record_call)
        self.config = config
        self.state = state
        self.hosts = host_runner
        self.clock = clock
        self._pool = ipaddress.ip_network(config.ip_pool, strict=False)
        self._host_lock = threading.Lock()
        self._announced: set[str] = set()
        self._restart: set[str] = set()
        r = self.router.add
        r("POST", "/v2/instances", self.create_instance)
        r("GET", "/v2/instances", self.list_instances)
        r("GET", "/v2/instances/{id}", self.get_instance)
        r("PATCH", "/v2/instances/{id}", self.update_instance)
        r("DELETE", "/v2/instances/{id}", self.delete_instance)
        for action in ("halt", "start", "reboot"):
            r("POST", f"/v2/instances/{{id}}/{action}", self._power(action))
        r("POST", "/v2/instances/{id}/reinstall", self.reinstall_instance)
        r("GET", "/v2/instances/{id}/bandwidth", self.bandwidth)
        r("POST", "/v2/snapshots", self.create_snapshot)
        r("GET", "/v2/snapshots", self.list_snapshots)
        r("GET", "/v2/snapshots/{id}", self.get_snapshot)
        r("PUT", "/v2/snapshots/{id}", self.update_snapshot)
        r("DELETE", "/v2/snapshots/{id}", self.delete_snapshot)
        r("GET", "/v2/regions", lambda req: self._catalog(req, "regions", catalog.REGIONS))
        r("GET", "/v2/plans", lambda req: self._catalog(req, "plans", catalog.PLANS))
        r("GET", "/v2/os", lambda req: self._catalog(req, "os", catalog.OS_LIST))

    def view(self, inst: dict[str, Any], now: float) -> dict[str, Any]:
        return instance_view(inst, now, gateway=str(self._pool[1]))

    def authenticate(self, request: Request) -> None:
        auth = request.headers.get("Authorization") or ""
        if not auth.startswith("Bearer ") or auth[7:] not in self.config.vultr_api_keys:
            raise HttpError(401, "Invalid API token.")

    def after(self, request: Request, response: Response) -> None:
        if request.method != "GET":
            self.sync_hosts()

    # -- instances -----------------------------------------------------------------

    def create_instance(self, req: Request) -> Response:
        body = req.json()
        region, plan_id = body.get("region"), body.get("plan")
        if region not in catalog.REGION_IDS:
            raise HttpError(400, "Invalid region.")
        plan = catalog.PLAN_BY_ID.get(plan_id)
        if plan is None:
            raise HttpError(400, "Invalid plan.")
        if region not in plan["locations"]:
            raise HttpError(400, "Plan is not available in the selected location.")
        given = [k for k in SOURCES if body.get(k) not in (None, "", 0)]
        if len(given) != 1:
            raise HttpError(400, "Exactly one of os_id, iso_id, snapshot_id, app_id or image_id is required.")
        if given[0] not in ("os_id", "snapshot_id"):
            raise HttpError(400, f"{given[0]} is not simulated by the sandbox.")
        if body.get("backups") not in ("enabled", "disabled"):
            raise HttpError(400, "Backups option must be either enabled or disabled.")
        tags = body.get("tags", [body["tag"]] if isinstance(body.get("tag"), str) else [])
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise HttpError(400, "tags must be a list of strings.")
        if not isinstance(body.get("sshkey_id", []), list):
            raise HttpError(400, "sshkey_id must be an array.")
        label = body.get("label", "")
        if not isinstance(label, str):
            raise HttpError(400, "Invalid label.")
        user_data = _decode_user_data(body.get("user_data"))
        now = self.clock()
        with self.state.lock:
            os_id, snapshot_id = body.get("os_id"), body.get("snapshot_id")
            if snapshot_id is not None:
                snap = self.state.snapshots.get(snapshot_id)
                if snap is None:
                    raise HttpError(400, "Invalid snapshot_id.")
                if now < snap["complete_at"]:
                    raise HttpError(400, "Snapshot is not complete.")
                os_id = catalog.SNAPSHOT_OS_ID
            elif os_id not in catalog.OS_BY_ID or os_id == catalog.SNAPSHOT_OS_ID:
                raise HttpError(400, "Invalid os_id.")
            inst = {
                "id": str(uuid.uuid4()), "seq": self.state.next_seq(), "label": label,
                "hostname": body.get("hostname") or label or "vultr.guest", "tags": tags, "region": region,
                "plan": plan_id, "os_id": os_id, "snapshot_id": snapshot_id or "", "user_data": user_data,
                "sshkey_id": body.get("sshkey_id", []), "backups": body["backups"], "ip": self._allocate_ip(),
                "created_at": now, "ip_at": now + self.config.boot_seconds,
                "boot_until": now + self.config.boot_seconds, "runs": [[now, None]],
                "root_password": secrets.token_urlsafe(12),
            }
            self.state.instances[inst["id"]] = inst
            self.state.save()
            view = self.view(inst, now)
        log.info("sandbox vultr: created instance %s label=%s", inst["id"], label)
        view["default_password"] = inst["root_password"]
        return Response(202, {"instance": view}, subject={"instance_id": inst["id"], "label": label})

    def list_instances(self, req: Request) -> Response:
        now = self.clock()
        with self.state.lock:
            found = list(self.state.instances.values())
        # label, region and tags read the same on the stored instance as in its view: filter and
        # page first, and build views only for the page (a 100,000-instance account stays cheap).
        for name in ("label", "region"):
            wanted = req.arg(name)
            if wanted is not None:
                found = [i for i in found if i[name] == wanted]
        tag = req.arg("tag")
        if tag is not None:
            found = [i for i in found if tag in i["tags"]]
        found.sort(key=lambda i: i["seq"])
        main_ip = req.arg("main_ip")
        if main_ip is not None:   # only the view knows the address (0.0.0.0 until assigned)
            views = [(i["seq"], self.view(i, now)) for i in found]
            body = paginate([(s, v) for s, v in views if v["main_ip"] == main_ip], req, "instances")
        else:
            body = paginate([(i["seq"], i) for i in found], req, "instances")
            body["instances"] = [self.view(i, now) for i in body["instances"]]
        return Response(200, body, subject=_only(req.arg("label"), "label"))

    def get_instance(self, req: Request) -> Response:
        with self.state.lock:
            inst = self._instance(req)
            return Response(200, {"instance": self.view(inst, self.clock())}, subject=_subject(inst))

    def update_instance(self, req: Request) -> Response:
        body = req.json()
        with self.state.lock:
            inst = self._instance(req)
            if "label" in body:
                inst["label"] = str(body["label"])
            if "tags" in body:
                if not isinstance(body["tags"], list):
                    raise HttpError(400, "tags must be a list of strings.")
                inst["tags"] = [str(t) for t in body["tags"]]
            self.state.save()
            return Response(202, {"instance": self.view(inst, self.clock())}, subject=_subject(inst))

    def delete_instance(self, req: Request) -> Response:
        with self.state.lock:
            inst = self._instance(req)
            del self.state.instances[inst["id"]]
            self.state.save()
        log.info("sandbox vultr: deleted instance %s", inst["id"])
        return Response(204, subject=_subject(inst))

    def _power(self, action: str) -> Callable[[Request], Response]:
        def handle(req: Request) -> Response:
            now = self.clock()
            with self.state.lock:
                inst = self._instance(req)
                runs = inst["runs"]
                running = bool(runs) and runs[-1][1] is None
                if action == "halt" and running:
                    runs[-1][1] = now
                elif action == "start" and not running:
                    runs.append([now, None])
                elif action == "reboot":
                    self._restart.add(inst["id"])
                    if not running:
                        runs.append([now, None])
                self.state.save()
            return Response(204, subject=_subject(inst))

        return handle

    def reinstall_instance(self, req: Request) -> Response:
        body = req.json()
        now = self.clock()
        with self.state.lock:
            inst = self._instance(req)
            if body.get("hostname"):
                inst["hostname"] = str(body["hostname"])
            inst["boot_until"] = now + self.config.boot_seconds
            if not inst["runs"] or inst["runs"][-1][1] is not None:
                inst["runs"].append([now, None])
            self.state.save()
            return Response(202, {"instance": self.view(inst, now)}, subject=_subject(inst))

    def bandwidth(self, req: Request) -> Response:
        with self.state.lock:
            inst = self._instance(req)
            days = bandwidth_days(inst, self.clock(), self.config.bandwidth_in_per_second,
                                  self.config.bandwidth_out_per_second)
        return Response(200, {"bandwidth": days}, subject=_subject(inst))

    # -- snapshots -----------------------------------------------------------------

    def create_snapshot(self, req: Request) -> Response:
        body = req.json()
        now = self.clock()
        with self.state.lock:
            inst = self.state.instances.get(body.get("instance_id"))  # type: ignore[arg-type]
            if inst is None:
                raise HttpError(400, "Invalid instance_id.")
            disk = catalog.PLAN_BY_ID[inst["plan"]]["disk"] * 1024**3
            snap = {"id": str(uuid.uuid4()), "seq": self.state.next_seq(), "created_at": now,
                    "complete_at": now + self.config.snapshot_seconds, "description": str(body.get("description", "")),
                    "size": disk, "compressed_size": disk // 23, "os_id": inst["os_id"], "instance_id": inst["id"]}
            self.state.snapshots[snap["id"]] = snap
            self.state.save()
            return Response(201, {"snapshot": snapshot_view(snap, now)},
                            subject={"snapshot_id": snap["id"], "instance_id": inst["id"]})

    def list_snapshots(self, req: Request) -> Response:
        now = self.clock()
        wanted = req.arg("description")
        with self.state.lock:
            views = [(s["seq"], snapshot_view(s, now)) for s in self.state.snapshots.values()
                     if wanted is None or s["description"] == wanted]
        return Response(200, paginate(sorted(views, key=lambda sv: sv[0]), req, "snapshots"))

    def get_snapshot(self, req: Request) -> Response:
        with self.state.lock:
            snap = self._snapshot(req)
            return Response(200, {"snapshot": snapshot_view(snap, self.clock())}, subject={"snapshot_id": snap["id"]})

    def update_snapshot(self, req: Request) -> Response:
        body = req.json()
        with self.state.lock:
            snap = self._snapshot(req)
            snap["description"] = str(body.get("description", snap["description"]))
            self.state.save()
        return Response(204, subject={"snapshot_id": snap["id"]})

    def delete_snapshot(self, req: Request) -> Response:
        with self.state.lock:
            snap = self._snapshot(req)
            del self.state.snapshots[snap["id"]]
            self.state.save()
        return Response(204, subject={"snapshot_id": snap["id"]})

    # -- hosts -----------------------------------------------------------------------

    def sync_hosts(self) -> None:
        """Start hosts for booted running instances, stop the rest (outside the state lock)."""
        with self._host_lock:
            now = self.clock()
            with self.state.lock:
                wanted = {i["id"]: (i["ip"], i["user_data"], i.get("root_password", ""))
                          for i in self.state.instances.values()
                          if now >= i["boot_until"] and i["runs"] and i["runs"][-1][1] is None}
                restart, self._restart = self._restart, set()
            for instance_id in sorted((self._announced - set(wanted)) | (restart & self._announced)):
                self._announced.discard(instance_id)
                self._host_call("stop", instance_id)
            for instance_id, (ip, user_data, password) in sorted(wanted.items()):
                if instance_id not in self._announced and self._host_call("start", instance_id, ip, user_data,
                                                                          password):
                    self._announced.add(instance_id)

    def forget_hosts(self) -> None:
        """Stop every host we started (sandbox shutdown or reset)."""
        with self._host_lock:
            for instance_id in sorted(self._announced):
                self._host_call("stop", instance_id)
            self._announced.clear()

    def _host_call(self, what: str, instance_id: str, *args: str) -> bool:
        try:
            if what == "start":
                self.hosts.start(instance_id, *args)
            else:
                self.hosts.stop(instance_id)
        except Exception:
            log.exception("sandbox host runner failed to %s %s", what, instance_id)
            return False
        return True

    # -- helpers ---------------------------------------------------------------------

    def _instance(self, req: Request) -> dict[str, Any]:
        inst = self.state.instances.get(req.params["id"])
        if inst is None:
            raise HttpError(404, "Invalid instance-id.")
        return inst

    def _snapshot(self, req: Request) -> dict[str, Any]:
        snap = self.state.snapshots.get(req.params["id"])
        if snap is None:
            raise HttpError(404, "Invalid snapshot-id.")
        return snap

    def _allocate_ip(self) -> str:
        used = {i["ip"] for i in self.state.instances.values()}
        # The network address, the gateway (first host) and the broadcast address are never handed out.
        size = self._pool.num_addresses - 3
        cursor = int(self.state.data.get("ip_cursor", 0))
        for step in range(size):
            idx = (cursor + step) % size
            ip = str(self._pool[2 + idx])
            if ip not in used:
                self.state.data["ip_cursor"] = idx + 1
                return ip
        raise HttpError(400, "No IPv4 addresses left in the sandbox pool.")

    def _catalog(self, req: Request, key: str, items: list[dict[str, Any]]) -> Response:
        return Response(200, paginate(list(enumerate(items, 1)), req, key))


def _decode_user_data(value: Any) -> str:
    if value in (None, ""):
        return ""
    if not isinstance(value, str):
        raise HttpError(400, "Invalid user_data: must be a base64 string.")
    try:
        return base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise HttpError(400, "Invalid user_data: must be base64-encoded UTF-8.") from None


def _subject(inst: dict[str, Any]) -> dict[str, str]:
    return {"instance_id": inst["id"], "label": inst["label"]}


def _only(value: str | None, name: str) -> dict[str, str]:
    return {name: value} if value is not None else {}
