"""The envelope the stored VPN states share: canonical JSON naming its format and version.

Canonical (sorted keys, no spaces, ASCII) so the same state always gives the same bytes.
Errors name what was being read, never its contents: the documents hold private keys.
"""

from __future__ import annotations

import json
from typing import Any


def dump(fmt: str, version: int, body: dict[str, Any]) -> bytes:
    doc = {**body, "format": fmt, "version": version}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("ascii")


def load(
    data: bytes, fmt: str, versions: tuple[int, ...], error: type[ValueError], what: str
) -> tuple[dict[str, Any], int]:
    """The document and its version, or ``error`` when it is not JSON of that format and a known version."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise error(f"{what} is not JSON") from None
    if not isinstance(doc, dict) or doc.get("format") != fmt:
        raise error(f"{what} is not in the {fmt!r} format")
    version = doc.get("version")
    if version not in versions:
        raise error(f"{what} has unsupported version {version!r}")
    return doc, version
