"""OpenVPN server configuration, the files it reads, the customer's ``.ovpn`` and the installer.

Everything here is a pure function of a :class:`~provisioner.vpn.pki.ServerPKI` plus a few
parameters. :func:`render_device_ovpn` is deterministic on purpose: a rebuild renders the
same PKI and DNS name again and must hand the customer the exact same bytes.

The worker uploads :func:`server_files` plus ``server.conf`` to ``/root/provisioner/`` and
runs :func:`install_script` there as ``bash /root/provisioner/install.sh``; the script moves
them to ``/etc/openvpn/server/`` (modes from :data:`SERVER_FILE_MODES`).
:mod:`provisioner.vpn.remote` bundles the files and commands for each change.

``server.conf`` opens a management socket that only root may use: after a revocation the
CRL update cuts the revoked device's open connection there (``kill <cn>``) instead of
restarting the server, so the other devices stay connected.
"""

from __future__ import annotations

import ipaddress
import re
from importlib import resources

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from provisioner.vpn.inputs import DEFAULT_DNS, check_host_name, check_port, ip_address
from provisioner.vpn.pki import FIRST_DEVICE_ID, PKIFormatError, ServerPKI, active_device, check_tls_crypt_key

SERVER_DIR = "/etc/openvpn/server"
STATUS_PATH = "/run/openvpn-server/status-server.log"
MANAGEMENT_PATH = "/run/openvpn-server/management.sock"
DATA_CIPHERS = "AES-256-GCM:AES-128-GCM:CHACHA20-POLY1305"
INSTALL_OK_MARKER = "provisioner-install: ok"

# crl.pem stays world-readable: OpenVPN re-reads it after dropping to nobody/nogroup.
SERVER_FILE_MODES: dict[str, int] = {
    "server.conf": 0o644,
    "ca.crt": 0o644,
    "server.crt": 0o644,
    "server.key": 0o600,
    "tls-crypt.key": 0o600,
    "crl.pem": 0o644,
}

# Always fullmatch: "$" would accept a trailing newline, i.e. an injected directive.
_PATH = re.compile(r"/[A-Za-z0-9_./-]*")
_BLOCKS = ("ca", "cert", "key", "tls-crypt")


class InvalidOvpn(ValueError):
    """A ``.ovpn`` that a client could not use (the message never quotes its contents)."""


def render_server_conf(
    pki: ServerPKI,
    *,
    port: int = 1194,
    proto: str = "udp",
    subnet: str = "10.8.0.0 255.255.255.0",
    dns: tuple[str, ...] = DEFAULT_DNS,
    path_prefix: str = SERVER_DIR,
    status_path: str = STATUS_PATH,
    management_path: str = MANAGEMENT_PATH,
) -> str:
    """``server.conf`` for ``openvpn-server@server``; ``path_prefix`` relocates the files (tests)."""
    _check_port_proto(port, proto)
    network = _parse_subnet(subnet)
    for path in (path_prefix, status_path, management_path):
        if not _PATH.fullmatch(path):
            raise ValueError("paths must be absolute and contain only letters, digits and ./_-")
    prefix = path_prefix.rstrip("/")
    lines = [
        f"# OpenVPN server {pki.server_name}, written by provisioner; edits are overwritten.",
        f"port {port}",
        f"proto {proto}",
        "dev tun",
        "topology subnet",
        f"server {network.network_address} {network.netmask}",
        f"ca {prefix}/ca.crt",
        f"cert {prefix}/server.crt",
        f"key {prefix}/server.key",
        "dh none",
        f"tls-crypt {prefix}/tls-crypt.key",
        f"crl-verify {prefix}/crl.pem",
        "remote-cert-tls client",
        "verify-client-cert require",
        f"data-ciphers {DATA_CIPHERS}",
        "auth SHA256",
        "tls-version-min 1.2",
        "allow-compression no",
        'push "redirect-gateway def1 bypass-dhcp"',
        *(f'push "dhcp-option DNS {ip_address(server)}"' for server in dns),
        "keepalive 10 120",
        "persist-key",
        "persist-tun",
        "user nobody",
        "group nogroup",
        f"status {status_path}",
        # Created before the privilege drop, owned by root; only root may connect.
        f"management {management_path} unix",
        "management-client-user root",
        "verb 3",
    ]
    if proto == "udp":
        lines.append("explicit-exit-notify 1")
    return "\n".join(lines) + "\n"


