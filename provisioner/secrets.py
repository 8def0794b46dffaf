"""Encryption at rest for everything secret the worker stores (Fernet, with key rotation).

Root passwords, the PKI of each server, its SSH host key and the customer's ``.ovpn`` are
stored only as Fernet tokens. The keys live outside the database (settings
``secrets.fernet_keys``, normally from a systemd credential). The first key encrypts;
every key decrypts, so rotating is: put the new key first, run
``provisioner secrets rotate``, then drop the old key.
"""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken, MultiFernet


class SecretKeyError(ValueError):
    """A configured Fernet key is malformed (the key itself is never shown)."""


class UndecryptableSecret(RuntimeError):
    """A stored secret cannot be decrypted with any configured key."""


class SecretBox:
    def __init__(self, keys: list[str]) -> None:
        if not keys:
            raise SecretKeyError("no Fernet key configured")
        fernets = []
        for i, key in enumerate(keys):
            try:
                fernets.append(Fernet(key.encode("ascii")))
            except (ValueError, UnicodeEncodeError):
                raise SecretKeyError(
                    f"Fernet key #{i + 1} is not a 32-byte url-safe base64 key; make one with `provisioner keygen`"
                ) from None
        self._multi = MultiFernet(fernets)
        self._primary = fernets[0]
        self.key_count = len(fernets)

    def __repr__(self) -> str:
        return "SecretBox(<keys hidden>)"

    def seal(self, plaintext: bytes) -> str:
        return self._multi.encrypt(plaintext).decode("ascii")

    def open(self, token: str) -> bytes:
        try:
            return self._multi.decrypt(token.encode("ascii"))
        except (InvalidToken, UnicodeEncodeError):
            raise UndecryptableSecret("a stored secret cannot be decrypted with the configured keys") from None

    def rotate(self, token: str) -> str:
        try:
            return self._multi.rotate(token.encode("ascii")).decode("ascii")
        except (InvalidToken, UnicodeEncodeError):
            raise UndecryptableSecret("a stored secret cannot be decrypted with the configured keys") from None


    def sealed_with_primary(self, token: str) -> bool:
        """Whether the first key alone opens ``token`` (after a rotation, every token does)."""
        try:
            self._primary.decrypt(token.encode("ascii"))
        except (InvalidToken, UnicodeEncodeError):
            return False
        return True


def generate_key() -> str:
    return Fernet.generate_key().decode("ascii")
