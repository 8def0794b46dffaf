"""Everything secret about one server, sealed as one Fernet token in ``Server.secrets_enc``:
the OpenVPN PKI (with every device's key and the CRL) and the SSH host key.

The lifecycle's ``prepare`` step makes it; the install step and the customer service
(:mod:`provisioner.customer`: devices) open it, and the latter seals it again after a change.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, replace

from provisioner.secrets import SecretBox
from provisioner.vpn import pki as vpn_pki


@dataclass
class ServerSecrets:
    pki: bytes
    host_private: str
    host_public: str

    def seal(self, box: SecretBox) -> str:
        return box.seal(json.dumps({"pki": base64.b64encode(self.pki).decode(), "host_private": self.host_private,
                                    "host_public": self.host_public}).encode())

    @classmethod
    def open(cls, box: SecretBox, token: str) -> ServerSecrets:
        d = json.loads(box.open(token))
        return cls(pki=base64.b64decode(d["pki"]), host_private=d["host_private"], host_public=d["host_public"])

    def openvpn(self) -> vpn_pki.ServerPKI:
        return vpn_pki.from_bytes(self.pki)

    def with_openvpn(self, pki: vpn_pki.ServerPKI) -> ServerSecrets:
        return replace(self, pki=vpn_pki.to_bytes(pki))

    def __repr__(self) -> str:
        return "ServerSecrets(<hidden>)"
