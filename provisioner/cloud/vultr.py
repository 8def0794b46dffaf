"""Vultr API v2, behind one thin seam over vultr-python 0.2.0.

Errors (nothing from ``requests`` or ``vultr`` escapes this module)::

    VultrError
    ├── VultrTransient        timeout, connection error, 5xx, broken JSON -- retried
    │   └── VultrRateLimited  429; ``retry_after`` from the Retry-After header, if sent
    └── VultrPermanent        4xx other than 429, unusable reply -- never retried
        ├── VultrAuthError    401/403 (bad key, or this IP is not allow-listed)
        ├── VultrNotFound     404
        └── VultrConflict     409

Every attempt takes a token from the shared :class:`RateLimiter` and runs under
:func:`retry.call` -- except creates (instance, snapshot): one attempt, because a timeout
or lost reply may hide a create that happened.  After ``VultrTransient`` from
``create_instance`` (see ``outcome_unknown``), list by label before creating again.

The SDK is used through its public surface: the documented ``url`` override, its instance
helpers (``create_instance``, ``get_instance``, ``delete_instance``) and, through
:meth:`VultrCloud._request`, its generic ``get``/``post``/``delete`` for what it has no
helper for.  It takes no timeout, session or hooks, and :class:`VultrException` keeps the
status but drops the headers (429's Retry-After with them), so :class:`_Transport` -- a
``requests`` transport adapter, mounted with ``Session.mount`` on the session the SDK made
-- applies our timeout and keeps the last reply.  The SDK parses JSON only for a
Content-Type of exactly ``application/json`` and returns text otherwise, which
:func:`_dict` rejects (REFERENCE §1.10).
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import requests
import requests.adapters
from vultr import Vultr, VultrException

from provisioner.cloud import retry
from provisioner.cloud.errors import PermanentError, ProviderError, TransientError
from provisioner.cloud.ratelimit import Limiter, RateLimiter

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_TIMEOUT = 10.0
CATALOG_TTL_SECONDS = 3600.0
PER_PAGE = 100
MAX_PER_PAGE = 500          # the API's largest page (REFERENCE §1.4)
MAX_PAGES = 10_000


class VultrError(ProviderError):
    """Base of every error this adapter raises.  Messages never carry the API key."""

    provider = "vultr"

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None,
                 outcome_unknown: bool | None = None) -> None:
        super().__init__(message, retry_after=retry_after, outcome_unknown=outcome_unknown)
        self.status = status


class VultrTransient(VultrError, TransientError):
    """Retried by the policy.  ``outcome_unknown``: the request may have been applied."""


class VultrRateLimited(VultrTransient):
    """429: certainly not applied; ``retry_after`` seconds if the server said so."""

    outcome_unknown = False


class VultrPermanent(VultrError, PermanentError):
    """4xx other than 429, or a reply we cannot use: retrying will not help."""


class VultrAuthError(VultrPermanent):
    """401/403: bad API key, or this machine's IP is not on the key's allow-list."""


class VultrNotFound(VultrPermanent):
    """404."""


class VultrConflict(VultrPermanent):
    """409."""


@dataclass(frozen=True)
class Instance:
    id: str
    label: str
    tags: tuple[str, ...]
    region: str
    plan: str
    main_ip: str
    status: str
    power_status: str
    server_status: str
    date_created: str
    os_id: int | None = None
    hostname: str = ""
    # Only the create reply carries it (REFERENCE §1.3); never log or repr it.
    default_password: str | None = field(default=None, repr=False, compare=False)

    @property
    def is_ready(self) -> bool:
        """Booted, running, healthy and with a real address (SSH may still need a moment)."""
        return (self.status, self.power_status, self.server_status) == ("active", "running", "ok") \
            and self.main_ip not in ("", "0.0.0.0")


@dataclass(frozen=True)
class Snapshot:
    id: str
    description: str
    status: str
    size: int
    compressed_size: int
    os_id: int | None
    date_created: str


@dataclass(frozen=True)
class Region:
    id: str
    city: str
    country: str
    continent: str


@dataclass(frozen=True)
class Plan:
    id: str
    vcpu_count: int
    ram: int
    disk: int
    bandwidth: int
    monthly_cost: float
    type: str
    locations: tuple[str, ...]


@dataclass(frozen=True)
class OperatingSystem:
    id: int
    name: str
    arch: str
    family: str


class _Transport(requests.adapters.HTTPAdapter):
    """Our timeout on every request (the SDK fixes 10 s) and the last reply kept for its headers."""

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self.timeout = timeout
        self.last_response: requests.Response | None = None

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        self.last_response = None
        kwargs["timeout"] = self.timeout
        self.last_response = response = super().send(request, *args, **kwargs)
        return response


def _environment_read_once(session: requests.Session, base_url: str) -> None:
    """The proxy and CA settings of the environment, read now for our one base URL by requests' own
    rule (``merge_environment_settings``), instead of by requests on every request: its
    per-request read walks the whole environment (and looks for a ~/.netrc), which was a third of
    each Vultr call's CPU. A netrc entry is never used: the API key is the only credential sent."""
    found = session.merge_environment_settings(base_url, {}, None, None, None)
    session.proxies, session.verify = found["proxies"], found["verify"]
    session.trust_env = False


