"""A device's WireGuard ``.conf`` and its QR code through the API: only for the server's owner,
never cached, refused for a revoked device and for a plan without WireGuard.

This module's ``api_env`` is the fixture's, but with product 1 offering OpenVPN and WireGuard,
so the personas (owner, another customer, nobodies) ask about a WireGuard server.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from dashboard_api.devices import WG_CONF_TYPE
from provisioner.models import Status
from tests.fixtures.api import *  # noqa: F403
from tests.fixtures.api import DOMAIN, OTHER, OWNER, ApiEnv, build_env

BOTH = {"products": {"1": {"protocols": ["openvpn", "wireguard"]}}}
SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture
def api_env(tmp_path: Path, api_db_template: Path) -> Iterator[ApiEnv]:
    """alice owns g0001 (Running) and g0002 (Installing), bob g0003: all of a WireGuard product."""
    env = build_env(tmp_path, template=api_db_template, sections=BOTH)
    env.add_server(OWNER, "g0001")
    env.add_server(OWNER, "g0002", status=Status.INSTALLING.value, ovpn=None, server_ip=None, action="create",
                   step="install", last_rebuilt_at=None, current_location=None)
    env.add_server(OTHER, "g0003", current_location="ams")
    for short in ("g0001", "g0002", "g0003"):
        env.give_vpn(short)
    with env.client:
        yield env
    env.app.engine.dispose()


@pytest.mark.parametrize("what", ["conf", "qr"])
def test_only_the_owner_gets_a_devices_conf_and_qr_never_cached(
        api_env: ApiEnv, persona: tuple[str, dict[str, str]], what: str) -> None:
    name, headers = persona
    r = api_env.client.get(f"/api/servers/g0001/devices/1/{what}", headers=headers)
    if name == "owner":
        assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
        return
    assert "PrivateKey" not in r.text and "<svg" not in r.text
    if name == "another customer":
        assert r.status_code == 404 and r.json()["error"]["code"] == "server_not_found"
    else:
        assert r.status_code == 401


def test_the_conf_names_the_server_and_the_qr_code_carries_it(api_env: ApiEnv, owner: dict[str, str]) -> None:
    listed = api_env.client.get("/api/servers/g0001/devices", headers=owner).json()
    assert [p["protocol"] for p in listed["devices"][0]["profiles"]] == ["openvpn", "wireguard"]
    servers = api_env.client.get("/api/servers", headers=owner).json()
    assert {s["short_name"]: s["protocols"] for s in servers}["g0001"] == ["openvpn", "wireguard"]
    conf = api_env.client.get("/api/servers/g0001/devices/1/conf", headers=owner)
    assert conf.status_code == 200 and conf.headers["content-type"] == WG_CONF_TYPE
    assert conf.headers["content-disposition"] == 'attachment; filename="g0001-1.conf"'
    text = conf.content.decode()
    assert re.search(rf"^Endpoint = g0001\.{re.escape(DOMAIN)}:51820$", text, re.M)
    assert re.search(r"^PrivateKey = [A-Za-z0-9+/]{43}=$", text, re.M)
    qr = api_env.client.get("/api/servers/g0001/devices/1/qr", headers=owner)
    assert qr.status_code == 200 and qr.headers["content-type"].startswith("image/svg+xml")
    svg = ET.fromstring(qr.text)  # noqa: S314 - our own output
    assert svg.tag == f"{SVG}svg" and svg.get("role") == "img" and svg.find(f"{SVG}title") is not None
    # the same bytes twice: a download never makes new keys
    assert api_env.client.get("/api/servers/g0001/devices/1/conf", headers=owner).content == conf.content


def test_a_new_device_gets_a_wireguard_profile_its_peer_pending_for_the_server(
        api_env: ApiEnv, owner: dict[str, str]) -> None:
    r = api_env.client.post("/api/servers/g0001/devices", headers=owner, json={"name": "Phone"})
    assert r.status_code == 201 and [p["protocol"] for p in r.json()["profiles"]] == ["openvpn", "wireguard"]
    assert api_env.row("g0001").access_pending_since is not None     # the peer list must reach the server
    phone = api_env.client.get("/api/servers/g0001/devices/2/conf", headers=owner).content
    first = api_env.client.get("/api/servers/g0001/devices/1/conf", headers=owner).content
    assert phone != first and b"Address = 10.66.66.3/32, fd" in phone


@pytest.mark.parametrize("what", ["conf", "qr"])
def test_it_refuses_a_revoked_or_unknown_device_and_a_server_not_installed_yet(
        api_env: ApiEnv, owner: dict[str, str], what: str) -> None:
    assert api_env.client.delete("/api/servers/g0001/devices/1", headers=owner).status_code == 200
    revoked = api_env.client.get(f"/api/servers/g0001/devices/1/{what}", headers=owner)
    assert revoked.status_code == 410 and revoked.json()["error"]["code"] == "device_revoked"
    unknown = api_env.client.get(f"/api/servers/g0001/devices/9/{what}", headers=owner)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "device_not_found"
    installing = api_env.client.get(f"/api/servers/g0002/devices/1/{what}", headers=owner)
    assert installing.status_code == 409 and installing.json()["error"]["code"] == "not_ready"
    bad = api_env.client.get(f"/api/servers/g0001/devices/Not%20an%20id/{what}", headers=owner)
    assert bad.status_code == 422


@pytest.mark.parametrize("what", ["conf", "qr"])
def test_a_plan_without_wireguard_has_no_conf(tmp_path: Path, api_db_template: Path, what: str) -> None:
    env = build_env(tmp_path, template=api_db_template)      # product 1: OpenVPN only
    env.add_server(OWNER, "g0001")
    env.give_vpn("g0001")
    with env.client:
        headers = env.headers(OWNER)
        r = env.client.get(f"/api/servers/g0001/devices/1/{what}", headers=headers)
        assert r.status_code == 404 and r.json()["error"]["code"] == "profile_not_found"
        assert env.client.get("/api/servers/g0001/devices/1/ovpn", headers=headers).status_code == 200
    env.app.engine.dispose()


def test_a_wireguard_only_plan_has_no_ovpn(tmp_path: Path, api_db_template: Path) -> None:
    env = build_env(tmp_path, template=api_db_template, sections={"products": {"1": {"protocols": ["wireguard"]}}})
    env.add_server(OWNER, "g0001", ovpn=None)
    env.give_vpn("g0001")
    with env.client:
        headers = env.headers(OWNER)
        listed = env.client.get("/api/servers/g0001/devices", headers=headers).json()
        assert [p["protocol"] for p in listed["devices"][0]["profiles"]] == ["wireguard"]
        r = env.client.get("/api/servers/g0001/devices/1/ovpn", headers=headers)
        assert r.status_code == 404 and r.json()["error"]["code"] == "profile_not_found"
        whole = env.client.get("/api/servers/g0001/ovpn", headers=headers)
        assert whole.status_code == 404 and whole.json()["error"]["code"] == "profile_not_found"
        assert [s["protocols"] for s in env.client.get("/api/servers", headers=headers).json()] == [["wireguard"]]
        assert env.client.get("/api/servers/g0001/devices/1/conf", headers=headers).status_code == 200
    env.app.engine.dispose()
