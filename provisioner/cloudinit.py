"""SSH keys for new servers and the ``#cloud-config`` user_data that installs them.

Every server gets a host key generated here, before the instance exists. The private half
travels to the VPS in user_data (cloud-init ``cc_ssh``: ``ssh_keys``), the public half is the
pin the worker's SSH adapter checks on every connection. No trust-on-first-use.

The document is written in one fixed, regular shape, and :func:`parse_user_data` accepts that
shape and nothing else (no YAML library needed at runtime)::

    #cloud-config
    hostname: "<lower-case host name or FQDN>"
    ssh_deletekeys: true
    ssh_genkeytypes: []
    ssh_keys:
      ed25519_private: |
        -----BEGIN OPENSSH PRIVATE KEY-----
        <base64 lines>
        -----END OPENSSH PRIVATE KEY-----
      ed25519_public: "ssh-ed25519 AAAA..."
    disable_root: false
    ssh_pwauth: false
    ssh_authorized_keys:
      - "<key type> <base64> [comment]"
    package_upgrade: false

``disable_root: false`` makes cc_ssh give root the ``ssh_authorized_keys`` without the
"please log in as ..." forced command. Errors: :class:`UserDataError` (a ``ValueError``);
its message names the line number and what was expected, never the line's content.
The user_data holds a private key: treat the whole document as a secret.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass, field
from typing import Self

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

_PEM_BEGIN = "-----BEGIN OPENSSH PRIVATE KEY-----"
_PEM_END = "-----END OPENSSH PRIVATE KEY-----"
_B64_LINE = re.compile(r"[A-Za-z0-9+/]+=*")
_ED25519_PUBLIC = re.compile(r"ssh-ed25519 [A-Za-z0-9+/]+=*")
_AUTHORIZED_KEY = re.compile(
    r"(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(?:256|384|521)|sk-ssh-ed25519@openssh\.com"
    r"|sk-ecdsa-sha2-nistp256@openssh\.com) [A-Za-z0-9+/]+=*( [A-Za-z0-9@._+=:,/-]+(?: [A-Za-z0-9@._+=:,/-]+)*)?"
)
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOSTNAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*")


class UserDataError(ValueError):
    """user_data (or an input to it) is not in the one shape this module writes and reads."""


@dataclass(frozen=True, repr=False)
class SSHKeyPair:
    """An ed25519 key pair: OpenSSH PEM private text and the one-line OpenSSH public key."""

    private_pem: str = field(repr=False)
    public_line: str

    @property
    def fingerprint(self) -> str:
        """``SHA256:<base64>`` as ``ssh-keygen -l`` prints it (public, safe to log)."""
        return public_key_fingerprint(self.public_line)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.fingerprint}, private key hidden)"

    __str__ = __repr__

    @classmethod
    def from_private_pem(cls, private_pem: str, comment: str = "") -> Self:
        """Rebuild the pair from a stored private key (e.g. after decrypting it)."""
        try:
            key = serialization.load_ssh_private_key(private_pem.encode("ascii"), password=None)
        except (ValueError, TypeError, UnicodeEncodeError):
            raise UserDataError("not an unencrypted OpenSSH private key") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise UserDataError("not an ed25519 private key")
        return cls(private_pem, _public_line(key, comment))


class HostKey(SSHKeyPair):
    """A server's SSH host key; its ``public_line`` is the pin for the SSH adapter."""


class ClientKey(SSHKeyPair):
    """The worker's own SSH identity; its ``public_line`` goes into ``ssh_authorized_keys``."""


@dataclass(frozen=True, repr=False)
class ParsedUserData:
    host_private: str = field(repr=False)
    host_public: str
    authorized_keys: tuple[str, ...]
    hostname: str

    @property
    def host_key(self) -> HostKey:
        return HostKey(self.host_private, self.host_public)

    def __repr__(self) -> str:
        return (
            f"ParsedUserData(hostname={self.hostname!r}, host_public={self.host_public!r}, "
            f"authorized_keys={len(self.authorized_keys)}, host_private hidden)"
        )


def public_key_fingerprint(public_line: str) -> str:
    parts = public_line.split()
    if len(parts) < 2:
        raise UserDataError("not an OpenSSH public key line")
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except ValueError:
        raise UserDataError("OpenSSH public key line has invalid base64") from None
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")
    return f"SHA256:{digest}"


def _public_line(key: Ed25519PrivateKey, comment: str = "") -> str:
    line = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    text = line.decode("ascii")
    return f"{text} {comment}" if comment else text


def _generate(comment: str) -> tuple[str, str]:
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    ).decode("ascii")
    return private, _public_line(key, comment)


def generate_host_key() -> HostKey:
    """A fresh ed25519 host key (no comment: cloud-init writes the public line as given)."""
    return HostKey(*_generate(""))


def generate_client_key(comment: str = "provisioner-worker") -> ClientKey:
    """A fresh ed25519 identity for the worker to log in to its servers with."""
    if comment and not re.fullmatch(r"[A-Za-z0-9@._+=:,/-]+", comment):
        raise UserDataError("a key comment may hold only letters, digits and @._+=:,/-")
    return ClientKey(*_generate(comment))


