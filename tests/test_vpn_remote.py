"""What the worker sends for each change (remote.py) and what install.sh makes of it on a server:
protocol selection, the CRL update and the WireGuard peer update, on a stubbed machine."""

from __future__ import annotations

import datetime as dt
import os
import re

import pytest

from provisioner.vpn import wireguard as wg
from provisioner.vpn.config import INSTALL_OK_MARKER, install_script
from provisioner.vpn.pki import ServerPKI, add_device, generate_pki, reissue_crl, revoke_device
from provisioner.vpn.remote import OK_MARKER, RemoteRun, crl_update_run, install_run, peers_update_run
from tests.fixtures.machine import Machine

DNS_NAME = "g0001.vpn.example.net"
NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def pki() -> ServerPKI:
    return add_device(generate_pki(DNS_NAME, now=NOW), "Phone", now=NOW)[0]


@pytest.fixture(scope="module")
def state() -> wg.WireGuardServer:
    server, _ = wg.add_peer(wg.generate_server(DNS_NAME), "Phone", device_id="1")
    return wg.add_peer(server, "Laptop", device_id="2")[0]


def ok(result: object) -> bool:
    stdout = getattr(result, "stdout", "")
    return getattr(result, "returncode", 1) == 0 and stdout.splitlines()[-1:] == [INSTALL_OK_MARKER]


def secret_lines(pki: ServerPKI, state: wg.WireGuardServer) -> list[str]:
    pems = [pki.ca_key_pem, pki.server_key_pem, pki.tls_crypt_key, *(d.key_pem for d in pki.devices)]
    lines = [ln for pem in pems for ln in pem.decode().splitlines() if ln and not ln.startswith(("-", "#"))]
    keys = [state.private_key, *(p.private_key for p in state.peers), *(p.preshared_key for p in state.peers)]
    return lines + [wg.encode_key(k) for k in keys if k]


# ------------------------------------------------------------------ what the worker sends

def test_it_keeps_todays_install_command_when_a_product_offers_openvpn_only(pki: ServerPKI) -> None:
    run = install_run(pki=pki)
    assert run.command == "bash /root/provisioner/install.sh"
    assert set(run.files) == {"install.sh", "server.conf", "ca.crt", "server.crt", "server.key", "tls-crypt.key",
                              "crl.pem"}
    assert run.files["install.sh"] == install_script() and OK_MARKER == INSTALL_OK_MARKER
    assert run.file_mode("install.sh") == 0o700 and run.file_mode("server.key") == 0o600


def test_it_names_the_protocols_a_product_offers(pki: ServerPKI, state: wg.WireGuardServer) -> None:
    both = install_run(pki=pki, wireguard_state=state, wireguard_port=443)
    assert both.command == "bash /root/provisioner/install.sh install openvpn wireguard"
    assert "ListenPort = 443" in both.files["wg0.conf"].decode()
    only_wg = install_run(wireguard_state=state)
    assert only_wg.command == "bash /root/provisioner/install.sh install wireguard"
    assert set(only_wg.files) == {"install.sh", "wg0.conf"}
    with pytest.raises(ValueError):
        install_run()


def test_it_names_every_revoked_device_in_the_crl_update(pki: ServerPKI) -> None:
    assert crl_update_run(pki).argv[2:] == ("update-crl",)
    revoked = revoke_device(revoke_device(pki, "2"), "1")
    run = crl_update_run(revoked)
    assert run.argv[2:] == ("update-crl", "device-2", DNS_NAME)
    assert run.files == {"crl.pem": revoked.crl_pem, "install.sh": install_script()}


def test_it_never_shows_the_uploaded_keys_in_a_runs_repr(pki: ServerPKI, state: wg.WireGuardServer) -> None:
    for run in (install_run(pki=pki, wireguard_state=state), crl_update_run(pki), peers_update_run(state)):
        shown = repr(run) + str(run)
        assert "install.sh" in shown
        assert not any(secret in shown for secret in secret_lines(pki, state))


# ------------------------------------------------------------------ install.sh: protocols

