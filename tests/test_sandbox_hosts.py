"""The simulated SSH hosts: the install simulation, the disk, the faults and shutdown."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from provisioner.cloud.ssh import (
    SSHError,
    SSHHostKeyMismatch,
    SSHSession,
    SSHTransferFailed,
    SSHUnreachable,
)
from provisioner.cloudinit import ClientKey, generate_host_key, render_user_data
from provisioner.sandbox.hosts import SimulatedHostError, SimulatedHosts
from tests.fixtures.hosts import SERVER_CONF, RunningHost, free_loopback_ip, install_files, start_host

pytestmark = pytest.mark.timeout(30)

INSTALL = "bash /root/provisioner/install.sh"
IS_ACTIVE = "systemctl is-active openvpn-server@server"


def _upload(ssh: SSHSession, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        ssh.put(data, f"/root/provisioner/{name}", 0o700 if name.endswith(".sh") else 0o600)


def test_it_reports_every_missing_install_file_and_installs_nothing(sim_host: RunningHost) -> None:
    files = install_files()
    del files["server.key"], files["crl.pem"]
    files["ca.crt"] = b""

    with sim_host.session() as ssh:
        _upload(ssh, files)
        result = ssh.run(INSTALL, timeout=10, check=False)
        active = ssh.run(IS_ACTIVE, timeout=10, check=False)

    assert result.exit_status == 1
    assert "provisioner-install: missing /root/provisioner/server.key" in result.stderr
    assert "provisioner-install: missing /root/provisioner/crl.pem" in result.stderr
    assert "provisioner-install: empty /root/provisioner/ca.crt" in result.stderr
    assert "ok" not in result.stdout
    assert (active.exit_status, active.stdout) == (3, "inactive\n")
    assert not sim_host.file("/etc/openvpn/server").exists()


@pytest.mark.parametrize("directive", ["ca", "cert", "key", "tls-crypt", "crl-verify"])
def test_it_refuses_a_server_conf_without_a_required_directive(sim_host: RunningHost, directive: str) -> None:
    files = install_files()
    files["server.conf"] = b"".join(
        line for line in SERVER_CONF.splitlines(keepends=True) if not line.startswith(f"{directive} ".encode())
    )

    with sim_host.session() as ssh:
        _upload(ssh, files)
        result = ssh.run(INSTALL, timeout=10, check=False)

    assert result.exit_status == 1
    assert f"server.conf has no '{directive}' directive" in result.stderr
    assert not sim_host.file("/var/lib/provisioner/installed").exists()


def test_it_installs_when_every_file_is_present_and_again_when_rerun(sim_host: RunningHost) -> None:
    files = install_files()

    with sim_host.session() as ssh:
        _upload(ssh, files)
        first = ssh.run(INSTALL, timeout=10)
        second = ssh.run(INSTALL, timeout=10)
        active = ssh.run(IS_ACTIVE, timeout=10)

    assert first.stdout == second.stdout == "provisioner-install: ok\n"
    assert (active.exit_status, active.stdout) == (0, "active\n")
    for name in ("server.conf", "ca.crt", "server.crt", "server.key", "tls-crypt.key", "crl.pem"):
        assert sim_host.file(f"/etc/openvpn/server/{name}").read_bytes() == files[name]
    assert sim_host.file("/var/lib/provisioner/installed").is_file()


def test_it_accepts_the_files_the_worker_really_uploads(sim_host: RunningHost) -> None:
    from provisioner.vpn import config as vpn_config
    from provisioner.vpn import pki as vpn_pki

    pki = vpn_pki.generate_pki("g0001.vpn.example.test")
    files = {**vpn_config.server_files(pki), "install.sh": vpn_config.install_script()}
    files["server.conf"] = vpn_config.render_server_conf(pki).encode()

    with sim_host.session() as ssh:
        _upload(ssh, files)
        result = ssh.run(INSTALL, timeout=10)

    assert result.stdout == "provisioner-install: ok\n"
    assert sim_host.file("/etc/openvpn/server/server.key").read_bytes() == files["server.key"]


def test_it_supports_cat_rm_and_true_and_nothing_else(sim_host: RunningHost) -> None:
    sim_host.file("/root/client.ovpn").write_text("client\n")

    with sim_host.session() as ssh:
        cat = ssh.run("cat /root/client.ovpn", timeout=10)
        removed = ssh.run("rm -f /root/client.ovpn /root/never-existed", timeout=10)
        other = ssh.run("touch /root/x; echo hi", timeout=10, check=False)
        ok = ssh.run("true", timeout=10)

    assert cat.stdout == "client\n"
    assert removed.exit_status == 0 and not sim_host.file("/root/client.ovpn").exists()
    assert other.exit_status == 127
    assert "simulated host: command not supported: touch /root/x; echo hi" in other.stderr
    assert not sim_host.file("/root/x").exists()
    assert ok.exit_status == 0


def test_it_never_lets_a_path_leave_the_host_dir(sim_host: RunningHost, tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("host machine file")
    escape = "/" + "/".join([".."] * 6) + str(outside)

    with sim_host.session() as ssh:
        cat = ssh.run(f"cat {escape}", timeout=10, check=False)
        rm = ssh.run(f"rm -f {escape}", timeout=10, check=False)
        with pytest.raises(SSHTransferFailed):
            ssh.put(b"x", "/root/../../../escaped.txt")
        with pytest.raises(SSHTransferFailed):
            ssh.get(escape)

    assert cat.exit_status == 1 and "host machine file" not in cat.stdout
    assert rm.exit_status == 1
    assert outside.read_text() == "host machine file"
    assert not list(tmp_path.rglob("escaped.txt*"))


def test_it_presents_each_hosts_own_key_from_its_user_data(sim_host: RunningHost, client_key: ClientKey) -> None:
    other_ip, _ = free_loopback_ip(sim_host.port)
    other = start_host(sim_host.hosts, client_key, "i-other", other_ip)

    with other.session() as ssh:
        assert ssh.run("true", timeout=10).exit_status == 0
    with pytest.raises(SSHHostKeyMismatch), other.session(pin=sim_host.host_key.public_line):
        pass


def test_it_keeps_a_hosts_disk_across_a_restart(tmp_path: Path, client_key: ClientKey) -> None:
    ip, port = free_loopback_ip()
    with SimulatedHosts(tmp_path, port) as hosts:
        host = start_host(hosts, client_key, "i-persist", ip)
        with host.session() as ssh:
            _upload(ssh, install_files())
            ssh.run(INSTALL, timeout=10)
            ssh.put(b"kept", "/root/note")

    with SimulatedHosts(tmp_path, port) as hosts:
        user_data = render_user_data(host.host_key, [client_key.public_line], "i-persist.example.test")
        hosts.start("i-persist", ip, user_data)
        with host.session() as ssh:
            note = ssh.get("/root/note")
            active = ssh.run(IS_ACTIVE, timeout=10)

    assert note == b"kept"
    assert active.stdout == "active\n"


def test_it_keeps_sessions_up_when_started_again_with_the_same_user_data(sim_host: RunningHost) -> None:
    user_data = render_user_data(sim_host.host_key, [sim_host.client_key.public_line], "i-test.vpn.example.test")

    with sim_host.session() as ssh:
        sim_host.hosts.start(sim_host.instance_id, sim_host.ip, user_data)
        result = ssh.run("true", timeout=10)

    assert result.exit_status == 0


def test_it_refuses_connections_under_the_refuse_fault_until_cleared(sim_host: RunningHost) -> None:
    sim_host.hosts.set_fault("*", "refuse")
    with pytest.raises(SSHUnreachable), sim_host.session():
        pass

    sim_host.hosts.clear_faults()
    with sim_host.session() as ssh:
        assert ssh.run("true", timeout=10).exit_status == 0


def test_it_releases_hung_clients_and_exec_threads_at_stop(sim_host: RunningHost, client_key: ClientKey) -> None:
    other_ip, _ = free_loopback_ip(sim_host.port)
    other = start_host(sim_host.hosts, client_key, "i-hung", other_ip)
    sim_host.hosts.set_fault(sim_host.ip, "hang")
    sim_host.hosts.set_fault(other.ip, "command_hang")
    outcomes: dict[str, BaseException | None] = {}

    def attempt(name: str, host: RunningHost, command: str) -> None:
        try:
            with host.session(connect_timeout=25, banner_timeout=25) as ssh:
                ssh.run(command, timeout=25)
            outcomes[name] = None
        except SSHError as exc:
            outcomes[name] = exc

    threads = [
        threading.Thread(target=attempt, args=("banner", sim_host, "true")),
        threading.Thread(target=attempt, args=("command", other, "cloud-init status --wait")),
    ]
    for thread in threads:
        thread.start()
    busy = sim_host.hosts.wait_for(
        lambda: sim_host.hosts.hung_connections() == 1 and len(sim_host.hosts.running_commands()) == 1, 10
    )
    assert busy
    sim_host.hosts.close_all()
    for thread in threads:
        thread.join(timeout=10)

    assert not any(thread.is_alive() for thread in threads)
    assert isinstance(outcomes["banner"], SSHUnreachable)
    assert isinstance(outcomes["command"], SSHUnreachable)


def test_it_interrupts_a_slow_install_at_stop(tmp_path: Path, client_key: ClientKey) -> None:
    ip, port = free_loopback_ip()
    hosts = SimulatedHosts(tmp_path, port, install_seconds=60)
    host = start_host(hosts, client_key, "i-slow", ip)
    outcome: list[BaseException] = []

    def install() -> None:
        with host.session() as ssh:
            _upload(ssh, install_files())
            try:
                ssh.run(INSTALL, timeout=25)
            except SSHError as exc:
                outcome.append(exc)

    worker = threading.Thread(target=install)
    worker.start()
    assert hosts.wait_for(lambda: hosts.running_commands() == [INSTALL], 10)
    hosts.stop("i-slow")
    worker.join(timeout=10)

    assert not worker.is_alive()
    assert outcome and isinstance(outcome[0], SSHUnreachable)
    assert not host.file("/var/lib/provisioner/installed").exists()


def test_it_refuses_bad_addresses_user_data_and_faults(simulated_hosts: SimulatedHosts, client_key: ClientKey) -> None:
    user_data = render_user_data(generate_host_key(), [client_key.public_line], "g1.example.test")

    with pytest.raises(SimulatedHostError, match="127.0.0.0/8"):
        simulated_hosts.start("i-1", "192.0.2.10", user_data)
    with pytest.raises(SimulatedHostError):
        simulated_hosts.start("../escape", "127.0.0.2", user_data)
    with pytest.raises(SimulatedHostError, match="ssh_keys.ed25519_private"):   # no host key: cloud-init makes one
        simulated_hosts.start("i-1", "127.0.0.2", user_data.replace("ed25519_private:", "rsa_private:"))
    with pytest.raises(SimulatedHostError, match="not valid YAML"):
        simulated_hosts.start("i-1", "127.0.0.2", user_data.replace("ssh_deletekeys: true", "ssh_deletekeys: [true"))
    with pytest.raises(ValueError, match="unknown fault"):
        simulated_hosts.set_fault("*", "explode")
    with pytest.raises(ValueError):
        simulated_hosts.set_fault("*", "refuse", seconds=3)
