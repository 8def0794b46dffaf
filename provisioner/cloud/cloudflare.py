"""Cloudflare DNS (API v4), behind one thin seam over the official SDK (``cloudflare`` 5.x).

Errors (nothing from the SDK or httpx escapes this module)::

    CloudflareError
    ├── CloudflareTransient          timeout, connection error, 5xx -- retried
    │   └── CloudflareRateLimited    429; ``retry_after`` from retry-after(-ms)
    └── CloudflarePermanent          other 4xx, unusable reply -- never retried
        ├── CloudflareAuthError      401/403 (9109 invalid token, 10000 no access)
        ├── CloudflareNotFound       404 (81044 record does not exist)
        └── CloudflareConflict       409
            └── CloudflareRecordExists  400 with 81057/81058/81053 on create/update

Every error carries ``status`` and ``codes`` (Cloudflare's numeric error codes).

Calls go through the SDK client's own HTTP verbs (``client.get/post/put/delete``, which its
README documents for endpoints without a typed method) with ``cast_to=object``: the same
client, auth, timeouts and error classes, but the replies are read here as the JSON they are.
The typed resources (``client.zones``, ``client.dns``) import some 300 modules and their
pydantic models on first use (~7 MB a process keeps for good), and parsing a record into the
SDK's union of twenty record types cost more CPU than the call's own work.

The SDK is built with ``max_retries=0`` so :func:`retry.call` is the only retry, and every
attempt takes a token from the shared :class:`RateLimiter` (1,200 requests / 5 min).
Record creates *are* retried: a create whose reply was lost comes back as 81058 on the
next attempt, and :meth:`CloudflareDNS.upsert_a` settles that by reading back.

Credentials: the SDK prefers ``X-Auth-Email``/``X-Auth-Key`` (also taken from the
``CLOUDFLARE_EMAIL``/``CLOUDFLARE_API_KEY`` environment) over the token (REFERENCE
§2.1), and merges ``CLOUDFLARE_CUSTOM_HEADERS`` last.  :class:`_TokenOnly` sends the
bearer token and nothing else, whatever the environment says.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote

import cloudflare as sdk
from cloudflare import Cloudflare, Omit

from provisioner.cloud import retry
from provisioner.cloud.errors import PermanentError, ProviderError, TransientError
from provisioner.cloud.ratelimit import Limiter, RateLimiter

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_TIMEOUT = 20.0
PER_PAGE = 100
# The DNS list documents per_page up to 5,000,000; 50,000 keeps one page's parse (pydantic models)
# to seconds and tens of MB while a 100,000-record zone is still two calls.
LARGE_PAGE = 50_000
MAX_PAGES = 10_000
UPSERT_ROUNDS = 3
# Records one batch may carry on Cloudflare's free plan (Pro and above: 3,500); one batch is
# one request against the 1,200 / 5 min limit, whatever it carries.
MAX_BATCH = 200
RECORD_EXISTS_CODES = frozenset({81057, 81058, 81053})
RECORD_MISSING_CODE = 81044
_AUTH_HEADERS = ("authorization", "x-auth-key", "x-auth-email", "x-auth-user-service-key")


class CloudflareError(ProviderError):
    """Base of every error this adapter raises.  Messages never carry the token."""

    provider = "cloudflare"

    def __init__(self, message: str, *, status: int | None = None, codes: tuple[int, ...] = (),
                 retry_after: float | None = None, outcome_unknown: bool | None = None) -> None:
        super().__init__(message, retry_after=retry_after, outcome_unknown=outcome_unknown)
        self.status = status
        self.codes = codes


class CloudflareTransient(CloudflareError, TransientError):
    """Retried by the policy."""


class CloudflareRateLimited(CloudflareTransient):
    """429: Cloudflare blocks the token for up to 5 minutes."""

    outcome_unknown = False


class CloudflarePermanent(CloudflareError, PermanentError):
    """Retrying will not help."""


class CloudflareAuthError(CloudflarePermanent):
    """401/403: bad token, or the token may not touch this zone."""


class CloudflareNotFound(CloudflarePermanent):
    """404."""


class CloudflareConflict(CloudflarePermanent):
    """409, or a record that clashes with one that exists."""


class CloudflareRecordExists(CloudflareConflict):
    """81057 "Record already exists." / 81058 "An identical record already exists."."""


@dataclass(frozen=True)
class DnsRecord:
    id: str
    name: str
    type: str
    content: str
    ttl: int
    proxied: bool


class _TokenOnly(Cloudflare):
    """The SDK client, authenticating with the bearer token only (see module docstring)."""

    @property
    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_token}"}

    @property
    def default_headers(self) -> dict[str, str | Omit]:
        headers = {k: v for k, v in super().default_headers.items() if k.lower() not in _AUTH_HEADERS}
        return {**headers, **self.auth_headers}

    def __repr__(self) -> str:
        return f"<cloudflare client {self.base_url}>"


class CloudflareDNS:
    """A records in one zone.  Thread-safe; create one per process."""

    def __init__(self, api_token: str, zone_id: str, base_url: str = "https://api.cloudflare.com/client/v4",
                 ttl: int = 120, rate_limiter: Limiter | None = None,
                 retry_policy: retry.RetryPolicy = retry.DEFAULT_POLICY, timeout: float = DEFAULT_TIMEOUT,
                 *, sleep: Callable[[float], None] = time.sleep, per_page: int = PER_PAGE) -> None:
        if not api_token:
            raise ValueError("api_token must not be empty")
        self.zone_id = zone_id
        self._zone_path = "/zones/" + _segment(zone_id, "zone_id")
        self._records_path = self._zone_path + "/dns_records"
        self.ttl = ttl
        self.base_url = base_url
        self._client = _TokenOnly(api_token=api_token, base_url=base_url, max_retries=0, timeout=timeout)
        # Also clear what the constructor picked up from the environment.
        self._client.api_key = self._client.api_email = self._client.user_service_key = None
        self._limiter = rate_limiter or RateLimiter.cloudflare_default()
        self._policy = retry_policy
        self._sleep = sleep
        self._per_page = per_page

    def __repr__(self) -> str:
        return f"CloudflareDNS(zone_id={self.zone_id!r}, base_url={self.base_url!r})"

    @property
    def rate_limiter(self) -> Limiter:
        """The bucket every call of this adapter takes a token from."""
        return self._limiter

    def zone_name(self) -> str:
        """The zone's domain; a cheap start-up check that the token may read the zone."""
        zone = self._call("GET zone", lambda: _result("GET zone", self._client.get(self._zone_path, cast_to=object)))
        if not isinstance(zone, dict) or not zone.get("name") or not isinstance(zone["name"], str):
            raise CloudflarePermanent("cloudflare GET zone: reply has no zone")
        return zone["name"]

    def upsert_a(self, name: str, ip: str) -> str:
        """Make ``name`` resolve to ``ip`` (one unproxied A record); return the record id.

        Same content already there: no write.  Other content: update in place.  None:
        create; a create answered "already exists" (another worker, or our own earlier
        attempt whose reply was lost) is settled by reading back.  Extra A records of the
        same name (left by old races) are deleted so the name never round-robins.
        """
        name = normal_name(name)
        for _ in range(UPSERT_ROUNDS):
            found = [r for r in self.list_by_name(name) if r.type == "A"]
            keep = next((r for r in found if r.content == ip), found[0] if found else None)
            for extra in found:
                if extra is not keep:
                    log.warning("deleting duplicate A record %s for %s (%s)", extra.id, name, extra.content)
                    self.delete(extra.id)
            try:
                if keep is None:
                    record = self._write("POST", name, ip)
                    log.info("created A %s -> %s (record %s)", name, ip, record.id)
                    return record.id
                if keep.content == ip and not keep.proxied:
                    return keep.id
                self._write("PUT", name, ip, keep.id)
                log.info("updated A %s: %s -> %s (record %s)", name, keep.content, ip, keep.id)
                return keep.id
            except CloudflareRecordExists as exc:
                log.info("A %s: %s; reading back", name, exc)
            except CloudflareNotFound:
                log.info("A %s: record %s vanished while updating; reading back", name, keep and keep.id)
        raise CloudflareConflict(f"cloudflare: A record for {name} did not settle in {UPSERT_ROUNDS} rounds")

    def point_a(self, name: str, ip: str, record_id: str | None = None) -> str:
        """:meth:`upsert_a` in one write on the happy path; returns the record id.

        With the id of the record we made before (a rebuild moving the name): PUT it. Without
        (a new server's name, which only we create): POST. A reply that says the record is
        not as we thought -- it already exists (our own earlier attempt whose reply was lost,
        or another worker), or the known one vanished -- falls back to :meth:`upsert_a`,
        which reads the name back and settles it (and removes duplicates)."""
        name = normal_name(name)
        try:
            if record_id:
                self._write("PUT", name, ip, record_id)
                log.info("updated A %s -> %s (record %s)", name, ip, record_id)
                return record_id
            record = self._write("POST", name, ip)
            log.info("created A %s -> %s (record %s)", name, ip, record.id)
            return record.id
        except (CloudflareRecordExists, CloudflareNotFound) as exc:
            log.info("A %s: %s; reading back", name, exc)
        return self.upsert_a(name, ip)

    def point_a_many(self, writes: Sequence[tuple[str, str, str | None]]) -> list[str]:
        """Several :meth:`point_a` writes, ``(name, ip, known record id or None)`` each, in one
        request (``POST /dns_records/batch``): a PUT for each known record, a POST for each new
        name. Returns the record ids in the order given.

        Cloudflare applies a batch in one transaction: any refusal (a name that already has its
        record, a record that vanished) rolls all of it back, and the error is raised as it came
        (:class:`CloudflareError`). The caller then writes each name on its own with
        :meth:`point_a`, which settles those cases by reading back; a batch whose reply was
        lost is settled the same way (its creates come back "already exists")."""
        if not writes or len(writes) > MAX_BATCH:
            raise ValueError(f"a batch holds 1 to {MAX_BATCH} writes, got {len(writes)}")
        names = [normal_name(name) for name, _, _ in writes]
        if len(set(names)) != len(names):
            raise ValueError("a batch writes each name once")
        puts: list[Any] = []
        posts: list[Any] = []
        for name, (_, ip, record_id) in zip(names, writes, strict=True):
            record: dict[str, Any] = {"name": name, "type": "A", "content": ip, "ttl": self.ttl, "proxied": False}
            if record_id:
                puts.append({"id": record_id, **record})
            else:
                posts.append(record)
        what = f"POST batch of {len(writes)} A records"
        result = self._call(what, lambda: _result(what, self._client.post(
            self._records_path + "/batch", cast_to=object, body={"puts": puts, "posts": posts})))
        if not isinstance(result, dict):
            raise CloudflarePermanent(f"cloudflare {what}: unusable reply (result is not an object)")
        # matched by name (each name is written once in a batch), not by position in the reply
        written = {r.name: r.id for r in map(_record, [*_records(what, result.get("puts")),
                                                      *_records(what, result.get("posts"))])}
        missing = [name for name in names if name not in written]
        if missing:
            raise CloudflarePermanent(f"cloudflare POST batch: the reply lacks the records of {', '.join(missing)}")
        for name, (_, ip, record_id) in zip(names, writes, strict=True):
            log.info("%s A %s -> %s (record %s, in a batch)", "updated" if record_id else "created", name, ip,
                     written[name])
        return [written[name] for name in names]

    def delete(self, record_id: str) -> bool:
        """True if this call deleted it; False if it was already gone (404 / 81044)."""
        try:
            path = self._records_path + "/" + _segment(record_id, "record_id")
            self._call(f"DELETE record {record_id}", lambda: self._client.delete(path, cast_to=object))
        except CloudflareNotFound:
            log.info("cloudflare DELETE record %s: already gone", record_id)
            return False
        return True

    def list_by_name(self, name: str) -> list[DnsRecord]:
        """Every record (any type) whose name is exactly ``name``."""
        name = normal_name(name)
        return [r for r in self._list({"exact": name}) if r.name == name]

    def list_records(self, name_suffix: str | None = None) -> list[DnsRecord]:
        """Every record in the zone, or those whose name ends with ``name_suffix``."""
        if name_suffix is None:
            return self._list(None)
        suffix = normal_name(name_suffix)
        return [r for r in self._list({"endswith": suffix}) if r.name.endswith(suffix)]

    def _list(self, name_filter: dict[str, str] | None) -> list[DnsRecord]:
        # Paged by hand (not the SDK's iterator) so every page is rate limited and retried.
        # The client writes a nested parameter with dots (name.exact=...), as the API wants.
        records: list[DnsRecord] = []
        for page in range(1, MAX_PAGES + 1):
            params: dict[str, Any] = {"page": page, "per_page": self._per_page}
            if name_filter is not None:
                params["name"] = name_filter
            what = f"GET records page {page}"

            def fetch(params: dict[str, Any] = params, what: str = what) -> dict[str, Any]:
                return _envelope(what, self._client.get(self._records_path, cast_to=object,
                                                        options={"params": params}))
            reply = self._call(what, fetch)
            batch = _records(what, reply.get("result"))
            records.extend(_record(r) for r in batch)
            info = reply.get("result_info")
            total_pages = info.get("total_pages") if isinstance(info, dict) else None
            if not batch or (isinstance(total_pages, int | float) and page >= total_pages):
                return records
        raise CloudflarePermanent(f"cloudflare GET records: more than {MAX_PAGES} pages")

    def _write(self, method: str, name: str, ip: str, record_id: str | None = None) -> DnsRecord:
        what = f"{method} record {name}"
        body = {"name": name, "type": "A", "content": ip, "ttl": self.ttl, "proxied": False}
        if record_id is None:
            def send() -> Any:
                return _result(what, self._client.post(self._records_path, cast_to=object, body=body))
        else:
            path = self._records_path + "/" + _segment(record_id, "record_id")

            def send() -> Any:
                return _result(what, self._client.put(path, cast_to=object, body=body))
        result = self._call(what, send)
        if result is None:
            raise CloudflarePermanent(f"cloudflare {what}: reply has no record")
        return _record(result)

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        def attempt() -> T:
            self._limiter.acquire()
            try:
                return fn()
            except sdk.CloudflareError as exc:
                raise _translate(what, exc) from exc

        return retry.call(attempt, self._policy, what=f"cloudflare {what}", sleep=self._sleep)


