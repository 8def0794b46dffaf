"""SIMULATED SSH hosts: what ``install.sh`` does to a host's disk, and what sshd makes of it.

The simulator's own reading of the product's scripts, written from their documented contract
(``install.sh``'s header), never with the product's parsers: the host's disk is a directory
(:class:`Disk`), and each command checks its uploads the way the real script does, changes
the disk, and answers ``(stdout, stderr, exit status)``; success ends with ``OK``::

    install [openvpn] [wireguard]   the uploads of each protocol present and non-empty (OpenVPN:
                                    server.conf with ca/cert/key/tls-crypt/crl-verify); copied to
                                    /etc/openvpn/server/ and /etc/wireguard/wg0.conf
    update-crl [CN...]              OpenVPN installed; the uploaded crl.pem is a CRL signed by the
                                    installed ca.crt and its number is not older than the
                                    installed one's; copied; "disconnected CN" for each name
    update-peers                    WireGuard installed; the upload's "# revision: N" not older
    update-ssh password|key-only    customer_keys holds plain public key lines; root's
                                    authorized_keys gets them between marker lines (what was
                                    there before, e.g. the worker's key, stays); the sshd
                                    drop-in says whether the root password logs in

sshd's side (:func:`authorized_keys`, :func:`password_login`): keys from root's
authorized_keys, else from the user_data (what cloud-init would have written); password
login for root only when the first ``PasswordAuthentication`` and ``PermitRootLogin`` read
from ``/etc/ssh/sshd_config.d/*.conf`` (in name order, as sshd reads them) allow it, else as
the user_data's ``ssh_pwauth`` says (``PermitRootLogin`` defaults to prohibit-password).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

INSTALL_DIR = "/root/provisioner"
OPENVPN_FILES = ("server.conf", "ca.crt", "server.crt", "server.key", "tls-crypt.key", "crl.pem")
CONF_DIRECTIVES = ("ca", "cert", "key", "tls-crypt", "crl-verify")
OPENVPN_DIR = "/etc/openvpn/server"
WIREGUARD_CONF = "/etc/wireguard/wg0.conf"
INSTALLED_MARKER = "/var/lib/provisioner/installed"
AUTHORIZED_KEYS = "/root/.ssh/authorized_keys"
SSHD_DROPINS = "/etc/ssh/sshd_config.d"
SSHD_DROPIN = f"{SSHD_DROPINS}/10-provisioner.conf"
KEYS_BEGIN = "# provisioner: the customer's keys (managed; changes here are overwritten)"
KEYS_END = "# provisioner: end of the customer's keys"
OK = b"provisioner-install: ok\n"
_KEY_LINE = re.compile(
    r"(ssh-ed25519|ecdsa-sha2-nistp(?:256|384|521)|ssh-rsa) [A-Za-z0-9+/]+={0,3}( [^\x00-\x1f\x7f]*)?")
_REVISION = re.compile(r"^# revision: (\d+)$", re.MULTILINE)

Answer = tuple[bytes, bytes, int]


def local_path(host_dir: Path, remote: str) -> Path | None:
    """Where ``remote`` lives inside the host dir, or None for a path that tries to leave it."""
    full = remote if remote.startswith("/") else f"/root/{remote}"
    parts = [p for p in full.split("/") if p not in ("", ".")]
    if ".." in parts:
        return None
    path = host_dir.joinpath(*parts)
    # a symlink someone placed from outside still never leads out of the host dir
    return path if path.resolve().is_relative_to(host_dir.resolve()) else None


class Disk:
    """A host's disk: remote absolute paths inside ``root``; relative ones under /root."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, remote: str) -> Path:
        path = local_path(self.root, remote)
        if path is None:
            raise PermissionError(f"{remote}: refused, outside the host")
        return path

    def read(self, remote: str) -> bytes | None:
        path = self.path(remote)
        return path.read_bytes() if path.is_file() else None

    def write(self, remote: str, data: bytes, mode: int = 0o644) -> None:
        path = self.path(remote)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(mode)

    def upload(self, name: str) -> bytes | None:
        return self.read(f"{INSTALL_DIR}/{name}")


def _fail(*problems: str) -> Answer:
    return b"", "".join(f"provisioner-install: {p}\n" for p in problems).encode(), 1


def _missing(disk: Disk, names: Sequence[str]) -> list[str]:
    problems = []
    for name in names:
        data = disk.upload(name)
        if data is None:
            problems.append(f"missing {INSTALL_DIR}/{name}")
        elif not data:
            problems.append(f"empty {INSTALL_DIR}/{name}")
    return problems


def install(disk: Disk, protocols: Sequence[str]) -> Answer:
    if not protocols or set(protocols) - {"openvpn", "wireguard"}:
        return _fail(f"unknown protocol in {' '.join(protocols) or '(none)'} (openvpn or wireguard)")
    problems = []
    if "openvpn" in protocols:
        problems += _missing(disk, ("install.sh", *OPENVPN_FILES))
        conf = disk.upload("server.conf")
        if conf:
            words = {line.split()[0] for line in conf.decode(errors="replace").splitlines() if line.split()}
            problems += [f"{INSTALL_DIR}/server.conf has no {d!r} directive" for d in CONF_DIRECTIVES if d not in words]
    if "wireguard" in protocols:
        problems += _missing(disk, ("wg0.conf",))
    if problems:
        return _fail(*problems)
    if "openvpn" in protocols:
        for name in OPENVPN_FILES:
            disk.write(f"{OPENVPN_DIR}/{name}", disk.upload(name) or b"", 0o600 if name.endswith(".key") else 0o644)
    if "wireguard" in protocols:
        disk.write(WIREGUARD_CONF, disk.upload("wg0.conf") or b"", 0o600)
    disk.write(INSTALLED_MARKER, b"installed by the simulated install.sh\n")
    return OK, b"", 0


