"""The PKI of one OpenVPN server, owned by the worker so a customer's ``.ovpn`` survives rebuilds.

Each server gets its own CA (EC P-256, SHA-256), a server certificate with a random CN that
the client pins with ``verify-x509-name``, exactly one client certificate (CN = the server
name), a tls-crypt static key and a CRL signed by the CA. The CA key never leaves the worker
(RELIABILITY.md C.3): :func:`provisioner.vpn.config.server_files` ships only the server's
own material.

A :class:`ServerPKI` is immutable; revoking or refreshing the CRL returns a new one.
:func:`to_bytes` / :func:`from_bytes` give a stable JSON serialisation for the encrypted
database column. Nothing here puts key material into a repr, a log line or an exception.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import secrets
from dataclasses import dataclass, replace
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CERT_VALIDITY = dt.timedelta(days=3650)
# OpenSSL rejects every client once the CRL's nextUpdate has passed ("CRL has expired"),
# so the CRL lives as long as the certificates; call reissue_crl() well before crl_next_update().
CRL_VALIDITY = dt.timedelta(days=3650)
# Tolerate clock skew between the worker, the server and the customer's device.
BACKDATE = dt.timedelta(days=1)

FORMAT = "provisioner-openvpn-pki"
VERSION = 1
TLS_CRYPT_BEGIN = "-----BEGIN OpenVPN Static key V1-----"
TLS_CRYPT_END = "-----END OpenVPN Static key V1-----"
_TLS_CRYPT_BYTES = 256  # 2048 bits, as `openvpn --genkey secret` writes
# A label or a DNS name such as "g0001.vpn.example.com". Always fullmatch: "$" allows a final "\n".
_SERVER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,252}")
_MAX_CN = 64  # X.509 upper bound for commonName


class PKIFormatError(ValueError):
    """Serialised PKI that cannot be used (the message never contains key material)."""


@dataclass(frozen=True, repr=False)
class ServerPKI:
    server_name: str
    ca_cert_pem: bytes
    ca_key_pem: bytes
    server_cert_pem: bytes
    server_key_pem: bytes
    client_cert_pem: bytes
    client_key_pem: bytes
    tls_crypt_key: bytes
    crl_pem: bytes

    def __repr__(self) -> str:
        return (
            f"ServerPKI(server_name={self.server_name!r}, server_cn={self.server_cn!r}, "
            f"client_cn={self.client_cn!r}, client_serial={self.client_serial:x}, "
            f"revoked={len(self.revoked_serials)}, keys=<hidden>)"
        )

    __str__ = __repr__

    @property
    def server_cn(self) -> str:
        return _common_name(x509.load_pem_x509_certificate(self.server_cert_pem))

    @property
    def client_cn(self) -> str:
        return _common_name(x509.load_pem_x509_certificate(self.client_cert_pem))

    @property
    def client_serial(self) -> int:
        return x509.load_pem_x509_certificate(self.client_cert_pem).serial_number

    @property
    def revoked_serials(self) -> tuple[int, ...]:
        """Serials listed in the CRL, which is the one record of what was revoked."""
        return tuple(sorted(entry.serial_number for entry in x509.load_pem_x509_crl(self.crl_pem)))


def generate_pki(server_name: str, *, now: dt.datetime | None = None) -> ServerPKI:
    if not _SERVER_NAME.fullmatch(server_name):
        raise ValueError("server name must be 1-253 characters of letters, digits, '.', '_' or '-'")
    now = now or _utcnow()
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name(f"provisioner-ca-{secrets.token_hex(8)}")
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        _cert_builder(ca_name, ca_name, ca_key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(ca_ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    server_key, server_cert = _issue_leaf(
        ca_cert, ca_key, f"server_{secrets.token_hex(8)}", ExtendedKeyUsageOID.SERVER_AUTH, now
    )
    client_key, client_cert = _issue_leaf(
        ca_cert, ca_key, client_common_name(server_name), ExtendedKeyUsageOID.CLIENT_AUTH, now
    )
    crl = _sign_crl(ca_cert, ca_key, [], number=1, now=now)
    return ServerPKI(
        server_name=server_name,
        ca_cert_pem=_cert_pem(ca_cert),
        ca_key_pem=_key_pem(ca_key),
        server_cert_pem=_cert_pem(server_cert),
        server_key_pem=_key_pem(server_key),
        client_cert_pem=_cert_pem(client_cert),
        client_key_pem=_key_pem(client_key),
        tls_crypt_key=generate_tls_crypt_key(),
        crl_pem=crl.public_bytes(serialization.Encoding.PEM),
    )


def client_common_name(server_name: str) -> str:
    """The server name, or its first label when the name is too long for a commonName."""
    return server_name if len(server_name) <= _MAX_CN else server_name.split(".")[0][:_MAX_CN]


def revoke_client(pki: ServerPKI, *, now: dt.datetime | None = None) -> ServerPKI:
    """Revoke the current client certificate and issue its replacement (same CN).

    The returned PKI has a CRL listing the old serial, so the old ``.ovpn`` stops working once
    the server has the new ``crl.pem``; the ``.ovpn`` rendered from the returned PKI works.
    OpenVPN re-reads a changed ``crl-verify`` file on each new handshake, but an already
    connected client stays connected until it renegotiates: restart the server to cut it off.
    """
    now = now or _utcnow()
    ca_cert, ca_key = _load_ca(pki)
    old_crl = x509.load_pem_x509_crl(pki.crl_pem)
    entries = [(e.serial_number, e.revocation_date_utc) for e in old_crl]
    entries.append((pki.client_serial, now))
    client_key, client_cert = _issue_leaf(
        ca_cert, ca_key, pki.client_cn, ExtendedKeyUsageOID.CLIENT_AUTH, now
    )
    crl = _sign_crl(ca_cert, ca_key, entries, number=_crl_number(old_crl) + 1, now=now)
    return replace(
        pki,
        client_cert_pem=_cert_pem(client_cert),
        client_key_pem=_key_pem(client_key),
        crl_pem=crl.public_bytes(serialization.Encoding.PEM),
    )


def reissue_crl(pki: ServerPKI, *, now: dt.datetime | None = None) -> ServerPKI:
    """The same revocations in a freshly signed CRL (new validity window, next CRL number)."""
    now = now or _utcnow()
    ca_cert, ca_key = _load_ca(pki)
    old_crl = x509.load_pem_x509_crl(pki.crl_pem)
    entries = [(e.serial_number, e.revocation_date_utc) for e in old_crl]
    crl = _sign_crl(ca_cert, ca_key, entries, number=_crl_number(old_crl) + 1, now=now)
    return replace(pki, crl_pem=crl.public_bytes(serialization.Encoding.PEM))


def crl_next_update(pki: ServerPKI) -> dt.datetime:
    """When the server starts refusing every client unless it has a re-issued CRL."""
    next_update = x509.load_pem_x509_crl(pki.crl_pem).next_update_utc
    if next_update is None:  # never written by this module
        raise PKIFormatError("the CRL has no nextUpdate")
    return next_update


def generate_tls_crypt_key() -> bytes:
    hexed = os.urandom(_TLS_CRYPT_BYTES).hex()
    lines = [hexed[i : i + 32] for i in range(0, len(hexed), 32)]
    body = "\n".join(["#", "# 2048 bit OpenVPN static key", "#", TLS_CRYPT_BEGIN, *lines, TLS_CRYPT_END])
    return (body + "\n").encode("ascii")


def check_tls_crypt_key(data: bytes) -> None:
    """Raise PKIFormatError unless ``data`` is an OpenVPN "Static key V1" of 2048 bits."""
    text = data.decode("ascii", errors="replace")
    begin, end = text.find(TLS_CRYPT_BEGIN), text.find(TLS_CRYPT_END)
    if begin < 0 or end < begin:
        raise PKIFormatError("tls-crypt key lacks the 'OpenVPN Static key V1' armour")
    hexed = "".join(text[begin + len(TLS_CRYPT_BEGIN) : end].split())
    if len(hexed) != 2 * _TLS_CRYPT_BYTES or not re.fullmatch(r"[0-9a-fA-F]+", hexed):
        raise PKIFormatError("tls-crypt key is not 2048 bits of hex")


_PEM_FIELDS = (
    "ca_cert_pem",
    "ca_key_pem",
    "server_cert_pem",
    "server_key_pem",
    "client_cert_pem",
    "client_key_pem",
    "tls_crypt_key",
    "crl_pem",
)


def to_bytes(pki: ServerPKI) -> bytes:
    """Canonical JSON: the same PKI always gives the same bytes (encrypt before storing)."""
    doc: dict[str, Any] = {"format": FORMAT, "version": VERSION, "server_name": pki.server_name}
    for field in _PEM_FIELDS:
        doc[field] = getattr(pki, field).decode("ascii")
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("ascii")


def from_bytes(data: bytes) -> ServerPKI:
    """Parse and check what :func:`to_bytes` wrote: every key must match its certificate."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise PKIFormatError("serialised PKI is not JSON") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise PKIFormatError(f"serialised PKI is not in the {FORMAT!r} format")
    if doc.get("version") != VERSION:
        raise PKIFormatError(f"serialised PKI has unsupported version {doc.get('version')!r}")
    values: dict[str, bytes] = {}
    for field in _PEM_FIELDS:
        value = doc.get(field)
        if not isinstance(value, str) or not value.isascii():
            raise PKIFormatError(f"serialised PKI field {field!r} is missing or not ASCII text")
        values[field] = value.encode("ascii")
    name = doc.get("server_name")
    if not isinstance(name, str) or not _SERVER_NAME.fullmatch(name):
        raise PKIFormatError("serialised PKI has an invalid server_name")
    pki = ServerPKI(server_name=name, **values)
    check_pki(pki)
    return pki


