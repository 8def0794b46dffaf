"""Property-based: Schemathesis (v4) generates requests from /openapi.json and runs them
in-process against the ASGI app with a valid token. No 5xx, no response that breaks the
documented schema, status codes or content types. Bounded: a few examples per operation."""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from tests.fixtures.api import *  # noqa: F403
from tests.fixtures.api import OWNER, ApiEnv, build_env

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          negative_data_rejection]


@pytest.fixture
def fuzz_env(tmp_path: Path, api_db_template: Path) -> ApiEnv:
    # generous limits: the fuzzer is one client sending many requests
    env = build_env(tmp_path, template=api_db_template, requests_per_minute=100000, rebuild_cooldown_seconds=0)
    env.add_server(OWNER, "g0001")
    env.add_server(OWNER, "g0002", status="Installing", ovpn=None, action="create", step="install")
    env.add_server("bob@example.com", "g0003")
    env.give_vpn("g0001")   # real sealed secrets: device names, profiles and the root password are exercised
    return env


@pytest.fixture
def api_schema(fuzz_env: ApiEnv):  # noqa: ANN201
    config = schemathesis.Config.from_dict({
        "headers": {"Authorization": f"Bearer {fuzz_env.token(OWNER, ttl=3600)}"},
        "generation": {"max-examples": 25},
        "parameters": {"name": "g0001"},
    })
    return schemathesis.openapi.from_asgi("/openapi.json", fuzz_env.api, config=config)


# /webhooks/stripe belongs to dashboard_api/stripe_webhook.py and has its own tests.
schema = schemathesis.pytest.from_fixture("api_schema").exclude(path_regex="^/webhooks/")


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_it_keeps_to_its_openapi_schema_under_generated_input(case: schemathesis.Case) -> None:
    case.call_and_validate(checks=CHECKS)