def test_it_installs_wireguard_alone_and_reruns_without_churn(machine: Machine, state: wg.WireGuardServer) -> None:
    # Given a fresh machine with the worker's WireGuard upload
    machine.upload(install_run(wireguard_state=state).files)
    # When the installer runs for WireGuard only
    first, calls = machine.run("install", "wireguard")
    # Then it installs wireguard-tools (not OpenVPN), places wg0.conf privately and starts wg-quick@wg0
    assert ok(first), first.stdout + first.stderr
    assert any(c.startswith("apt-get") and "install" in c and "wireguard-tools" in c for c in calls), calls
    assert not any("openvpn" in c for c in calls if c.startswith(("apt-get", "systemctl"))), calls
    assert "systemctl restart wg-quick@wg0" in calls and "systemctl enable --quiet wg-quick@wg0" in calls
    conf = machine.path("/etc/wireguard/wg0.conf")
    assert conf.read_text() == wg.render_server_conf(state) and conf.stat().st_mode & 0o777 == 0o600
    assert conf.parent.stat().st_mode & 0o777 == 0o700
    assert not machine.path("/root/provisioner/wg0.conf").exists()
    # with forwarding and the NAT of the tunnel network out of the WAN interface, under its own tag
    env = machine.path("/etc/default/wireguard-iptables").read_text()
    assert env == ("VPN_SUBNET=10.66.66.1/24\nVPN_PORT=51820\nVPN_PROTO=udp\nWAN_NIC=ens3\n"
                   "VPN_IFACE=wg0\nFW_TAG=provisioner-wireguard\n")
    inserted = [c for c in calls if c.startswith("iptables") and " -I " in c]
    assert len(inserted) == 4 and all("provisioner-wireguard" in c for c in inserted), inserted
    assert any("-t nat -I POSTROUTING 1 -s 10.66.66.1/24 -o ens3" in c for c in inserted)
    assert any("-I INPUT 1 -i ens3 -p udp --dport 51820" in c for c in inserted)
    assert not any(c.startswith("ip6tables") for c in calls)  # no IPv6 uplink: IPv6 stays in the tunnel
    assert machine.path("/etc/sysctl.d/99-wireguard.conf").read_text() == "net.ipv4.ip_forward=1\n"
    assert not any(secret in first.stdout + first.stderr for secret in secret_lines(generate_pki("x"), state))
    # When it runs again with the same upload, nothing is reinstalled or restarted
    second, calls = machine.send(install_run(wireguard_state=state))
    assert ok(second), second.stderr
    assert not any(c.startswith("apt-get") or c.startswith("systemctl restart") for c in calls), calls


def test_it_routes_ipv6_from_the_tunnel_when_the_server_has_an_ipv6_uplink(
    machine: Machine, state: wg.WireGuardServer
) -> None:
    (machine.state / "ipv6").touch()
    result, calls = machine.send(install_run(wireguard_state=state))
    assert ok(result), result.stderr
    env = machine.path("/etc/default/wireguard-iptables").read_text()
    assert f"VPN_SUBNET6={state.address6}/64\n" in env
    assert any(c.startswith("ip6tables") and "-I POSTROUTING 1" in c and "MASQUERADE" in c for c in calls), calls
    # forwarding would make the uplink ignore router advertisements: accept_ra=2 keeps its route
    assert machine.path("/etc/sysctl.d/99-wireguard.conf").read_text().splitlines() == [
        "net.ipv4.ip_forward=1", "net.ipv6.conf.ens3.accept_ra=2", "net.ipv6.conf.all.forwarding=1"]


def test_it_installs_both_protocols_in_one_run(machine: Machine, pki: ServerPKI, state: wg.WireGuardServer) -> None:
    run = install_run(pki=pki, wireguard_state=state)
    result, calls = machine.send(run)
    assert ok(result), result.stdout + result.stderr
    assert {"systemctl restart openvpn-server@server", "systemctl restart wg-quick@wg0"} <= set(calls)
    assert machine.path("/etc/openvpn/server/crl.pem").read_bytes() == pki.crl_pem
    assert machine.path("/etc/wireguard/wg0.conf").exists()


def test_it_refuses_an_unknown_protocol_before_touching_anything(machine: Machine, pki: ServerPKI) -> None:
    machine.upload(install_run(pki=pki).files)
    result, calls = machine.run("install", "ipsec")
    assert result.returncode != 0 and "unknown protocol ipsec" in result.stderr
    assert not any(c.startswith(("apt-get", "systemctl")) for c in calls), calls


# ------------------------------------------------------------------ install.sh update-crl

def installed(machine: Machine, run: RemoteRun) -> None:
    result, _ = machine.send(run)
    assert ok(result), result.stdout + result.stderr


def test_it_applies_a_new_crl_without_restarting_openvpn(machine: Machine, pki: ServerPKI) -> None:
    # Given a running OpenVPN server
    installed(machine, install_run(pki=pki))
    # When device 2 is revoked and the worker sends the CRL update
    revoked = revoke_device(pki, "2")
    run = crl_update_run(revoked)
    result, calls = machine.send(run)
    # Then the new CRL is in place, world-readable for OpenVPN after its privilege drop, and
    # nothing was restarted (OpenVPN re-reads crl.pem on every new connection)
    assert ok(result), result.stdout + result.stderr
    crl = machine.path("/etc/openvpn/server/crl.pem")
    assert crl.read_bytes() == revoked.crl_pem and crl.stat().st_mode & 0o777 == 0o644
    assert not any(c.startswith("systemctl") for c in calls), calls
    assert not machine.path("/root/provisioner/crl.pem").exists()
    # (no management socket on this stubbed machine: it says so instead of failing)
    assert "next renegotiation" in result.stdout
    # And running it again is harmless
    again, _ = machine.send(run)
    assert ok(again), again.stderr


