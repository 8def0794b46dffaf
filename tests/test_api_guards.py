"""Bad input, limits and the service endpoints: one JSON error shape, never a 500, nothing
half-written; body size, rate limits, CORS, security headers, metrics and health."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from dashboard_api.guards import SlidingWindowLimiter
from tests.fixtures.api import *  # noqa: F403
from tests.fixtures.api import OWNER, STOREFRONT, ApiEnv, build_env, live_server


def assert_error_shape(r, status: int) -> None:  # noqa: ANN001
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


def _state(env: ApiEnv) -> tuple:
    row = env.row("g0001")
    return (row.rebuild_now_status, row.rebuild_schedule, row.rebuild_schedule_location, row.version,
            len(env.events("g0001")))


BAD_BODIES = [
    pytest.param(b"{not json", "application/json", id="malformed-json"),
    pytest.param(b"", "application/json", id="empty-body"),
    pytest.param(b"[]", "application/json", id="array"),
    pytest.param(b'"ams"', "application/json", id="bare-string"),
    pytest.param(b"null", "application/json", id="null"),
    pytest.param(b'{"location": 5}', "application/json", id="wrong-type"),
    pytest.param(b'{"location": true}', "application/json", id="bool"),
    pytest.param(b'{"location": {"$ne": 1}}', "application/json", id="object"),
    pytest.param(b'{"location": "ams", "force": true}', "application/json", id="unknown-field"),
    pytest.param(b'{"location": "' + b"a" * 5000 + b'"}', "application/json", id="long-string"),
    pytest.param(b'{"location": "ams\\u0000"}', "application/json", id="nul"),
    pytest.param(b'{"location": "\xff\xfe"}', "application/json", id="bad-utf8"),
    pytest.param(b"location=ams", "application/x-www-form-urlencoded", id="form"),
    pytest.param(b'{"location": "ams"}', "text/plain", id="text-plain"),
    pytest.param(b"{" * 5000, "application/json", id="deep-nesting"),
]


@pytest.mark.parametrize(("body", "content_type"), BAD_BODIES)
@pytest.mark.parametrize("endpoint", [("POST", "/api/servers/g0001/rebuild"), ("PUT", "/api/servers/g0001/schedule")],
                         ids=["rebuild", "schedule"])
def test_it_rejects_bad_bodies_with_422_and_writes_nothing(api_env: ApiEnv, owner: dict[str, str], body: bytes,
                                                           content_type: str, endpoint: tuple[str, str]) -> None:
    before = _state(api_env)
    r = api_env.client.request(endpoint[0], endpoint[1], content=body,
                               headers={**owner, "Content-Type": content_type})
    assert_error_shape(r, 422)
    assert _state(api_env) == before


@pytest.mark.parametrize("name", ["g0001;drop", "../etc/passwd", "%00", "-g0001", "g" * 300, "é"])
def test_it_rejects_odd_server_names_without_a_500(api_env: ApiEnv, owner: dict[str, str], name: str) -> None:
    r = api_env.client.post(f"/api/servers/{name}/rebuild", headers=owner, json={"location": "ams"})
    assert r.status_code in (404, 422)
    assert set(r.json()) == {"error"}


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/nope", 404), ("GET", "/api/servers/g0001", 404), ("DELETE", "/api/servers", 405),
    ("PATCH", "/api/servers/g0001/schedule", 405), ("GET", "/static/missing.js", 404),
])
def test_it_answers_unknown_routes_in_the_error_shape(api_env: ApiEnv, owner: dict[str, str], method: str,
                                                      path: str, status: int) -> None:
    assert_error_shape(api_env.client.request(method, path, headers=owner), status)


# --- body size ----------------------------------------------------------------------------------

def test_it_refuses_a_declared_oversized_body_before_reading_it(api_env: ApiEnv, owner: dict[str, str]) -> None:
    limit = api_env.settings.api.max_body_bytes
    before = _state(api_env)
    big = b'{"location": "' + b"a" * limit + b'"}'
    r = api_env.client.post("/api/servers/g0001/rebuild", headers={**owner, "Content-Type": "application/json"},
                            content=big)
    assert_error_shape(r, 413)
    assert _state(api_env) == before


def test_it_refuses_an_oversized_chunked_body(api_env: ApiEnv, owner: dict[str, str]) -> None:
    limit = api_env.settings.api.max_body_bytes

    def chunks():  # noqa: ANN202 - no Content-Length: httpx sends it chunked
        yield b'{"location": "'
        for _ in range(limit // 1000 + 2):
            yield b"a" * 1000
        yield b'"}'

    r = api_env.client.post("/api/servers/g0001/rebuild", headers={**owner, "Content-Type": "application/json"},
                            content=chunks())
    assert_error_shape(r, 413)
    assert api_env.row("g0001").rebuild_now_status is False


def test_it_refuses_an_oversized_chunked_body_over_real_http(api_env: ApiEnv, owner: dict[str, str]) -> None:
    limit = api_env.settings.api.max_body_bytes
    with live_server(api_env.api) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            head = (f"POST /api/servers/g0001/rebuild HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    f"Authorization: {owner['Authorization']}\r\nContent-Type: application/json\r\n"
                    f"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
            sock.sendall(head.encode())
            chunk = b"a" * 4096
            # Send just past the limit and stop: had we kept sending, bytes the server never
            # read would make its kernel answer our data with a TCP reset, racing the 413.
            for _ in range(limit // len(chunk) + 1):
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            answer = b""
            while data := sock.recv(65536):
                answer += data
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 413"), answer[:300]
    assert b'"code":"body_too_large"' in rest


def test_it_accepts_a_body_at_the_limit(tmp_path: Path) -> None:
    env = build_env(tmp_path, max_body_bytes=256)
    env.add_server(OWNER, "g0001")
    body = b'{"location": "ams"}' + b" " * (256 - 19)
    r = env.client.post("/api/servers/g0001/rebuild", headers={**env.headers(), "Content-Type": "application/json"},
                        content=body)
    assert r.status_code == 202
    env.app.engine.dispose()


# --- rate limits --------------------------------------------------------------------------------

def test_it_rate_limits_each_client_address(tmp_path: Path) -> None:
    env = build_env(tmp_path, requests_per_minute=5)
    for _ in range(5):
        assert env.client.get("/api/config").status_code == 200
    r = env.client.get("/api/config")
    assert_error_shape(r, 429)
    assert 1 <= int(r.headers["retry-after"]) <= 60
    other = TestClient(env.api, client=("192.0.2.7", 40000))
    assert other.get("/api/config").status_code == 200
    env.app.engine.dispose()


def test_it_rate_limits_each_customer_across_addresses(tmp_path: Path) -> None:
    env = build_env(tmp_path, requests_per_minute=5)
    alice = env.headers(OWNER)
    for i in range(5):
        client = TestClient(env.api, client=(f"192.0.2.{i + 1}", 40000))
        assert client.get("/api/servers", headers=alice).status_code == 200
    r = TestClient(env.api, client=("192.0.2.99", 40000)).get("/api/servers", headers=alice)
    assert_error_shape(r, 429)
    assert r.headers["retry-after"]
    bob = TestClient(env.api, client=("192.0.2.100", 40000)).get("/api/servers", headers=env.headers("bob@x.test"))
    assert bob.status_code == 200
    env.app.engine.dispose()


def test_it_slides_the_rate_window() -> None:
    now = [0.0]
    limiter = SlidingWindowLimiter(3, 60.0, clock=lambda: now[0])
    assert [limiter.hit("k") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.hit("k") == pytest.approx(60.0)
    now[0] = 59.0
    assert limiter.hit("k") == pytest.approx(1.0)
    now[0] = 60.0
    assert limiter.hit("k") == 0.0
    assert limiter.hit("other") == 0.0


def test_it_counts_exactly_under_concurrency() -> None:
    limiter = SlidingWindowLimiter(500, 60.0)
    allowed = []
    lock = threading.Lock()

    def hammer() -> None:
        ok = sum(1 for _ in range(200) if limiter.hit("k") == 0.0)
        with lock:
            allowed.append(ok)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(allowed) == 500


def test_it_bounds_the_limiter_memory() -> None:
    now = [0.0]
    limiter = SlidingWindowLimiter(1, 60.0, clock=lambda: now[0], max_keys=100)
    for i in range(100):
        limiter.hit(f"k{i}")
    now[0] = 61.0
    limiter.hit("new")
    assert len(limiter._hits) == 1


# --- CORS and headers ---------------------------------------------------------------------------

def test_it_allows_cors_only_for_the_storefront_origin(api_env: ApiEnv, owner: dict[str, str]) -> None:
    ok = api_env.client.get("/api/servers", headers={**owner, "Origin": STOREFRONT})
    assert ok.headers["access-control-allow-origin"] == STOREFRONT
    evil = api_env.client.get("/api/servers", headers={**owner, "Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in evil.headers
    pre = api_env.client.options("/api/servers/g0001/rebuild", headers={
        "Origin": STOREFRONT, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert pre.status_code == 204 and pre.headers["access-control-allow-origin"] == STOREFRONT
    assert "POST" in pre.headers["access-control-allow-methods"]
    bad = api_env.client.options("/api/servers/g0001/rebuild", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in bad.headers
    assert_error_shape(bad, 405)
    assert "*" not in str(ok.headers.get("access-control-allow-origin"))


def test_it_sends_security_headers_on_the_page(api_env: ApiEnv) -> None:
    r = api_env.client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert f"frame-ancestors 'self' {STOREFRONT}" in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "no-referrer"
    js = api_env.client.get("/static/app.js")
    assert js.status_code == 200 and "content-security-policy" in js.headers
    api = api_env.client.get("/api/config")
    assert api.headers["cache-control"] == "no-store" and api.headers["x-content-type-options"] == "nosniff"


# --- service endpoints --------------------------------------------------------------------------

def test_it_reports_health(api_env: ApiEnv, tmp_path: Path) -> None:
    r = api_env.client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    from provisioner import db

    api_env.app.__dict__["engine"] = db.make_engine(f"sqlite:///{tmp_path}")  # a directory: cannot open
    assert_error_shape(api_env.client.get("/healthz"), 503)


def test_it_exports_metrics(api_env: ApiEnv, owner: dict[str, str]) -> None:
    api_env.client.get("/api/servers", headers=owner)
    api_env.client.get("/api/servers")
    api_env.client.get("/api/servers/g9999/ovpn", headers=owner)
    api_env.client.get("/no/such/thing")
    text = api_env.client.get("/metrics").text
    assert 'provisioner_api_requests_total{method="GET",route="/api/servers",status="200"} 1.0' in text
    assert 'provisioner_api_requests_total{method="GET",route="/api/servers",status="401"} 1.0' in text
    assert 'provisioner_api_requests_total{method="GET",route="/api/servers/{name}/ovpn",status="404"} 1.0' in text
    assert 'route="(unmatched)",status="404"' in text
    assert 'provisioner_api_request_duration_seconds_bucket{le="0.5",route="/api/servers"}' in text
    assert 'provisioner_servers{status="Running"} 2.0' in text
    assert 'provisioner_servers{status="Installing"} 1.0' in text


def test_it_finds_a_customers_servers_through_the_account_index(api_env: ApiEnv) -> None:
    from sqlalchemy import text

    from dashboard_api.queries import customer_servers_query

    q = customer_servers_query("1")
    sql = str(q.compile(api_env.app.engine, compile_kwargs={"literal_binds": True}))
    with api_env.app.engine.connect() as conn:
        plan = " ".join(str(row[-1]) for row in conn.execute(text("EXPLAIN QUERY PLAN " + sql)))
    assert "ix_provisioner_servers_account" in plan and "SCAN provisioner_servers" not in plan, plan