class VultrCloud:
    """Vultr v2 operations the provisioner needs.  Thread-safe; create one per process."""

    def __init__(self, api_key: str, base_url: str = "https://api.vultr.com/v2",
                 rate_limiter: Limiter | None = None, retry_policy: retry.RetryPolicy = retry.DEFAULT_POLICY,
                 timeout: float = DEFAULT_TIMEOUT, *, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic, catalog_ttl: float = CATALOG_TTL_SECONDS,
                 per_page: int = PER_PAGE) -> None:
        if not api_key:
            # vultr-python would silently fall back to $VULTR_API_KEY; we never want that.
            raise ValueError("api_key must not be empty")
        self._api_key = api_key
        self.base_url = base_url.rstrip("/")
        self._limiter = rate_limiter or RateLimiter.vultr_default()
        self._policy, self._timeout, self._per_page = retry_policy, timeout, per_page
        self._sleep, self._clock, self._catalog_ttl = sleep, clock, catalog_ttl
        self._local = threading.local()
        self._cache: dict[str, tuple[float, list[Any]]] = {}

    def __repr__(self) -> str:
        return f"VultrCloud(base_url={self.base_url!r})"

    @property
    def rate_limiter(self) -> Limiter:
        """The bucket every call of this adapter takes a token from."""
        return self._limiter

    def create_instance(self, label: str, *, region: str, plan: str, user_data: str, tags: Iterable[str] = (),
                        os_id: int | None = None, snapshot_id: str | None = None,
                        ssh_key_ids: Iterable[str] = (), hostname: str | None = None) -> Instance:
        """POST /instances, one attempt only.  The result carries ``default_password``."""
        if (os_id is None) == (snapshot_id is None):
            raise ValueError("give exactly one of os_id and snapshot_id")
        body: dict[str, Any] = {
            "region": region, "plan": plan, "label": label, "hostname": hostname or label,
            "tags": list(tags), "sshkey_id": list(ssh_key_ids),
            "user_data": base64.b64encode(user_data.encode("utf-8")).decode("ascii"),
            "backups": "disabled",  # omitted -> 400 (REFERENCE §1.2)
            "enable_ipv6": False, "activation_email": False,
            **({"os_id": os_id} if os_id is not None else {"snapshot_id": snapshot_id}),
        }
        log.info("creating Vultr instance label=%s region=%s plan=%s", label, region, plan)
        rest = {k: v for k, v in body.items() if k not in ("region", "plan")}
        inst = _instance(_dict(self._call("POST /instances", lambda sdk: sdk.create_instance(region, plan, **rest),
                                          idempotent=False), "POST /instances"))
        log.info("created Vultr instance id=%s label=%s", inst.id, inst.label)
        return inst

    def get_instance(self, instance_id: str) -> Instance:
        what = f"GET /instances/{instance_id}"
        return _instance(_dict(self._call(what, lambda sdk: sdk.get_instance(instance_id)), what))

    def list_instances(self, *, label: str | None = None, tag: str | None = None) -> list[Instance]:
        """All instances matching the exact filters, following the cursor to the last page.

        ``label`` is filtered by the API; ``tag`` here, against each instance's ``tags``: the
        API's ``tag`` filter is deprecated (it belongs to the single legacy ``tag`` field).
        """
        params = {"label": label} if label is not None else {}
        found = [_instance(i) for i in self._paginate("/instances", "instances", params)]
        return [i for i in found if tag is None or tag in i.tags]

    def delete_instance(self, instance_id: str) -> bool:
        """True if this call deleted it, False if it was already gone (404)."""
        what = f"DELETE /instances/{instance_id}"
        return self._gone_is_fine(what, lambda: self._call(what, lambda sdk: sdk.delete_instance(instance_id)))

    def halt_instance(self, instance_id: str) -> None:
        self._request("POST", f"/instances/{instance_id}/halt")

    def start_instance(self, instance_id: str) -> None:
        self._request("POST", f"/instances/{instance_id}/start")

    def reboot_instance(self, instance_id: str) -> None:
        """Reboot (204, REFERENCE §1.8); the instance keeps its id, address and disk."""
        self._request("POST", f"/instances/{instance_id}/reboot")

    def reinstall_instance(self, instance_id: str, hostname: str | None = None) -> Instance:
        """Same id and IP, fresh disk from the same OS (REFERENCE §1.8)."""
        body = {"hostname": hostname} if hostname else {}
        return _instance(self._one("POST", f"/instances/{instance_id}/reinstall", "instance", body))

    def bandwidth(self, instance_id: str) -> dict[dt.date, tuple[int, int]]:
        """Per UTC day of the current month: (incoming_bytes, outgoing_bytes)."""
        days = self._one("GET", f"/instances/{instance_id}/bandwidth", "bandwidth")
        try:
            return {dt.date.fromisoformat(day): (int(v.get("incoming_bytes", 0)), int(v.get("outgoing_bytes", 0)))
                    for day, v in days.items()}
        except (AttributeError, TypeError, ValueError) as exc:
            raise VultrPermanent(f"vultr GET /instances/{instance_id}/bandwidth: unexpected shape") from exc

    def create_snapshot(self, instance_id: str, description: str) -> Snapshot:
        # One attempt too; a lost reply is resolved by list_snapshots(description=...).
        body = {"instance_id": instance_id, "description": description}
        return _snapshot(self._one("POST", "/snapshots", "snapshot", body, idempotent=False))

    def get_snapshot(self, snapshot_id: str) -> Snapshot:
        return _snapshot(self._one("GET", f"/snapshots/{snapshot_id}", "snapshot"))

    def list_snapshots(self, description: str | None = None) -> list[Snapshot]:
        params = {"description": description} if description is not None else {}
        return [_snapshot(s) for s in self._paginate("/snapshots", "snapshots", params)]

    def delete_snapshot(self, snapshot_id: str) -> bool:
        path = f"/snapshots/{snapshot_id}"
        return self._gone_is_fine(f"DELETE {path}", lambda: self._request("DELETE", path))

    def regions(self) -> list[Region]:
        return [Region(r["id"], r.get("city", ""), r.get("country", ""), r.get("continent", ""))
                for r in self._cached("/regions", "regions")]

    def plans(self) -> list[Plan]:
        return [Plan(p["id"], int(p.get("vcpu_count", 0)), int(p.get("ram", 0)), int(p.get("disk", 0)),
                     int(p.get("bandwidth", 0)), float(p.get("monthly_cost", 0)), p.get("type", ""),
                     tuple(p.get("locations", ()))) for p in self._cached("/plans", "plans")]

    def operating_systems(self) -> list[OperatingSystem]:
        return [OperatingSystem(int(o["id"]), o.get("name", ""), o.get("arch", ""), o.get("family", ""))
                for o in self._cached("/os", "os")]

    def os_id(self, name: str) -> int:
        """OS id by exact name (ids change; REFERENCE §1.7).  VultrNotFound if absent."""
        for os_ in self.operating_systems():
            if os_.name == name:
                return os_.id
        raise VultrNotFound(f"no Vultr OS named {name!r}")

    def _client(self) -> tuple[Vultr, _Transport]:
        """This thread's SDK client (a requests session is not thread-safe) and its transport."""
        pair: tuple[Vultr, _Transport] | None = getattr(self._local, "client", None)
        if pair is None:
            sdk, transport = Vultr(self._api_key), _Transport(self._timeout)
            sdk.url = self.base_url  # the SDK's documented way to point it elsewhere
            # The one reach past the SDK's surface: it offers no session, timeout or hook.
            sdk._session.mount(self.base_url + "/", transport)
            _environment_read_once(sdk._session, self.base_url)
            pair = self._local.client = (sdk, transport)
        return pair

    def _call(self, what: str, fn: Callable[[Vultr], Any], *, idempotent: bool = True) -> Any:
        """One SDK call, rate limited, under the retry policy, with its errors translated."""

        def attempt() -> Any:
            self._limiter.acquire()
            sdk, transport = self._client()
            try:
                return fn(sdk)
            except VultrException as exc:
                response = transport.last_response
                retry_after = response.headers.get("Retry-After") if response is not None else None
                raise _from_status(what, exc.status, exc.error, retry_after) from exc
            except requests.Timeout as exc:
                raise VultrTransient(f"vultr {what}: no reply within {self._timeout:g}s") from exc
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
                raise VultrTransient(f"vultr {what}: connection failed ({type(exc).__name__})") from exc
            except requests.JSONDecodeError as exc:
                raise VultrTransient(f"vultr {what}: reply body is not valid JSON") from exc
            except requests.RequestException as exc:
                raise VultrPermanent(f"vultr {what}: request failed ({type(exc).__name__})") from exc
            except (KeyError, TypeError) as exc:
                # An SDK helper indexing a reply that is text (wrong Content-Type) or lacks its key.
                raise VultrPermanent(f"vultr {what}: reply has no usable JSON object") from exc

        return retry.call(attempt, self._policy, idempotent=idempotent, what=f"vultr {what}", sleep=self._sleep)

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None,
                 params: dict[str, Any] | None = None, *, idempotent: bool = True) -> Any:
        """The SDK's generic ``get``/``post``/``delete``, for what it has no helper for.

        vultr-python 0.2.0 has helpers for instances, the catalogue, SSH keys and startup
        scripts only: none for snapshots, bandwidth, halt/start or reinstall, and its list
        helpers return the bare list without ``meta``, so they cannot follow a cursor.
        """
        calls: dict[str, Callable[[Vultr], Any]] = {
            "GET": lambda sdk: sdk.get(path, params), "POST": lambda sdk: sdk.post(path, **(body or {})),
            "DELETE": lambda sdk: sdk.delete(path)}
        return self._call(f"{method} {path}", calls[method], idempotent=idempotent)

    def _one(self, method: str, path: str, key: str, body: dict[str, Any] | None = None,
             *, idempotent: bool = True) -> dict[str, Any]:
        data = self._request(method, path, body, idempotent=idempotent)
        return _dict(_dict(data, f"{method} {path}"), f"{method} {path}", key)

    @staticmethod
    def _gone_is_fine(what: str, delete: Callable[[], object]) -> bool:
        try:
            delete()
        except VultrNotFound:
            log.info("vultr %s: already gone", what)
            return False
        return True

    def _paginate(self, path: str, key: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        cursor, seen = "", set()
        for _ in range(MAX_PAGES):
            query = {**params, "per_page": self._per_page, **({"cursor": cursor} if cursor else {})}
            page = _dict(self._request("GET", path, params=query), f"GET {path}")
            batch = page.get(key)
            if not isinstance(batch, list):
                raise VultrPermanent(f"vultr GET {path}: reply has no {key!r} list")
            items.extend(batch)
            cursor = ((page.get("meta") or {}).get("links") or {}).get("next") or ""
            if not cursor:
                return items
            if cursor in seen:
                raise VultrPermanent(f"vultr GET {path}: pagination cursor repeats")
            seen.add(cursor)
        raise VultrPermanent(f"vultr GET {path}: more than {MAX_PAGES} pages")

    def _cached(self, path: str, key: str) -> list[Any]:
        # Plain dict get/set are atomic; two threads refreshing at once just fetch twice.
        now = self._clock()
        hit = self._cache.get(path)
        if hit is None or now - hit[0] >= self._catalog_ttl:
            hit = self._cache[path] = (now, self._paginate(path, key, {}))
        return hit[1]


_BY_STATUS: dict[int, type[VultrError]] = {
    401: VultrAuthError, 403: VultrAuthError, 404: VultrNotFound, 409: VultrConflict,
}


def _from_status(what: str, status: int, error: str, retry_after: str | None) -> VultrError:
    message = f"vultr {what}: HTTP {status}: {error[:200]}"
    if status == 429:
        return VultrRateLimited(message, status=429, outcome_unknown=False,
                                retry_after=retry.parse_retry_after(retry_after))
    cls = VultrTransient if status >= 500 else _BY_STATUS.get(status, VultrPermanent)
    return cls(message, status=status)


def _dict(data: Any, what: str, key: str | None = None) -> dict[str, Any]:
    """``data`` (or ``data[key]``) as a dict.  vultr-python hands back text when the reply's
    Content-Type is not exactly ``application/json`` -- that lands here as a non-dict."""
    inner = data.get(key) if key is not None and isinstance(data, dict) else data
    if not isinstance(inner, dict):
        raise VultrPermanent(f"vultr {what}: reply has no JSON object{f' {key!r}' if key else ''}")
    return inner


def _instance(d: dict[str, Any]) -> Instance:
    g = d.get
    if "id" not in d:
        raise VultrPermanent("vultr: instance object without an id")
    return Instance(
        id=str(d["id"]), label=g("label", ""), tags=tuple(g("tags") or ([g("tag")] if g("tag") else [])),
        region=g("region", ""), plan=g("plan", ""), main_ip=g("main_ip", ""), status=g("status", ""),
        power_status=g("power_status", ""), server_status=g("server_status", ""),
        date_created=g("date_created", ""), os_id=g("os_id"), hostname=g("hostname", ""),
        default_password=g("default_password") or None,
    )


def _snapshot(d: dict[str, Any]) -> Snapshot:
    g = d.get
    if "id" not in d:
        raise VultrPermanent("vultr: snapshot object without an id")
    return Snapshot(
        id=str(d["id"]), description=g("description", ""), status=g("status", ""), size=int(g("size") or 0),
        compressed_size=int(g("compressed_size") or 0), os_id=g("os_id"), date_created=g("date_created", ""),
    )
