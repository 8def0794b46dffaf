"""Authorisation: every endpoint, every persona. A customer sees and changes only their own
servers; anyone else's server answers exactly like a missing one; nobodies get 401."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from dashboard_api.server import create_app
from dashboard_api.tokens import MAX_TTL_SECONDS, TokenError, mint_token, verify_token
from provisioner.settings import ConfigError, load_settings
from provisioner.wiring import App
from tests.fixtures.api import *  # noqa: F403
from tests.fixtures.api import NOBODIES, OTHER, OWNER, ApiEnv
from tests.fixtures.config import write_config

# (method, path, json body) aimed at alice's g0001
ENDPOINTS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "/api/servers", None),
    ("GET", "/api/locations", None),
    ("POST", "/api/servers/g0001/rebuild", {"location": "ams"}),
    ("POST", "/api/servers/g0001.vpn.example.test/rebuild", {"location": "random"}),
    ("PUT", "/api/servers/g0001/schedule", {"schedule": "weekly", "location": "fra"}),
    ("GET", "/api/servers/g0001/ovpn", None),
]
ENDPOINT_IDS = [f"{m} {p}" for m, p, _ in ENDPOINTS]


def _snapshot(env: ApiEnv) -> list[tuple[Any, ...]]:
    return [(r.rebuild_now_status, r.rebuild_now_location, r.rebuild_schedule, r.rebuild_schedule_location,
             r.version, len(env.events((r.server_name or "").split(".")[0])))
            for r in env.app.all_servers()]


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS, ids=ENDPOINT_IDS)
def test_it_scopes_every_endpoint_to_the_caller(api_env: ApiEnv, persona: tuple[str, dict[str, str]],
                                                method: str, path: str, body: dict[str, Any] | None) -> None:
    # Given alice's server g0001, bob's g0003, and a caller
    name, headers = persona
    before = _snapshot(api_env)

    # When the caller uses an endpoint about g0001 (or the list endpoints)
    r = api_env.client.request(method, path, headers=headers, json=body)

    # Then only alice gets it; bob gets "not found", nobodies get 401 — and nothing changes
    if name == "owner":
        assert r.status_code in (200, 202), r.text
        if path == "/api/servers":
            assert sorted(s["short_name"] for s in r.json()) == ["g0001", "g0002"]
        return
    assert _snapshot(api_env) == before
    if name == "another customer" and path == "/api/servers":
        assert r.status_code == 200 and [s["short_name"] for s in r.json()] == ["g0003"]
    elif name == "another customer" and path == "/api/locations":
        assert r.status_code == 200
    elif name == "another customer":
        assert r.status_code == 404
        assert r.json() == {"error": {"code": "server_not_found", "message": r.json()["error"]["message"]}}
    else:
        assert r.status_code == 401
        assert set(r.json()) == {"error"} and set(r.json()["error"]) == {"code", "message"}
        assert r.headers["www-authenticate"].startswith("Bearer")


def test_it_answers_another_customers_server_exactly_like_a_missing_one(api_env: ApiEnv,
                                                                          another_customer: dict[str, str]) -> None:
    theirs = api_env.client.post("/api/servers/g0001/rebuild", headers=another_customer, json={"location": "ams"})
    missing = api_env.client.post("/api/servers/g9999/rebuild", headers=another_customer, json={"location": "ams"})
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json()["error"]["code"] == missing.json()["error"]["code"]
    assert theirs.json()["error"]["message"].replace("g0001", "X") == missing.json()["error"]["message"].replace(
        "g9999", "X")


def test_it_lists_servers_of_the_other_customer_for_them(api_env: ApiEnv, another_customer: dict[str, str]) -> None:
    r = api_env.client.get("/api/servers/g0003/ovpn", headers=another_customer)
    assert r.status_code == 200


def test_it_matches_the_email_case_insensitively(api_env: ApiEnv) -> None:
    api_env.add_server("Alice@Example.COM", "g0004")
    r = api_env.client.get("/api/servers", headers=api_env.headers("ALICE@example.com"))
    assert sorted(s["short_name"] for s in r.json()) == ["g0001", "g0002", "g0004"]


def test_it_does_not_match_an_email_that_only_shares_a_prefix(api_env: ApiEnv) -> None:
    api_env.add_server("alice@example.com.evil.test", "g0005")
    api_env.add_server("alic@example.com", "g0006")
    r = api_env.client.get("/api/servers", headers=api_env.headers(OWNER))
    assert sorted(s["short_name"] for s in r.json()) == ["g0001", "g0002"]


@pytest.mark.parametrize("persona_name", NOBODIES)
def test_it_refuses_nobodies_with_one_error_shape(api_env: ApiEnv, persona_name: str) -> None:
    from tests.fixtures.api import _persona_headers

    r = api_env.client.get("/api/servers", headers=_persona_headers(api_env, persona_name))
    assert r.status_code == 401
    assert r.json()["error"]["code"] in ("unauthorized", "invalid_token", "token_expired")
    assert r.json()["error"]["message"]


def test_it_says_the_session_expired_for_an_expired_token(api_env: ApiEnv) -> None:
    token = api_env.token(OWNER, ttl=900)
    api_env.clock.advance(900 + 60)
    r = api_env.client.get("/api/servers", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "token_expired"


@pytest.mark.parametrize("header", ["Basic YWxpY2U6cHc=", "Bearer", "Bearer not.a.jwt", "Bearer " + "a" * 5000,
                                    "bearer  "])
def test_it_refuses_malformed_authorization_headers(api_env: ApiEnv, header: str) -> None:
    r = api_env.client.get("/api/servers", headers={"Authorization": header})
    assert r.status_code == 401
    assert set(r.json()["error"]) == {"code", "message"}


@pytest.mark.parametrize("claims", [
    {"sub": "1", "iat": 0, "exp": 600},                      # no email
    {"email": "alice@example.com", "iat": 0, "exp": 600},    # no sub
    {"email": "alice@example.com", "sub": "1", "exp": 600},  # no iat
    {"email": "alice@example.com", "sub": "1", "iat": 0},    # no exp
    {"email": "not-an-email", "sub": "1", "iat": 0, "exp": 600},
    {"email": ["alice@example.com"], "sub": "1", "iat": 0, "exp": 600},
    {"email": "alice@example.com", "sub": True, "iat": 0, "exp": 600},
    {"email": "alice@example.com", "sub": "1", "iat": "0", "exp": "600"},
    {"email": "alice@example.com", "sub": "1", "iat": 900, "exp": 1000},    # issued in the future
])
def test_it_refuses_tokens_with_missing_or_bad_claims(api_env: ApiEnv, claims: dict[str, Any]) -> None:
    now = int(api_env.clock.now.timestamp())
    full = {"aud": api_env.settings.api.jwt_audience, **{k: (v + now if k in ("iat", "exp") and isinstance(v, int)
                                                            and not isinstance(v, bool) else v)
                                                         for k, v in claims.items()}}
    r = api_env.client.get("/api/servers", headers={"Authorization": f"Bearer {api_env.raw_token(full)}"})
    assert r.status_code == 401


def test_it_refuses_the_none_algorithm(api_env: ApiEnv) -> None:
    import base64
    import json

    def b64(d: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")

    now = int(api_env.clock.now.timestamp())
    token = b64({"alg": "none", "typ": "JWT"}) + "." + b64(
        {"email": OWNER, "sub": "1", "aud": api_env.settings.api.jwt_audience, "iat": now, "exp": now + 60}) + "."
    r = api_env.client.get("/api/servers", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401


def test_it_accepts_a_numeric_wordpress_user_id(api_env: ApiEnv) -> None:
    now = int(api_env.clock.now.timestamp())
    token = api_env.raw_token({"email": OTHER, "sub": 2, "aud": api_env.settings.api.jwt_audience,
                               "iat": now, "exp": now + 900})
    r = api_env.client.get("/api/servers", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200 and [s["short_name"] for s in r.json()] == ["g0003"]


def _names(api_env: ApiEnv, email: str, sub: str) -> list[str]:
    headers = {"Authorization": f"Bearer {api_env.token(email, user_id=sub)}"}
    r = api_env.client.get("/api/servers", headers=headers)
    assert r.status_code == 200
    return [s["short_name"] for s in r.json()]


def test_the_account_decides_not_the_address(api_env: ApiEnv) -> None:
    # alice's address with bob's account sees bob's server, never alice's
    assert _names(api_env, OWNER, "2") == ["g0003"]
    assert api_env.client.get("/api/servers/g0001/ovpn",
                              headers={"Authorization": f"Bearer {api_env.token(OWNER, user_id='2')}"}
                              ).status_code == 404
    # an account that owns nothing sees nothing, whatever address it carries
    assert _names(api_env, OWNER, "99") == []


def test_the_old_address_loses_the_dashboard_when_the_customer_changes_it(api_env: ApiEnv) -> None:
    # the storefront moved alice to a new address: the row follows (the planner does it), and
    # someone signed in with her old address on another account sees nothing
    api_env.set("g0001", user_email="alice@new.example")
    assert _names(api_env, "alice@new.example", "1") == ["g0001", "g0002"]
    assert _names(api_env, OWNER, "7") == []


def test_a_guest_checkout_sees_nothing_until_it_has_an_account(api_env: ApiEnv) -> None:
    api_env.add_server("guest@shop.test", "g0009")          # no storefront account: a guest
    assert _names(api_env, "guest@shop.test", "0") == []
    api_env.set("g0009", account_id="31")                   # the guest registered; the planner records it
    assert _names(api_env, "guest@shop.test", "31") == ["g0009"]


def test_it_mints_tokens_the_api_accepts_and_caps_their_life(api_env: ApiEnv) -> None:
    s = api_env.settings
    token = mint_token(s, OWNER, 7, ttl_seconds=MAX_TTL_SECONDS, now=api_env.clock.now)
    who = verify_token(token, s.api.jwt_secret, s.api.jwt_audience, api_env.clock.now)
    assert (who.email, who.user_id) == (OWNER, "7")
    with pytest.raises(ValueError, match="ttl_seconds"):
        mint_token(s, OWNER, 7, ttl_seconds=MAX_TTL_SECONDS + 1)
    with pytest.raises(TokenError) as err:
        verify_token(token, s.api.jwt_secret, s.api.jwt_audience, api_env.clock.now + dt.timedelta(hours=2))
    assert err.value.code == "token_expired"


def test_it_refuses_to_start_without_a_jwt_secret(tmp_path) -> None:
    settings = load_settings(write_config(tmp_path, api={"jwt_secret": ""}), env={})
    with pytest.raises(ConfigError) as err:
        create_app(App(settings))
    message = str(err.value)
    assert "\n" not in message and message.startswith("api.jwt_secret")


def test_it_refuses_to_serve_from_the_command_line_without_a_jwt_secret(tmp_path, capsys) -> None:
    from provisioner.cli import main

    path = write_config(tmp_path, api={"jwt_secret": ""})
    code = main(["--config", str(path), "api"])
    assert code == 2
    assert "api.jwt_secret: empty" in capsys.readouterr().err
