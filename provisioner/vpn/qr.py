"""A device's WireGuard ``.conf`` as a QR code in SVG, for the WireGuard apps' "scan from QR code".

Rendered locally with ``segno`` (pure Python); the profile is never sent to a QR service. The
SVG holds the device's private key just as the ``.conf`` does: serve it like the file
(authenticated, ``Cache-Control: no-store``), never log it. It is accessible: ``role="img"``
with a ``<title>`` and a ``<desc>`` that ``aria-labelledby`` points at, dark modules on a
white quiet zone so it scans on a dark page too, and a ``viewBox`` so the page can size it.
"""

from __future__ import annotations

import io
import re
import xml.etree.ElementTree as ET

import segno

SVG_NS = "http://www.w3.org/2000/svg"
_SVG_ID = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")


def render_qr_svg(data: bytes, *, title: str, description: str, svg_id: str = "wg-qr") -> str:
    """The SVG element (no XML declaration, ready to inline) encoding ``data`` as one QR code.

    ``svg_id`` prefixes the element ids; give each code on one page its own.
    """
    if not _SVG_ID.fullmatch(svg_id):
        raise ValueError("svg_id must be a letter followed by up to 63 letters, digits, '_' or '-'")
    # Medium error correction survives a scratched or glossy screen; the code stays small
    # enough (about version 12 for a .conf) for any phone camera.
    code = segno.make_qr(data, error="m", boost_error=False)
    out = io.BytesIO()
    code.save(out, kind="svg", border=4, dark="#000", light="#fff", omitsize=True, xmldecl=False,
              svgclass=None, lineclass=None, title=title, desc=description)
    ET.register_namespace("", SVG_NS)
    root = ET.fromstring(out.getvalue())  # noqa: S314 - segno's own output, not outside input
    root.set("id", svg_id)
    root.set("role", "img")
    root.set("aria-labelledby", f"{svg_id}-title {svg_id}-desc")
    for tag in ("title", "desc"):
        element = root.find(f"{{{SVG_NS}}}{tag}")
        if element is None:
            raise RuntimeError(f"segno wrote no <{tag}>")
        element.set("id", f"{svg_id}-{tag}")
    return ET.tostring(root, encoding="unicode")
