"""The per-server PKI: it verifies the way OpenVPN/OpenSSL will check it, it round-trips
through its stored form, and it never shows key material."""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from provisioner.vpn.pki import (
    PKIFormatError,
    ServerPKI,
    add_device,
    crl_next_update,
    crl_number,
    from_bytes,
    generate_pki,
    reissue_crl,
    revoke_device,
    to_bytes,
)
from tests.fixtures.services import require_or_skip

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def pki() -> ServerPKI:
    return generate_pki("g0001", now=NOW)


def cert(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def client(pki: ServerPKI, device_id: str = "1") -> x509.Certificate:
    return cert(pki.device(device_id).cert_pem)


def secret_fragments(pki: ServerPKI) -> list[str]:
    """Every base64/hex body line of every private key and of the tls-crypt key."""
    lines: list[str] = []
    keys = [pki.ca_key_pem, pki.server_key_pem, pki.tls_crypt_key, *(d.key_pem for d in pki.devices)]
    for pem in keys:
        lines += [ln for ln in pem.decode().splitlines() if ln and not ln.startswith(("-", "#"))]
    return lines


def test_it_chains_server_and_client_certificates_to_their_ca(pki: ServerPKI) -> None:
    ca = cert(pki.ca_cert_pem)
    ca.verify_directly_issued_by(ca)
    cert(pki.server_cert_pem).verify_directly_issued_by(ca)
    client(pki).verify_directly_issued_by(ca)


@pytest.mark.parametrize(("purpose", "which", "ok"), [
    ("sslserver", "server", True),
    ("sslclient", "client", True),
    ("sslserver", "client", False),
    ("sslclient", "server", False),
])
def test_it_passes_openssl_strict_verification_with_the_crl_for_the_right_purpose_only(
    pki: ServerPKI, tmp_path: Path, purpose: str, which: str, ok: bool
) -> None:
    if shutil.which("openssl") is None:
        require_or_skip("the openssl command is missing (apt-get install openssl)")
    (tmp_path / "ca.crt").write_bytes(pki.ca_cert_pem)
    (tmp_path / "crl.pem").write_bytes(pki.crl_pem)
    (tmp_path / "leaf.crt").write_bytes(pki.server_cert_pem if which == "server" else pki.device("1").cert_pem)
    result = subprocess.run(
        ["openssl", "verify", "-x509_strict", "-purpose", purpose, "-crl_check",
         "-attime", str(int(NOW.timestamp())), "-CAfile", "ca.crt", "-CRLfile", "crl.pem", "leaf.crt"],
        cwd=tmp_path, capture_output=True, text=True, timeout=10, check=False,
    )
    assert (result.returncode == 0) is ok, result.stdout + result.stderr


def test_it_sets_the_extensions_openvpn_checks(pki: ServerPKI) -> None:
    ca, server, device = cert(pki.ca_cert_pem), cert(pki.server_cert_pem), client(pki)
    basic = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca
    ca_usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ca_usage.key_cert_sign and ca_usage.crl_sign
    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    for leaf, eku in ((server, ExtendedKeyUsageOID.SERVER_AUTH), (device, ExtendedKeyUsageOID.CLIENT_AUTH)):
        assert list(leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [eku]
        assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        assert leaf.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
        aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        assert aki.key_identifier == ca_ski
        ski = leaf.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        assert ski == x509.SubjectKeyIdentifier.from_public_key(leaf.public_key())
    assert server.extensions.get_extension_for_class(x509.KeyUsage).value.key_agreement


def test_it_uses_p256_sha256_and_ten_year_validity(pki: ServerPKI) -> None:
    for pem in (pki.ca_cert_pem, pki.server_cert_pem, pki.device("1").cert_pem):
        c = cert(pem)
        key = c.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
        assert isinstance(c.signature_hash_algorithm, hashes.SHA256)
        assert c.not_valid_before_utc <= NOW
        assert c.not_valid_after_utc - NOW >= dt.timedelta(days=3649)


def test_it_names_the_server_randomly_and_the_first_device_after_the_server(pki: ServerPKI) -> None:
    assert re.fullmatch(r"server_[0-9a-f]{16}", pki.server_cn)
    assert pki.device("1").common_name == "g0001"
    assert cert(pki.server_cert_pem).subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == pki.server_cn


def test_it_pairs_each_private_key_with_its_certificate(pki: ServerPKI) -> None:
    for cert_pem, key_pem in (
        (pki.ca_cert_pem, pki.ca_key_pem),
        (pki.server_cert_pem, pki.server_key_pem),
        (pki.device("1").cert_pem, pki.device("1").key_pem),
    ):
        key = serialization.load_pem_private_key(key_pem, password=None)
        assert cert(cert_pem).public_key() == key.public_key()


def test_it_writes_a_2048_bit_openvpn_static_key(pki: ServerPKI) -> None:
    text = pki.tls_crypt_key.decode()
    body = text.split("-----BEGIN OpenVPN Static key V1-----\n")[1].split("-----END OpenVPN Static key V1-----")[0]
    lines = body.split()
    assert len(lines) == 16 and all(re.fullmatch(r"[0-9a-f]{32}", ln) for ln in lines)
    assert len(bytes.fromhex("".join(lines))) == 256


def test_it_issues_an_empty_crl_signed_by_the_ca_that_stays_valid_for_years(pki: ServerPKI) -> None:
    crl = x509.load_pem_x509_crl(pki.crl_pem)
    assert len(crl) == 0 and pki.revoked_serials == ()
    assert crl.issuer == cert(pki.ca_cert_pem).subject
    assert crl.is_signature_valid(cert(pki.ca_cert_pem).public_key())
    assert crl.last_update_utc <= NOW
    assert crl_next_update(pki) - NOW >= dt.timedelta(days=3649)


def test_it_round_trips_through_its_stored_form_byte_for_byte(pki: ServerPKI) -> None:
    stored = to_bytes(pki)
    restored = from_bytes(stored)
    assert restored == pki
    assert to_bytes(restored) == stored
    assert json.loads(stored)["version"] == 2


@pytest.mark.parametrize("damage", ["not json", "wrong format", "future version", "swapped key", "bad name"])
def test_it_refuses_damaged_stored_pki_without_quoting_it(pki: ServerPKI, damage: str) -> None:
    doc = json.loads(to_bytes(pki))
    if damage == "wrong format":
        doc["format"] = "something-else"
    elif damage == "future version":
        doc["version"] = 99
    elif damage == "swapped key":
        doc["server_key_pem"] = doc["devices"][0]["key_pem"]
    elif damage == "bad name":
        doc["server_name"] = "g1\nremote evil"
    data = b"{not json" + to_bytes(pki) if damage == "not json" else json.dumps(doc).encode()
    with pytest.raises(PKIFormatError) as info:
        from_bytes(data)
    message = str(info.value)
    assert not any(fragment in message for fragment in secret_fragments(pki))
    assert "PRIVATE" not in message


def test_it_checks_the_same_stored_pki_once_and_other_bytes_every_time(pki: ServerPKI, monkeypatch) -> None:
    from provisioner.vpn import pki as pki_module

    checked: list[str] = []
    monkeypatch.setattr(pki_module, "_CHECKED", set())   # nothing checked yet in this process
    real = pki_module.check_pki
    monkeypatch.setattr(pki_module, "check_pki", lambda p: (checked.append(p.server_name), real(p))[-1])
    stored = to_bytes(pki)
    # Given a stored PKI opened twice (a server's prepare and install steps)
    assert from_bytes(stored) == from_bytes(stored) == pki
    # Then its signatures were verified once
    assert checked == [pki.server_name]
    # And damaged bytes after it are still verified, and refused
    doc = json.loads(stored)
    doc["server_key_pem"] = doc["devices"][0]["key_pem"]
    with pytest.raises(PKIFormatError):
        from_bytes(json.dumps(doc).encode())
    with pytest.raises(PKIFormatError):
        from_bytes(json.dumps(doc).encode())
    assert len(checked) == 3


def test_it_gives_two_servers_unrelated_pkis(pki: ServerPKI) -> None:
    other = generate_pki("g0001", now=NOW)
    for name in ("ca_cert_pem", "ca_key_pem", "server_cert_pem", "server_key_pem", "tls_crypt_key"):
        assert getattr(pki, name) != getattr(other, name), name
    assert pki.devices[0].key_pem != other.devices[0].key_pem
    assert pki.server_cn != other.server_cn
    with pytest.raises(ValueError):  # a certificate of one server is not issued by another's CA
        client(other).verify_directly_issued_by(cert(pki.ca_cert_pem))


def test_it_never_shows_key_material_in_repr_or_str(pki: ServerPKI) -> None:
    for shown in (repr(pki), str(pki), f"{pki}", repr([pki])):
        assert "g0001" in shown and pki.server_cn in shown
        assert "PRIVATE" not in shown and "BEGIN" not in shown
        assert not any(fragment in shown for fragment in secret_fragments(pki))


def test_it_reissues_the_crl_with_the_same_revocations_and_a_later_expiry(pki: ServerPKI) -> None:
    two, _ = add_device(pki, "Phone", now=NOW)
    revoked = revoke_device(two, "2", now=NOW)
    refreshed = reissue_crl(revoked, now=NOW + dt.timedelta(days=400))
    assert refreshed.revoked_serials == revoked.revoked_serials == (two.device("2").serial,)
    assert crl_next_update(refreshed) - crl_next_update(revoked) == dt.timedelta(days=400)
    assert crl_number(refreshed) == 3
    assert refreshed.devices == revoked.devices


def test_it_names_the_first_device_after_a_dns_server_name_even_when_it_is_long() -> None:
    assert generate_pki("g0001.vpn.example.com", now=NOW).device("1").common_name == "g0001.vpn.example.com"
    long_name = "g0001." + "d" * 60 + ".example.com"
    long = generate_pki(long_name, now=NOW)
    assert long.device("1").common_name == "g0001" and long.server_name == long_name
    assert from_bytes(to_bytes(long)) == long


@pytest.mark.parametrize("name", ["", "g 1", "g1\nremote evil", "g1\n", "-g1", "x" * 254, "g/1"])
def test_it_refuses_server_names_unfit_for_a_certificate(name: str) -> None:
    with pytest.raises(ValueError):
        generate_pki(name)
