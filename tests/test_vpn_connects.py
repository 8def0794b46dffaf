"""Each device's .ovpn really connects to a server running our server.conf (RELIABILITY.md B.4),
and a revoked device is refused once the CRL update reaches the server, before and after a rebuild.

Real `openvpn` processes in throwaway network namespaces joined by veth pairs (see
tests/fixtures/netns.py). Needs root, /dev/net/tun, openvpn, iproute2, iptables and ping:
skipped without them locally, failed without them under CI=true.

    client ns  192.0.2.2 --veth-- 192.0.2.1  server ns  198.51.100.1 --veth-- 198.51.100.2  inet ns
               (tun 10.8.0.x)               (tun 10.8.0.1, NAT out of the inet side)
    2nd client 203.0.113.2 --veth-- 203.0.113.1 (server ns)
"""

from __future__ import annotations

import ipaddress
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner.vpn.config import (
    SERVER_FILE_MODES,
    render_client_ovpn,
    render_device_ovpn,
    render_server_conf,
    server_files,
)
from provisioner.vpn.pki import ServerPKI, add_device, from_bytes, generate_pki, revoke_device, to_bytes
from provisioner.vpn.remote import crl_update_run
from tests.fixtures.netns import NetLab, in_mounts, read, require_tools, run, tail, wait_for, write_file
from tests.fixtures.services import require_or_skip

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

DNS_NAME = "g0001.vpn.test.invalid"
SERVER_IP = "192.0.2.1"
CLIENT_IP = "192.0.2.2"
SECOND_SERVER_IP = "203.0.113.1"
UPSTREAM_IP = "198.51.100.2"
VPN_NET = ipaddress.ip_network("10.8.0.0/24")
CONNECTED = "Initialization Sequence Completed"
INSTALL_SH = Path(__file__).resolve().parents[1] / "provisioner" / "vpn" / "install.sh"
RULE_TAG = "provisioner-openvpn"


class Lab:
    """A server namespace and a client namespace; more clients on request."""

    def __init__(self, net: NetLab) -> None:
        self.net, self.workdir = net, net.workdir
        self.srv = net.add_ns(net.ns("s"))
        self.cli = self.add_client("c", SERVER_IP, CLIENT_IP, "pv")

    def add_client(self, role: str, server_ip: str, client_ip: str, stem: str) -> str:
        ns = self.net.add_ns(self.net.ns(role), hosts={DNS_NAME: server_ip})
        self.net.link(self.srv, f"{server_ip}/24", ns, f"{client_ip}/24", stem)
        # redirect-gateway needs a default route to keep the server reachable outside the tunnel.
        run("ip", "-n", ns, "route", "add", "default", "via", server_ip)
        return ns

    def start_server(self, pki: ServerPKI) -> tuple[subprocess.Popen[bytes], Path]:
        conf = render_server_conf(
            pki, path_prefix=str(self.workdir), status_path=str(self.workdir / "status.log"),
            management_path=str(self.workdir / "management.sock"),
        )
        for name, content in server_files(pki).items():
            write_file(self.workdir / name, content, SERVER_FILE_MODES[name])
        write_file(self.workdir / "server.conf", conf.encode(), SERVER_FILE_MODES["server.conf"])
        log = self.workdir / "server.log"
        log.unlink(missing_ok=True)
        proc = self.net.spawn(self.srv, ["openvpn", "--config", str(self.workdir / "server.conf")], log)
        assert wait_for(lambda: CONNECTED in read(log) or proc.poll() is not None, 15), tail(log)
        assert proc.poll() is None, f"openvpn server exited:\n{tail(log)}"
        return proc, log

    def start_client(self, name: str, ovpn: bytes, ns: str | None = None) -> tuple[subprocess.Popen[bytes], Path]:
        path = self.workdir / f"{name}.ovpn"
        write_file(path, ovpn, 0o600)
        log = self.workdir / f"{name}.log"
        return self.net.spawn(ns or self.cli, ["openvpn", "--config", str(path)], log), log

    def vpn_addresses(self, ns: str | None = None) -> list[ipaddress.IPv4Interface]:
        out = run("ip", "-n", ns or self.cli, "-4", "-o", "addr", "show").stdout
        found = (ipaddress.IPv4Interface(word) for line in out.splitlines() for word in line.split()[3:4])
        return [iface for iface in found if iface.ip in VPN_NET]

    def update_crl(self, pki: ServerPKI) -> subprocess.CompletedProcess[str]:
        """What the worker's SSH step does: upload the run's files, run its command as root.

        The server's /etc/openvpn/server is this lab's workdir, seen through a bind mount.
        """
        update = crl_update_run(pki)
        root = self.workdir / "root"
        (root / "provisioner").mkdir(parents=True, exist_ok=True)
        for name, content in update.files.items():
            write_file(root / "provisioner" / name, content, update.file_mode(name))
        mounts = {"/etc/openvpn/server": self.workdir, "/root": root}
        return run(*in_mounts(mounts), *update.argv, timeout=60, check=False)


