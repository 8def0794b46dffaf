"""A revoked device is cut off by what the worker really put on the server: the customer revokes
their phone through the customer service, the worker's sync sends the CRL over SSH to the
(simulated) host, and a real OpenVPN server running on that host's files refuses the phone
while the laptop still connects, before and after a rebuild.

Real `openvpn` in throwaway network namespaces (tests/fixtures/netns.py): needs root,
/dev/net/tun, openvpn, iproute2 and ping; skipped without them locally, failed under CI=true.

    laptop ns 192.0.2.2 --veth-- 192.0.2.1   server ns   203.0.113.1 --veth-- 203.0.113.2 phone ns
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobs.driver import drive_until_idle
from provisioner import customer, operations
from provisioner.models import Server
from provisioner.vpn.config import SERVER_DIR, SERVER_FILE_MODES, STATUS_PATH
from tests.fixtures.netns import NetLab, read, require_tools, run, tail, wait_for, write_file
from tests.fixtures.stack import Stack

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

CONNECTED = "Initialization Sequence Completed"
VPN_NET = ipaddress.ip_network("10.8.0.0/24")


class Lab:
    """One OpenVPN server namespace running a host's files; a laptop and a phone each in its own."""

    def __init__(self, net: NetLab, dns_name: str) -> None:
        self.net, self.workdir = net, net.workdir
        self.srv = net.add_ns(net.ns("s"))
        self.clients = {}
        for role, (server_ip, client_ip) in {"laptop": ("192.0.2.1", "192.0.2.2"),
                                             "phone": ("203.0.113.1", "203.0.113.2")}.items():
            ns = net.add_ns(net.ns(role[0]), hosts={dns_name: server_ip})
            net.link(self.srv, f"{server_ip}/24", ns, f"{client_ip}/24", f"e{role[0]}")
            run("ip", "-n", ns, "route", "add", "default", "via", server_ip)
            self.clients[role] = ns
        self.log = self.workdir / "server.log"

    def serve(self, host_etc: Path) -> subprocess.Popen[bytes]:
        """Run OpenVPN on the files the worker installed on a host (its /etc/openvpn/server)."""
        for name, mode in SERVER_FILE_MODES.items():
            write_file(self.workdir / name, (host_etc / name).read_bytes(), mode)
        conf = (self.workdir / "server.conf").read_text()
        conf = conf.replace(SERVER_DIR, str(self.workdir)).replace(str(Path(STATUS_PATH).parent), str(self.workdir))
        write_file(self.workdir / "server.conf", conf.encode(), 0o644)
        self.log.unlink(missing_ok=True)
        proc = self.net.spawn(self.srv, ["openvpn", "--config", str(self.workdir / "server.conf")], self.log)
        assert wait_for(lambda: CONNECTED in read(self.log) or proc.poll() is not None, 15), tail(self.log)
        assert proc.poll() is None, tail(self.log)
        return proc

    def update_crl(self, host_etc: Path) -> None:
        """What install.sh update-crl does on the host: the new crl.pem where OpenVPN re-reads it."""
        shutil.copyfile(host_etc / "crl.pem", self.workdir / ".crl.new")
        (self.workdir / ".crl.new").chmod(0o644)
        (self.workdir / ".crl.new").replace(self.workdir / "crl.pem")

    def connect(self, role: str, ovpn: bytes, attempt: str) -> tuple[subprocess.Popen[bytes], Path]:
        path = self.workdir / f"{role}-{attempt}.ovpn"
        write_file(path, ovpn, 0o600)
        log = self.workdir / f"{role}-{attempt}.log"
        return self.net.spawn(self.clients[role], ["openvpn", "--config", str(path)], log), log

    def connected(self, proc: subprocess.Popen[bytes], log: Path, timeout: float = 20) -> bool:
        return wait_for(lambda: CONNECTED in read(log) or proc.poll() is not None, timeout) and CONNECTED in read(log)

    def refused(self, proc: subprocess.Popen[bytes], log: Path) -> bool:
        return (wait_for(lambda: "certificate revoked" in read(self.log), 20)
                and not self.connected(proc, log, timeout=2))


@pytest.fixture
def lab(netlab: NetLab) -> Iterator[NetLab]:
    require_tools("openvpn", "ip", "ping", "timeout", hint="apt-get install openvpn iproute2 iputils-ping")
    yield netlab


def host_etc(stack: Stack, rid: int) -> Path:
    with stack.app.sessions() as s:
        row = s.get(Server, rid)
        assert row is not None
        return stack.hosts.root_dir / (row.instance_id or "") / SERVER_DIR.lstrip("/")


def test_a_revoked_phone_is_refused_once_its_crl_reaches_the_server_and_after_a_rebuild(
        stack: Stack, lab: NetLab) -> None:
    # Given a running server whose customer added a phone next to their first device
    lc = stack.lifecycle()
    rid = stack.create_server(lc=lc)
    box, settings = stack.app.secret_box, stack.app.settings

    def act(do):  # type: ignore[no-untyped-def]
        with stack.app.sessions() as s:
            row = s.get(Server, rid)
            result = do(s, row, stack.app.clock())
            s.commit()
            return result

    act(lambda s, row, now: customer.add_device(s, settings, box, row, "Phone", now=now))
    laptop, _ = act(lambda s, row, now: customer.device_profile(s, box, row, "1"))
    phone, _ = act(lambda s, row, now: customer.device_profile(s, box, row, "2"))
    name = act(lambda s, row, now: row.server_name)
    net = Lab(lab, name)
    server = net.serve(host_etc(stack, rid))
    laptop_proc, laptop_log = net.connect("laptop", laptop, "1")
    phone_proc, phone_log = net.connect("phone", phone, "1")
    assert net.connected(laptop_proc, laptop_log), tail(laptop_log)
    assert net.connected(phone_proc, phone_log), tail(phone_log)
    lab.stop(phone_proc)

    # When the customer revokes the phone: not refused until the worker's sync brings the CRL
    act(lambda s, row, now: customer.revoke_device(s, box, row, "2", now=now))
    net.update_crl(host_etc(stack, rid))          # what the host has before the sync: the old CRL
    retry_proc, retry_log = net.connect("phone", phone, "2")
    assert net.connected(retry_proc, retry_log), tail(retry_log)
    lab.stop(retry_proc)
    operations.start_customer_changes(lc, stack.app.clock())
    drive_until_idle(lc, [rid], timeout=60)
    net.update_crl(host_etc(stack, rid))          # the host's crl.pem after the sync

    # Then the running server (not restarted) refuses the phone, and the laptop stays connected
    refused_proc, refused_log = net.connect("phone", phone, "3")
    assert net.refused(refused_proc, refused_log), tail(net.log)
    assert server.poll() is None and read(laptop_log).count(CONNECTED) == 1
    assert lab.ping(net.clients["laptop"], "10.8.0.1").returncode == 0

    # When the server is rebuilt (a new instance, installed from the stored PKI and its CRL)
    old = host_etc(stack, rid)
    stack.act(rid, "rebuild", "ams", lc=lc)
    new = host_etc(stack, rid)
    assert new != old
    lab.stop(server)
    lab.stop(laptop_proc)
    net.serve(new)
    # Then the phone is still refused and the laptop connects with the same profile
    again_proc, again_log = net.connect("phone", phone, "4")
    assert net.refused(again_proc, again_log), tail(net.log)
    laptop_proc, laptop_log = net.connect("laptop", laptop, "2")
    assert net.connected(laptop_proc, laptop_log), tail(laptop_log)
    assert lab.ping(net.clients["laptop"], "10.8.0.1").returncode == 0