def check_pki(pki: ServerPKI) -> None:
    """Raise PKIFormatError unless the PKI is internally consistent and signed by its CA."""
    ca_cert, ca_key = _load_ca(pki)
    for label, cert_pem, key_pem in (
        ("server", pki.server_cert_pem, pki.server_key_pem),
        ("client", pki.client_cert_pem, pki.client_key_pem),
    ):
        cert = _load(x509.load_pem_x509_certificate, cert_pem, f"{label} certificate")
        key = _load_private_key(key_pem, f"{label} key")
        if cert.public_key() != key.public_key():
            raise PKIFormatError(f"the {label} key does not match the {label} certificate")
        try:
            cert.verify_directly_issued_by(ca_cert)
        except (ValueError, TypeError, InvalidSignature):
            raise PKIFormatError(f"the {label} certificate is not issued by the CA") from None
    crl = _load(x509.load_pem_x509_crl, pki.crl_pem, "CRL")
    if crl.issuer != ca_cert.subject or not crl.is_signature_valid(ca_key.public_key()):
        raise PKIFormatError("the CRL is not signed by the CA")
    check_tls_crypt_key(pki.tls_crypt_key)


def _issue_leaf(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    common_name: str,
    usage: x509.ObjectIdentifier,
    now: dt.datetime,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    key_usage = (
        _key_usage(digital_signature=True, key_agreement=True)
        if usage == ExtendedKeyUsageOID.SERVER_AUTH
        else _key_usage(digital_signature=True)
    )
    cert = (
        _cert_builder(_name(common_name), ca_cert.subject, key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage, critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _sign_crl(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    entries: list[tuple[int, dt.datetime]],
    *,
    number: int,
    now: dt.datetime,
) -> x509.CertificateRevocationList:
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - BACKDATE)
        .next_update(now + CRL_VALIDITY)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
    )
    for serial, revoked_at in sorted(entries):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(revoked_at).build()
        )
    return builder.sign(ca_key, hashes.SHA256())


def _crl_number(crl: x509.CertificateRevocationList) -> int:
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        return 0


def _load_ca(pki: ServerPKI) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = _load(x509.load_pem_x509_certificate, pki.ca_cert_pem, "CA certificate")
    key = _load_private_key(pki.ca_key_pem, "CA key")
    if cert.public_key() != key.public_key():
        raise PKIFormatError("the CA key does not match the CA certificate")
    return cert, key


def _load_private_key(pem: bytes, what: str) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise PKIFormatError(f"the {what} is not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PKIFormatError(f"the {what} is not an EC key")
    return key


def _load(loader: Any, pem: bytes, what: str) -> Any:
    try:
        return loader(pem)
    except ValueError:
        raise PKIFormatError(f"the {what} is not valid PEM") from None


def _cert_builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey, now: dt.datetime
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CERT_VALIDITY)
    )


def _key_usage(
    *,
    digital_signature: bool = False,
    key_agreement: bool = False,
    key_cert_sign: bool = False,
    crl_sign: bool = False,
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=key_agreement,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _common_name(cert: x509.Certificate) -> str:
    value = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    return value if isinstance(value, str) else value.decode("utf-8")


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
