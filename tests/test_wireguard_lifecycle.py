"""WireGuard beside OpenVPN through the real lifecycle, the sandbox clouds and the simulated SSH
hosts: a WireGuard product's server comes up with the device peers in its wg0.conf, the customer's
``.conf`` from the API survives a relocation byte for byte (the new host gets the same server key
and peers), a revoked device's peer leaves the running host within the sync, and its ``.conf``
is refused, to everyone; nobody else ever gets it, and the logs hold no WireGuard key.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from dashboard_api.server import create_app
from dashboard_api.tokens import mint_token
from jobs.driver import drive_until_idle
from jobs.server_check import server_check
from provisioner import customer, operations
from provisioner.lifecycle import Lifecycle
from provisioner.models import OutboxMessage, Server, ServerEvent
from provisioner.server_secrets import ServerSecrets
from provisioner.vpn import wireguard
from tests.fixtures.stack import Stack, open_stack

BOTH = {"1": {"protocols": ["openvpn", "wireguard"]}}
OWNER, OWNER_ACCOUNT = "ann@example.com", 7
WG0 = "etc/wireguard/wg0.conf"


@pytest.fixture
def wg_stack(tmp_path: Path) -> Iterator[Stack]:
    with open_stack(tmp_path, products=BOTH) as stack:
        yield stack


def host_wg0(stack: Stack, rid: int) -> str:
    return (stack.hosts.root_dir / (stack.row(rid).instance_id or "") / WG0).read_text()


def peer_keys(wg0: str) -> set[str]:
    return set(re.findall(r"^PublicKey = (\S+)$", wg0, re.M))


def conf_value(conf: bytes, key: str) -> str:
    found = re.search(rf"^{key} = (\S+)$", conf.decode(), re.M)
    assert found is not None, key
    return found.group(1)


def settle(stack: Stack, lc: Lifecycle, rid: int) -> None:
    """What the leader does every second: start the customer's changes (a sync), then drive them."""
    operations.start_customer_changes(lc, stack.app.clock())
    drive_until_idle(lc, [rid], timeout=60)


def headers(stack: Stack, email: str, account: int) -> dict[str, Any]:
    return {"Authorization": f"Bearer {mint_token(stack.app.settings, email, account)}"}


