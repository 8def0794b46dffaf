"""The SSH adapter against simulated hosts over real SSH on loopback."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from provisioner.cloud.ssh import (
    SSHAuthFailed,
    SSHCommandFailed,
    SSHFileNotFound,
    SSHHostKeyMismatch,
    SSHSession,
    SSHTarget,
    SSHTimeout,
    SSHUnreachable,
    scrub,
)
from provisioner.cloudinit import ClientKey, generate_client_key, generate_host_key
from provisioner.sandbox.hosts import SimulatedHosts
from tests.fixtures.hosts import RunningHost, free_loopback_ip, install_files, start_host

pytestmark = pytest.mark.timeout(30)


def _pem_body(pem: str) -> list[str]:
    """The base64 lines of a private key: any one of them in a log is a leak."""
    return [line for line in pem.splitlines() if line and not line.startswith("-----")]


def test_it_connects_with_the_pinned_key_and_runs_commands(sim_host: RunningHost) -> None:
    with sim_host.session() as ssh:
        result = ssh.run("cloud-init status --wait", timeout=10)
        second = ssh.run("true", timeout=10)

    assert (result.exit_status, result.stdout, result.stderr) == (0, "status: done\n", "")
    assert second.exit_status == 0


def test_it_uses_paramikos_host_key_name_for_the_port() -> None:
    pin = generate_host_key().public_line

    assert SSHTarget("203.0.113.7", 22, pin).known_hosts_name == "203.0.113.7"
    assert SSHTarget("203.0.113.7", 2222, pin).known_hosts_name == "[203.0.113.7]:2222"


def test_it_rejects_a_pin_that_is_not_a_public_key() -> None:
    with pytest.raises(ValueError, match="public key"):
        SSHTarget("203.0.113.7", 22, "ssh-ed25519")
    with pytest.raises(ValueError):
        SSHTarget("203.0.113.7", 22, "ssh-ed25519 not-base64!")


def test_it_returns_a_nonzero_exit_unchecked_and_raises_it_checked(sim_host: RunningHost) -> None:
    with sim_host.session() as ssh:
        unchecked = ssh.run("systemctl is-active openvpn-server@server", timeout=10, check=False)
        with pytest.raises(SSHCommandFailed) as failed:
            ssh.run("bash /root/provisioner/install.sh", timeout=10)

    assert (unchecked.exit_status, unchecked.stdout) == (3, "inactive\n")
    assert failed.value.exit_status == 1
    assert "missing /root/provisioner/server.key" in failed.value.stderr_tail
    assert failed.value.transient is False


def test_it_refuses_a_host_presenting_another_key_and_executes_nothing(sim_host: RunningHost) -> None:
    canary = sim_host.file("/root/canary")
    canary.write_text("still here")
    sim_host.hosts.set_fault(sim_host.ip, "wrong_host_key")

    with pytest.raises(SSHHostKeyMismatch) as mismatch, sim_host.session() as ssh:
        ssh.run("rm -f /root/canary", timeout=10)

    assert canary.read_text() == "still here"
    assert mismatch.value.transient is False
    assert sim_host.host_key.fingerprint in str(mismatch.value)


def test_it_refuses_a_host_when_the_pin_is_another_key(sim_host: RunningHost) -> None:
    with pytest.raises(SSHHostKeyMismatch), sim_host.session(pin=generate_host_key().public_line) as ssh:
        ssh.run("rm -f /root/canary", timeout=10)


def test_it_is_refused_with_a_client_key_the_host_does_not_know(sim_host: RunningHost) -> None:
    stranger = generate_client_key("stranger")

    with pytest.raises(SSHAuthFailed) as refused, sim_host.session(client_key=stranger):
        pass

    assert refused.value.transient is False


def test_it_drains_megabytes_of_output_without_deadlock(sim_host: RunningHost) -> None:
    big = (b"0123456789abcdef" * 4 + b"\n") * 50_000  # 3.25 MB, past paramiko's 2 MB window
    sim_host.file("/root/big.txt").write_bytes(big)

    with sim_host.session() as ssh:
        result = ssh.run("cat /root/big.txt /root/absent", timeout=20, check=False)

    assert result.stdout.encode() == big
    assert result.exit_status == 1
    assert "/root/absent" in result.stderr


def test_it_times_out_a_command_that_never_finishes(sim_host: RunningHost) -> None:
    sim_host.hosts.set_fault(sim_host.ip, "command_hang", match="install.sh")

    with sim_host.session() as ssh:
        with pytest.raises(SSHTimeout) as hung:
            ssh.run("bash /root/provisioner/install.sh", timeout=0.5)
        after = ssh.run("cloud-init status --wait", timeout=10)

    assert hung.value.transient is True
    assert after.stdout == "status: done\n"


def test_it_round_trips_bytes_exactly_with_put_and_get(sim_host: RunningHost) -> None:
    payload = os.urandom(300_000) + bytes(range(256))

    with sim_host.session() as ssh:
        ssh.put(payload, "/root/provisioner/deep/blob.bin", 0o600)
        back = ssh.get("/root/provisioner/deep/blob.bin")
        ssh.put(b"replaced", "/root/provisioner/deep/blob.bin", 0o640)
        replaced = ssh.get("/root/provisioner/deep/blob.bin")

    assert back == payload
    assert replaced == b"replaced"
    assert sim_host.file("/root/provisioner/deep/blob.bin").stat().st_mode & 0o777 == 0o640
    assert not sim_host.file("/root/provisioner/deep/blob.bin.provisioner-tmp").exists()


def test_an_upload_after_a_command_recreates_a_directory_the_command_removed(sim_host: RunningHost) -> None:
    """A session stats each upload directory once; a command may remove it (an installer
    cleaning up), and the next upload still lands."""
    import shutil

    with sim_host.session() as ssh:
        ssh.put(b"first", "/root/provisioner/deep/a.txt", 0o600)
        ssh.put(b"second", "/root/provisioner/deep/b.txt", 0o600)
        shutil.rmtree(sim_host.file("/root/provisioner/deep"))     # what `rm -rf` on the host does
        ssh.run("true", timeout=10)
        ssh.put(b"third", "/root/provisioner/deep/c.txt", 0o600)

    assert sim_host.file("/root/provisioner/deep/c.txt").read_bytes() == b"third"
    assert not sim_host.file("/root/provisioner/deep/a.txt").exists()

def test_it_reports_a_missing_remote_file(sim_host: RunningHost) -> None:
    with pytest.raises(SSHFileNotFound) as missing, sim_host.session() as ssh:
        ssh.get("/root/client.ovpn")

    assert missing.value.remote_path == "/root/client.ovpn"


def test_it_reports_a_refusing_host_as_unreachable(sim_host: RunningHost) -> None:
    sim_host.hosts.set_fault(sim_host.ip, "refuse")

    with pytest.raises(SSHUnreachable) as refused, sim_host.session():
        pass

    assert refused.value.transient is True


def test_it_reports_a_host_that_never_sends_a_banner_as_a_timeout(sim_host: RunningHost) -> None:
    sim_host.hosts.set_fault("*", "hang")

    with pytest.raises(SSHTimeout) as hung, sim_host.session(connect_timeout=0.5):
        pass

    assert hung.value.transient is True


def test_it_removes_key_blocks_and_listed_secrets_from_failures(sim_host: RunningHost) -> None:
    assert "SECRETBODY" not in scrub(
        "x\n-----BEGIN OPENSSH PRIVATE KEY-----\nSECRETBODY\n-----END OPENSSH PRIVATE KEY-----"
    )
    assert "SECRETBODY" not in scrub("-----BEGIN OpenVPN Static key V1-----\nSECRETBODY\n(truncated")
    wg_key = "SECRETBODY" + "A" * 33 + "="
    shown = scrub(f"wg0.conf line 5:\nPrivateKey = {wg_key}\n  presharedkey={wg_key}\nPublicKey = PUB")
    assert wg_key not in shown and "PrivateKey = [key removed]" in shown and "PublicKey = PUB" in shown

    with pytest.raises(SSHCommandFailed) as failed, sim_host.session(redact=["hunter2"]) as ssh:
        ssh.run("cat /root/hunter2", timeout=10)

    assert "hunter2" not in str(failed.value)
    assert "[redacted]" in failed.value.stderr_tail


def test_it_never_logs_or_raises_key_material(
    caplog: pytest.LogCaptureFixture, tmp_path: Path, client_key: ClientKey
) -> None:
    caplog.set_level(logging.DEBUG)
    for name in ("paramiko", "provisioner.cloud.ssh.paramiko", "provisioner.sandbox.hosts.paramiko"):
        caplog.set_level(logging.DEBUG, logger=name)
    ip, port = free_loopback_ip()
    secret_file = install_files()["server.key"]
    errors: list[str] = []
    with SimulatedHosts(tmp_path, port) as hosts:
        host = start_host(hosts, client_key, "i-logs", ip)
        with host.session() as ssh:
            ssh.put(secret_file, "/root/provisioner/server.key")
            assert ssh.get("/root/provisioner/server.key") == secret_file
            try:
                ssh.run("cat /root/provisioner/server.key /root/absent", timeout=10)
            except SSHCommandFailed as exc:
                errors.append(str(exc))
            errors.append(repr(ssh))
        for kwargs in ({"client_key": generate_client_key()}, {"pin": generate_host_key().public_line}):
            try:
                with host.session(**kwargs):
                    pass
            except (SSHAuthFailed, SSHHostKeyMismatch) as exc:
                errors.append(str(exc))
        errors += [repr(host.host_key), str(host.client_key)]

    text = caplog.text + "\n".join(errors)
    assert "Authentication (publickey) successful" in caplog.text  # paramiko's DEBUG/INFO was captured
    assert len(errors) == 6
    for secret in [
        *_pem_body(host.host_key.private_pem),
        *_pem_body(client_key.private_pem),
        "c2VydmVyLWtleS1zZWNyZXQ=",
    ]:
        assert secret not in text


def test_it_refuses_to_run_before_connecting(sim_host: RunningHost) -> None:
    session = SSHSession(sim_host.target(), sim_host.client_key.private_pem)

    with pytest.raises(RuntimeError, match="not connected"):
        session.run("true", timeout=1)


def test_it_runs_commands_when_the_process_already_holds_over_a_thousand_descriptors(
        sim_host: RunningHost) -> None:
    """A busy worker (many threads, pooled connections) gets channel descriptors >= 1024,
    which select.select() cannot wait on: the install must still run."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 1400
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"the hard descriptor limit is {hard}; this test needs {wanted}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    filler: list[int] = []
    try:
        with open(os.devnull) as null:
            while not filler or filler[-1] < 1100:
                filler.append(os.dup(null.fileno()))
        sim_host.hosts.install_seconds = 0.3   # the client waits on its channel, not on ready data
        with sim_host.session() as ssh:
            for name, data in install_files().items():
                ssh.put(data, f"/root/provisioner/{name}", 0o600)
            results = [ssh.run("bash /root/provisioner/install.sh", timeout=10, check=False) for _ in range(2)]
        assert [(r.exit_status, r.stderr) for r in results] == [(0, "")] * 2
        assert sim_host.file("/var/lib/provisioner/installed").exists()
    finally:
        for fd in filler:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
