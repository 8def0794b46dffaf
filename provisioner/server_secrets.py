"""Everything secret about one server, sealed as one Fernet token in ``Server.secrets_enc``:
the OpenVPN PKI (with every device's key and the CRL), the SSH host key and, for a product
that offers WireGuard, the WireGuard state (the server's key pair, every device's key pair,
preshared key and tunnel addresses).

The lifecycle's ``prepare`` step makes it (``install`` adds the WireGuard state when a product
gains WireGuard later); the install step and the customer service (:mod:`provisioner.customer`:
devices) open it, and the latter seals it again after a change. It is never wiped by a rebuild
or a relocation: every device's profile stays valid, byte for byte.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from dataclasses import dataclass, replace

from provisioner.secrets import SecretBox
from provisioner.vpn import pki as vpn_pki
from provisioner.vpn import wireguard as vpn_wg


@dataclass
class ServerSecrets:
    pki: bytes
    host_private: str
    host_public: str
    wireguard: bytes | None = None   # provisioner.vpn.wireguard.to_bytes, once the product offers it

    def seal(self, box: SecretBox) -> str:
        doc = {"pki": base64.b64encode(self.pki).decode(), "host_private": self.host_private,
               "host_public": self.host_public}
        if self.wireguard is not None:
            doc["wireguard"] = base64.b64encode(self.wireguard).decode()
        return box.seal(json.dumps(doc).encode())

    @classmethod
    def open(cls, box: SecretBox, token: str) -> ServerSecrets:
        d = json.loads(box.open(token))
        wg = d.get("wireguard")
        return cls(pki=base64.b64decode(d["pki"]), host_private=d["host_private"], host_public=d["host_public"],
                   wireguard=base64.b64decode(wg) if wg else None)

    def openvpn(self) -> vpn_pki.ServerPKI:
        return vpn_pki.from_bytes(self.pki)

    def with_openvpn(self, pki: vpn_pki.ServerPKI) -> ServerSecrets:
        return replace(self, pki=vpn_pki.to_bytes(pki))

    def wg(self) -> vpn_wg.WireGuardServer | None:
        """The WireGuard state, or None while the server's product has never offered WireGuard."""
        return vpn_wg.from_bytes(self.wireguard) if self.wireguard is not None else None

    def with_wireguard(self, state: vpn_wg.WireGuardServer) -> ServerSecrets:
        return replace(self, wireguard=vpn_wg.to_bytes(state))

    def with_wireguard_peers(self, server_name: str, now: dt.datetime) -> ServerSecrets:
        """With WireGuard state holding a peer for every active device of the PKI (same id, name).

        The state is generated when there is none yet; an existing one only gains the peers it
        lacks, so nothing it has (keys, addresses) ever changes. Returns ``self`` when nothing
        was missing, so the caller re-seals only a change.
        """
        before = self.wg()
        state = before or vpn_wg.generate_server(server_name)
        known = {p.device_id for p in state.peers}
        for info in vpn_pki.list_devices(self.openvpn()):
            if info.revoked_at is None and info.device_id not in known:
                state, _ = vpn_wg.add_peer(state, info.name, device_id=info.device_id, now=now)
        return self if state is before else self.with_wireguard(state)

    def __repr__(self) -> str:
        return "ServerSecrets(<hidden>)"