def test_a_wireguard_device_keeps_its_conf_across_a_relocation_and_loses_it_when_revoked(
        wg_stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    stack = wg_stack
    caplog.set_level(logging.DEBUG)
    lc = stack.lifecycle()
    # Given a server of a product that offers both protocols, created by the lifecycle
    rid = stack.create_server(lc=lc, email=OWNER, user_id=OWNER_ACCOUNT)
    row = stack.row(rid)
    assert row.status == "Running" and row.current_location == "ewr"
    dns_name = row.server_name or ""
    short = dns_name.split(".")[0]
    owner, other = headers(stack, OWNER, OWNER_ACCOUNT), headers(stack, "eve@example.com", 8)
    with TestClient(create_app(stack.app)) as api:
        base = f"/api/servers/{short}/devices"
        # Its first device has both profiles, and the host's wg0.conf has that device's peer
        listed = api.get(base, headers=owner).json()["devices"]
        assert [[p["protocol"] for p in d["profiles"]] for d in listed] == [["openvpn", "wireguard"]]
        first_conf = api.get(f"{base}/1/conf", headers=owner)
        assert first_conf.status_code == 200
        wg0 = host_wg0(stack, rid)
        assert (stack.hosts.root_dir / (row.instance_id or "") / "etc/openvpn/server/server.conf").exists()
        first_public = wireguard.encode_key(
            wireguard.public_key_of(wireguard.decode_key(conf_value(first_conf.content, "PrivateKey"), "key")))
        assert peer_keys(wg0) == {first_public}

        # When the customer adds a phone: it gets both profiles, and its peer reaches the host in the sync
        added = api.post(base, headers=owner, json={"name": "Phone"})
        assert added.status_code == 201
        assert [p["protocol"] for p in added.json()["profiles"]] == ["openvpn", "wireguard"]
        assert stack.row(rid).access_pending_since is not None
        settle(stack, lc, rid)
        assert stack.row(rid).access_pending_since is None
        got = api.get(f"{base}/2/conf", headers=owner)
        assert got.status_code == 200 and got.headers["cache-control"] == "no-store"
        assert got.headers["content-disposition"] == f'attachment; filename="{short}-2.conf"'
        conf = got.content
        secrets = ServerSecrets.open(stack.app.secret_box, stack.row(rid).secrets_enc or "")
        state = secrets.wg()
        assert state is not None
        # The .conf names the server's public key and its DNS name (never an address)
        assert conf_value(conf, "PublicKey") == wireguard.encode_key(state.public_key)
        assert conf_value(conf, "Endpoint") == f"{dns_name}:{wireguard.DEFAULT_PORT}"
        phone_public = wireguard.encode_key(state.peer("2").public_key)
        wg0 = host_wg0(stack, rid)
        assert peer_keys(wg0) == {first_public, phone_public}
        assert conf_value(wg0.encode(), "PrivateKey") == wireguard.encode_key(state.private_key)
        # Nobody else gets it, nor its QR code
        assert api.get(f"{base}/2/conf", headers=other).status_code == 404
        assert api.get(f"{base}/2/qr", headers=other).status_code == 404

        # When the server is relocated to another region (a new instance, a new address)
        old_instance, old_ip = row.instance_id, stack.row(rid).server_ip
        stack.act(rid, "rebuild", "ams", lc=lc)
        moved = stack.row(rid)
        assert (moved.status, moved.current_location) == ("Running", "ams")
        assert moved.instance_id != old_instance and moved.server_ip != old_ip
        # Then the same .conf, byte for byte, and the new host has the same server key and peers
        assert api.get(f"{base}/2/conf", headers=owner).content == conf
        assert host_wg0(stack, rid) == wg0
        # And the mail says to switch the WireGuard tunnel off and on once (it resolved the old address)
        with stack.app.sessions() as s:
            mail = s.scalars(select(OutboxMessage).where(OutboxMessage.kind == "rebuild_done")).one()
        assert "switch the tunnel off and on once" in mail.body

        # When the customer revokes the phone
        assert api.delete(f"{base}/2", headers=owner).status_code == 200
        settle(stack, lc, rid)
        # Then its peer is gone from the running host (the first device's stays), and its .conf is refused
        after = host_wg0(stack, rid)
        assert peer_keys(after) == {first_public}
        assert conf_value(after.encode(), "PrivateKey") == wireguard.encode_key(state.private_key)
        assert api.get(f"{base}/2/conf", headers=owner).status_code == 410
        assert api.get(f"{base}/2/qr", headers=owner).status_code == 410
        assert api.get(f"{base}/2/ovpn", headers=owner).status_code == 410
        assert api.get(f"{base}/2/conf", headers=other).status_code == 404
        revoked = api.get(base, headers=owner).json()["devices"][1]
        assert revoked["revoked_at"] and all(p["revoked_at"] for p in revoked["profiles"])

    # And no WireGuard key (the server's, a device's private or preshared key) is in the logs
    needles = [wireguard.encode_key(state.private_key), conf_value(conf, "PrivateKey"),
               conf_value(conf, "PresharedKey"), conf_value(first_conf.content, "PrivateKey"),
               conf_value(first_conf.content, "PresharedKey")]
    assert len(set(needles)) == 5
    for needle in needles:
        assert needle not in caplog.text


def test_an_openvpn_product_that_gains_wireguard_gets_it_on_its_running_servers_by_a_sync(
        tmp_path: Path) -> None:
    with open_stack(tmp_path) as stack:
        lc = stack.lifecycle()
        rid = stack.create_server(lc=lc, email=OWNER, user_id=OWNER_ACCOUNT)
        owner = headers(stack, OWNER, OWNER_ACCOUNT)
        running = stack.row(rid)
        short = (running.server_name or "").split(".")[0]
        host = stack.hosts.root_dir / (running.instance_id or "")
        assert running.vpn_protocols == "openvpn"
        with TestClient(create_app(stack.app)) as api:
            assert api.post(f"/api/servers/{short}/devices", headers=owner, json={"name": "Phone"}).status_code == 201
            # An OpenVPN-only product: no WireGuard keys, no wg0.conf, no .conf (404), the .ovpn as before
            assert ServerSecrets.open(stack.app.secret_box, stack.row(rid).secrets_enc or "").wireguard is None
            assert not (host / WG0).exists()
            assert api.get(f"/api/servers/{short}/devices/2/conf", headers=owner).status_code == 404
            assert api.get(f"/api/servers/{short}/devices/2/qr", headers=owner).status_code == 404
            ovpn = api.get(f"/api/servers/{short}/devices/2/ovpn", headers=owner).content
            assert operations.start_customer_changes(lc, stack.app.clock()) == []   # nothing to send
            assert operations.start_protocol_gains(lc) == []

            # When the operator adds WireGuard to the product (settings reloaded)
            products = stack.app.settings.products
            products["1"] = dataclasses.replace(products["1"], protocols=("openvpn", "wireguard"))
            # Then the leader's next planning pass starts a sync that installs it on the running instance
            server_check(stack.app, lc)
            drive_until_idle(lc, [rid], timeout=60)
            after = stack.row(rid)
            assert (after.status, after.instance_id, after.generation) == ("Running", running.instance_id,
                                                                           running.generation)
            assert after.vpn_protocols == "openvpn wireguard"
            state = ServerSecrets.open(stack.app.secret_box, after.secrets_enc or "").wg()
            assert state is not None and [p.device_id for p in state.peers] == ["1", "2"]
            assert peer_keys((host / WG0).read_text()) == {wireguard.encode_key(p.public_key) for p in state.peers}
            with stack.app.sessions() as s:
                details = list(s.scalars(select(ServerEvent.detail).where(ServerEvent.what == "sync.push",
                                                                          ServerEvent.outcome == "ok")))
            assert details and details[-1].startswith("WireGuard installed; CRL, WireGuard peers and SSH access")
            # Both devices have a .conf now; the .ovpn is unchanged; and nothing more is sent
            for device in ("1", "2"):
                listed = api.get(f"/api/servers/{short}/devices", headers=owner).json()["devices"]
                assert [[p["protocol"] for p in d["profiles"]] for d in listed] == [["openvpn", "wireguard"]] * 2
                assert api.get(f"/api/servers/{short}/devices/{device}/conf", headers=owner).status_code == 200
            assert api.get(f"/api/servers/{short}/devices/2/ovpn", headers=owner).content == ovpn
            assert operations.start_customer_changes(lc, stack.app.clock()) == []
            assert operations.start_protocol_gains(lc) == []
            # And a rebuild keeps both, and its mail now says to switch the tunnel off and on
            conf = api.get(f"/api/servers/{short}/devices/2/conf", headers=owner).content
            stack.act(rid, "rebuild", "ams", lc=lc)
            assert api.get(f"/api/servers/{short}/devices/2/conf", headers=owner).content == conf
            with stack.app.sessions() as s:
                mail = s.scalars(select(OutboxMessage).where(OutboxMessage.kind == "rebuild_done")).one()
            assert "switch the tunnel off and on once" in mail.body


def test_a_wireguard_only_server_runs_no_openvpn_and_syncs_peers_without_a_crl(tmp_path: Path) -> None:
    with open_stack(tmp_path, products={"1": {"protocols": ["wireguard"]}}) as stack:
        lc = stack.lifecycle()
        rid = stack.create_server(lc=lc, email=OWNER, user_id=OWNER_ACCOUNT)
        row = stack.row(rid)
        host = stack.hosts.root_dir / (row.instance_id or "")
        assert row.vpn_protocols == "wireguard" and row.ovpn_file_enc is None
        assert not (host / "etc/openvpn/server/server.conf").exists() and (host / WG0).exists()
        owner, short = headers(stack, OWNER, OWNER_ACCOUNT), (row.server_name or "").split(".")[0]
        with TestClient(create_app(stack.app)) as api:
            added = api.post(f"/api/servers/{short}/devices", headers=owner, json={"name": "Phone"})
            assert [p["protocol"] for p in added.json()["profiles"]] == ["wireguard"]
            settle(stack, lc, rid)
            assert api.get(f"/api/servers/{short}/devices/2/ovpn", headers=owner).status_code == 404
            assert api.get(f"/api/servers/{short}/devices/2/conf", headers=owner).status_code == 200
        assert len(peer_keys((host / WG0).read_text())) == 2
        with stack.app.sessions() as s:
            details = list(s.scalars(select(ServerEvent.detail).where(ServerEvent.what == "sync.push",
                                                                      ServerEvent.outcome == "ok")))
        assert details and details[-1].startswith("WireGuard peers and SSH access applied")


def test_a_renewal_within_the_kept_days_gets_the_same_wireguard_conf(wg_stack: Stack) -> None:
    stack = wg_stack
    rid = stack.create_server(email=OWNER, user_id=OWNER_ACCOUNT)
    box = stack.app.secret_box

    def conf() -> bytes:
        with stack.app.sessions() as s:
            row = s.get(Server, rid)
            assert row is not None
            return customer.device_profile(s, box, row, "1", "wireguard")[0]

    before, wg0 = conf(), host_wg0(stack, rid)
    stack.destroyed_then_renewed_after(rid, dt.timedelta(days=29))
    after = stack.row(rid)
    assert (after.status, after.generation) == ("Running", 1)
    assert conf() == before and host_wg0(stack, rid) == wg0
