"""The read path's shortcuts behave exactly like what they replace: CustomerRead resolves the
token as FastAPI's HTTPBearer would and refuses endpoints it would resolve wrongly."""

from __future__ import annotations

import asyncio

import pytest
from fastapi import Depends, FastAPI, Response
from fastapi.security import HTTPBearer
from starlette.requests import Request

from dashboard_api.context import ApiState, CustomerRead, bearer_token, customer, state
from dashboard_api.tokens import Customer
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
