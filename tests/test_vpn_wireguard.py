"""WireGuard keys, addresses and configs: `wg` itself accepts what we render, keys agree with
`wg pubkey`, addresses never move, the stored form round-trips, and no key shows anywhere."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import shutil
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner.vpn import wireguard as wg
from provisioner.vpn.devices import DeviceConflict, DeviceError, DeviceNotFound, DeviceRevoked
from provisioner.vpn.qr import render_qr_svg
from tests.fixtures.netns import NetLab, in_mounts, require_tools, run, wait_for
from tests.fixtures.services import require_or_skip

DNS_NAME = "g0001.vpn.example.net"
NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def state() -> wg.WireGuardServer:
    """A server with "Phone" (1), "Laptop" (2, revoked) and "Tablet" (3)."""
    server = wg.generate_server(DNS_NAME)
    for name in ("Phone", "Laptop", "Tablet"):
        server, _ = wg.add_peer(server, name, now=NOW)
    return wg.revoke_peer(server, "2", now=NOW)


def secrets_of(state: wg.WireGuardServer) -> list[str]:
    keys = [state.private_key, *(p.private_key for p in state.peers), *(p.preshared_key for p in state.peers)]
    return [wg.encode_key(k) for k in keys if k]


def need(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        require_or_skip(f"missing tools: {', '.join(missing)} (apt-get install wireguard-tools wireguard-go)")


def wg_quick_strip(conf: str, tmp_path: Path, name: str = "wg0") -> str:
    """What `wg-quick strip` makes of the file: it refuses what wg-quick could not parse."""
    need("wg-quick", "wg")
    path = tmp_path / f"{name}.conf"
    path.write_text(conf)
    path.chmod(0o600)
    result = subprocess.run(["wg-quick", "strip", str(path)], capture_output=True, text=True, timeout=10, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


# ------------------------------------------------------------------ keys

def test_it_makes_keys_that_wg_derives_the_same_public_keys_from(state: wg.WireGuardServer) -> None:
    need("wg")
    pairs = [(state.private_key, state.public_key)] + [(p.private_key, p.public_key) for p in state.peers if p.active]
    for private, public in pairs:
        derived = subprocess.run(["wg", "pubkey"], input=wg.encode_key(private), capture_output=True, text=True,
                                 timeout=10, check=True).stdout.strip()
        assert derived == wg.encode_key(public)


def test_it_gives_every_server_and_device_its_own_keys() -> None:
    one, two = wg.generate_server(DNS_NAME), wg.generate_server(DNS_NAME)
    assert one.private_key != two.private_key and one.network6 != two.network6
    a, _ = wg.add_peer(one, "a")
    b, _ = wg.add_peer(a, "b")
    assert len({b.peers[0].private_key, b.peers[1].private_key, b.peers[0].preshared_key,
                b.peers[1].preshared_key}) == 4


# ------------------------------------------------------------------ addresses

def test_it_gives_each_device_a_stable_unique_address_in_both_families(state: wg.WireGuardServer) -> None:
    listed = {p.device_id: p for p in wg.list_peers(state)}
    assert str(listed["1"].address4) == "10.66.66.2" and str(listed["3"].address4) == "10.66.66.4"
    assert [p.address6 for p in listed.values()] == [state.network6[h] for h in (2, 3, 4)]
    assert state.address4 == ipaddress.ip_address("10.66.66.1") and state.address6 == state.network6[1]
    # A new device never takes a revoked device's address while others are free
    added, device_id = wg.add_peer(state, "Watch")
    assert str(dict((p.device_id, p) for p in wg.list_peers(added))[device_id].address4) == "10.66.66.5"
    # and nothing moves through storage or more changes
    restored = wg.from_bytes(wg.to_bytes(wg.revoke_peer(added, "1")))
    assert [(p.device_id, p.address4, p.address6) for p in wg.list_peers(restored)][1:] == [
        (p.device_id, p.address4, p.address6) for p in wg.list_peers(added)][1:]


def test_it_derives_the_ula_prefix_from_the_servers_key_alone(state: wg.WireGuardServer) -> None:
    network = state.network6
    assert network.prefixlen == 64 and network.subnet_of(ipaddress.IPv6Network("fd00::/8"))
    assert wg.ula_network(state.public_key) == network
    assert wg.from_bytes(wg.to_bytes(state)).network6 == network


def test_it_reuses_a_revoked_address_only_when_the_network_is_full() -> None:
    small = wg.generate_server(DNS_NAME, network4="10.77.0.0/29")  # hosts .2 to .6 for devices
    for name in "abcde":
        small, _ = wg.add_peer(small, name)
    with pytest.raises(DeviceError, match="no free tunnel address"):
        wg.add_peer(small, "f")
    small, device_id = wg.add_peer(wg.revoke_peer(small, "3"), "f")
    assert small.peer(device_id).host == 4 and wg.from_bytes(wg.to_bytes(small)) == small


@pytest.mark.parametrize("network", ["8.8.8.0/24", "10.0.0.0/8", "10.1.2.0/30", "10.1.2.3/24", "not a network"])
def test_it_refuses_a_tunnel_network_that_is_public_or_the_wrong_size(network: str) -> None:
    with pytest.raises(ValueError):
        wg.generate_server(DNS_NAME, network4=network)


# ------------------------------------------------------------------ devices

def test_it_revokes_a_device_by_erasing_its_keys_and_dropping_its_peer(state: wg.WireGuardServer) -> None:
    laptop = state.peer("2")
    assert laptop.private_key == b"" and laptop.preshared_key == b"" and laptop.revoked_at == NOW
    assert wg.encode_key(laptop.public_key) not in wg.render_server_conf(state)
    with pytest.raises(DeviceRevoked):
        wg.render_client_conf(state, "2", DNS_NAME)
    assert wg.revoke_peer(state, "2") is state
    assert [p.revoked_at for p in wg.list_peers(state)] == [None, NOW, None]


def test_it_counts_a_revision_for_every_change(state: wg.WireGuardServer) -> None:
    assert state.revision == 5  # generated, three devices added, one revoked
    assert "# revision: 5" in wg.render_server_conf(state).splitlines()
    assert wg.add_peer(state, "Watch")[0].revision == 6


def test_it_shares_ids_with_openvpn_and_refuses_reused_ids_and_names(state: wg.WireGuardServer) -> None:
    shared, device_id = wg.add_peer(state, "Router", device_id="7")
    assert device_id == "7" and wg.add_peer(shared, "Watch")[1] == "8"
    with pytest.raises(DeviceConflict):
        wg.add_peer(state, "Watch", device_id="2")  # revoked ids stay taken
    with pytest.raises(DeviceConflict):
        wg.add_peer(state, "phone")
    with pytest.raises(DeviceNotFound):
        wg.revoke_peer(state, "9")
    with pytest.raises(DeviceError):
        wg.add_peer(state, "two\nlines")


# ------------------------------------------------------------------ configs

def test_it_renders_a_client_conf_that_names_the_server_by_dns(state: wg.WireGuardServer) -> None:
    conf = wg.render_client_conf(state, "1", DNS_NAME, port=443, dns=("9.9.9.9",)).decode()
    phone = state.peer("1")
    assert conf.splitlines() == [
        "[Interface]",
        f"PrivateKey = {wg.encode_key(phone.private_key)}",
        f"Address = 10.66.66.2/32, {state.network6[2]}/128",
        "DNS = 9.9.9.9",
        "",
        "[Peer]",
        f"PublicKey = {wg.encode_key(state.public_key)}",
        f"PresharedKey = {wg.encode_key(phone.preshared_key)}",
        f"Endpoint = {DNS_NAME}:443",
        "AllowedIPs = 0.0.0.0/0, ::/0",
        "PersistentKeepalive = 25",
    ]
    # the same bytes after the state went through the database
    assert wg.render_client_conf(wg.from_bytes(wg.to_bytes(state)), "1", DNS_NAME, port=443, dns=("9.9.9.9",)) == (
        conf.encode())


@pytest.mark.parametrize(("host", "kwargs"), [
    ("evil.example\nPostUp = rm -rf /", {}), ("evil.example\n", {}), ("1.2.3.4:99", {}), (DNS_NAME, {"port": 0}),
    (DNS_NAME, {"dns": ("one.one.one.one",)}),
])
def test_it_refuses_values_that_would_inject_into_the_conf(state: wg.WireGuardServer, host: str, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        wg.render_client_conf(state, "1", host, **kwargs)


def test_it_renders_confs_that_wg_quick_strip_accepts(state: wg.WireGuardServer, tmp_path: Path) -> None:
    server = wg_quick_strip(wg.render_server_conf(state, port=51999), tmp_path)
    assert "Address" not in server and "ListenPort = 51999" in server
    assert server.count("[Peer]") == 2
    client = wg_quick_strip(wg.render_client_conf(state, "3", DNS_NAME).decode(), tmp_path)
    assert "Address" not in client and "DNS" not in client and f"Endpoint = {DNS_NAME}:51820" in client


@pytest.fixture
def wg_interface(netlab: NetLab) -> Iterator[tuple[NetLab, str, list[str]]]:
    """A wireguard-go interface "wg0" in a private namespace: (lab, namespace, argv prefix for `wg`)."""
    require_tools("wireguard-go", "wg", "wg-quick", "ip", "unshare",
                  hint="apt-get install wireguard-go wireguard-tools")
    ns = netlab.add_ns(netlab.ns("w"), hosts={DNS_NAME: "192.0.2.1"})
    rundir = netlab.workdir / "run"
    rundir.mkdir()
    Path("/run/wireguard").mkdir(exist_ok=True)  # the mount point for this test's private copy
    prefix = in_mounts({"/run/wireguard": rundir})
    netlab.spawn(ns, ["wireguard-go", "-f", "wg0"], netlab.workdir / "wg.log",
                 env={"WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1"}, prefix=prefix)
    assert wait_for(lambda: (rundir / "wg0.sock").exists(), 10), (netlab.workdir / "wg.log").read_text()
    yield netlab, ns, ["ip", "netns", "exec", ns, *prefix]


def test_it_renders_a_server_conf_that_wg_setconf_loads(
    state: wg.WireGuardServer, wg_interface: tuple[NetLab, str, list[str]], tmp_path: Path
) -> None:
    lab, _, wg_in = wg_interface
    stripped = tmp_path / "server.stripped"
    stripped.write_text(wg_quick_strip(wg.render_server_conf(state), tmp_path))
    run(*wg_in, "wg", "setconf", "wg0", str(stripped))
    shown = run(*wg_in, "wg", "show", "wg0", "dump").stdout.splitlines()
    interface, peers = shown[0].split("\t"), [line.split("\t") for line in shown[1:]]
    assert interface[:3] == [wg.encode_key(state.private_key), wg.encode_key(state.public_key), "51820"]
    active = [p for p in state.peers if p.active]
    assert sorted((p[0], p[1], p[3]) for p in peers) == sorted(
        (wg.encode_key(p.public_key), wg.encode_key(p.preshared_key),
         f"{state.network4[p.host]}/32,{state.network6[p.host]}/128") for p in active)


def test_it_renders_a_client_conf_that_wg_setconf_loads(
    state: wg.WireGuardServer, wg_interface: tuple[NetLab, str, list[str]], tmp_path: Path
) -> None:
    lab, _, wg_in = wg_interface
    stripped = tmp_path / "client.stripped"
    stripped.write_text(wg_quick_strip(wg.render_client_conf(state, "1", DNS_NAME).decode(), tmp_path))
    run(*wg_in, "wg", "setconf", "wg0", str(stripped))  # resolves the endpoint in the namespace's hosts file
    dump = run(*wg_in, "wg", "show", "wg0", "dump").stdout.splitlines()
    assert dump[0].split("\t")[:2] == [wg.encode_key(state.peer("1").private_key),
                                       wg.encode_key(state.peer("1").public_key)]
    peer = dump[1].split("\t")
    assert peer[:4] == [wg.encode_key(state.public_key), wg.encode_key(state.peer("1").preshared_key),
                        "192.0.2.1:51820", "0.0.0.0/0,::/0"]
    assert peer[-1] == "25"


# ------------------------------------------------------------------ storage and secrets

def test_it_round_trips_through_its_stored_form_byte_for_byte(state: wg.WireGuardServer) -> None:
    stored = wg.to_bytes(state)
    assert wg.from_bytes(stored) == state and wg.to_bytes(wg.from_bytes(stored)) == stored
    assert json.loads(stored)["version"] == 1 and stored.isascii()


@pytest.mark.parametrize("damage", [
    "not json", "future version", "bad key", "foreign peer key", "revoked keeps key", "shared address",
    "address outside", "duplicate id", "wrong ula", "bad name",
])
def test_it_refuses_damaged_stored_state_without_quoting_keys(state: wg.WireGuardServer, damage: str) -> None:
    doc = json.loads(wg.to_bytes(state))
    peers = doc["peers"]
    if damage == "future version":
        doc["version"] = 2
    elif damage == "bad key":
        doc["private_key"] = doc["private_key"][:-4]
    elif damage == "foreign peer key":
        peers[0]["private_key"] = peers[2]["private_key"]
    elif damage == "revoked keeps key":
        peers[1]["preshared_key"] = peers[0]["preshared_key"]
    elif damage == "shared address":
        peers[2]["host"] = peers[0]["host"]
    elif damage == "address outside":
        peers[0]["host"] = 255
    elif damage == "duplicate id":
        peers[2]["id"] = "1"
    elif damage == "wrong ula":
        doc["network6"] = "fd00:1:2::/64"
    elif damage == "bad name":
        peers[0]["name"] = "x\nPostUp = evil"
    data = b"{nope" if damage == "not json" else json.dumps(doc).encode()
    with pytest.raises(wg.WireGuardFormatError) as info:
        wg.from_bytes(data)
    assert not any(secret in str(info.value) for secret in secrets_of(state))


def test_it_never_shows_a_private_or_preshared_key_in_reprs(state: wg.WireGuardServer) -> None:
    shown = " ".join([repr(state), str(state), repr(state.peers), str(state.peers[0]), repr(wg.list_peers(state))])
    assert DNS_NAME in shown and wg.encode_key(state.public_key) in shown
    assert not any(secret in shown for secret in secrets_of(state))


# ------------------------------------------------------------------ the QR code

def test_it_renders_the_conf_as_an_accessible_svg_qr_code_that_decodes_to_the_same_bytes(
    state: wg.WireGuardServer, tmp_path: Path
) -> None:
    conf = wg.render_client_conf(state, "1", DNS_NAME)
    svg = render_qr_svg(conf, title="WireGuard profile for “Phone” & co", description="Scan it in the app",
                        svg_id="qr-1")
    root = ET.fromstring(svg)  # noqa: S314 - our own output; parsing proves it well-formed
    ns = {"svg": "http://www.w3.org/2000/svg"}
    assert root.tag == "{http://www.w3.org/2000/svg}svg" and root.get("role") == "img"
    assert root.get("aria-labelledby") == "qr-1-title qr-1-desc" and root.get("viewBox")
    title, desc = root.find("svg:title", ns), root.find("svg:desc", ns)
    assert title is not None and title.text == "WireGuard profile for “Phone” & co" and title.get("id") == "qr-1-title"
    assert desc is not None and desc.get("id") == "qr-1-desc"
    with pytest.raises(ValueError):
        render_qr_svg(conf, title="t", description="d", svg_id='x" onload="alert(1)')
    # What a phone camera reads back is the .conf itself
    need_decoder()
    (tmp_path / "qr.svg").write_text(svg)
    run("rsvg-convert", "--width", "800", "--output", str(tmp_path / "qr.png"), str(tmp_path / "qr.svg"))
    decoded = subprocess.run(["zbarimg", "--quiet", "--raw", "-Sbinary", str(tmp_path / "qr.png")],
                             capture_output=True, timeout=30, check=False)
    assert decoded.returncode == 0, decoded.stderr
    assert decoded.stdout.rstrip(b"\n") == conf.rstrip(b"\n")


def need_decoder() -> None:
    missing = [tool for tool in ("rsvg-convert", "zbarimg") if shutil.which(tool) is None]
    if missing:
        require_or_skip(f"missing tools: {', '.join(missing)} (apt-get install librsvg2-bin zbar-tools)")

