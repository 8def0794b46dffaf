"""The PKI of one OpenVPN server, owned by the worker so every device's ``.ovpn`` survives rebuilds.

Each server gets its own CA (EC P-256, SHA-256), a server certificate with a random CN that
the client pins with ``verify-x509-name``, a tls-crypt static key, a CRL signed by the CA,
and one client certificate per device. The first device is the server's original single
client (CN = the server name, device id ``"1"``): a PKI stored before devices existed
(format version 1) loads as that one device and renders the very same ``.ovpn`` bytes.
Later devices get CN ``device-<id>``, unique on the server, so OpenVPN can tell them apart
(and its management interface can cut one off by name). The CA key never leaves the worker
(RELIABILITY.md C.3): :func:`provisioner.vpn.config.server_files` ships only the server's
own material.

A :class:`ServerPKI` is immutable: :func:`add_device`, :func:`revoke_device` and
:func:`reissue_crl` return a new one, which the caller stores (the CRL is part of it, so it
survives every rebuild) and then ships to the server (:mod:`provisioner.vpn.remote`).
Revoking puts the device's serial into the CRL, re-signs it with the next CRL number and
erases the device's private key: a revoked profile can never be rendered again.

:func:`to_bytes` / :func:`from_bytes` give a stable JSON serialisation (version 2; version 1
is still read) for the encrypted database column. Nothing here puts key material into a
repr, a log line or an exception.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import secrets
import threading
from dataclasses import dataclass, replace
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from provisioner.vpn import certs, stored
from provisioner.vpn.certs import BACKDATE, PKIFormatError
from provisioner.vpn.devices import (
    DeviceError,
    DeviceNotFound,
    DeviceRevoked,
    check_device_id,
    check_new_device,
    next_device_id,
    normalize_device_name,
)

FORMAT = "provisioner-openvpn-pki"
VERSION = 2
FIRST_DEVICE_ID = "1"
FIRST_DEVICE_NAME = "Device 1"
TLS_CRYPT_BEGIN = "-----BEGIN OpenVPN Static key V1-----"
TLS_CRYPT_END = "-----END OpenVPN Static key V1-----"
_TLS_CRYPT_BYTES = 256  # 2048 bits, as `openvpn --genkey secret` writes
# A label or a DNS name such as "g0001.vpn.example.com". Always fullmatch: "$" allows a final "\n".
_SERVER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,252}")
_MAX_CN = 64  # X.509 upper bound for commonName


@dataclass(frozen=True, repr=False)
class Device:
    """One device's client certificate; ``key_pem`` is empty once the device is revoked."""

    device_id: str
    name: str
    cert_pem: bytes
    key_pem: bytes

    def __repr__(self) -> str:
        key = "<hidden>" if self.key_pem else "<erased>"
        return f"Device(device_id={self.device_id!r}, name={self.name!r}, serial={self.serial:x}, key={key})"

    __str__ = __repr__

    @property
    def common_name(self) -> str:
        return certs.common_name(x509.load_pem_x509_certificate(self.cert_pem))

    @property
    def serial(self) -> int:
        return x509.load_pem_x509_certificate(self.cert_pem).serial_number


@dataclass(frozen=True)
class DeviceInfo:
    """What a device list shows: no key material, safe to log and to hand to the API layer."""

    device_id: str
    name: str
    common_name: str
    serial: str  # hex, as `openssl x509 -serial` and OpenVPN's logs print it
    issued_at: dt.datetime
    revoked_at: dt.datetime | None


@dataclass(frozen=True, repr=False)
class ServerPKI:
    server_name: str
    ca_cert_pem: bytes
    ca_key_pem: bytes
    server_cert_pem: bytes
    server_key_pem: bytes
    tls_crypt_key: bytes
    crl_pem: bytes
    devices: tuple[Device, ...]

    def __repr__(self) -> str:
        active = sum(1 for d in self.devices if d.key_pem)
        return (
            f"ServerPKI(server_name={self.server_name!r}, server_cn={self.server_cn!r}, "
            f"devices={len(self.devices)}, active={active}, revoked={len(self.revoked_serials)}, keys=<hidden>)"
        )

    __str__ = __repr__

    @property
    def server_cn(self) -> str:
        return certs.common_name(x509.load_pem_x509_certificate(self.server_cert_pem))

    @property
    def revoked_serials(self) -> tuple[int, ...]:
        """Serials listed in the CRL, which is the one record of what was revoked."""
        return tuple(sorted(entry.serial_number for entry in x509.load_pem_x509_crl(self.crl_pem)))

    def device(self, device_id: str) -> Device:
        for device in self.devices:
            if device.device_id == device_id:
                return device
        raise DeviceNotFound(f"no device {device_id!r} on this server")