def test_it_refuses_an_older_crl_so_a_late_retry_cannot_bring_a_device_back(machine: Machine, pki: ServerPKI) -> None:
    revoked = revoke_device(pki, "2")
    installed(machine, install_run(pki=revoked))
    stale = crl_update_run(pki)  # CRL number 1, from before the revocation
    result, _ = machine.send(stale)
    assert result.returncode != 0 and "older than the installed" in result.stderr
    assert machine.path("/etc/openvpn/server/crl.pem").read_bytes() == revoked.crl_pem


def test_it_refuses_a_crl_that_another_servers_ca_signed(machine: Machine, pki: ServerPKI) -> None:
    installed(machine, install_run(pki=pki))
    foreign = crl_update_run(reissue_crl(reissue_crl(generate_pki("g0002"))))
    result, _ = machine.send(foreign)
    assert result.returncode != 0 and "not a CRL signed by this server's CA" in result.stderr
    assert machine.path("/etc/openvpn/server/crl.pem").read_bytes() == pki.crl_pem


def test_it_moves_the_crl_mtime_forward_so_openvpn_notices_a_same_size_crl(machine: Machine, pki: ServerPKI) -> None:
    # OpenVPN reloads crl.pem only when its size or its mtime (whole seconds) changed; a
    # re-issued CRL has the same size, and may land within the second of the previous one.
    installed(machine, install_run(pki=pki))
    crl = machine.path("/etc/openvpn/server/crl.pem")
    ahead = int(crl.stat().st_mtime) + 100  # as if the previous CRL was written "later" than now
    os.utime(crl, (ahead, ahead))
    refreshed = reissue_crl(pki)
    assert len(refreshed.crl_pem) == len(pki.crl_pem)
    run = crl_update_run(refreshed)
    result, _ = machine.send(run)
    assert ok(result), result.stderr
    assert crl.read_bytes() == refreshed.crl_pem and int(crl.stat().st_mtime) == ahead + 1


def test_it_refuses_a_crl_update_before_openvpn_is_installed(machine: Machine, pki: ServerPKI) -> None:
    run = crl_update_run(pki)
    result, _ = machine.send(run)
    assert result.returncode != 0 and "run install first" in result.stderr


# ------------------------------------------------------------------ install.sh update-peers

def test_it_syncs_the_peers_without_restarting_wireguard(machine: Machine, state: wg.WireGuardServer) -> None:
    # Given a running WireGuard server with two devices
    installed(machine, install_run(wireguard_state=state))
    # When device 1 is revoked and a tablet added, and the worker sends the peer update
    changed, _ = wg.add_peer(wg.revoke_peer(state, "1"), "Tablet")
    run = peers_update_run(changed)
    result, calls = machine.send(run)
    # Then wg syncconf gets the stripped config (keys and peers, no wg-quick keys), nothing restarts
    assert ok(result), result.stdout + result.stderr
    assert "wg syncconf wg0 /dev/stdin" in calls
    assert not any(c.startswith("systemctl") for c in calls), calls
    synced = (machine.state / "synced").read_text()
    assert not re.search(r"^(Address|DNS|Table|PostUp)\b", synced, re.MULTILINE | re.IGNORECASE)
    keys = {p.device_id: wg.encode_key(p.public_key) for p in changed.peers}
    assert keys["2"] in synced and keys["3"] in synced and keys["1"] not in synced
    assert re.findall(r"^\[Peer\]$", synced, re.MULTILINE) == ["[Peer]", "[Peer]"]
    assert machine.path("/etc/wireguard/wg0.conf").read_text() == wg.render_server_conf(changed)
    assert not any(secret in result.stdout + result.stderr for secret in secret_lines(generate_pki("x"), changed))


def test_it_refuses_an_older_peer_list(machine: Machine, state: wg.WireGuardServer) -> None:
    revoked = wg.revoke_peer(state, "1")
    installed(machine, install_run(wireguard_state=revoked))
    stale = peers_update_run(state)  # still lists device 1
    result, calls = machine.send(stale)
    assert result.returncode != 0 and "older than the installed" in result.stderr
    assert "wg syncconf wg0 /dev/stdin" not in calls
    assert machine.path("/etc/wireguard/wg0.conf").read_text() == wg.render_server_conf(revoked)


def test_it_refuses_a_peer_update_that_would_change_the_server_itself(
    machine: Machine, state: wg.WireGuardServer
) -> None:
    installed(machine, install_run(wireguard_state=state))
    other = wg.add_peer(wg.add_peer(wg.generate_server("g0002"), "a")[0], "b")[0]
    # another server's key and addresses, or another port (the firewall opens the installed one)
    for run in (peers_update_run(other), peers_update_run(state, port=51821)):
        result, calls = machine.send(run)
        assert result.returncode != 0 and "run install instead" in result.stderr
        assert "wg syncconf wg0 /dev/stdin" not in calls
    assert machine.path("/etc/wireguard/wg0.conf").read_text() == wg.render_server_conf(state)