def update_crl(disk: Disk, names: Sequence[str]) -> Answer:
    installed, ca = disk.read(f"{OPENVPN_DIR}/crl.pem"), disk.read(f"{OPENVPN_DIR}/ca.crt")
    if not installed or not ca:
        return _fail("error: OpenVPN is not installed here; run install first")
    upload = disk.upload("crl.pem")
    if not upload:
        return _fail(f"error: missing or empty upload {INSTALL_DIR}/crl.pem")
    try:
        new, old, issuer = x509.load_pem_x509_crl(upload), x509.load_pem_x509_crl(installed), \
            x509.load_pem_x509_certificate(ca)
        public = issuer.public_key()
        signed = isinstance(public, ec.EllipticCurvePublicKey) and new.issuer == issuer.subject \
            and new.is_signature_valid(public)
    except ValueError:
        signed = False
    if not signed:
        return _fail("error: crl.pem is not a CRL signed by this server's CA")
    if _crl_number(new) < _crl_number(old):
        return _fail(f"error: crl.pem number {_crl_number(new)} is older than the installed {_crl_number(old)}")
    disk.write(f"{OPENVPN_DIR}/crl.pem", upload)
    disk.path(f"{INSTALL_DIR}/crl.pem").unlink()
    said = "".join(f"provisioner-install: disconnected {name}: (simulated)\n" for name in names)
    return said.encode() + OK, b"", 0


def _crl_number(crl: x509.CertificateRevocationList) -> int:
    try:
        return int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
    except x509.ExtensionNotFound:
        return 0


def update_peers(disk: Disk) -> Answer:
    installed, upload = disk.read(WIREGUARD_CONF), disk.upload("wg0.conf")
    if not installed:
        return _fail("error: WireGuard is not installed here; run install first")
    if not upload:
        return _fail(f"error: missing or empty upload {INSTALL_DIR}/wg0.conf")
    new, old = _revision(upload), _revision(installed)
    if new < old:
        return _fail(f"error: wg0.conf revision {new} is older than the installed {old}")
    disk.write(WIREGUARD_CONF, upload, 0o600)
    disk.path(f"{INSTALL_DIR}/wg0.conf").unlink()
    return OK, b"", 0


def _revision(conf: bytes) -> int:
    found = _REVISION.search(conf.decode(errors="replace"))
    return int(found.group(1)) if found else 0


def update_ssh(disk: Disk, mode: str, user_data_keys: Sequence[str]) -> Answer:
    if mode not in ("password", "key-only"):
        return _fail("error: update-ssh needs 'password' or 'key-only'")
    upload = disk.upload("customer_keys")
    if upload is None:
        return _fail(f"error: missing upload {INSTALL_DIR}/customer_keys")
    lines = upload.decode(errors="replace").splitlines()
    if not all(_KEY_LINE.fullmatch(line) for line in lines):
        return _fail("error: customer_keys holds a line that is not one plain public key")
    current = disk.read(AUTHORIZED_KEYS)
    before = current.decode().splitlines() if current is not None else list(user_data_keys)
    kept, managed = [], False
    for line in before:
        if line == KEYS_BEGIN:
            managed = True
        elif line == KEYS_END:
            managed = False
        elif not managed:
            kept.append(line)
    block = [KEYS_BEGIN, *lines, KEYS_END] if lines else []
    disk.write(AUTHORIZED_KEYS, "".join(f"{line}\n" for line in kept + block).encode(), 0o600)
    allow = "yes" if mode == "password" else "no"
    root = "yes" if mode == "password" else "prohibit-password"
    disk.write(SSHD_DROPIN, f"PermitRootLogin {root}\nPasswordAuthentication {allow}\n".encode())
    disk.path(f"{INSTALL_DIR}/customer_keys").unlink()
    return OK, b"", 0


def authorized_keys(disk: Disk, user_data_keys: Sequence[str]) -> set[tuple[str, str]]:
    """(type, base64) pairs sshd accepts for root."""
    current = disk.read(AUTHORIZED_KEYS)
    lines = current.decode(errors="replace").splitlines() if current is not None else list(user_data_keys)
    return {tuple(line.split()[:2]) for line in lines  # type: ignore[misc]
            if line.strip() and not line.startswith("#") and len(line.split()) >= 2}


def password_login(disk: Disk, ssh_pwauth: bool) -> bool:
    """Whether sshd lets root log in with a password."""
    settings: dict[str, str] = {}
    folder = disk.path(SSHD_DROPINS)
    for conf in sorted(folder.glob("*.conf")) if folder.is_dir() else []:
        for line in conf.read_text(errors="replace").splitlines():
            words = line.split()
            if len(words) >= 2 and not words[0].startswith("#"):
                settings.setdefault(words[0].lower(), words[1].lower())   # the first value read wins
    password = settings.get("passwordauthentication", "yes" if ssh_pwauth else "no") == "yes"
    return password and settings.get("permitrootlogin", "prohibit-password") == "yes"
