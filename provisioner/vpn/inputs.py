"""Checks for the values that the VPN renderers write into configuration files.

Each value lands on a line of a file that a VPN daemon parses, so a stray newline would be
an injected directive: every check here fullmatches (``$`` would accept a final newline).
"""

from __future__ import annotations

import ipaddress
import re

DEFAULT_DNS = ("1.1.1.1", "1.0.0.1")

_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"(?=.{{1,253}}\Z){_LABEL}(\.{_LABEL})*")


def check_host_name(name: str) -> str:
    if not isinstance(name, str) or not _HOSTNAME.fullmatch(name):
        raise ValueError("the server's name must be a plain DNS host name")
    return name


def check_port(port: int) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError("port must be 1-65535")
    return port


def ip_address(value: str) -> str:
    """``value`` as a canonical IP address, for DNS server settings."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError("DNS servers must be IP addresses") from None
