"""Checks recorded exchanges against a provider's published OpenAPI document.

:class:`Contract` runs ``openapi-core`` on each request (path, method, path and query
parameters, security, body) and each reply (status, content type, body schema), presenting
them as if they had gone to the real host.  ``openapi-core`` lets undocumented query
parameters and object fields through (OpenAPI 3.0 objects are open by default) and only
warns about deprecated ones -- exactly where a shared misreading hides: a misspelt filter
the real API ignores, a field the sandbox invents and the adapter reads, a filter about to
go away.  So three checks are added: every query parameter sent, and every field of every
JSON object sent or answered, must be documented for that operation, and nothing deprecated
may be used.  Known differences between the document and today's live API are passed in by
the tests (``amend``, ``live_only_query``, ``live_only_fields``), each with its reason,
next to the test that needs it.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from openapi_core import OpenAPI
from openapi_core.datatypes import RequestParameters
from werkzeug.datastructures import Headers, ImmutableMultiDict

from tests.contract.recorder import Exchange

SPECS = Path(__file__).resolve().parent / "specs"
Amend = Callable[[dict[str, Any]], None]


class _Request:
    """openapi-core's Request protocol over a recorded exchange."""

    def __init__(self, exchange: Exchange, host_url: str) -> None:
        self.host_url = host_url
        self.path = exchange.path
        self.method = exchange.method.lower()
        self.body = exchange.request_body or None
        self.content_type = Headers(exchange.request_headers).get("Content-Type", "")
        self.parameters = RequestParameters(query=ImmutableMultiDict(_query(exchange)),
                                            header=Headers(exchange.request_headers))


class _Response:
    """openapi-core's Response protocol over a recorded exchange."""

    def __init__(self, exchange: Exchange) -> None:
        self.status_code = exchange.status
        self.headers = Headers(exchange.response_headers)
        self.content_type = self.headers.get("Content-Type", "")
        self.data = exchange.response_body or None


