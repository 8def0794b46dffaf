"""One OpenVPN profile per device: add, list, render, revoke, and the PKI stored before devices."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509

from provisioner.vpn.config import render_client_ovpn, render_device_ovpn, server_files, validate_ovpn
from provisioner.vpn.devices import DeviceConflict, DeviceError, DeviceNotFound, DeviceRevoked
from provisioner.vpn.pki import (
    FIRST_DEVICE_NAME,
    PKIFormatError,
    ServerPKI,
    add_device,
    crl_number,
    from_bytes,
    generate_pki,
    list_devices,
    revoke_device,
    to_bytes,
)
from tests.fixtures.services import require_or_skip

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
DNS_NAME = "g0001.vpn.example.net"
FIXTURES = Path(__file__).parent / "fixtures" / "vpn"


@pytest.fixture(scope="module")
def three() -> ServerPKI:
    """A server with its first device plus "Phone" (2) and "Laptop" (3)."""
    pki, phone = add_device(generate_pki("g0001", now=NOW), "Phone", now=NOW)
    pki, laptop = add_device(pki, "Laptop", now=NOW)
    assert (phone, laptop) == ("2", "3")
    return pki


def openssl_verify(pki: ServerPKI, device_id: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """What OpenVPN's crl-verify decides, asked of openssl with the same CA and CRL."""
    if shutil.which("openssl") is None:
        require_or_skip("the openssl command is missing (apt-get install openssl)")
    (tmp_path / "ca.crt").write_bytes(pki.ca_cert_pem)
    (tmp_path / "crl.pem").write_bytes(pki.crl_pem)
    (tmp_path / "leaf.crt").write_bytes(pki.device(device_id).cert_pem)
    return subprocess.run(
        ["openssl", "verify", "-x509_strict", "-purpose", "sslclient", "-crl_check",
         "-attime", str(int((NOW + dt.timedelta(days=30)).timestamp())),
         "-CAfile", "ca.crt", "-CRLfile", "crl.pem", "leaf.crt"],
        cwd=tmp_path, capture_output=True, text=True, timeout=10, check=False,
    )


def key_lines(*pems: bytes) -> list[str]:
    return [ln for pem in pems for ln in pem.decode().splitlines() if ln and not ln.startswith(("-", "#"))]


# ------------------------------------------------------------------ the PKI stored before devices

def test_it_loads_a_pki_stored_before_devices_and_renders_its_ovpn_byte_for_byte() -> None:
    # Given a PKI serialised by the single-client code (format 1) and the .ovpn it rendered then
    stored = (FIXTURES / "pki_v1.json").read_bytes()
    assert json.loads(stored)["version"] == 1
    # When today's code loads it
    pki = from_bytes(stored)
    # Then its one client is the first device and renders exactly the customer's file
    assert [(d.device_id, d.name, d.revoked_at) for d in list_devices(pki)] == [("1", FIRST_DEVICE_NAME, None)]
    assert render_client_ovpn(pki, "g0042.vpn.example.com") == (FIXTURES / "pki_v1.ovpn").read_bytes()
    assert render_device_ovpn(pki, "1", "g0042.vpn.example.com") == (FIXTURES / "pki_v1.ovpn").read_bytes()
    # And stored again (as version 2) nothing changes: not the revocation made then, not the file
    again = from_bytes(to_bytes(pki))
    assert json.loads(to_bytes(pki))["version"] == 2
    assert again.revoked_serials == pki.revoked_serials and len(again.revoked_serials) == 1
    assert render_client_ovpn(again, "g0042.vpn.example.com") == (FIXTURES / "pki_v1.ovpn").read_bytes()


def test_it_keeps_every_device_ovpn_unchanged_while_others_come_and_go(three: ServerPKI) -> None:
    first, laptop = render_client_ovpn(three, DNS_NAME), render_device_ovpn(three, "3", DNS_NAME)
    changed, _ = add_device(revoke_device(three, "2", now=NOW), "Tablet", now=NOW)
    rebuilt = from_bytes(to_bytes(changed))
    assert render_client_ovpn(rebuilt, DNS_NAME) == first
    assert render_device_ovpn(rebuilt, "3", DNS_NAME) == laptop
    # and a new device changes none of the server's files: its CA vouches for the device
    assert server_files(changed) == server_files(three) | {"crl.pem": changed.crl_pem}
    assert server_files(add_device(three, "Another", now=NOW)[0]) == server_files(three)


# ------------------------------------------------------------------ adding

