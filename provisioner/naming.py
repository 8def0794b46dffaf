"""How we name what we make at the providers: the one scheme, used by the steps that make
things and by the sweeper that finds what was left behind.

    server name           <planner.server_name_prefix><id, 3+ digits>.<cloudflare.domain>   g0007.vpn.example.com
    instance label        <vultr.label_prefix>-<server id>-g<generation>                   prov-7-g2
    snapshot description  <vultr.label_prefix>-<server id>-snapshot                        prov-7-snapshot

Labels are deterministic so a create whose reply was lost is found again by its label
(and adopted) instead of being made twice.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from provisioner.settings.schema import Settings


@dataclass(frozen=True)
class Names:
    label_prefix: str          # vultr.label_prefix
    server_name_prefix: str    # planner.server_name_prefix
    domain: str                # cloudflare.domain

    def server_name(self, server_id: int) -> str:
        return f"{self.server_name_prefix}{server_id:03d}.{self.domain}"

    def instance_label(self, server_id: int, generation: int) -> str:
        return f"{self.label_prefix}-{server_id}-g{generation}"

    def snapshot_description(self, server_id: int) -> str:
        return f"{self.label_prefix}-{server_id}-snapshot"

    def is_servers_instance(self, label: str, server_id: int) -> bool:
        """Whether an instance label belongs to this server (any generation)."""
        return self.server_of_instance(label) == server_id

    def server_of_instance(self, label: str) -> int | None:
        m = re.fullmatch(rf"{re.escape(self.label_prefix)}-(\d+)-g\d+", label)
        return int(m.group(1)) if m else None

    def server_of_snapshot(self, description: str) -> int | None:
        m = re.fullmatch(rf"{re.escape(self.label_prefix)}-(\d+)-snapshot", description)
        return int(m.group(1)) if m else None

    def is_ours_snapshot(self, description: str) -> bool:
        return description.startswith(f"{self.label_prefix}-")

    def is_server_name(self, name: str) -> bool:
        """A DNS name we could have made (never anything else under the shop's domain)."""
        domain = self.domain.lower().rstrip(".")
        return re.fullmatch(rf"{re.escape(self.server_name_prefix)}\d+\.{re.escape(domain)}", name.lower()) is not None

    def short(self, name: str) -> str:
        """``g0007`` for ``g0007.vpn.example.com``."""
        return name.removesuffix("." + self.domain)


def names(settings: Settings) -> Names:
    return Names(label_prefix=settings.vultr.label_prefix, server_name_prefix=settings.planner.server_name_prefix,
                 domain=settings.cloudflare.domain)
