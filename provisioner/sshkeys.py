"""Which SSH public keys a customer may put on their server, one rule: :func:`parse`.

Accepted: ``ssh-ed25519``; ``ecdsa-sha2-nistp256/384/521``; ``ssh-rsa`` of 3072 to 16384 bits
(shorter RSA keys are within reach of a determined attacker, longer ones are pointless and
slow). One key per request, as an OpenSSH ``authorized_keys`` line without options
(``command="…"`` and friends would let a pasted line change what the key may do). The
comment is kept (it names the key on the page) if it is printable and at most
:data:`MAX_COMMENT_CHARS` long. At most :data:`MAX_KEYS_PER_SERVER` keys per server.

Every refusal is a :class:`KeyRefused` whose message is written for the customer and never
quotes the input: a customer who pastes their *private* key by mistake must not see it echoed
into an error, a log line or an audit event.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import unicodedata
from dataclasses import dataclass

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

MAX_KEYS_PER_SERVER = 10
MAX_KEY_CHARS = 4096          # a 16384-bit RSA key is ~2.8 kB as one line
MAX_COMMENT_CHARS = 100
MIN_RSA_BITS, MAX_RSA_BITS = 3072, 16384
TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "ssh-rsa")
_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,3}")


class KeyRefused(ValueError):  # noqa: N818 - a verdict for the customer, not a bug
    """The text is not a public key we accept; the message never quotes it."""


@dataclass(frozen=True)
class PublicKey:
    key_type: str
    blob: str          # base64, as in the authorized_keys line
    comment: str
    bits: int

    @property
    def fingerprint(self) -> str:
        """``SHA256:<base64>``, as ``ssh-keygen -l`` prints it."""
        digest = hashlib.sha256(base64.b64decode(self.blob)).digest()
        return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")

    @property
    def line(self) -> str:
        """The ``authorized_keys`` line: type, key and the comment (if any)."""
        return " ".join(part for part in (self.key_type, self.blob, self.comment) if part)


def parse(text: str) -> PublicKey:
    """One OpenSSH public key line, checked; or :class:`KeyRefused` saying why not."""
    if not isinstance(text, str) or not text.strip():
        raise KeyRefused("Paste one public key, e.g. the contents of ~/.ssh/id_ed25519.pub.")
    if "PRIVATE KEY" in text:
        raise KeyRefused("This is a private key. Never share it: paste the public key (the .pub file) instead.")
    if len(text) > MAX_KEY_CHARS:
        raise KeyRefused(f"A public key is at most {MAX_KEY_CHARS} characters long.")
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if len(lines) != 1:
        raise KeyRefused("Add one key at a time (one line).")
    parts = lines[0].split(None, 2)
    if parts[0] not in TYPES:
        if len(parts) > 1 and parts[1] in TYPES or "=" in parts[0] or "," in parts[0]:
            raise KeyRefused("Key options (such as command=) are not allowed; paste the plain public key.")
        raise KeyRefused("Only ssh-ed25519, ecdsa-sha2-nistp256/384/521 and ssh-rsa (3072 bits or more) keys "
                         "are accepted.")
    if len(parts) < 2 or not _BASE64.fullmatch(parts[1]):
        raise KeyRefused("The key is incomplete: after its type comes the key itself in base64.")
    key_type, blob = parts[0], parts[1]
    comment = _comment(parts[2] if len(parts) > 2 else "")
    bits = _check_key(key_type, blob)
    return PublicKey(key_type=key_type, blob=blob, comment=comment, bits=bits)


def _comment(raw: str) -> str:
    comment = unicodedata.normalize("NFC", raw.strip())
    if len(comment) > MAX_COMMENT_CHARS:
        raise KeyRefused(f"The key's comment (after the key) is at most {MAX_COMMENT_CHARS} characters long.")
    if comment and not comment.isprintable():
        raise KeyRefused("The key's comment holds characters that cannot be shown.")
    return comment


def _check_key(key_type: str, blob: str) -> int:
    try:
        raw = base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError):
        raise KeyRefused("The key is not valid base64; copy the whole line from the .pub file.") from None
    if _inner_type(raw) != key_type:
        raise KeyRefused("The key does not match its type; copy the whole line from the .pub file.")
    try:
        key = serialization.load_ssh_public_key(f"{key_type} {blob}".encode("ascii"))
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise KeyRefused("The key is damaged; copy the whole line from the .pub file.") from None
    if isinstance(key, ed25519.Ed25519PublicKey):
        return 256
    if isinstance(key, ec.EllipticCurvePublicKey):
        return key.curve.key_size
    if isinstance(key, rsa.RSAPublicKey):
        if not MIN_RSA_BITS <= key.key_size <= MAX_RSA_BITS:
            raise KeyRefused(f"This RSA key has {key.key_size} bits; RSA keys need {MIN_RSA_BITS} to "
                             f"{MAX_RSA_BITS} bits (or use ssh-ed25519).")
        return key.key_size
    raise KeyRefused("Only ssh-ed25519, ecdsa and ssh-rsa keys are accepted.")


def _inner_type(raw: bytes) -> str:
    """The key type written inside the blob (its first SSH string)."""
    if len(raw) < 4:
        return ""
    size = int.from_bytes(raw[:4], "big")
    return raw[4:4 + size].decode("ascii", "replace") if size <= 64 else ""
