"""SIMULATOR ONLY: configuration of the sandbox (simulated Vultr + Cloudflare + admin API)."""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass, field
from typing import Any

DEFAULT_VULTR_KEY = "sandbox-vultr-token"
DEFAULT_CLOUDFLARE_TOKEN = "sandbox-cloudflare-token"  # noqa: S105 - public sandbox token
DEFAULT_ZONE_ID = "5a7d0c1e2b3f4a5b6c7d8e9f0a1b2c3d"
DEFAULT_ZONE_NAME = "vpn.example.test"


@dataclass(frozen=True)
class SandboxConfig:
    host: str = "127.0.0.1"
    vultr_port: int = 0  # 0 = any free port
    cloudflare_port: int = 0
    admin_port: int = 0
    state_file: str | None = None  # None = in memory only
    boot_seconds: float = 5.0
    snapshot_seconds: float = 3.0
    ip_pool: str = "127.77.0.0/16"
    vultr_api_keys: tuple[str, ...] = field(default=(DEFAULT_VULTR_KEY,), repr=False)
    cloudflare_tokens: tuple[str, ...] = field(default=(DEFAULT_CLOUDFLARE_TOKEN,), repr=False)
    zone_id: str = DEFAULT_ZONE_ID
    zone_name: str = DEFAULT_ZONE_NAME
    # Simulated traffic of a running instance, bytes per second each way.
    bandwidth_in_per_second: float = 20_000.0
    bandwidth_out_per_second: float = 80_000.0
    cloudflare_limit: int = 1200  # requests per window per token; 0 = unlimited
    cloudflare_window_seconds: float = 300.0
    seed: int = 0
    faults: dict[str, Any] | None = None  # a fault document, see faults.py
    call_log_limit: int = 10_000
    tick_seconds: float = 0.1
    smtp_port: int | None = None  # the mail catcher's port (0 = any free one); None = no mail catcher

    def __post_init__(self) -> None:
        if not ipaddress.ip_address(self.host).is_loopback:
            raise ValueError(f"sandbox host must be a loopback address, not {self.host}")
        pool = ipaddress.ip_network(self.ip_pool, strict=False)
        if not pool.subnet_of(ipaddress.ip_network("127.0.0.0/8")) or pool.num_addresses < 4:  # type: ignore[arg-type]
            raise ValueError(f"ip_pool must be a loopback network with room for hosts, not {self.ip_pool}")
        if self.boot_seconds < 0 or self.snapshot_seconds < 0 or self.tick_seconds <= 0:
            raise ValueError("boot_seconds/snapshot_seconds must be >= 0 and tick_seconds > 0")
        if self.cloudflare_limit < 0 or self.cloudflare_window_seconds <= 0 or self.call_log_limit < 1:
            raise ValueError("cloudflare_limit must be >= 0, cloudflare_window_seconds > 0 and call_log_limit >= 1")

    def replace(self, **changes: Any) -> SandboxConfig:
        return dataclasses.replace(self, **changes)


def config_from_settings(settings: Any, **overrides: Any) -> SandboxConfig:
    """A sandbox matching the worker's settings (keys, zone, ports, boot time, pool)."""
    sb, vultr, cf = settings.sandbox, settings.vultr, settings.cloudflare
    values: dict[str, Any] = {
        "vultr_port": sb.vultr_port, "cloudflare_port": sb.cloudflare_port, "admin_port": sb.admin_port,
        "state_file": sb.state_file or None, "boot_seconds": sb.boot_seconds, "ip_pool": sb.ip_pool,
        "vultr_api_keys": (vultr.api_key,), "cloudflare_tokens": (cf.api_token,),
        "zone_id": cf.zone_id, "zone_name": cf.domain, "smtp_port": sb.smtp_port or None,
    }
    values.update(overrides)
    return SandboxConfig(**values)
