"""A device's WireGuard .conf really connects to a server running our wg0.conf, survives a
rebuild in another region once the tunnel is restarted, and stops working when revoked.

Userspace `wireguard-go` + `wg` in throwaway network namespaces (this kernel has no WireGuard
module; production uses the kernel's, through the same files). Each namespace gets its own
/run/wireguard (wireguard-go's control socket lives there, outside any namespace), so
parallel runs never collide. Needs root, /dev/net/tun, wireguard-go, wireguard-tools,
iproute2, ping and unshare: skipped without them locally, failed without them under CI=true.

    client ns  192.0.2.2 --veth-- 192.0.2.1    server ns   (wg0 10.66.66.1, fdXX::1)
    client ns  203.0.113.2 --veth-- 203.0.113.1 server ns in "another region" (or a 2nd client)
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from provisioner.vpn import wireguard as wg
from provisioner.vpn.remote import peers_update_run
from tests.fixtures.netns import NetLab, in_mounts, read, require_tools, run, tail, wait_for, write_file
from tests.fixtures.services import require_or_skip

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

DNS_NAME = "g0001.vpn.test.invalid"


@dataclass
class Tunnel:
    ns: str
    proc: subprocess.Popen[bytes]
    log: Path
    conf_dir: Path  # holds wg0.conf: the server's /etc/wireguard
    prefix: list[str]  # runs a command in ns, with ns's /run/wireguard

    def wg(self, *args: str) -> str:
        return run(*self.prefix, "wg", *args).stdout


class Lab:
    def __init__(self, net: NetLab) -> None:
        self.net, self.workdir = net, net.workdir

    def add_client(self, role: str, links: dict[str, tuple[str, str]], dns_to: str) -> str:
        """A client namespace with a link to each server namespace (server ns → (server ip, client ip))."""
        ns = self.net.add_ns(self.net.ns(role), hosts={DNS_NAME: dns_to})
        for index, (server_ns, (server_ip, client_ip)) in enumerate(links.items()):
            self.net.link(server_ns, f"{server_ip}/24", ns, f"{client_ip}/24", f"w{role}{index}")
        return ns

    def up(self, ns: str, name: str, conf: bytes) -> Tunnel:
        """`wg-quick up` as far as a namespace allows: the same file through `wg-quick strip`,
        `wg setconf` (which resolves the Endpoint now, as every WireGuard client does), the
        Address lines, and routes for AllowedIPs (wg-quick's DNS and policy routing need
        resolvconf and the host's rules, so they are left out)."""
        conf_dir = self.workdir / name
        conf_dir.mkdir()
        write_file(conf_dir / "wg0.conf", conf, 0o600)
        rundir = self.workdir / f"run-{name}"
        rundir.mkdir()
        prefix = ["ip", "netns", "exec", ns, *in_mounts({"/run/wireguard": rundir})]
        log = self.workdir / f"{name}.log"
        proc = self.net.spawn(ns, ["wireguard-go", "-f", "wg0"], log, prefix=prefix[4:],
                              env={"LOG_LEVEL": "verbose", "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1"})
        assert wait_for(lambda: (rundir / "wg0.sock").exists() or proc.poll() is not None, 10), tail(log)
        stripped = run("wg-quick", "strip", str(conf_dir / "wg0.conf")).stdout
        write_file(conf_dir / "stripped", stripped.encode(), 0o600)
        run(*prefix, "wg", "setconf", "wg0", str(conf_dir / "stripped"))
        for address in value(conf, "Address").split(","):
            run("ip", "-n", ns, "address", "add", address.strip(), "dev", "wg0")
        run("ip", "-n", ns, "link", "set", "wg0", "up")
        if value(conf, "AllowedIPs") == "0.0.0.0/0, ::/0":
            run("ip", "-n", ns, "route", "add", "default", "dev", "wg0")
            run("ip", "-n", ns, "-6", "route", "add", "default", "dev", "wg0")
        return Tunnel(ns, proc, log, conf_dir, prefix)

    def down(self, tunnel: Tunnel) -> None:
        self.net.stop(tunnel.proc)  # the interface, its addresses and routes go with it
        assert wait_for(lambda: "wg0" not in run("ip", "-n", tunnel.ns, "-o", "link").stdout, 10)

    def reaches(self, ns: str, *addresses: str) -> bool:
        return all(self.net.ping(ns, address, count=2).returncode == 0 for address in addresses)

    def update_peers(self, server: Tunnel, state: wg.WireGuardServer) -> subprocess.CompletedProcess[str]:
        """What the worker's SSH step does: upload the run's files, run its command as root,
        on the server, whose /etc/wireguard is the tunnel's conf_dir."""
        update = peers_update_run(state)
        root = self.workdir / "root"
        (root / "provisioner").mkdir(parents=True, exist_ok=True)
        for name, content in update.files.items():
            write_file(root / "provisioner" / name, content, update.file_mode(name))
        rundir = self.workdir / f"run-{server.conf_dir.name}"
        mounts = {"/run/wireguard": rundir, "/etc/wireguard": server.conf_dir, "/root": root}
        return run("ip", "netns", "exec", server.ns, *in_mounts(mounts), *update.argv, timeout=60, check=False)


def value(conf: bytes, key: str) -> str:
    line = next(ln for ln in conf.decode().splitlines() if ln.split("=")[0].strip() == key)
    return line.split("=", 1)[1].strip()


@pytest.fixture
def lab(netlab: NetLab) -> Iterator[Lab]:
    require_tools("wireguard-go", "wg", "wg-quick", "ip", "ping", "unshare", "timeout",
                  hint="apt-get install wireguard-go wireguard-tools iproute2 iputils-ping util-linux")
    for mount_point in ("/run/wireguard", "/etc/wireguard"):
        if not Path(mount_point).is_dir():
            if mount_point == "/etc/wireguard":
                require_or_skip("/etc/wireguard is missing (apt-get install wireguard-tools)")
            Path(mount_point).mkdir()  # the bind-mount point for each namespace's private copy
    yield Lab(netlab)


@pytest.fixture
def state() -> wg.WireGuardServer:
    server, _ = wg.add_peer(wg.generate_server(DNS_NAME), "Phone", device_id="1")
    return wg.add_peer(server, "Laptop", device_id="2")[0]


def test_it_connects_with_the_devices_conf_and_reaches_the_server(lab: Lab, state: wg.WireGuardServer) -> None:
    # Given a server running the rendered wg0.conf
    srv = lab.net.add_ns(lab.net.ns("s"))
    cli = lab.add_client("c", {srv: ("192.0.2.1", "192.0.2.2")}, dns_to="192.0.2.1")
    server = lab.up(srv, "server", wg.render_server_conf(state).encode())
    # When the phone brings up its .conf, which names the server by DNS
    lab.up(cli, "phone", wg.render_client_conf(state, "1", DNS_NAME))
    # Then it reaches the server's tunnel addresses over IPv4 and IPv6, through a handshake
    assert lab.reaches(cli, str(state.address4), str(state.address6)), tail(server.log)
    handshakes = dict(line.split("\t") for line in server.wg("show", "wg0", "latest-handshakes").splitlines())
    assert int(handshakes[wg.encode_key(state.peer("1").public_key)]) > 0
    assert int(handshakes[wg.encode_key(state.peer("2").public_key)]) == 0


def test_it_reconnects_after_a_rebuild_in_another_region_once_the_tunnel_restarts(
    lab: Lab, state: wg.WireGuardServer
) -> None:
    # Given a phone connected to the server in the first region
    old = lab.net.add_ns(lab.net.ns("s"))
    new = lab.net.add_ns(lab.net.ns("t"))
    cli = lab.add_client("c", {old: ("192.0.2.1", "192.0.2.2"), new: ("203.0.113.1", "203.0.113.2")},
                         dns_to="192.0.2.1")
    stored = wg.to_bytes(state)  # what the database keeps
    old_server = lab.up(old, "old", wg.render_server_conf(state).encode())
    conf = wg.render_client_conf(state, "1", DNS_NAME)
    phone = lab.up(cli, "phone", conf)
    assert lab.reaches(cli, str(state.address4))
    # When the server is rebuilt in another region from the stored state, with a new address
    rebuilt = wg.from_bytes(stored)
    assert wg.render_server_conf(rebuilt) == wg.render_server_conf(state)
    lab.up(new, "new", wg.render_server_conf(rebuilt).encode())
    lab.net.stop(old_server.proc)
    lab.net.set_hosts(cli, {DNS_NAME: "203.0.113.1"})  # the DNS record moved
    # Then the running tunnel still sends to the old address (the trap the customer is told about)
    assert not lab.reaches(cli, str(state.address4))
    # And once the customer switches the tunnel off and on, the same .conf connects
    lab.down(phone)
    lab.up(cli, "phone-again", conf)
    assert lab.reaches(cli, str(state.address4), str(state.address6))


def test_it_refuses_a_revoked_device_and_keeps_the_other_without_a_restart(
    lab: Lab, state: wg.WireGuardServer
) -> None:
    # Given a phone and a laptop connected, each from its own network
    srv = lab.net.add_ns(lab.net.ns("s"))
    phone_ns = lab.add_client("c", {srv: ("192.0.2.1", "192.0.2.2")}, dns_to="192.0.2.1")
    laptop_ns = lab.add_client("d", {srv: ("203.0.113.1", "203.0.113.2")}, dns_to="203.0.113.1")
    server = lab.up(srv, "server", wg.render_server_conf(state).encode())
    phone = lab.up(phone_ns, "phone", wg.render_client_conf(state, "1", DNS_NAME))
    lab.up(laptop_ns, "laptop", wg.render_client_conf(state, "2", DNS_NAME))
    assert lab.reaches(phone_ns, str(state.address4)) and lab.reaches(laptop_ns, str(state.address4))
    # When the phone is revoked and the worker's peer update runs on the server
    revoked = wg.revoke_peer(state, "1")
    update = lab.update_peers(server, revoked)
    assert update.returncode == 0 and update.stdout.splitlines()[-1] == "provisioner-install: ok", (
        update.stdout + update.stderr)
    # Then the server no longer knows the phone, which cannot get through, now or after a restart
    assert wg.encode_key(state.peer("1").public_key) not in server.wg("show", "wg0", "peers")
    assert not lab.reaches(phone_ns, str(state.address4))
    lab.down(phone)
    lab.up(phone_ns, "phone-again", wg.render_client_conf(state, "1", DNS_NAME))
    assert not lab.reaches(phone_ns, str(state.address4))
    assert "Received invalid initiation message" in read(server.log), tail(server.log)
    # And the laptop still does, on the same server process (no restart)
    assert server.proc.poll() is None
    assert lab.reaches(laptop_ns, str(state.address4), str(state.address6))
    assert not any(wg.encode_key(k) in update.stdout + update.stderr
                   for k in (state.private_key, state.peer("1").preshared_key, state.peer("2").private_key))


def test_it_refuses_another_servers_conf(lab: Lab, state: wg.WireGuardServer) -> None:
    # Given a server, and the .conf of another server's device pointed at the same DNS name
    srv = lab.net.add_ns(lab.net.ns("s"))
    cli = lab.add_client("c", {srv: ("192.0.2.1", "192.0.2.2")}, dns_to="192.0.2.1")
    server = lab.up(srv, "server", wg.render_server_conf(state).encode())
    other = wg.add_peer(wg.generate_server("g0002.vpn.test.invalid"), "Phone", device_id="1")[0]
    # When that device brings its tunnel up
    lab.up(cli, "other", wg.render_client_conf(other, "1", DNS_NAME))
    # Then its handshake reaches the server and is dropped: sealed for another key, no peer
    # ever completes one
    assert not lab.reaches(cli, str(state.address4))
    assert "Received packet with invalid mac1" in read(server.log), tail(server.log)
    assert all(line.endswith("\t0") for line in server.wg("show", "wg0", "latest-handshakes").splitlines())


def test_the_conf_from_the_api_connects_to_the_wg0_conf_the_worker_installed(lab: Lab, tmp_path: Path) -> None:
    """The whole path: the lifecycle installs a WireGuard product's server on a simulated host,
    the customer downloads a device's .conf from the API, and a real tunnel comes up between them."""
    from fastapi.testclient import TestClient

    from dashboard_api.server import create_app
    from dashboard_api.tokens import mint_token
    from provisioner.models import Server
    from tests.fixtures.stack import open_stack

    (tmp_path / "stack").mkdir()
    with open_stack(tmp_path / "stack", products={"1": {"protocols": ["wireguard"]}}) as stack:
        rid = stack.create_server(email="ann@example.com", user_id=7)
        with stack.app.sessions() as s:
            row = s.get(Server, rid)
            assert row is not None and row.status == "Running"
            dns_name, instance = row.server_name or "", row.instance_id or ""
        headers = {"Authorization": f"Bearer {mint_token(stack.app.settings, 'ann@example.com', 7)}"}
        with TestClient(create_app(stack.app)) as api:
            got = api.get(f"/api/servers/{dns_name.split('.')[0]}/devices/1/conf", headers=headers)
        assert got.status_code == 200
        installed = (stack.hosts.root_dir / instance / "etc/wireguard/wg0.conf").read_bytes()
    srv = lab.net.add_ns(lab.net.ns("s"))
    cli = lab.net.add_ns(lab.net.ns("c"), hosts={dns_name: "192.0.2.1"})
    lab.net.link(srv, "192.0.2.1/24", cli, "192.0.2.2/24", "wapi0")
    server = lab.up(srv, "server", installed)
    lab.up(cli, "device-1", got.content)
    assert lab.reaches(cli, value(installed, "Address").split(",")[0].split("/")[0]), tail(server.log)
