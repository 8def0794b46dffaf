"""The read path's shortcuts behave exactly like what they replace: CustomerRead resolves the
token as FastAPI's HTTPBearer would and refuses endpoints it would resolve wrongly; the next
scheduled rebuild, remembered per slot, is what the calendar says at every instant; the
metrics' cached children count each label set apart."""

from __future__ import annotations

import asyncio
import datetime as dt
import random

import pytest
from fastapi import Depends, FastAPI, Response
from fastapi.security import HTTPBearer
from starlette.requests import Request

from dashboard_api import views
from dashboard_api.context import ApiState, CustomerRead, bearer_token, customer, state
from dashboard_api.metrics import ApiMetrics
from dashboard_api.tokens import Customer
from provisioner.schedule import SCHEDULES, next_slot
from tests.fixtures.api import *  # noqa: F403
from tests.fixtures.api import ApiEnv

HEADERS = [None, "", " ", "Bearer", "Bearer ", "Bearer  tok", "bearer tok", "BEARER tok", "BeArEr tok.en",
           "Bearer tok en", "Basic dXNlcjpwdw==", "Token tok", "Bearertok", " Bearer tok", "Bearer\ttok", "tok"]


@pytest.mark.parametrize("header", HEADERS)
def test_it_reads_the_bearer_token_exactly_as_httpbearer_does(header: str | None) -> None:
    raw = [] if header is None else [(b"authorization", header.encode())]
    request = Request({"type": "http", "method": "GET", "path": "/", "headers": raw, "query_string": b""})
    credentials = asyncio.run(HTTPBearer(auto_error=False)(request))
    assert bearer_token(header) == (credentials.credentials if credentials is not None else None)


async def _right(who: Customer = Depends(customer), st: ApiState = Depends(state)) -> Response:  # noqa: B008
    return Response(b"[]")


async def _with_query(limit: int, who: Customer = Depends(customer),  # noqa: B008
                      st: ApiState = Depends(state)) -> Response:  # noqa: B008
    return Response(b"[]")


async def _without_auth(st: ApiState = Depends(state)) -> Response:  # noqa: B008
    return Response(b"[]")


async def _other_names(caller: Customer = Depends(customer), st: ApiState = Depends(state)) -> Response:  # noqa: B008
    return Response(b"[]")


def _sync(who: Customer = Depends(customer), st: ApiState = Depends(state)) -> Response:  # noqa: B008
    return Response(b"[]")


def test_it_builds_a_customer_read_from_the_one_signature_it_resolves() -> None:
    FastAPI().router.add_api_route("/ok", _right, route_class_override=CustomerRead)


@pytest.mark.parametrize("endpoint", [_with_query, _without_auth, _other_names, _sync])
def test_it_refuses_a_customer_read_whose_parameters_it_would_skip(endpoint: object) -> None:
    with pytest.raises(TypeError, match="CustomerRead"):
        FastAPI().router.add_api_route("/x", endpoint, route_class_override=CustomerRead)  # type: ignore[arg-type]


def test_it_refuses_a_customer_read_with_route_dependencies() -> None:
    async def extra() -> None:
        return None

    with pytest.raises(TypeError, match="CustomerRead"):
        FastAPI().router.add_api_route("/x", _right, route_class_override=CustomerRead, dependencies=[Depends(extra)])


def test_the_read_routes_document_the_bearer_scheme_they_check(api_env: ApiEnv) -> None:
    paths = api_env.client.get("/openapi.json").json()["paths"]
    for path in ("/api/servers", "/api/locations"):
        assert paths[path]["get"]["security"] == [{"HTTPBearer": []}], path
        assert {"401", "429"} <= set(paths[path]["get"]["responses"]), path


@pytest.mark.parametrize("zone", ["America/New_York", "Europe/Berlin", "UTC"])
def test_the_remembered_next_slot_is_the_calendars_at_every_instant(zone: str) -> None:
    # Instants that walk forward across many slots (daily, weekly, monthly), with jumps back in
    # time between them (another app's clock, a test's frozen one), each asked for every schedule
    from zoneinfo import ZoneInfo

    rng = random.Random(11)
    start = dt.datetime(2025, 1, 30, 12, tzinfo=dt.UTC)
    instants = [start + dt.timedelta(hours=h) for h in range(0, 24 * 70, 5)]
    instants += [start + dt.timedelta(seconds=rng.randrange(0, 86_400 * 70)) for _ in range(300)]
    slots = [next_slot("daily", start + dt.timedelta(days=d), ZoneInfo(zone)) for d in range(60)]
    instants += [s + dt.timedelta(microseconds=d) for s in slots if s for d in (-1, 0, 1)]  # right at the edges
    for now in instants:
        for schedule in SCHEDULES:
            assert views._next(schedule, now, zone) == next_slot(schedule, now, ZoneInfo(zone)), (schedule, now)
    assert views._next("fortnightly", start, zone) is None


def test_the_metrics_count_each_label_set_apart(api_env: ApiEnv) -> None:
    metrics = ApiMetrics(lambda: api_env.app.sessions)
    for route, method, status in [("/api/servers", "GET", 200)] * 3 + [("/api/servers", "GET", 429),
                                                                           ("/api/servers", "POST", 200),
                                                                           ("/api/locations", "GET", 200)]:
        metrics.observe(route, method, status, 0.002)
    counts = {(s.labels["route"], s.labels["method"], s.labels["status"]): s.value
              for m in metrics.requests.collect() for s in m.samples if s.name.endswith("_total")}
    assert counts == {("/api/servers", "GET", "200"): 3, ("/api/servers", "GET", "429"): 1,
                      ("/api/servers", "POST", "200"): 1, ("/api/locations", "GET", "200"): 1}
    latency = {s.labels["route"]: s.value for m in metrics.latency.collect() for s in m.samples
               if s.name.endswith("_count")}
    assert latency == {"/api/servers": 5, "/api/locations": 1}