def generate_pki(
    server_name: str, *, first_device_name: str = FIRST_DEVICE_NAME, now: dt.datetime | None = None
) -> ServerPKI:
    """A new CA, server certificate, tls-crypt key, empty CRL and the first device (id "1")."""
    if not _SERVER_NAME.fullmatch(server_name):
        raise ValueError("server name must be 1-253 characters of letters, digits, '.', '_' or '-'")
    name = normalize_device_name(first_device_name)
    now = now or _utcnow()
    ca_key, ca_cert = certs.make_ca(f"provisioner-ca-{secrets.token_hex(8)}", now)
    server_key, server_cert = certs.issue_leaf(
        ca_cert, ca_key, f"server_{secrets.token_hex(8)}", ExtendedKeyUsageOID.SERVER_AUTH, now
    )
    client_key, client_cert = certs.issue_leaf(
        ca_cert, ca_key, client_common_name(server_name), ExtendedKeyUsageOID.CLIENT_AUTH, now
    )
    return ServerPKI(
        server_name=server_name,
        ca_cert_pem=certs.cert_pem(ca_cert),
        ca_key_pem=certs.key_pem(ca_key),
        server_cert_pem=certs.cert_pem(server_cert),
        server_key_pem=certs.key_pem(server_key),
        tls_crypt_key=generate_tls_crypt_key(),
        crl_pem=certs.sign_crl(ca_cert, ca_key, [], number=1, now=now),
        devices=(Device(FIRST_DEVICE_ID, name, certs.cert_pem(client_cert), certs.key_pem(client_key)),),
    )


def client_common_name(server_name: str) -> str:
    """The first device's CN: the server name, or its first label when too long for a commonName."""
    return server_name if len(server_name) <= _MAX_CN else server_name.split(".")[0][:_MAX_CN]


def add_device(
    pki: ServerPKI, name: str, *, device_id: str | None = None, now: dt.datetime | None = None
) -> tuple[ServerPKI, str]:
    """A new client certificate signed by the server's CA; returns the new PKI and the device id.

    ``device_id`` defaults to the next unused number; pass the id the device already has for
    WireGuard so both profiles share it. Raises :class:`DeviceError` for a bad name or id, and
    :class:`DeviceConflict` when the id was ever used or an active device has the same name.
    The server needs nothing new: it trusts every certificate its CA signed that is not in
    the CRL.
    """
    name = normalize_device_name(name)
    device_id = check_device_id(device_id) if device_id is not None else next_device_id(
        d.device_id for d in pki.devices
    )
    check_new_device(device_id, name, ((d.device_id, d.name, bool(d.key_pem)) for d in pki.devices))
    common_name = f"device-{device_id}"
    if common_name in {d.common_name for d in pki.devices}:  # only if the server itself is named so
        raise DeviceError(f"device id {device_id!r} would share its certificate name with another device")
    ca_cert, ca_key = _load_ca(pki)
    key, cert = certs.issue_leaf(ca_cert, ca_key, common_name, ExtendedKeyUsageOID.CLIENT_AUTH, now or _utcnow())
    device = Device(device_id, name, certs.cert_pem(cert), certs.key_pem(key))
    return replace(pki, devices=(*pki.devices, device)), device_id