def _check_private_pem(lines: list[str], where: str) -> None:
    body = lines[1:-1]
    if len(lines) < 3 or lines[0] != _PEM_BEGIN or lines[-1] != _PEM_END:
        raise UserDataError(f"{where}: expected an OpenSSH private key block")
    if not all(_B64_LINE.fullmatch(line) for line in body):
        raise UserDataError(f"{where}: the private key block holds a line that is not base64")


def render_user_data(host_key: HostKey, authorized_keys: list[str], hostname: str) -> str:
    """The ``#cloud-config`` document for a new server (first line exactly ``#cloud-config``)."""
    if not _HOSTNAME.fullmatch(hostname):
        raise UserDataError(f"hostname {hostname!r} is not a lower-case host name or FQDN")
    if not authorized_keys:
        raise UserDataError("at least one authorized key is needed, or nobody can log in")
    for i, line in enumerate(authorized_keys, 1):
        if not _AUTHORIZED_KEY.fullmatch(line):
            raise UserDataError(
                f"authorized key #{i} is not one OpenSSH public key line "
                "(type, base64, optional comment of letters, digits, spaces and @._+=:,/-)"
            )
    if not _ED25519_PUBLIC.fullmatch(host_key.public_line):
        raise UserDataError("the host key's public line must be 'ssh-ed25519 <base64>' without a comment")
    private_lines = host_key.private_pem.rstrip("\n").split("\n")
    _check_private_pem(private_lines, "host key")
    out = [
        "#cloud-config",
        f'hostname: "{hostname}"',
        "ssh_deletekeys: true",
        "ssh_genkeytypes: []",
        "ssh_keys:",
        "  ed25519_private: |",
        *(f"    {line}" for line in private_lines),
        f'  ed25519_public: "{host_key.public_line}"',
        "disable_root: false",
        "ssh_pwauth: false",
        "ssh_authorized_keys:",
        *(f'  - "{line}"' for line in authorized_keys),
        "package_upgrade: false",
    ]
    return "\n".join(out) + "\n"


class _Lines:
    """A cursor over the document's lines that reports failures by line number only."""

    def __init__(self, text: str) -> None:
        if not text.endswith("\n"):
            raise UserDataError("user_data must end with a newline")
        self._lines = text[:-1].split("\n")
        self._i = 0

    def _where(self) -> str:
        return f"user_data line {self._i + 1}"

    def exact(self, expected: str) -> None:
        if self._i >= len(self._lines) or self._lines[self._i] != expected:
            raise UserDataError(f"{self._where()}: expected {expected!r}")
        self._i += 1

    def match(self, pattern: str, what: str) -> str:
        line = self._lines[self._i] if self._i < len(self._lines) else None
        found = re.fullmatch(pattern, line) if line is not None else None
        if found is None:
            raise UserDataError(f"{self._where()}: expected {what}")
        self._i += 1
        return found.group(1)

    def indented_block(self, prefix: str) -> list[str]:
        block = []
        while self._i < len(self._lines) and self._lines[self._i].startswith(prefix):
            block.append(self._lines[self._i][len(prefix) :])
            self._i += 1
        return block

    def end(self) -> None:
        if self._i != len(self._lines):
            raise UserDataError(f"{self._where()}: expected the end of the document")


def parse_user_data(text: str) -> ParsedUserData:
    """Read back a document written by :func:`render_user_data`; anything else is rejected."""
    cur = _Lines(text)
    cur.exact("#cloud-config")
    hostname = cur.match(r'hostname: "([^"]*)"', 'hostname: "<name>"')
    if not _HOSTNAME.fullmatch(hostname):
        raise UserDataError("user_data line 2: hostname is not a lower-case host name or FQDN")
    cur.exact("ssh_deletekeys: true")
    cur.exact("ssh_genkeytypes: []")
    cur.exact("ssh_keys:")
    cur.exact("  ed25519_private: |")
    private_lines = cur.indented_block("    ")
    _check_private_pem(private_lines, "user_data ssh_keys.ed25519_private")
    host_public = cur.match(r'  ed25519_public: "(ssh-ed25519 [A-Za-z0-9+/]+=*)"', "the ed25519_public line")
    cur.exact("disable_root: false")
    cur.exact("ssh_pwauth: false")
    cur.exact("ssh_authorized_keys:")
    keys = []
    for line in cur.indented_block("  - "):
        found = re.fullmatch(r'"([^"]*)"', line)
        if found is None or not _AUTHORIZED_KEY.fullmatch(found.group(1)):
            raise UserDataError("user_data ssh_authorized_keys: an entry is not a quoted OpenSSH public key")
        keys.append(found.group(1))
    if not keys:
        raise UserDataError("user_data ssh_authorized_keys: expected at least one '  - \"<key>\"' entry")
    cur.exact("package_upgrade: false")
    cur.end()
    private_pem = "\n".join(private_lines) + "\n"
    derived = SSHKeyPair.from_private_pem(private_pem)
    if derived.public_line != host_public:
        raise UserDataError("user_data ssh_keys: ed25519_public does not belong to ed25519_private")
    return ParsedUserData(private_pem, host_public, tuple(keys), hostname)
