"""The simulated hosts' reading of install.sh's newer commands (update-ssh, update-crl,
install PROTOCOL..., update-peers) and sshd's side of them: root's keys and password login."""

from __future__ import annotations

from pathlib import Path

import pytest

from provisioner.cloud.ssh import SSHAuthFailed, SSHSession
from provisioner.cloudinit import ClientKey, generate_client_key, generate_host_key, render_user_data
from provisioner.sandbox.hosts import SimulatedHosts
from provisioner.vpn import wireguard as wg
from provisioner.vpn.pki import add_device, generate_pki, revoke_device
from provisioner.vpn.remote import RemoteRun, crl_update_run, install_run, peers_update_run, ssh_access_run
from tests.fixtures.hosts import *  # noqa: F403
from tests.fixtures.hosts import RunningHost
from tests.fixtures.hosts import password_login as login_with_password

pytestmark = pytest.mark.timeout(30)
PASSWORD = "Root-Pa55word-of-i-test"
CUSTOMER = generate_client_key("alice@laptop")


@pytest.fixture
def host(simulated_hosts: SimulatedHosts, loopback: tuple[str, int], client_key: ClientKey) -> RunningHost:
    """A host started as the Vultr simulator starts one: user_data and the create reply's password."""
    host_key = generate_host_key()
    user_data = render_user_data(host_key, [client_key.public_line], "i-cmd.vpn.example.test")
    simulated_hosts.start("i-cmd", loopback[0], user_data, PASSWORD)
    return RunningHost(simulated_hosts, "i-cmd", loopback[0], simulated_hosts.ssh_port, host_key, client_key)


def send(host: RunningHost, run: RemoteRun) -> tuple[int, str, str]:
    with host.session() as ssh:
        for name, data in run.files.items():
            ssh.put(data, f"/root/provisioner/{name}", run.file_mode(name))
        result = ssh.run(run.command, timeout=10, check=False)
    return result.exit_status, result.stdout, result.stderr


def password_login(host: RunningHost, password: str = PASSWORD) -> bool:
    return login_with_password(host.ip, host.port, password)


def test_root_logs_in_with_the_password_and_the_customers_key_as_update_ssh_says(host: RunningHost) -> None:
    # Given a fresh host: cloud-init's ssh_pwauth false, only the worker's key
    assert not password_login(host)
    with pytest.raises(SSHAuthFailed):
        host.session(client_key=CUSTOMER).connect()
    # When the worker sends the customer's key with password login
    assert send(host, ssh_access_run([CUSTOMER.public_line], key_only=False))[:2] == (0, "provisioner-install: ok\n")
    # Then the password logs in (the wrong one does not), and so does the customer's key and the worker's
    assert password_login(host) and not password_login(host, "not-the-password")
    with host.session(client_key=CUSTOMER) as ssh:
        assert CUSTOMER.public_line in ssh.run("cat /root/.ssh/authorized_keys", timeout=10).stdout
    with host.session() as ssh:
        ssh.run("true", timeout=10)
    # When key-only login is sent, the password is refused (not even offered)
    assert send(host, ssh_access_run([CUSTOMER.public_line], key_only=True))[0] == 0
    assert not password_login(host)
    with SSHSession(host.target(), CUSTOMER.private_pem, connect_timeout=5) as ssh:
        ssh.run("true", timeout=10)


def test_update_ssh_refuses_a_line_that_is_not_a_public_key(host: RunningHost) -> None:
    bad = RemoteRun(files={"customer_keys": b'command="sh" ' + CUSTOMER.public_line.encode() + b"\n"},
                    argv=("bash", "/root/provisioner/install.sh", "update-ssh", "password"))
    status, _, err = send(host, bad)
    assert status == 1 and "not one plain public key" in err
    assert not password_login(host)


def test_update_crl_takes_only_a_newer_crl_of_the_servers_own_ca(host: RunningHost) -> None:
    pki, _ = add_device(generate_pki("i-cmd.vpn.example.test"), "Phone")
    assert send(host, crl_update_run(pki))[0] == 1                      # nothing installed yet
    assert send(host, install_run(pki=pki))[0] == 0
    revoked = revoke_device(pki, "2")
    status, out, _ = send(host, crl_update_run(revoked))
    assert status == 0 and "disconnected device-2" in out
    assert host.file("/etc/openvpn/server/crl.pem").read_bytes() == revoked.crl_pem
    status, _, err = send(host, crl_update_run(pki))                     # a late retry of the older CRL
    assert status == 1 and "older than the installed" in err
    status, _, err = send(host, crl_update_run(generate_pki("other")))   # another server's CA
    assert status == 1 and "not a CRL signed by this server's CA" in err
    assert host.file("/etc/openvpn/server/crl.pem").read_bytes() == revoked.crl_pem


def test_install_names_its_protocols_and_update_peers_refuses_an_older_list(host: RunningHost) -> None:
    state, _ = wg.add_peer(wg.generate_server("i-cmd.vpn.example.test"), "Phone", device_id="1")
    assert send(host, install_run(pki=generate_pki("i-cmd.vpn.example.test"), wireguard_state=state))[0] == 0
    assert Path(host.file("/etc/wireguard/wg0.conf")).read_text() == wg.render_server_conf(state)
    newer = wg.revoke_peer(state, "1")
    assert send(host, peers_update_run(newer))[0] == 0
    status, _, err = send(host, peers_update_run(state))
    assert status == 1 and "older than the installed" in err
