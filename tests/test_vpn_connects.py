"""The customer's .ovpn really connects to a server running our server.conf (RELIABILITY.md B.4).

Real `openvpn` processes in throwaway network namespaces joined by veth pairs; nothing
leaves the machine and nothing is configured in the host namespace. Needs root,
/dev/net/tun, openvpn, iproute2, iptables and ping: skipped without them locally, failed
without them under CI=true.

    client ns  192.0.2.2 --veth-- 192.0.2.1  server ns  198.51.100.1 --veth-- 198.51.100.2  inet ns
               (tun 10.8.0.x)               (tun 10.8.0.1, NAT out of the inet side)
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from provisioner.vpn.config import SERVER_FILE_MODES, render_client_ovpn, render_server_conf, server_files
from provisioner.vpn.pki import ServerPKI, generate_pki, revoke_client
from tests.fixtures.services import require_or_skip

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

DNS_NAME = "g0001.vpn.test.invalid"
SERVER_IP = "192.0.2.1"
CLIENT_IP = "192.0.2.2"
UPSTREAM_IP = "198.51.100.2"
VPN_NET = ipaddress.ip_network("10.8.0.0/24")
CONNECTED = "Initialization Sequence Completed"
INSTALL_SH = Path(__file__).resolve().parents[1] / "provisioner" / "vpn" / "install.sh"
RULE_TAG = "provisioner-openvpn"

_ids = itertools.count()
_tick = threading.Event()  # never set: an interruptible pause between polls


def wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        _tick.wait(0.1)
    return True


def run(*cmd: str, timeout: float = 10, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=check)


@dataclass
class Lab:
    tag: str
    workdir: Path
    namespaces: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def srv(self) -> str:
        return f"pvs{self.tag}"

    @property
    def cli(self) -> str:
        return f"pvc{self.tag}"

    @property
    def inet(self) -> str:
        return f"pvi{self.tag}"

    def add_ns(self, name: str) -> None:
        run("ip", "netns", "add", name)
        self.namespaces.append(name)
        run("ip", "-n", name, "link", "set", "lo", "up")

    def link(self, a: str, a_addr: str, b: str, b_addr: str, stem: str) -> str:
        """A veth pair between namespaces a and b; returns the name of a's end."""
        a_if, b_if = f"{stem}a{self.tag}", f"{stem}b{self.tag}"
        run("ip", "link", "add", a_if, "type", "veth", "peer", "name", b_if)
        for ns, ifname, addr in ((a, a_if, a_addr), (b, b_if, b_addr)):
            run("ip", "link", "set", ifname, "netns", ns)
            run("ip", "-n", ns, "addr", "add", addr, "dev", ifname)
            run("ip", "-n", ns, "link", "set", ifname, "up")
        return a_if

    def spawn(self, name: str, ns: str, config: Path) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.workdir / f"{name}.log"
        # `timeout` bounds the process even if teardown never runs; `ip netns exec` execs openvpn.
        proc = subprocess.Popen(
            ["timeout", "55", "ip", "netns", "exec", ns, "openvpn", "--config", str(config), "--log", str(log)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc, log

    def start_server(self, pki: ServerPKI) -> Path:
        conf = render_server_conf(
            pki, path_prefix=str(self.workdir), status_path=str(self.workdir / "status.log")
        )
        for name, content in server_files(pki).items():
            write_file(self.workdir / name, content, SERVER_FILE_MODES[name])
        write_file(self.workdir / "server.conf", conf.encode(), SERVER_FILE_MODES["server.conf"])
        proc, log = self.spawn("server", self.srv, self.workdir / "server.conf")
        assert wait_for(lambda: CONNECTED in read(log) or proc.poll() is not None, 15), tail(log)
        assert proc.poll() is None, f"openvpn server exited:\n{tail(log)}"
        return log

    def start_client(self, name: str, ovpn: bytes) -> tuple[subprocess.Popen[bytes], Path]:
        path = self.workdir / f"{name}.ovpn"
        write_file(path, ovpn, 0o600)
        return self.spawn(name, self.cli, path)

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # `timeout` passes it on to openvpn
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)

    def vpn_addresses(self) -> list[ipaddress.IPv4Interface]:
        out = run("ip", "-n", self.cli, "-4", "-o", "addr", "show").stdout
        found = (ipaddress.IPv4Interface(word) for line in out.splitlines() for word in line.split()[3:4])
        return [iface for iface in found if iface.ip in VPN_NET]


def write_file(path: Path, content: bytes, mode: int) -> None:
    path.write_bytes(content)
    path.chmod(mode)


def read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def tail(path: Path) -> str:
    return "\n".join(read(path).splitlines()[-25:])


def connected(proc: subprocess.Popen[bytes], log: Path, timeout: float = 20) -> bool:
    """Waits for the client's handshake; False at the deadline or when the client died."""
    return wait_for(lambda: CONNECTED in read(log) or proc.poll() is not None, timeout) and CONNECTED in read(log)


@pytest.fixture(scope="module")
def host_ready() -> None:
    if os.geteuid() != 0:
        require_or_skip("network namespaces need root")
    if not Path("/dev/net/tun").is_char_device():
        require_or_skip("/dev/net/tun is missing (container without TUN?)")
    tools = ("openvpn", "ip", "iptables", "iptables-save", "ping", "sysctl", "timeout")
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        require_or_skip(
            f"missing tools: {', '.join(missing)} (apt-get install openvpn iproute2 iptables iputils-ping procps)"
        )


@pytest.fixture
def lab(host_ready: None) -> Iterator[Lab]:
    tag = f"{os.getpid() % 1_000_000}x{next(_ids)}"
    workdir = Path(tempfile.mkdtemp(prefix="vpn-e2e-"))
    workdir.chmod(0o755)  # openvpn re-reads crl.pem as nobody
    lab = Lab(tag=tag, workdir=workdir)
    try:
        lab.add_ns(lab.srv)
        lab.add_ns(lab.cli)
        lab.link(lab.srv, f"{SERVER_IP}/24", lab.cli, f"{CLIENT_IP}/24", "pv")
        # redirect-gateway needs a default route to keep the server reachable outside the tunnel.
        run("ip", "-n", lab.cli, "route", "add", "default", "via", SERVER_IP)
        hosts = Path("/etc/netns") / lab.cli
        hosts.mkdir(parents=True)
        (hosts / "hosts").write_text(f"127.0.0.1 localhost\n{SERVER_IP} {DNS_NAME}\n")
        yield lab
    finally:
        teardown(lab)


def teardown(lab: Lab) -> None:
    for proc in lab.procs:
        lab.stop(proc)
    for ns in lab.namespaces:
        leftover = run("ip", "netns", "pids", ns, check=False).stdout.split()
        for pid in leftover:  # only processes this test started inside its own namespace
            os.kill(int(pid), signal.SIGKILL)
        run("ip", "netns", "del", ns, check=False)
    for stem in ("pv", "pu"):
        if Path(f"/sys/class/net/{stem}a{lab.tag}").exists():  # a pair that never moved
            run("ip", "link", "del", f"{stem}a{lab.tag}", check=False)
    shutil.rmtree(Path("/etc/netns") / lab.cli, ignore_errors=True)
    shutil.rmtree(lab.workdir, ignore_errors=True)


def test_it_connects_with_the_customers_ovpn_and_reaches_the_server(lab: Lab) -> None:
    # Given a server running the rendered server.conf
    pki = generate_pki(DNS_NAME)
    server_log = lab.start_server(pki)
    # When the client starts the customer's .ovpn, which names the server by DNS
    proc, log = lab.start_client("client", render_client_ovpn(pki, DNS_NAME))
    # Then it completes the handshake, gets a tunnel address and pings the server's end
    assert connected(proc, log), tail(log)
    addresses = lab.vpn_addresses()
    assert len(addresses) == 1 and addresses[0].ip != ipaddress.ip_address("10.8.0.1"), addresses
    ping = run("ip", "netns", "exec", lab.cli, "ping", "-c3", "-W2", "10.8.0.1", timeout=20, check=False)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert f"{pki.client_cn}/{CLIENT_IP}" in read(server_log), tail(server_log)


def test_it_routes_client_traffic_out_through_the_installers_nat(lab: Lab) -> None:
    # Given an upstream network behind the server that has no route back to 10.8.0.0/24,
    # a FORWARD policy of DROP (as ufw sets) and the installer's firewall-up rules
    lab.add_ns(lab.inet)
    wan = lab.link(lab.srv, "198.51.100.1/24", lab.inet, f"{UPSTREAM_IP}/24", "pu")
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
    ping = run("ip", "netns", "exec", lab.cli, "ping", "-c3", "-W2", UPSTREAM_IP, timeout=20, check=False)
    # Then the reply comes back, which needs forwarding, the FORWARD accepts and MASQUERADE
    assert ping.returncode == 0, ping.stdout + ping.stderr
    # And firewall-down removes every rule again, and the host namespace never had any
    run("ip", "netns", "exec", lab.srv, "env", *env_args, "bash", str(INSTALL_SH), "firewall-down")
    assert RULE_TAG not in run("ip", "netns", "exec", lab.srv, "iptables-save").stdout
    assert RULE_TAG not in run("iptables-save", check=False).stdout


def test_it_rejects_another_servers_ovpn(lab: Lab) -> None:
    # Given a server and the .ovpn of a different server, pointed at the same DNS name
    server_log = lab.start_server(generate_pki(DNS_NAME))
    other = render_client_ovpn(generate_pki("g0002.vpn.test.invalid"), DNS_NAME)
    # When that client tries to connect
    proc, log = lab.start_client("other", other)
    # Then the server drops it at the tls-crypt layer and it never completes
    assert wait_for(lambda: "tls-crypt unwrapping failed" in read(server_log), 15), tail(server_log)
    assert not connected(proc, log, timeout=2), tail(log)
    assert lab.vpn_addresses() == []


def test_it_rejects_a_revoked_client_and_accepts_its_replacement(lab: Lab) -> None:
    # Given a connected customer
    pki = generate_pki(DNS_NAME)
    server_log = lab.start_server(pki)
    old_ovpn = render_client_ovpn(pki, DNS_NAME)
    proc, log = lab.start_client("before", old_ovpn)
    assert connected(proc, log), tail(log)
    lab.stop(proc)
    # When the client is revoked and the running server gets the re-issued crl.pem
    revoked = revoke_client(pki)
    staged = lab.workdir / ".crl.pem.new"
    write_file(staged, revoked.crl_pem, SERVER_FILE_MODES["crl.pem"])
    staged.replace(lab.workdir / "crl.pem")
    # Then the old .ovpn is refused
    proc, log = lab.start_client("revoked", old_ovpn)
    assert wait_for(lambda: "certificate revoked" in read(server_log), 15), tail(server_log)
    assert not connected(proc, log, timeout=2), tail(log)
    lab.stop(proc)
    # And the replacement .ovpn connects to the same, unrestarted server
    proc, log = lab.start_client("replacement", render_client_ovpn(revoked, DNS_NAME))
    assert connected(proc, log), tail(log)