def revoke_device(pki: ServerPKI, device_id: str, *, now: dt.datetime | None = None) -> ServerPKI:
    """Put the device's serial into a re-signed CRL (next CRL number) and erase its key.

    Idempotent: revoking a revoked device returns ``pki`` unchanged. The server refuses the
    device's next handshake once it has the new ``crl.pem`` (OpenVPN re-reads it on every new
    connection); :func:`provisioner.vpn.remote.crl_update_run` also cuts it off if connected.
    """
    device = pki.device(device_id)
    if not device.key_pem:
        return pki
    now = now or _utcnow()
    ca_cert, ca_key = _load_ca(pki)
    old_crl = certs.load_crl(pki.crl_pem)
    entries = certs.crl_entries(old_crl)
    if device.serial not in {serial for serial, _ in entries}:
        entries.append((device.serial, now))
    crl = certs.sign_crl(ca_cert, ca_key, entries, number=certs.crl_number(old_crl) + 1, now=now)
    devices = tuple(replace(d, key_pem=b"") if d.device_id == device_id else d for d in pki.devices)
    return replace(pki, crl_pem=crl, devices=devices)


def list_devices(pki: ServerPKI) -> tuple[DeviceInfo, ...]:
    """Every device the server ever had, in the order they were added, revoked ones included."""
    revoked = {e.serial_number: e.revocation_date_utc for e in x509.load_pem_x509_crl(pki.crl_pem)}
    infos = []
    for device in pki.devices:
        cert = x509.load_pem_x509_certificate(device.cert_pem)
        infos.append(DeviceInfo(
            device_id=device.device_id,
            name=device.name,
            common_name=certs.common_name(cert),
            serial=f"{cert.serial_number:x}",
            issued_at=cert.not_valid_before_utc + BACKDATE,
            revoked_at=revoked.get(cert.serial_number) if not device.key_pem else None,
        ))
    return tuple(infos)


def active_device(pki: ServerPKI, device_id: str) -> Device:
    """The device, if it can still have a profile; DeviceNotFound or DeviceRevoked otherwise."""
    device = pki.device(device_id)
    if not device.key_pem:
        raise DeviceRevoked(f"device {device_id!r} was revoked")
    return device


def reissue_crl(pki: ServerPKI, *, now: dt.datetime | None = None) -> ServerPKI:
    """The same revocations in a freshly signed CRL (new validity window, next CRL number)."""
    now = now or _utcnow()
    ca_cert, ca_key = _load_ca(pki)
    old_crl = certs.load_crl(pki.crl_pem)
    crl = certs.sign_crl(ca_cert, ca_key, certs.crl_entries(old_crl), number=certs.crl_number(old_crl) + 1, now=now)
    return replace(pki, crl_pem=crl)


def crl_number(pki: ServerPKI) -> int:
    return certs.crl_number(certs.load_crl(pki.crl_pem))


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


_PEM_FIELDS = ("ca_cert_pem", "ca_key_pem", "server_cert_pem", "server_key_pem", "tls_crypt_key", "crl_pem")


def to_bytes(pki: ServerPKI) -> bytes:
    """Canonical JSON (version 2): the same PKI always gives the same bytes (encrypt before storing)."""
    doc: dict[str, Any] = {"server_name": pki.server_name}
    for field in _PEM_FIELDS:
        doc[field] = getattr(pki, field).decode("ascii")
    doc["devices"] = [
        {"id": d.device_id, "name": d.name, "cert_pem": d.cert_pem.decode("ascii"),
         "key_pem": d.key_pem.decode("ascii")}
        for d in pki.devices
    ]
    return stored.dump(FORMAT, VERSION, doc)


def from_bytes(data: bytes) -> ServerPKI:
    """Parse and check what :func:`to_bytes` wrote, in version 2 or the single-client version 1."""
    doc, version = stored.load(data, FORMAT, (1, 2), PKIFormatError, "serialised PKI")
    values = {field: _ascii(doc, field) for field in _PEM_FIELDS}
    name = doc.get("server_name")
    if not isinstance(name, str) or not _SERVER_NAME.fullmatch(name):
        raise PKIFormatError("serialised PKI has an invalid server_name")
    if version == 1:  # one client certificate: it becomes the first device, unchanged
        cert, key = _ascii(doc, "client_cert_pem"), _ascii(doc, "client_key_pem")
        devices: tuple[Device, ...] = (Device(FIRST_DEVICE_ID, FIRST_DEVICE_NAME, cert, key),)
    else:
        devices = _devices_from(doc.get("devices"))
    pki = ServerPKI(server_name=name, devices=devices, **values)
    digest = hashlib.sha256(data).digest()
    if digest not in _CHECKED:   # the same bytes always check the same: their signatures once per process
        check_pki(pki)
        with _CHECKED_LOCK:
            if len(_CHECKED) >= _CHECKED_MAX:
                _CHECKED.clear()
            _CHECKED.add(digest)
    return pki