def connected(proc: subprocess.Popen[bytes], log: Path, timeout: float = 20) -> bool:
    """Waits for the client's handshake; False at the deadline or when the client died."""
    return wait_for(lambda: CONNECTED in read(log) or proc.poll() is not None, timeout) and CONNECTED in read(log)


@pytest.fixture
def lab(netlab: NetLab) -> Iterator[Lab]:
    require_tools("openvpn", "ip", "iptables", "iptables-save", "ping", "sysctl", "timeout", "unshare", "openssl",
                  "python3", hint="apt-get install openvpn iproute2 iptables iputils-ping procps util-linux openssl")
    if not Path("/etc/openvpn/server").is_dir():  # the bind-mount target of update_crl()
        require_or_skip("/etc/openvpn/server is missing (apt-get install openvpn)")
    yield Lab(netlab)


def test_it_connects_with_the_customers_ovpn_and_reaches_the_server(lab: Lab) -> None:
    # Given a server running the rendered server.conf
    pki = generate_pki(DNS_NAME)
    _, server_log = lab.start_server(pki)
    # When the client starts the customer's .ovpn, which names the server by DNS
    proc, log = lab.start_client("client", render_client_ovpn(pki, DNS_NAME))
    # Then it completes the handshake, gets a tunnel address and pings the server's end
    assert connected(proc, log), tail(log)
    addresses = lab.vpn_addresses()
    assert len(addresses) == 1 and addresses[0].ip != ipaddress.ip_address("10.8.0.1"), addresses
    ping = lab.net.ping(lab.cli, "10.8.0.1")
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert f"{pki.device('1').common_name}/{CLIENT_IP}" in read(server_log), tail(server_log)


def test_it_routes_client_traffic_out_through_the_installers_nat(lab: Lab) -> None:
    # Given an upstream network behind the server that has no route back to 10.8.0.0/24,
    # a FORWARD policy of DROP (as ufw sets) and the installer's firewall-up rules
    inet = lab.net.add_ns(lab.net.ns("i"))
    wan = lab.net.link(lab.srv, "198.51.100.1/24", inet, f"{UPSTREAM_IP}/24", "pu")
    run("ip", "netns", "exec", lab.srv, "iptables", "-P", "FORWARD", "DROP")
    env = {"VPN_SUBNET": "10.8.0.0/255.255.255.0", "VPN_PORT": "1194", "VPN_PROTO": "udp", "WAN_NIC": wan}
    env_args = [f"{k}={v}" for k, v in env.items()]
    for _ in range(2):  # twice: the second run must not duplicate anything
        run("ip", "netns", "exec", lab.srv, "env", *env_args, "bash", str(INSTALL_SH), "firewall-up")
    rules = run("ip", "netns", "exec", lab.srv, "iptables-save").stdout
    assert rules.count(RULE_TAG) == 4, rules
    pki = generate_pki(DNS_NAME)
    lab.start_server(pki)
    # When the client, whose default route the server pushed into the tunnel, pings upstream
    proc, log = lab.start_client("client", render_client_ovpn(pki, DNS_NAME))
    assert connected(proc, log), tail(log)
    ping = lab.net.ping(lab.cli, UPSTREAM_IP)
    # Then the reply comes back, which needs forwarding, the FORWARD accepts and MASQUERADE
    assert ping.returncode == 0, ping.stdout + ping.stderr
    # And firewall-down removes every rule again, and the host namespace never had any
    run("ip", "netns", "exec", lab.srv, "env", *env_args, "bash", str(INSTALL_SH), "firewall-down")
    assert RULE_TAG not in run("ip", "netns", "exec", lab.srv, "iptables-save").stdout
    assert RULE_TAG not in run("iptables-save", check=False).stdout


