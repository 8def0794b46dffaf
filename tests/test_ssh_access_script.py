"""install.sh update-ssh on a stubbed machine (tests/fixtures/machine.py): root's authorized_keys
gets the customer's keys in a block of its own, and sshd lets root in with the password or with
keys only; nothing else in the file is touched, and a bad upload changes nothing."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from provisioner.vpn.config import INSTALL_OK_MARKER
from provisioner.vpn.remote import ssh_access_run
from tests.fixtures.machine import *  # noqa: F403
from tests.fixtures.machine import Machine


def key(comment: str) -> str:
    line = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    return f"{line} {comment}"


WORKER, OPERATOR, LAPTOP, PHONE = key("provisioner-worker"), key("ops@vultr"), key("alice@laptop"), key("alice@phone")
RELOAD = "systemctl try-reload-or-restart ssh.service"


@pytest.fixture
def server(machine: Machine) -> Machine:
    """A booted server: cloud-init wrote the worker's key, Vultr the operator's."""
    ak = machine.path("/root/.ssh/authorized_keys")
    ak.parent.mkdir(parents=True, exist_ok=True)
    ak.write_text(f"{WORKER}\n{OPERATOR}\n")
    return machine


def ok(result: object) -> bool:
    return getattr(result, "returncode", 1) == 0 and getattr(result, "stdout", "").splitlines()[-1:] == [
        INSTALL_OK_MARKER]


def test_it_puts_the_customers_keys_beside_the_others_and_lets_the_password_in(server: Machine) -> None:
    result, calls = server.send(ssh_access_run([LAPTOP, PHONE], key_only=False))
    assert ok(result), result.stdout + result.stderr
    lines = server.path("/root/.ssh/authorized_keys").read_text().splitlines()
    assert lines[:2] == [WORKER, OPERATOR] and lines[3:5] == [LAPTOP, PHONE]
    assert lines[2].startswith("# provisioner:") and lines[5].startswith("# provisioner:")
    assert server.path("/root/.ssh/authorized_keys").stat().st_mode & 0o777 == 0o600
    dropin = server.path("/etc/ssh/sshd_config.d/10-provisioner.conf").read_text()
    assert "PermitRootLogin yes\nPasswordAuthentication yes\n" in dropin
    assert "sshd -t" in calls and RELOAD in calls
    assert not server.path("/root/provisioner/customer_keys").exists()
    # the same again: nothing changes, sshd is not reloaded
    again, calls = server.send(ssh_access_run([LAPTOP, PHONE], key_only=False))
    assert ok(again) and RELOAD not in calls


def test_key_only_login_and_a_removed_key(server: Machine) -> None:
    assert ok(server.send(ssh_access_run([LAPTOP, PHONE], key_only=False))[0])
    result, calls = server.send(ssh_access_run([LAPTOP], key_only=True))
    assert ok(result), result.stderr
    text = server.path("/root/.ssh/authorized_keys").read_text()
    assert LAPTOP in text and PHONE not in text and WORKER in text and OPERATOR in text
    dropin = server.path("/etc/ssh/sshd_config.d/10-provisioner.conf").read_text()
    assert "PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no" in dropin
    assert RELOAD in calls
    # no customer key any more: the block goes, everything else stays
    assert ok(server.send(ssh_access_run([], key_only=False))[0])
    assert server.path("/root/.ssh/authorized_keys").read_text() == f"{WORKER}\n{OPERATOR}\n"


@pytest.mark.parametrize("upload", [
    b'command="sh" ' + LAPTOP.encode() + b"\n",
    b"-----BEGIN OPENSSH PRIVATE KEY-----\n",
    LAPTOP.encode() + b"\nssh-ed25519 AAAA\x01\n",
], ids=["options", "private-key", "broken-second-line"])   # the key is generated per run: fixed ids for -n
def test_it_refuses_an_upload_that_is_not_plain_public_keys(server: Machine, upload: bytes) -> None:
    before = server.path("/root/.ssh/authorized_keys").read_text()
    server.upload({"customer_keys": upload})
    result, calls = server.run("update-ssh", "password")
    assert result.returncode != 0 and "not one plain public key" in result.stderr
    assert server.path("/root/.ssh/authorized_keys").read_text() == before
    assert not server.path("/etc/ssh/sshd_config.d/10-provisioner.conf").exists() and RELOAD not in calls


def test_it_keeps_the_previous_sshd_configuration_when_sshd_refuses_the_new_one(server: Machine) -> None:
    assert ok(server.send(ssh_access_run([LAPTOP], key_only=False))[0])
    dropin = server.path("/etc/ssh/sshd_config.d/10-provisioner.conf")
    before = dropin.read_text()
    (server.state / "sshd-bad").touch()
    result, calls = server.send(ssh_access_run([LAPTOP], key_only=True))
    assert result.returncode != 0 and "the previous one stays" in result.stderr
    assert dropin.read_text() == before and RELOAD not in calls


def test_it_never_leaves_root_without_any_key(machine: Machine) -> None:
    result, _ = machine.send(ssh_access_run([], key_only=True))
    assert result.returncode != 0 and "nobody could log in" in result.stderr
    assert not machine.path("/root/.ssh/authorized_keys").exists()


def test_it_refuses_an_unknown_mode(server: Machine) -> None:
    server.upload({"customer_keys": b""})
    result, _ = server.run("update-ssh", "sometimes")
    assert result.returncode != 0 and "needs 'password' or 'key-only'" in result.stderr