def _translate(what: str, exc: sdk.CloudflareError) -> CloudflareError:
    if isinstance(exc, sdk.APITimeoutError):
        return CloudflareTransient(f"cloudflare {what}: timed out")
    if isinstance(exc, sdk.APIConnectionError):
        return CloudflareTransient(f"cloudflare {what}: connection failed")
    if not isinstance(exc, sdk.APIStatusError):
        return CloudflarePermanent(f"cloudflare {what}: unusable reply ({type(exc).__name__})")
    status = exc.status_code
    errors = getattr(exc, "errors", None) or []
    codes = tuple(int(e.code) for e in errors if getattr(e, "code", None) is not None)
    text = "; ".join(f"{e.code} {e.message}" for e in errors)[:300] or "no error detail"
    message = f"cloudflare {what}: HTTP {status}: {text}"
    if status == 429:
        wait = _retry_after(exc.response.headers)
        return CloudflareRateLimited(message, status=status, codes=codes, retry_after=wait, outcome_unknown=False)
    if status >= 500:
        return CloudflareTransient(message, status=status, codes=codes)
    if RECORD_EXISTS_CODES & set(codes):
        return CloudflareRecordExists(message, status=status, codes=codes)
    if status == 404 or RECORD_MISSING_CODE in codes:
        return CloudflareNotFound(message, status=status, codes=codes)
    cls: type[CloudflareError] = {401: CloudflareAuthError, 403: CloudflareAuthError,
                                  409: CloudflareConflict}.get(status, CloudflarePermanent)
    return cls(message, status=status, codes=codes)