def test_it_rejects_another_servers_ovpn(lab: Lab) -> None:
    # Given a server and the .ovpn of a different server, pointed at the same DNS name
    _, server_log = lab.start_server(generate_pki(DNS_NAME))
    other = render_client_ovpn(generate_pki("g0002.vpn.test.invalid"), DNS_NAME)
    # When that client tries to connect
    proc, log = lab.start_client("other", other)
    # Then the server drops it at the tls-crypt layer and it never completes
    assert wait_for(lambda: "tls-crypt unwrapping failed" in read(server_log), 15), tail(server_log)
    assert not connected(proc, log, timeout=2), tail(log)
    assert lab.vpn_addresses() == []


def test_it_cuts_off_a_revoked_device_at_once_and_keeps_the_other_connected(lab: Lab) -> None:
    # Given a server with two devices, each connected from its own network
    pki, phone = add_device(generate_pki(DNS_NAME), "Phone")
    server, server_log = lab.start_server(pki)
    phone_ns = lab.add_client("d", SECOND_SERVER_IP, "203.0.113.2", "pw")
    laptop_proc, laptop_log = lab.start_client("laptop", render_device_ovpn(pki, "1", DNS_NAME))
    phone_proc, phone_log = lab.start_client("phone", render_device_ovpn(pki, phone, DNS_NAME), phone_ns)
    assert connected(laptop_proc, laptop_log), tail(laptop_log)
    assert connected(phone_proc, phone_log), tail(phone_log)
    assert len(lab.vpn_addresses(phone_ns)) == 1
    # When the phone is revoked and the worker's CRL update runs on the server
    revoked = revoke_device(pki, phone)
    update = lab.update_crl(revoked)
    assert update.returncode == 0 and update.stdout.splitlines()[-1] == "provisioner-install: ok", (
        update.stdout + update.stderr)
    # Then its open connection is ended through the management socket, the client told to stop
    assert "disconnected device-2: SUCCESS" in update.stdout, update.stdout
    assert wait_for(lambda: phone_proc.poll() is not None, 20), tail(phone_log)
    # And when the phone tries again, the running server (not restarted) refuses it with the new CRL
    phone_proc, phone_log = lab.start_client("phone-again", render_device_ovpn(pki, phone, DNS_NAME), phone_ns)
    assert wait_for(lambda: "certificate revoked" in read(server_log), 20), tail(server_log)
    assert not connected(phone_proc, phone_log, timeout=2), tail(phone_log)
    assert lab.vpn_addresses(phone_ns) == []
    assert server.poll() is None and "Restart pause" not in read(server_log), tail(server_log)
    # And the laptop never noticed: same connection, still reaching the server through it
    assert read(laptop_log).count(CONNECTED) == 1, tail(laptop_log)
    assert len(lab.vpn_addresses()) == 1 and lab.net.ping(lab.cli, "10.8.0.1").returncode == 0


def test_it_still_refuses_the_revoked_device_after_a_rebuild(lab: Lab) -> None:
    # Given a phone revoked on the old server, and the PKI (with its CRL) as the database keeps it
    pki, phone = add_device(generate_pki(DNS_NAME), "Phone")
    stored = to_bytes(revoke_device(pki, phone))
    old, _ = lab.start_server(from_bytes(to_bytes(pki)))  # the old server, before the revocation
    lab.net.stop(old)
    # When the server is rebuilt: a fresh process and files, from the stored PKI alone
    _, server_log = lab.start_server(from_bytes(stored))
    # Then the phone's .ovpn is refused and the first device's connects
    phone_proc, phone_log = lab.start_client("phone", render_device_ovpn(pki, phone, DNS_NAME))
    assert wait_for(lambda: "certificate revoked" in read(server_log), 20), tail(server_log)
    assert not connected(phone_proc, phone_log, timeout=2), tail(phone_log)
    lab.net.stop(phone_proc)
    laptop_proc, laptop_log = lab.start_client("laptop", render_client_ovpn(from_bytes(stored), DNS_NAME))
    assert connected(laptop_proc, laptop_log), tail(laptop_log)
    assert lab.net.ping(lab.cli, "10.8.0.1").returncode == 0