# SHA-256 of serialised PKIs that passed check_pki in this process. A server's steps open its
# PKI several times (prepare, install, every sync); verifying every signature each time was a
# tenth of the worker's CPU when it builds a fleet. Different bytes are checked afresh.
_CHECKED: set[bytes] = set()
_CHECKED_MAX = 10_000
_CHECKED_LOCK = threading.Lock()


def check_pki(pki: ServerPKI) -> None:
    """Raise PKIFormatError unless the PKI is internally consistent and signed by its CA.

    A device is revoked exactly when its serial is in the CRL, and then has no key.
    """
    ca_cert, ca_key = _load_ca(pki)
    crl = certs.load_crl(pki.crl_pem)
    if crl.issuer != ca_cert.subject or not crl.is_signature_valid(ca_key.public_key()):
        raise PKIFormatError("the CRL is not signed by the CA")
    revoked = {entry.serial_number for entry in crl}
    _check_leaf(ca_cert, pki.server_cert_pem, pki.server_key_pem, "server")
    if not pki.devices:
        raise PKIFormatError("the PKI has no device")
    seen_ids: set[str] = set()
    seen_cns: set[str] = set()
    for device in pki.devices:
        label = f"device {device.device_id!r}"
        if device.device_id in seen_ids:
            raise PKIFormatError(f"{label} appears twice")
        try:
            check_device_id(device.device_id)
            normalize_device_name(device.name)
        except DeviceError as exc:
            raise PKIFormatError(f"{label}: {exc}") from None
        cert = _check_leaf(ca_cert, device.cert_pem, device.key_pem or None, label)
        if certs.common_name(cert) in seen_cns:
            raise PKIFormatError(f"{label} shares its certificate name with another device")
        if (cert.serial_number in revoked) == bool(device.key_pem):
            raise PKIFormatError(f"{label} is revoked in the CRL but keeps its key, or the reverse")
        seen_ids.add(device.device_id)
        seen_cns.add(certs.common_name(cert))
    check_tls_crypt_key(pki.tls_crypt_key)


def _check_leaf(ca_cert: x509.Certificate, cert_pem: bytes, key_pem: bytes | None, label: str) -> x509.Certificate:
    cert = certs.load_cert(cert_pem, f"{label} certificate")
    if key_pem is not None:
        key = certs.load_private_key(key_pem, f"{label} key")
        if cert.public_key() != key.public_key():
            raise PKIFormatError(f"the {label} key does not match the {label} certificate")
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        raise PKIFormatError(f"the {label} certificate is not issued by the CA") from None
    return cert


def _devices_from(raw: object) -> tuple[Device, ...]:
    if not isinstance(raw, list):
        raise PKIFormatError("serialised PKI has no device list")
    devices = []
    for entry in raw:
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in ("id", "name")):
            raise PKIFormatError("serialised PKI has a device without an id or a name")
        cert, key = _ascii(entry, "cert_pem"), _ascii(entry, "key_pem", empty=True)
        devices.append(Device(entry["id"], entry["name"], cert, key))
    return tuple(devices)


def _ascii(doc: dict[str, Any], field: str, *, empty: bool = False) -> bytes:
    value = doc.get(field)
    if not isinstance(value, str) or not value.isascii() or (not value and not empty):
        raise PKIFormatError(f"serialised PKI field {field!r} is missing or not ASCII text")
    return value.encode("ascii")


def _load_ca(pki: ServerPKI) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = certs.load_cert(pki.ca_cert_pem, "CA certificate")
    key = certs.load_private_key(pki.ca_key_pem, "CA key")
    if cert.public_key() != key.public_key():
        raise PKIFormatError("the CA key does not match the CA certificate")
    return cert, key


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