def server_files(pki: ServerPKI) -> dict[str, bytes]:
    """What the server needs besides ``server.conf``; never the CA key or the client key."""
    return {
        "ca.crt": pki.ca_cert_pem,
        "server.crt": pki.server_cert_pem,
        "server.key": pki.server_key_pem,
        "tls-crypt.key": pki.tls_crypt_key,
        "crl.pem": pki.crl_pem,
    }


def render_client_ovpn(pki: ServerPKI, dns_name: str, *, port: int = 1194, proto: str = "udp") -> bytes:
    """The first device's ``.ovpn``: the single profile every server had before devices."""
    return render_device_ovpn(pki, FIRST_DEVICE_ID, dns_name, port=port, proto=proto)


def render_device_ovpn(
    pki: ServerPKI, device_id: str, dns_name: str, *, port: int = 1194, proto: str = "udp"
) -> bytes:
    """A device's ``.ovpn`` (a secret: it holds the device's key). Same inputs, same bytes.

    Raises DeviceNotFound or DeviceRevoked (a revoked device's key is gone).
    """
    device = active_device(pki, device_id)
    _check_port_proto(port, proto)
    check_host_name(dns_name)
    lines = [
        "client",
        "dev tun",
        f"proto {proto}",
        f"remote {dns_name} {port}",
        "resolv-retry infinite",
        "nobind",
        "persist-key",
        "persist-tun",
        "remote-cert-tls server",
        f"verify-x509-name {pki.server_cn} name",
        f"data-ciphers {DATA_CIPHERS}",
        "auth SHA256",
        "tls-version-min 1.2",
        "auth-nocache",
        "ignore-unknown-option block-outside-dns",
        "setenv opt block-outside-dns",
        "verb 3",
    ]
    text = "\n".join(lines) + "\n"
    for tag, body in (
        ("ca", pki.ca_cert_pem),
        ("cert", device.cert_pem),
        ("key", device.key_pem),
        ("tls-crypt", pki.tls_crypt_key),
    ):
        text += f"<{tag}>\n{body.decode('ascii').strip()}\n</{tag}>\n"
    return text.encode("ascii")


def validate_ovpn(data: bytes) -> None:
    """Raise InvalidOvpn unless ``data`` has a remote and usable ca/cert/key/tls-crypt blocks."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise InvalidOvpn(".ovpn is not ASCII text") from None
    if not re.search(r"^remote \S+ \d+$", text, re.MULTILINE):
        raise InvalidOvpn(".ovpn has no 'remote <host> <port>' line")
    blocks: dict[str, bytes] = {}
    for tag in _BLOCKS:
        found = re.findall(rf"^<{re.escape(tag)}>\n(.*?)^</{re.escape(tag)}>$", text, re.MULTILINE | re.DOTALL)
        if len(found) != 1 or not found[0].strip():
            raise InvalidOvpn(f".ovpn needs exactly one non-empty <{tag}> block")
        blocks[tag] = found[0].encode("ascii")
    if b"PRIVATE KEY" in blocks["cert"]:
        raise InvalidOvpn(".ovpn <cert> block must hold the certificate only")
    try:
        ca = x509.load_pem_x509_certificate(blocks["ca"])
        cert = x509.load_pem_x509_certificate(blocks["cert"])
        key = serialization.load_pem_private_key(blocks["key"], password=None)
    except (ValueError, TypeError):
        raise InvalidOvpn(".ovpn has an unreadable certificate or key block") from None
    if cert.public_key() != key.public_key():
        raise InvalidOvpn(".ovpn client key does not match its certificate")
    if cert.issuer != ca.subject:
        raise InvalidOvpn(".ovpn client certificate is not issued by its <ca>")
    try:
        check_tls_crypt_key(blocks["tls-crypt"])
    except PKIFormatError as exc:
        raise InvalidOvpn(f".ovpn {exc}") from None


def install_script() -> bytes:
    """``install.sh``: idempotent installer run as root on the server (Debian 12, Ubuntu 24.04)."""
    return resources.files("provisioner.vpn").joinpath("install.sh").read_bytes()


def _check_port_proto(port: int, proto: str) -> None:
    check_port(port)
    if proto not in ("udp", "tcp"):
        raise ValueError("proto must be 'udp' or 'tcp'")


def _parse_subnet(subnet: str) -> ipaddress.IPv4Network:
    try:
        address, mask = subnet.split()
        return ipaddress.IPv4Network(f"{address}/{mask}")
    except ValueError:
        raise ValueError("subnet must be '<network> <netmask>', e.g. '10.8.0.0 255.255.255.0'") from None
