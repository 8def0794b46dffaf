"""The customer's own server through the API: devices, SSH keys and key-only login, the root
password, restart. Every route for every persona (owner, another customer: 404, nobodies: 401);
every refusal is a clear 4xx that changes nothing."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from sqlalchemy import func, select

from provisioner.models import Device, Server, ServerEvent, ServerSealed, SSHKey, Status
from provisioner.server_secrets import ServerSecrets
from provisioner.vpn.config import render_client_ovpn, validate_ovpn
from tests.fixtures.api import *  # noqa: F403
from tests.fixtures.api import OWNER, ROOT_PASSWORD, ApiEnv


def public_line(key: Any, comment: str = "alice@laptop") -> str:
    line = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    return f"{line} {comment}".strip()


ED25519 = public_line(ed25519.Ed25519PrivateKey.generate())
ANOTHER = public_line(ed25519.Ed25519PrivateKey.generate(), "alice@phone")

# (method, path, json body) about alice's g0001
ROUTES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "/api/servers/g0001/devices", None),
    ("POST", "/api/servers/g0001/devices", {"name": "Phone"}),
    ("DELETE", "/api/servers/g0001/devices/1", None),
    ("GET", "/api/servers/g0001/devices/1/ovpn", None),
    ("POST", "/api/servers/g0001/root-password", None),
    ("GET", "/api/servers/g0001/ssh", None),
    ("POST", "/api/servers/g0001/ssh/keys", {"public_key": ANOTHER}),
    ("DELETE", "/api/servers/g0001/ssh/keys/1", None),
    ("PUT", "/api/servers/g0001/ssh/key-only", {"key_only": False}),
    ("POST", "/api/servers/g0001/restart", None),
    ("GET", "/api/servers/g0001/history", None),
    ("GET", "/api/servers/g0001/usage", None),
]


def snapshot(env: ApiEnv) -> tuple[Any, ...]:
    """Everything a request could change, for 'nothing changed' assertions."""
    with env.app.sessions() as s:
        rows = tuple(s.execute(select(Server.id, Server.version, ServerSealed.secrets_enc, Server.key_only,
                                      Server.access_pending_since, Server.restart_pending)
                               .outerjoin(ServerSealed).order_by(Server.id)))
        devices = tuple(s.execute(select(Device.device_id, Device.name, Device.revoked_at).order_by(Device.id)))
        keys = s.scalar(select(func.count()).select_from(SSHKey))
        events = s.scalar(select(func.count()).select_from(ServerEvent))
    return rows, devices, keys, events


@pytest.fixture
def keyed(api_env: ApiEnv, owner: dict[str, str]) -> ApiEnv:
    """g0001 with one SSH key (id 1)."""
    r = api_env.client.post("/api/servers/g0001/ssh/keys", headers=owner, json={"public_key": ED25519})
    assert r.status_code == 201, r.text
    return api_env


@pytest.mark.parametrize(("method", "path", "body"), ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
def test_every_route_answers_only_the_servers_owner(keyed: ApiEnv, persona: tuple[str, dict[str, str]],
                                                     method: str, path: str, body: dict[str, Any] | None) -> None:
    name, headers = persona
    before = snapshot(keyed)
    r = keyed.client.request(method, path, headers=headers, json=body)
    if name == "owner":
        assert r.status_code in (200, 201, 202), r.text
        return
    assert snapshot(keyed) == before
    if name == "another customer":
        assert r.status_code == 404 and r.json()["error"]["code"] == "server_not_found"
    else:
        assert r.status_code == 401 and set(r.json()["error"]) == {"code", "message"}


# --- devices ------------------------------------------------------------------------------------

def test_todays_ovpn_is_device_1_byte_for_byte(api_env: ApiEnv, owner: dict[str, str]) -> None:
    api_env.give_vpn("g0001", ovpn=True)
    listed = api_env.client.get("/api/servers/g0001/devices", headers=owner).json()
    assert listed["ready"] is True and listed["max_devices"] == 5
    assert [(d["id"], d["name"], d["revoked_at"]) for d in listed["devices"]] == [("1", "Device 1", None)]
    assert listed["devices"][0]["profiles"] == [{"protocol": "openvpn", "revoked_at": None}]
    today = api_env.client.get("/api/servers/g0001/ovpn", headers=owner)
    device = api_env.client.get("/api/servers/g0001/devices/1/ovpn", headers=owner)
    assert device.status_code == 200 and device.content == today.content
    assert device.headers["cache-control"] == "no-store"
    assert device.headers["content-disposition"] == 'attachment; filename="g0001-device-1.ovpn"'


def test_it_adds_a_device_with_its_own_profile(api_env: ApiEnv, owner: dict[str, str]) -> None:
    r = api_env.client.post("/api/servers/g0001/devices", headers=owner, json={"name": " Phone "})
    assert r.status_code == 201, r.text
    assert (r.json()["id"], r.json()["name"]) == ("2", "Phone")
    phone = api_env.client.get("/api/servers/g0001/devices/2/ovpn", headers=owner)
    assert phone.status_code == 200
    validate_ovpn(phone.content)
    first = api_env.client.get("/api/servers/g0001/devices/1/ovpn", headers=owner).content
    assert phone.content != first and b"<key>" in phone.content
    assert phone.headers["content-disposition"] == 'attachment; filename="g0001-phone.ovpn"'
    row = api_env.row("g0001")
    assert row.access_pending_since is None   # OpenVPN needs nothing on the server for a new device
    assert [e.what for e in api_env.events("g0001")][-1] == "device.added"


@pytest.mark.parametrize(("body", "code"), [
    ({"name": "Line\nbreak"}, "invalid_device_name"), ({"name": "x" * 41}, "invalid_device_name"),
    ({"name": "   "}, "invalid_device_name"), ({"name": ""}, "invalid_input"), ({}, "invalid_input"),
    ({"name": "Phone", "admin": True}, "invalid_input"), ({"name": 7}, "invalid_input"),
])
def test_it_refuses_bad_device_names_and_changes_nothing(api_env: ApiEnv, owner: dict[str, str],
                                                         body: dict[str, Any], code: str) -> None:
    before = snapshot(api_env)
    r = api_env.client.post("/api/servers/g0001/devices", headers=owner, json=body)
    assert r.status_code == 422 and r.json()["error"]["code"] == code, r.text
    assert snapshot(api_env) == before


def test_it_keeps_to_the_plans_device_limit_and_names_once(api_env: ApiEnv, owner: dict[str, str]) -> None:
    for n in range(2, 6):
        assert api_env.client.post("/api/servers/g0001/devices", headers=owner, json={"name": f"D{n}"}).status_code \
            == 201
    before = snapshot(api_env)
    r = api_env.client.post("/api/servers/g0001/devices", headers=owner, json={"name": "Sixth"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "too_many_devices"
    assert "5 devices" in r.json()["error"]["message"]
    assert snapshot(api_env) == before
    # a revoked device frees its place; its name may be used again, an active one's may not
    assert api_env.client.delete("/api/servers/g0001/devices/5", headers=owner).status_code == 200
    assert api_env.client.post("/api/servers/g0001/devices", headers=owner, json={"name": "d5"}).status_code == 201
    dup = api_env.client.post("/api/servers/g0001/devices", headers=owner, json={"name": "d4"})
    assert dup.status_code == 409 and dup.json()["error"]["code"] in ("device_exists", "too_many_devices")


def test_it_revokes_a_device_at_once_and_sends_the_crl(api_env: ApiEnv, owner: dict[str, str]) -> None:
    api_env.give_vpn("g0001", ovpn=True)
    assert api_env.client.post("/api/servers/g0001/devices", headers=owner, json={"name": "Phone"}).status_code == 201
    r = api_env.client.delete("/api/servers/g0001/devices/2", headers=owner)
    assert r.status_code == 200 and r.json()["revoked_at"] is not None
    assert r.json()["profiles"][0]["revoked_at"] is not None
    gone = api_env.client.get("/api/servers/g0001/devices/2/ovpn", headers=owner)
    assert gone.status_code == 410 and gone.json()["error"]["code"] == "device_revoked"
    row = api_env.row("g0001")
    assert row.access_pending_since is not None         # the running server gets the new CRL
    pki = ServerSecrets.open(api_env.app.secret_box, row.secrets_enc or "").openvpn()
    assert pki.device("2").serial in pki.revoked_serials and not pki.device("2").key_pem
    # again: nothing more happens; an unknown device is 404
    events = len(api_env.events("g0001"))
    assert api_env.client.delete("/api/servers/g0001/devices/2", headers=owner).status_code == 200
    assert len(api_env.events("g0001")) == events
    assert api_env.client.delete("/api/servers/g0001/devices/9", headers=owner).status_code == 404
    # the first device is today's .ovpn: revoked, neither route hands it out any more
    first = render_client_ovpn(pki, "g0001.vpn.example.test")
    assert api_env.client.get("/api/servers/g0001/ovpn", headers=owner).content == first
    assert api_env.client.delete("/api/servers/g0001/devices/1", headers=owner).status_code == 200
    assert api_env.client.get("/api/servers/g0001/ovpn", headers=owner).status_code == 409
    assert api_env.client.get("/api/servers/g0001/devices/1/ovpn", headers=owner).status_code == 410


def test_it_refuses_devices_on_a_server_being_removed(api_env: ApiEnv, owner: dict[str, str]) -> None:
    api_env.set("g0001", status=Status.DESTROYING.value, action="destroy", step="instances")
    r = api_env.client.post("/api/servers/g0001/devices", headers=owner, json={"name": "Phone"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "busy"


# --- SSH keys and key-only login -----------------------------------------------------------------

def test_it_adds_lists_and_removes_keys(api_env: ApiEnv, owner: dict[str, str]) -> None:
    ecdsa = public_line(ec.generate_private_key(ec.SECP256R1()), "")
    rsa3072 = public_line(rsa.generate_private_key(65537, 3072), "büro-pc")
    for line in (ED25519, ecdsa, rsa3072):
        assert api_env.client.post("/api/servers/g0001/ssh/keys", headers=owner, json={"public_key": line}
                                   ).status_code == 201
    access = api_env.client.get("/api/servers/g0001/ssh", headers=owner).json()
    assert [(k["key_type"], k["bits"], k["comment"]) for k in access["keys"]] == [
        ("ssh-ed25519", 256, "alice@laptop"), ("ecdsa-sha2-nistp256", 256, ""), ("ssh-rsa", 3072, "büro-pc")]
    assert access["pending"] is True and access["key_only"] is False and access["password_available"] is True
    assert all(k["fingerprint"].startswith("SHA256:") for k in access["keys"])
    left = api_env.client.delete(f"/api/servers/g0001/ssh/keys/{access['keys'][1]['id']}", headers=owner)
    assert left.status_code == 200 and len(left.json()["keys"]) == 2
    assert [e.what for e in api_env.events("g0001")][-4:] == ["ssh_key.added"] * 3 + ["ssh_key.removed"]


PRIVATE = ed25519.Ed25519PrivateKey.generate().private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()).decode()


REFUSED_KEYS = [
    (public_line(rsa.generate_private_key(65537, 2048)), "2048 bits"),
    (PRIVATE, "private key"),
    (f'command="rm -rf /" {ED25519}', "options"),
    (f"{ED25519}\n{ED25519}", "one key at a time"),
    ("ssh-dss AAAAB3NzaC1kc3MAAACBAP", "accepted"),
    ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIN0t-base64!", "incomplete"),
    ("ssh-ed25519 " + ED25519.split()[1][:-8] + "AAAAAAA=", "damaged"),
    ("ssh-rsa " + ED25519.split()[1], "does not match its type"),
    ("x" * 5000, "at most 4096"),
]


# named by the words: the keys are generated per run, and parallel workers must collect the same ids
@pytest.mark.parametrize(("text", "words"), REFUSED_KEYS, ids=[words for _, words in REFUSED_KEYS])
def test_it_refuses_keys_it_does_not_accept_with_a_clear_422(api_env: ApiEnv, owner: dict[str, str], text: str,
                                                             words: str) -> None:
    before = snapshot(api_env)
    r = api_env.client.post("/api/servers/g0001/ssh/keys", headers=owner, json={"public_key": text})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_key", r.text
    assert words in r.json()["error"]["message"]
    assert PRIVATE.splitlines()[1] not in r.text
    assert snapshot(api_env) == before


def test_it_limits_the_number_of_keys_and_refuses_a_duplicate(keyed: ApiEnv, owner: dict[str, str]) -> None:
    before = snapshot(keyed)
    dup = keyed.client.post("/api/servers/g0001/ssh/keys", headers=owner, json={"public_key": ED25519})
    assert dup.status_code == 409 and dup.json()["error"]["code"] == "duplicate_key"
    assert snapshot(keyed) == before
    for _ in range(9):
        line = public_line(ed25519.Ed25519PrivateKey.generate())
        assert keyed.client.post("/api/servers/g0001/ssh/keys", headers=owner, json={"public_key": line}
                                 ).status_code == 201
    before = snapshot(keyed)
    r = keyed.client.post("/api/servers/g0001/ssh/keys", headers=owner,
                          json={"public_key": public_line(ed25519.Ed25519PrivateKey.generate())})
    assert r.status_code == 409 and r.json()["error"]["code"] == "too_many_keys"
    assert snapshot(keyed) == before


def test_key_only_login_needs_a_key_and_hides_the_password(api_env: ApiEnv, owner: dict[str, str]) -> None:
    before = snapshot(api_env)
    r = api_env.client.put("/api/servers/g0001/ssh/key-only", headers=owner, json={"key_only": True})
    assert r.status_code == 409 and r.json()["error"]["code"] == "no_keys"
    assert snapshot(api_env) == before
    key = api_env.client.post("/api/servers/g0001/ssh/keys", headers=owner, json={"public_key": ED25519}).json()
    on = api_env.client.put("/api/servers/g0001/ssh/key-only", headers=owner, json={"key_only": True})
    assert on.status_code == 200 and on.json()["key_only"] is True and on.json()["password_available"] is False
    shown = api_env.client.post("/api/servers/g0001/root-password", headers=owner)
    assert shown.status_code == 409 and shown.json()["error"]["code"] == "key_only"
    last = api_env.client.delete(f"/api/servers/g0001/ssh/keys/{key['id']}", headers=owner)
    assert last.status_code == 409 and last.json()["error"]["code"] == "last_key"
    off = api_env.client.put("/api/servers/g0001/ssh/key-only", headers=owner, json={"key_only": False})
    assert off.json()["key_only"] is False and off.json()["password_available"] is True
    assert api_env.row("g0001").access_pending_since is not None


# --- the root password ---------------------------------------------------------------------------

def test_it_shows_the_root_password_on_a_post_and_records_the_view(api_env: ApiEnv, owner: dict[str, str]) -> None:
    assert api_env.client.get("/api/servers/g0001/root-password", headers=owner).status_code == 405
    r = api_env.client.post("/api/servers/g0001/root-password", headers=owner)
    assert r.status_code == 200 and r.json()["password"] == ROOT_PASSWORD
    assert "rebuild" in r.json()["note"]
    assert r.headers["cache-control"] == "no-store"
    viewed = api_env.events("g0001")[-1]
    assert (viewed.what, viewed.actor, viewed.detail) == ("root_password.viewed", "customer", "")
    not_yet = api_env.client.post("/api/servers/g0002/root-password", headers=owner)
    assert not_yet.status_code == 409 and not_yet.json()["error"]["code"] == "not_ready"


def test_it_limits_how_often_the_password_is_shown(api_env: ApiEnv) -> None:
    for _ in range(10):
        assert api_env.client.post("/api/servers/g0001/root-password", headers=api_env.headers()).status_code == 200
        api_env.clock.advance(60)
    before = snapshot(api_env)
    r = api_env.client.post("/api/servers/g0001/root-password", headers=api_env.headers())
    assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_views"
    assert int(r.headers["retry-after"]) > 0 and ROOT_PASSWORD not in r.text
    assert snapshot(api_env) == before
    api_env.clock.advance(3600)
    assert api_env.client.post("/api/servers/g0001/root-password", headers=api_env.headers()).status_code == 200


# --- restart ------------------------------------------------------------------------------------

def test_it_records_a_restart_then_refuses_while_pending_and_in_the_cooldown(api_env: ApiEnv,
                                                                             owner: dict[str, str]) -> None:
    api_env.set("g0001", instance_id="inst-1")
    r = api_env.client.post("/api/servers/g0001/restart", headers=owner)
    assert r.status_code == 202 and r.json() == {"status": "accepted"}
    assert api_env.row("g0001").restart_pending is True
    assert api_env.events("g0001")[-1].what == "restart.requested"
    before = snapshot(api_env)
    busy = api_env.client.post("/api/servers/g0001/restart", headers=owner)
    assert busy.status_code == 409 and busy.json()["error"]["code"] == "busy"
    api_env.set("g0001", restart_pending=False)      # the worker restarted it
    before = snapshot(api_env)
    cooling = api_env.client.post("/api/servers/g0001/restart", headers=owner)
    assert cooling.status_code == 429 and cooling.json()["error"]["code"] == "restart_cooldown"
    assert int(cooling.headers["retry-after"]) > 0
    assert snapshot(api_env) == before
    installing = api_env.client.post("/api/servers/g0002/restart", headers=owner)
    assert installing.status_code == 409


def test_the_owners_requests_are_rate_limited_like_every_other(tmp_path: Any, api_db_template: Any) -> None:
    from tests.fixtures.api import build_env

    env = build_env(tmp_path, template=api_db_template, requests_per_minute=3)
    env.add_server(OWNER, "g0001")
    env.give_vpn("g0001")
    headers = env.headers()
    codes = [env.client.post("/api/servers/g0001/devices", headers=headers, json={"name": f"d{i}"}).status_code
             for i in range(4)]
    assert codes == [201, 201, 201, 429]
    with env.app.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Device)) == 4   # the first device and three added
    env.app.engine.dispose()


def test_the_apis_logs_hold_no_password_profile_or_pasted_private_key(api_env: ApiEnv, owner: dict[str, str],
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    import logging

    caplog.set_level(logging.DEBUG)
    shown = api_env.client.post("/api/servers/g0001/root-password", headers=owner).json()["password"]
    api_env.client.post("/api/servers/g0001/devices", headers=owner, json={"name": "Phone"})
    profile = api_env.client.get("/api/servers/g0001/devices/2/ovpn", headers=owner).text
    api_env.client.post("/api/servers/g0001/ssh/keys", headers=owner, json={"public_key": PRIVATE})
    api_env.client.delete("/api/servers/g0001/devices/2", headers=owner)
    key_lines = [line for line in profile.split("<key>")[1].splitlines() if len(line) > 20]
    assert shown == ROOT_PASSWORD and key_lines
    for needle in [ROOT_PASSWORD, *key_lines, *PRIVATE.splitlines()[1:3]]:
        assert needle not in caplog.text
    assert "root_password.viewed" in caplog.text and "device.revoked" in caplog.text