@dataclass
class Contract:
    filename: str
    host_url: str
    amend: Amend | None = None
    live_only_query: Mapping[str, str] = field(default_factory=dict)
    live_only_fields: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.document: dict[str, Any] = json.loads((SPECS / self.filename).read_text(encoding="utf-8"))
        _upper_status_ranges(self.document)
        if self.amend is not None:
            self.amend(self.document)
        self.openapi = OpenAPI.from_dict(self.document)
        self.base_path = self.document["servers"][0]["url"].removeprefix(self.host_url)

    def problems(self, exchange: Exchange) -> list[str]:
        """Everything in this exchange the document does not allow, one line each."""
        request = _Request(exchange, self.host_url)
        with warnings.catch_warnings(record=True) as warned:
            warnings.simplefilter("always", DeprecationWarning)
            found = [f"request: {_text(e)}" for e in self.openapi.iter_request_errors(request)]
        found += [f"request: {w.message}" for w in warned if issubclass(w.category, DeprecationWarning)]
        found += [f"response {exchange.status}: {_text(e)}"
                  for e in self.openapi.iter_response_errors(request, _Response(exchange))]
        op = self.operation(exchange)
        if op is None:
            return found
        documented = {p["name"] for p in self._parameters(op) if p["in"] == "query"}
        found += [f"query parameter {name!r} is not documented" for name in sorted(_query(exchange))
                  if name not in documented and name not in self.live_only_query]
        if exchange.request_body:
            schema = _json_schema(self._resolve(op.spec[op.method].get("requestBody", {})))
            found += [f"request field {f!r} is not documented"
                      for f in self._undocumented(schema, json.loads(exchange.request_body))]
        if exchange.response_body and exchange.status < 400:
            reply = self._resolve(op.spec[op.method]["responses"].get(str(exchange.status), {}))
            found += [f"response field {f!r} is not documented"
                      for f in self._undocumented(_json_schema(reply), json.loads(exchange.response_body))]
        return found

    def assert_kept(self, exchanges: list[Exchange]) -> None:
        """Fails with every problem of every exchange, one per line."""
        assert exchanges, "nothing went over the wire"
        broken = [f"{e}\n    " + "\n    ".join(p) for e in exchanges if (p := self.problems(e))]
        assert not broken, "exchanges the published document does not allow:\n" + "\n".join(broken)

    def routes(self, exchanges: list[Exchange]) -> set[str]:
        """``"METHOD /template"`` of the document's operations these exchanges used."""
        return {f"{op.method.upper()} {op.template}" for e in exchanges if (op := self.operation(e)) is not None}

    def operation(self, exchange: Exchange) -> Operation | None:
        path = exchange.path.removeprefix(self.base_path)
        for template, item in self.document["paths"].items():
            if _matches(template, path) and exchange.method.lower() in item:
                return Operation(template, exchange.method.lower(), item)
        return None

    def _parameters(self, op: Operation) -> Iterator[dict[str, Any]]:
        for p in [*op.spec.get("parameters", []), *op.spec[op.method].get("parameters", [])]:
            yield self._resolve(p)

    def _undocumented(self, schema: dict[str, Any], value: Any) -> list[str]:
        found: set[str] = set()
        self._walk(schema, value, "", found)
        return sorted(f for f in found if f not in self.live_only_fields)

    def _walk(self, schema: dict[str, Any], value: Any, where: str, found: set[str]) -> None:
        variants = list(self._variants(schema))
        if isinstance(value, dict):
            props: dict[str, Any] = {}
            for v in variants:
                props.update(v.get("properties", {}))
            if any(isinstance(v.get("additionalProperties"), dict) for v in variants):
                return  # a map with free keys
            for name, item in value.items():
                path = f"{where}.{name}" if where else name
                if name in props:
                    self._walk(props[name], item, path, found)
                else:
                    found.add(path)
        elif isinstance(value, list):
            items = next((v["items"] for v in variants if "items" in v), None)
            for item in value if items is not None else ():
                self._walk(items, item, where, found)

    def _variants(self, schema: dict[str, Any]) -> Iterator[dict[str, Any]]:
        schema = self._resolve(schema)
        yield schema
        for key in ("allOf", "oneOf", "anyOf"):
            for sub in schema.get(key, []):
                yield from self._variants(sub)

    def _resolve(self, node: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in node:
            target: Any = self.document
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            node = target
        return node


@dataclass(frozen=True)
class Operation:
    template: str
    method: str
    spec: dict[str, Any]


def _json_schema(body_or_response: dict[str, Any]) -> dict[str, Any]:
    return dict(body_or_response.get("content", {}).get("application/json", {}).get("schema", {}))


def _query(exchange: Exchange) -> dict[str, list[str]]:
    return parse_qs(exchange.query, keep_blank_values=True)


def _upper_status_ranges(document: dict[str, Any]) -> None:
    """Cloudflare's document writes the response range "4xx"; OpenAPI 3.0 spells it "4XX"
    (and openapi-spec-validator refuses the file otherwise)."""
    for item in document["paths"].values():
        for op in item.values():
            responses = op.get("responses") if isinstance(op, dict) else None
            for key in [k for k in responses or {} if k.endswith("xx")]:
                responses[key.upper()] = responses.pop(key)


def _matches(template: str, path: str) -> bool:
    want, have = template.strip("/").split("/"), path.strip("/").split("/")
    return len(want) == len(have) and all(w.startswith("{") or w == h for w, h in zip(want, have, strict=True))


def _text(error: Exception) -> str:
    parts = [type(error).__name__]
    cause: BaseException | None = error
    while cause is not None:
        nested = getattr(cause, "schema_errors", None)
        if nested:
            parts += [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message[:300]}" for e in nested]
        elif cause is not error:
            parts.append(str(cause)[:300])
        cause = cause.__cause__
    return " | ".join(parts)
