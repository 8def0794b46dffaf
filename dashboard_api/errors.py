"""One error shape everywhere: ``{"error": {"code": "...", "message": "human text"}}``.

Our own errors (:class:`ApiError`), FastAPI's validation errors, Starlette's 404/405 for
unknown routes and anything unexpected (500, logged with its traceback) all leave here in
that shape, so the page and API clients have one thing to parse.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

_STATUS_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
    406: "not_acceptable", 409: "conflict", 413: "body_too_large", 415: "unsupported_media_type",
    422: "invalid_input", 429: "rate_limited", 500: "internal_error", 503: "unavailable",
}


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = dict(headers or {})


def error_response(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status,
                        headers={"Cache-Control": "no-store", **(headers or {})})


def error_bytes(code: str, message: str) -> bytes:
    """The body of an error sent by raw ASGI middleware (before routing)."""
    import json

    return json.dumps({"error": {"code": code, "message": message}}).encode()


def _describe(errors: Sequence[Any]) -> str:
    """FastAPI's validation errors as one human sentence."""
    parts: list[str] = []
    for err in list(errors)[:3]:
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "path", "query", "header")]
        where = ".".join(loc)
        kind = err.get("type", "")
        if kind == "json_invalid":
            parts.append("the request body is not valid JSON")
        elif kind == "extra_forbidden":
            parts.append(f"unknown field '{where}'")
        elif kind == "missing":
            parts.append(f"'{where}' is required" if where else "a request body is required")
        else:
            msg = str(err.get("msg", "is not valid"))
            parts.append(f"'{where}': {msg}" if where else msg)
    text = "; ".join(parts) or "the request is not valid"
    return text[0].upper() + text[1:] + "."


async def _api_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message, exc.headers)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(422, "invalid_input", _describe(exc.errors()))


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    if status == 400 and exc.detail == "There was an error parsing the body":
        # FastAPI's answer to a body that is not even text (bad UTF-8): same as malformed JSON
        return error_response(422, "invalid_input", "The request body is not valid JSON.")
    code = _STATUS_CODES.get(status, "error")
    if status == 404:
        message = "There is nothing at this address."
    elif status == 405:
        message = "This method is not allowed here."
    else:
        message = str(exc.detail) if exc.detail else code.replace("_", " ").capitalize()
    return error_response(status, code, message, exc.headers)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal_error", "Something went wrong on our side. Please try again later.")


def install(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI documentation of the error statuses a route can answer with."""
    return {s: {"model": ErrorBody, "description": _STATUS_CODES.get(s, "error").replace("_", " ")}
            for s in statuses}