def _retry_after(headers: Any) -> float | None:
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    return retry.parse_retry_after(headers.get("retry-after"))


def _envelope(what: str, reply: object) -> dict[str, Any]:
    """A v4 reply's JSON object (``success``, ``errors``, ``result``...); anything else is unusable."""
    if not isinstance(reply, dict) or "result" not in reply:
        raise CloudflarePermanent(f"cloudflare {what}: unusable reply (not a v4 result)")
    return reply


def _result(what: str, reply: object) -> Any:
    return _envelope(what, reply)["result"]


def _records(what: str, value: object) -> list[Any]:
    """A list of records in a reply (absent or null: none)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise CloudflarePermanent(f"cloudflare {what}: unusable reply (records are not a list)")
    return value


def _record(r: Any) -> DnsRecord:
    if not isinstance(r, dict):
        raise CloudflarePermanent("cloudflare: a record that is not an object")
    record_id = r.get("id")
    if not record_id or not isinstance(record_id, str):
        raise CloudflarePermanent("cloudflare: record without an id")
    try:
        return DnsRecord(
            id=record_id, name=str(r.get("name") or "").lower(), type=str(r.get("type") or ""),
            content=str(r.get("content") or ""), ttl=int(r.get("ttl") or 0), proxied=bool(r.get("proxied")))
    except (TypeError, ValueError):
        raise CloudflarePermanent(f"cloudflare: record {record_id} has an unusable ttl") from None


def _segment(value: str, what: str) -> str:
    """``value`` as one path segment: percent-encoded, never empty or a dot segment."""
    if not value or value in (".", ".."):
        raise ValueError(f"{what} must be a non-empty id, got {value!r}")
    return quote(value, safe="")


def normal_name(name: str) -> str:
    """A record name as Cloudflare stores it: no surrounding space, no final dot, lower case."""
    return name.strip().rstrip(".").lower()