def test_it_gives_each_device_its_own_key_and_certificate_from_the_servers_ca(
    three: ServerPKI, tmp_path: Path
) -> None:
    ca = x509.load_pem_x509_certificate(three.ca_cert_pem)
    names = {d.common_name for d in three.devices}
    assert names == {"g0001", "device-2", "device-3"}
    assert len({d.key_pem for d in three.devices}) == 3 and len({d.serial for d in three.devices}) == 3
    for device in three.devices:
        x509.load_pem_x509_certificate(device.cert_pem).verify_directly_issued_by(ca)
        result = openssl_verify(three, device.device_id, tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
    ovpns = {render_device_ovpn(three, d.device_id, DNS_NAME) for d in three.devices}
    assert len(ovpns) == 3
    for ovpn in ovpns:
        validate_ovpn(ovpn)


def test_it_lists_devices_in_order_with_names_and_no_key_material(three: ServerPKI) -> None:
    listed = list_devices(three)
    assert [(d.device_id, d.name, d.common_name) for d in listed] == [
        ("1", FIRST_DEVICE_NAME, "g0001"), ("2", "Phone", "device-2"), ("3", "Laptop", "device-3")
    ]
    assert all(d.issued_at == NOW and d.revoked_at is None for d in listed)
    assert all(int(d.serial, 16) == three.device(d.device_id).serial for d in listed)
    shown = repr(listed) + repr(three) + repr(three.devices)
    assert "PRIVATE" not in shown and "BEGIN" not in shown
    assert not any(line in shown for line in key_lines(*(d.key_pem for d in three.devices)))


def test_it_never_reuses_an_id_and_refuses_a_second_active_device_of_the_same_name(three: ServerPKI) -> None:
    with pytest.raises(DeviceConflict):
        add_device(three, "  laptop ")  # "Laptop" is active
    with pytest.raises(DeviceConflict):
        add_device(three, "Watch", device_id="3")
    without_phone = revoke_device(three, "2", now=NOW)
    again, device_id = add_device(without_phone, "Phone", now=NOW)  # the name is free once revoked
    assert device_id == "4" and again.device("4").common_name == "device-4"
    shared, wg_id = add_device(again, "Router", device_id="wg-7", now=NOW)  # an id WireGuard handed out
    assert wg_id == "wg-7" and shared.device("wg-7").common_name == "device-wg-7"
    assert add_device(shared, "Watch", now=NOW)[1] == "5"


@pytest.mark.parametrize("name", ["", "   ", "a\nb", "tab\there", "x" * 41, "line\u2028break"])
def test_it_refuses_device_names_a_page_or_a_file_could_not_show(three: ServerPKI, name: str) -> None:
    with pytest.raises(DeviceError):
        add_device(three, name)


@pytest.mark.parametrize("device_id", ["", "A", "-x", "a b", "x\n", "ü", "x" * 41])
def test_it_refuses_device_ids_unfit_for_a_certificate_name(three: ServerPKI, device_id: str) -> None:
    with pytest.raises(DeviceError):
        add_device(three, "Watch", device_id=device_id)


def test_it_keeps_names_in_any_script_across_storage(three: ServerPKI) -> None:
    pki, device_id = add_device(three, "  Téléphone de Zoë 手机 ", now=NOW)
    stored = to_bytes(pki)
    assert stored.isascii()
    assert from_bytes(stored).device(device_id).name == "Téléphone de Zoë 手机"


# ------------------------------------------------------------------ revoking

def test_it_revokes_one_device_in_a_resigned_crl_and_keeps_the_others(three: ServerPKI, tmp_path: Path) -> None:
    later = NOW + dt.timedelta(days=3)
    revoked = revoke_device(three, "2", now=later)
    crl = x509.load_pem_x509_crl(revoked.crl_pem)
    entry = crl.get_revoked_certificate_by_serial_number(three.device("2").serial)
    assert entry is not None and entry.revocation_date_utc == later
    assert crl.is_signature_valid(x509.load_pem_x509_certificate(three.ca_cert_pem).public_key())
    assert crl_number(revoked) == crl_number(three) + 1
    # OpenSSL (as OpenVPN) now refuses that device and still accepts the others
    refused = openssl_verify(revoked, "2", tmp_path)
    assert refused.returncode != 0 and "revoked" in refused.stdout + refused.stderr
    for other in ("1", "3"):
        assert openssl_verify(revoked, other, tmp_path).returncode == 0
    # Its key is gone from the stored PKI, so it can never be rendered again
    assert revoked.device("2").key_pem == b""
    assert three.device("2").key_pem.decode().splitlines()[1] not in to_bytes(revoked).decode()
    with pytest.raises(DeviceRevoked):
        render_device_ovpn(revoked, "2", DNS_NAME)
    assert [d.revoked_at for d in list_devices(revoked)] == [None, later, None]
    # Revoking again changes nothing; the stored form keeps the revocation
    assert revoke_device(revoked, "2") is revoked
    assert from_bytes(to_bytes(revoked)) == revoked


def test_it_revokes_the_first_device_too_and_keeps_all_revocations(three: ServerPKI) -> None:
    both = revoke_device(revoke_device(three, "1", now=NOW), "3", now=NOW)
    assert both.revoked_serials == tuple(sorted((three.device("1").serial, three.device("3").serial)))
    assert crl_number(both) == crl_number(three) + 2
    with pytest.raises(DeviceRevoked):
        render_client_ovpn(both, DNS_NAME)


def test_it_names_an_unknown_device_in_the_error(three: ServerPKI) -> None:
    for call in (lambda: revoke_device(three, "9"), lambda: render_device_ovpn(three, "9", DNS_NAME)):
        with pytest.raises(DeviceNotFound, match="'9'"):
            call()


@pytest.mark.parametrize("damage", ["revoked keeps key", "active lost key", "duplicate id", "no devices", "bad name"])
def test_it_refuses_stored_devices_that_disagree_with_the_crl_without_quoting_keys(
    three: ServerPKI, damage: str
) -> None:
    revoked = revoke_device(three, "2", now=NOW)
    doc = json.loads(to_bytes(revoked))
    devices = doc["devices"]
    if damage == "revoked keeps key":
        devices[1]["key_pem"] = three.device("2").key_pem.decode()
    elif damage == "active lost key":
        devices[2]["key_pem"] = ""
    elif damage == "duplicate id":
        devices[2]["id"] = "2"
    elif damage == "no devices":
        doc["devices"] = []
    elif damage == "bad name":
        devices[0]["name"] = "a\nremote evil.example 1194"
    with pytest.raises(PKIFormatError) as info:
        from_bytes(json.dumps(doc).encode())
    message = str(info.value)
    assert "PRIVATE" not in message
    assert not any(line in message for line in key_lines(*(d.key_pem for d in three.devices)))
