"""What the worker sends for each change (remote.py) and what install.sh makes of it on a server:
protocol selection and the CRL update, on a stubbed machine."""

from __future__ import annotations

import datetime as dt
import os

import pytest

from provisioner.vpn.config import INSTALL_OK_MARKER, install_script
from provisioner.vpn.pki import ServerPKI, add_device, generate_pki, reissue_crl, revoke_device
from provisioner.vpn.remote import OK_MARKER, RemoteRun, crl_update_run, install_run
from tests.fixtures.machine import Machine

DNS_NAME = "g0001.vpn.example.net"
NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def pki() -> ServerPKI:
    return add_device(generate_pki(DNS_NAME, now=NOW), "Phone", now=NOW)[0]


def ok(result: object) -> bool:
    stdout = getattr(result, "stdout", "")
    return getattr(result, "returncode", 1) == 0 and stdout.splitlines()[-1:] == [INSTALL_OK_MARKER]


def secret_lines(pki: ServerPKI) -> list[str]:
    pems = [pki.ca_key_pem, pki.server_key_pem, pki.tls_crypt_key, *(d.key_pem for d in pki.devices)]
    return [ln for pem in pems for ln in pem.decode().splitlines() if ln and not ln.startswith(("-", "#"))]


# ------------------------------------------------------------------ what the worker sends

def test_it_keeps_todays_install_command_when_a_product_offers_openvpn_only(pki: ServerPKI) -> None:
    run = install_run(pki=pki)
    assert run.command == "bash /root/provisioner/install.sh"
    assert set(run.files) == {"install.sh", "server.conf", "ca.crt", "server.crt", "server.key", "tls-crypt.key",
                              "crl.pem"}
    assert run.files["install.sh"] == install_script() and OK_MARKER == INSTALL_OK_MARKER
    assert run.file_mode("install.sh") == 0o700 and run.file_mode("server.key") == 0o600


def test_it_names_every_revoked_device_in_the_crl_update(pki: ServerPKI) -> None:
    assert crl_update_run(pki).argv[2:] == ("update-crl",)
    revoked = revoke_device(revoke_device(pki, "2"), "1")
    run = crl_update_run(revoked)
    assert run.argv[2:] == ("update-crl", "device-2", DNS_NAME)
    assert run.files == {"crl.pem": revoked.crl_pem, "install.sh": install_script()}


def test_it_never_shows_the_uploaded_keys_in_a_runs_repr(pki: ServerPKI) -> None:
    for run in (install_run(pki=pki), crl_update_run(pki)):
        shown = repr(run) + str(run)
        assert "install.sh" in shown
        assert not any(secret in shown for secret in secret_lines(pki))


# ------------------------------------------------------------------ install.sh: protocols

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
