"""What OpenVPN and WireGuard share about a customer's devices: ids, names and errors.

A device is one profile (an OpenVPN client certificate, a WireGuard peer) that a customer can
revoke without touching the others. Its id is stable for the life of the server and never
reused, so a revoked device cannot come back under another name; the same id names the
device's OpenVPN certificate and its WireGuard peer when a product offers both (the caller
passes the id it got from one to the other). Ids and names never carry key material, so the
errors below may quote them.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

MAX_NAME_CHARS = 40
# Ids land in certificate CNs, file comments and command lines: keep them to a safe alphabet.
# Always fullmatch: "$" would accept a trailing newline.
_DEVICE_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")


class DeviceError(ValueError):
    """A device request that cannot be carried out (the message names no key material)."""


class DeviceNotFound(DeviceError):
    """No device with that id on this server."""


class DeviceRevoked(DeviceError):
    """The device was revoked: it has no profile any more."""


class DeviceConflict(DeviceError):
    """The id or the name is already taken on this server."""


def check_device_id(device_id: str) -> str:
    if not isinstance(device_id, str) or not _DEVICE_ID.fullmatch(device_id):
        raise DeviceError("a device id is 1-40 characters of a-z, 0-9, '_' or '-', starting with a letter or digit")
    return device_id


def normalize_device_name(name: str) -> str:
    """The name as stored: NFC, trimmed; 1-40 printable characters (any script), or DeviceError."""
    if not isinstance(name, str):
        raise DeviceError("a device name must be text")
    cleaned = unicodedata.normalize("NFC", name).strip()
    if not 1 <= len(cleaned) <= MAX_NAME_CHARS or not cleaned.isprintable():
        raise DeviceError(f"a device name is 1-{MAX_NAME_CHARS} printable characters, without line breaks")
    return cleaned


def next_device_id(used: Iterable[str]) -> str:
    """One more than the highest numeric id ever used (revoked devices count: ids are never reused)."""
    numbers = [int(i) for i in used if i.isdigit()]
    return str(max(numbers, default=0) + 1)


def check_new_device(device_id: str, name: str, devices: Iterable[tuple[str, str, bool]]) -> None:
    """Refuse an id used before or a name an active device has (case-insensitively).

    ``devices`` gives (id, name, active) for every device the server ever had.
    """
    folded = name.casefold()
    for existing_id, existing_name, active in devices:
        if existing_id == device_id:
            raise DeviceConflict(f"device id {device_id!r} is already used on this server")
        if active and existing_name.casefold() == folded:
            raise DeviceConflict(f"a device named {name!r} already exists")
