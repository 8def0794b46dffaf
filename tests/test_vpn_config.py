"""server.conf, the files shipped to the server, the customer's .ovpn and install.sh."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from provisioner.vpn.config import (
    INSTALL_OK_MARKER,
    SERVER_FILE_MODES,
    InvalidOvpn,
    install_script,
    render_client_ovpn,
    render_device_ovpn,
    render_server_conf,
    server_files,
    validate_ovpn,
)
from provisioner.vpn.pki import ServerPKI, add_device, from_bytes, generate_pki, revoke_device, to_bytes
from provisioner.vpn.remote import install_run
from tests.fixtures.machine import Machine
from tests.fixtures.services import require_or_skip

DNS_NAME = "g0001.vpn.example.net"
INSTALL_SH = Path(__file__).resolve().parents[1] / "provisioner" / "vpn" / "install.sh"


@pytest.fixture(scope="module")
def pki() -> ServerPKI:
    return generate_pki("g0001")


def block(ovpn: bytes, tag: str) -> str:
    match = re.search(rf"^<{tag}>\n(.*?)^</{tag}>$", ovpn.decode(), re.MULTILINE | re.DOTALL)
    assert match, tag
    return match.group(1)


# ------------------------------------------------------------------ the customer's .ovpn

def test_it_renders_the_exact_same_ovpn_bytes_after_a_rebuild(pki: ServerPKI) -> None:
    # A rebuild loads the stored PKI and renders again: the customer's file must not change.
    first = render_client_ovpn(pki, DNS_NAME)
    rebuilt = render_client_ovpn(from_bytes(to_bytes(pki)), DNS_NAME)
    assert rebuilt == first
    assert render_client_ovpn(pki, DNS_NAME, port=443) != first


def test_it_renders_a_different_ovpn_for_another_server(pki: ServerPKI) -> None:
    assert render_client_ovpn(generate_pki("g0001"), DNS_NAME) != render_client_ovpn(pki, DNS_NAME)


def test_it_points_the_ovpn_at_the_dns_name_and_pins_the_server_cn(pki: ServerPKI) -> None:
    lines = render_client_ovpn(pki, DNS_NAME, port=443, proto="tcp").decode().splitlines()
    for expected in (
        "client", f"remote {DNS_NAME} 443", "proto tcp", f"verify-x509-name {pki.server_cn} name",
        "remote-cert-tls server", "data-ciphers AES-256-GCM:AES-128-GCM:CHACHA20-POLY1305",
        "tls-version-min 1.2", "auth-nocache", "resolv-retry infinite", "nobind",
        "ignore-unknown-option block-outside-dns", "setenv opt block-outside-dns",
    ):
        assert expected in lines, expected
    assert not any(re.match(r"(comp-lzo|compress)\b", ln) for ln in lines)


def test_it_inlines_the_ca_the_client_certificate_only_its_key_and_tls_crypt(pki: ServerPKI) -> None:
    ovpn = render_client_ovpn(pki, DNS_NAME)
    assert block(ovpn, "ca").strip() == pki.ca_cert_pem.decode().strip()
    assert block(ovpn, "cert").strip() == pki.device("1").cert_pem.decode().strip()
    assert block(ovpn, "key").strip() == pki.device("1").key_pem.decode().strip()
    assert block(ovpn, "tls-crypt").strip() == pki.tls_crypt_key.decode().strip()
    assert pki.ca_key_pem not in ovpn and pki.server_key_pem.decode().strip() not in ovpn.decode()


def test_it_accepts_its_own_ovpn(pki: ServerPKI) -> None:
    validate_ovpn(render_client_ovpn(pki, DNS_NAME))


@pytest.mark.parametrize("damage", [
    "empty tls-crypt", "no tls-crypt", "no key", "no remote", "key in cert block", "foreign key", "not ascii",
])
def test_it_rejects_an_ovpn_a_client_could_not_use(pki: ServerPKI, damage: str) -> None:
    text = render_client_ovpn(pki, DNS_NAME).decode()
    tls = block(text.encode(), "tls-crypt")
    key = block(text.encode(), "key")
    if damage == "empty tls-crypt":  # the dpkg-lock symptom (angristan #720)
        text = text.replace(tls, "\n")
    elif damage == "no tls-crypt":
        text = text.replace(f"<tls-crypt>\n{tls}</tls-crypt>\n", "")
    elif damage == "no key":
        text = text.replace(f"<key>\n{key}</key>\n", "")
    elif damage == "no remote":
        text = re.sub(r"^remote .*\n", "", text, flags=re.MULTILINE)
    elif damage == "key in cert block":
        text = text.replace("</cert>", key + "</cert>")
    elif damage == "foreign key":
        text = text.replace(key, generate_pki("g0002").device("1").key_pem.decode())
    data = text.encode() + (b"\xff" if damage == "not ascii" else b"")
    with pytest.raises(InvalidOvpn) as info:
        validate_ovpn(data)
    assert "BEGIN" not in str(info.value) and key.splitlines()[1] not in str(info.value)


def test_it_renders_a_working_ovpn_for_each_added_device(pki: ServerPKI) -> None:
    with_phone, phone = add_device(pki, "Phone")
    ovpn = render_device_ovpn(with_phone, phone, DNS_NAME)
    validate_ovpn(ovpn)
    assert ovpn != render_client_ovpn(with_phone, DNS_NAME)
    assert block(ovpn, "ca") == block(render_client_ovpn(pki, DNS_NAME), "ca")


@pytest.mark.parametrize(
    "name",
    ["evil.example\nscript-security 2", "evil.example\n", "a b.example", "", "x" * 64 + ".example", "-a.example"],
)
def test_it_refuses_dns_names_that_could_inject_directives(pki: ServerPKI, name: str) -> None:
    with pytest.raises(ValueError):
        render_client_ovpn(pki, name)


# ------------------------------------------------------------------ the server side

def test_it_renders_a_hardened_server_conf(pki: ServerPKI) -> None:
    lines = render_server_conf(pki).splitlines()
    for expected in (
        "port 1194", "proto udp", "dev tun", "topology subnet", "server 10.8.0.0 255.255.255.0",
        "ca /etc/openvpn/server/ca.crt", "cert /etc/openvpn/server/server.crt",
        "key /etc/openvpn/server/server.key", "dh none", "tls-crypt /etc/openvpn/server/tls-crypt.key",
        "crl-verify /etc/openvpn/server/crl.pem", "remote-cert-tls client",
        "data-ciphers AES-256-GCM:AES-128-GCM:CHACHA20-POLY1305", "tls-version-min 1.2",
        "allow-compression no", "keepalive 10 120", "persist-key", "persist-tun", "user nobody",
        "group nogroup", "explicit-exit-notify 1", 'push "redirect-gateway def1 bypass-dhcp"',
        'push "dhcp-option DNS 1.1.1.1"', "status /run/openvpn-server/status-server.log",
        "management /run/openvpn-server/management.sock unix", "management-client-user root",
    ):
        assert expected in lines, expected
    assert not any(re.match(r"(comp-lzo|compress)\b", ln) for ln in lines)


def test_it_renders_tcp_without_the_udp_only_exit_notify_and_relocates_files(pki: ServerPKI) -> None:
    conf = render_server_conf(pki, port=443, proto="tcp", subnet="10.9.0.0 255.255.0.0", path_prefix="/srv/x/")
    lines = conf.splitlines()
    assert {"port 443", "proto tcp", "server 10.9.0.0 255.255.0.0", "ca /srv/x/ca.crt"} <= set(lines)
    assert not any(ln.startswith("explicit-exit-notify") for ln in lines)
    assert render_server_conf(pki, port=443, proto="tcp") == render_server_conf(pki, port=443, proto="tcp")


@pytest.mark.parametrize("kwargs", [
    {"port": 0}, {"port": 70000}, {"proto": "icmp"}, {"subnet": "10.8.0.0/24 x"}, {"subnet": "10.8.0.1 255.255.255.0"},
    {"dns": ("one.one.one.one",)}, {"path_prefix": "relative"}, {"path_prefix": "/etc/x\nscript-security 2"},
    {"path_prefix": "/etc/x\n"}, {"status_path": "/run/x\n"}, {"management_path": "/run/m.sock\nverb 11"},
])
def test_it_refuses_server_settings_that_would_break_or_inject_the_conf(pki: ServerPKI, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        render_server_conf(pki, **kwargs)


def test_it_ships_the_server_only_its_own_material_with_keys_private(pki: ServerPKI) -> None:
    files = server_files(pki)
    assert set(files) == {"ca.crt", "server.crt", "server.key", "tls-crypt.key", "crl.pem"}
    assert set(files) | {"server.conf"} == set(SERVER_FILE_MODES)
    assert files["server.key"] == pki.server_key_pem and files["tls-crypt.key"] == pki.tls_crypt_key
    everything = b"".join(files.values())
    assert pki.ca_key_pem not in everything and pki.device("1").key_pem not in everything
    readable = {name for name, mode in SERVER_FILE_MODES.items() if mode & 0o077}
    assert readable == {"server.conf", "ca.crt", "server.crt", "crl.pem"}
    assert SERVER_FILE_MODES["server.key"] == SERVER_FILE_MODES["tls-crypt.key"] == 0o600


# ------------------------------------------------------------------ install.sh

def test_it_packages_the_install_script(pki: ServerPKI) -> None:
    script = install_script()
    assert script == INSTALL_SH.read_bytes()
    text = script.decode()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text and "umask 077" in text
    assert INSTALL_OK_MARKER == "provisioner-install: ok" and 'log "ok"' in text
    # Every file the worker uploads is one the installer places.
    for name in SERVER_FILE_MODES:
        assert name in text


def test_it_has_an_install_script_that_bash_can_parse() -> None:
    result = subprocess.run(["bash", "-n", str(INSTALL_SH)], capture_output=True, text=True, timeout=10, check=False)
    assert result.returncode == 0, result.stderr


def test_it_has_an_install_script_that_passes_shellcheck() -> None:
    if shutil.which("shellcheck") is None:
        require_or_skip("shellcheck is not installed (apt-get install shellcheck)")
    result = subprocess.run(
        ["shellcheck", "--shell=bash", "--severity=style", str(INSTALL_SH)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_it_stops_the_firewall_helper_before_any_change_when_settings_are_missing(tmp_path: Path) -> None:
    # Stand-ins record any iptables/sysctl call, so a regression cannot touch this host.
    calls = tmp_path / "calls"
    for tool in ("iptables", "sysctl"):
        stub = tmp_path / tool
        stub.write_text(f'#!/bin/sh\necho "{tool} $*" >> "{calls}"\n')
        stub.chmod(0o755)
    env = {"PATH": f"{tmp_path}:{os.defpath}", "VPN_PORT": "1194", "VPN_PROTO": "udp", "WAN_NIC": "eth0"}
    result = subprocess.run(
        ["bash", str(INSTALL_SH), "firewall-up"], env=env, capture_output=True, text=True, timeout=10, check=False
    )
    assert result.returncode != 0
    assert "VPN_SUBNET" in result.stderr
    assert not calls.exists()


# ------------------------------------------------------------------ install.sh, run for real

def test_it_installs_once_and_reruns_without_churn(machine: Machine, pki: ServerPKI) -> None:
    # Given a fresh machine with the worker's uploads
    machine.upload(install_run(pki=pki).files)
    # When the installer runs
    first, calls = machine.run()
    # Then it succeeds with the marker last, having installed packages and started the services
    assert first.returncode == 0, first.stdout + first.stderr
    assert first.stdout.splitlines()[-1] == INSTALL_OK_MARKER
    assert any(c.startswith("apt-get") and "install" in c and "openvpn" in c for c in calls), calls
    assert any("DPkg::Lock::Timeout=600" in c for c in calls if c.startswith("apt-get"))
    assert "cloud-init status --wait" in calls
    assert "systemctl restart openvpn-server@server" in calls
    assert "systemctl enable --quiet openvpn-iptables.service" in calls
    # with the files in place, keys private, and the upload copies of the keys gone
    for name, mode in SERVER_FILE_MODES.items():
        placed = machine.path(f"/etc/openvpn/server/{name}")
        assert placed.stat().st_mode & 0o777 == mode, name
        assert not machine.path(f"/root/provisioner/{name}").exists(), name
    assert machine.path("/etc/openvpn/server/server.key").read_bytes() == pki.server_key_pem
    assert machine.path("/etc/openvpn/server").stat().st_mode & 0o777 == 0o755
    assert machine.path("/etc/sysctl.d/99-openvpn.conf").read_text() == "net.ipv4.ip_forward=1\n"
    env = machine.path("/etc/default/openvpn-iptables").read_text()
    assert env == "VPN_SUBNET=10.8.0.0/255.255.255.0\nVPN_PORT=1194\nVPN_PROTO=udp\nWAN_NIC=ens3\n"
    unit = machine.path("/etc/systemd/system/openvpn-iptables.service").read_text()
    assert "Type=oneshot" in unit and "ExecStart=/usr/local/sbin/provisioner-openvpn firewall-up" in unit
    assert machine.path("/usr/local/sbin/provisioner-openvpn").read_bytes() == install_script()
    inserted = [c for c in calls if c.startswith("iptables") and " -I " in c]
    assert any("-t nat -I POSTROUTING 1 -s 10.8.0.0/255.255.255.0 -o ens3" in c and "MASQUERADE" in c
               for c in inserted), inserted
    assert len(inserted) == 4
    assert not any(fragment in first.stdout + first.stderr for fragment in secret_lines(pki))

    # When the worker uploads the same files again and reruns
    machine.upload(install_run(pki=pki).files)
    second, calls = machine.run()
    # Then nothing is reinstalled or restarted
    assert second.returncode == 0 and second.stdout.splitlines()[-1] == INSTALL_OK_MARKER, second.stderr
    assert not any(c.startswith("apt-get") for c in calls), calls
    assert "systemctl restart openvpn-server@server" not in calls

    # And a full install with a changed CRL (a revocation) restarts the server
    machine.upload(install_run(pki=revoke_device(add_device(pki, "Phone")[0], "2")).files)
    third, calls = machine.run()
    assert third.returncode == 0, third.stderr
    assert "systemctl restart openvpn-server@server" in calls
    assert machine.path("/etc/openvpn/server/crl.pem").read_bytes() != pki.crl_pem


def test_it_refuses_to_install_with_an_upload_missing(machine: Machine, pki: ServerPKI) -> None:
    machine.upload(install_run(pki=pki).files)
    machine.path("/root/provisioner/tls-crypt.key").write_bytes(b"")
    result, calls = machine.run()
    assert result.returncode != 0
    assert "tls-crypt.key" in result.stderr and INSTALL_OK_MARKER not in result.stdout
    assert not any(c.startswith(("apt-get", "systemctl")) for c in calls), calls


def secret_lines(pki: ServerPKI) -> list[str]:
    return [ln for pem in (pki.server_key_pem, pki.tls_crypt_key) for ln in pem.decode().splitlines()
            if ln and not ln.startswith(("-", "#"))]
