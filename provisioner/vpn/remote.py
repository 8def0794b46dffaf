"""What the worker sends to a server for each change: files to upload, then one command.

The SSH step does the same for every :class:`RemoteRun`: upload ``run.files`` over the pinned
connection to ``REMOTE_DIR/<name>`` (mode 0600, ``install.sh`` 0700), all of them in one tar
archive on the standard input of one command (``SSHSession.put_many``: secrets never travel on
a command line), run ``run.command`` as root, and count it a success only if
it exits 0 and the last line of its stdout is :data:`OK_MARKER`. Every run is idempotent,
so a retry after a dropped connection is always safe, and each update refuses content older
than what the server has (CRL number, peer-list revision), so a late retry never brings a
revoked device back.

===========================================  ==============================================
when                                         run
===========================================  ==============================================
create, rebuild, relocation (new instance)   ``install_run(pki=…, wireguard=…)``: the
                                             product's protocols, from the stored state
device added                                 OpenVPN: nothing (the CA vouches for it);
                                             WireGuard: ``peers_update_run(wg)``
device revoked                               ``crl_update_run(pki)`` and/or
                                             ``peers_update_run(wg)``
CRL re-issued (``reissue_crl``)              ``crl_update_run(pki)``
the customer's SSH keys or key-only login    ``ssh_access_run(keys, key_only=…)`` (also right
                                             after every install: a new instance gets them)
===========================================  ==============================================

A product offers ``["openvpn"]``, ``["wireguard"]`` or both; the protocols of an install are
those whose state is passed. OpenVPN alone runs ``bash /root/provisioner/install.sh``
exactly as before devices existed. A protocol an install does not name is left as it is.
Neither update restarts a VPN daemon: OpenVPN re-reads ``crl.pem`` on each new connection
and the update also cuts the revoked devices' open connections through the management
socket; ``wg syncconf`` removes a revoked peer at once and leaves the others' sessions alone.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from provisioner.vpn import config, wireguard
from provisioner.vpn.pki import ServerPKI, list_devices

REMOTE_DIR = "/root/provisioner"
INSTALL_SCRIPT = f"{REMOTE_DIR}/install.sh"
OK_MARKER = config.INSTALL_OK_MARKER
WIREGUARD_CONF = "wg0.conf"
CUSTOMER_KEYS = "customer_keys"
# What install.sh's update-ssh accepts: one plain public key per line (always fullmatch).
_PUBLIC_KEY_LINE = re.compile(
    r"(ssh-ed25519|ecdsa-sha2-nistp(256|384|521)|ssh-rsa) [A-Za-z0-9+/]+={0,3}( [^\x00-\x1f\x7f]*)?")


@dataclass(frozen=True, repr=False)
class RemoteRun:
    """Files (name → content) to upload to REMOTE_DIR, then ``command`` to run as root."""

    files: Mapping[str, bytes]
    argv: tuple[str, ...]
    protocols: tuple[str, ...] = field(default=())

    @property
    def command(self) -> str:
        return shlex.join(self.argv)

    def file_mode(self, name: str) -> int:
        return 0o700 if name.endswith(".sh") else 0o600

    def __repr__(self) -> str:  # the files hold keys: names and sizes only
        sizes = ", ".join(f"{name}={len(data)}B" for name, data in sorted(self.files.items()))
        return f"RemoteRun(command={self.command!r}, files=[{sizes}])"

    __str__ = __repr__


def install_run(
    *,
    pki: ServerPKI | None = None,
    wireguard_state: wireguard.WireGuardServer | None = None,
    openvpn_port: int = 1194,
    openvpn_proto: str = "udp",
    wireguard_port: int = wireguard.DEFAULT_PORT,
    dns: tuple[str, ...] = config.DEFAULT_DNS,
) -> RemoteRun:
    """Install or update the VPN daemons whose state is given (at least one)."""
    files: dict[str, bytes] = {"install.sh": config.install_script()}
    protocols: list[str] = []
    if pki is not None:
        files.update(config.server_files(pki))
        files["server.conf"] = config.render_server_conf(pki, port=openvpn_port, proto=openvpn_proto, dns=dns).encode()
        protocols.append("openvpn")
    if wireguard_state is not None:
        files[WIREGUARD_CONF] = wireguard.render_server_conf(wireguard_state, port=wireguard_port).encode()
        protocols.append("wireguard")
    if not protocols:
        raise ValueError("an install needs the OpenVPN PKI, the WireGuard state or both")
    # OpenVPN alone keeps the command every server was installed with (the sandbox expects it).
    extra = () if protocols == ["openvpn"] else ("install", *protocols)
    return RemoteRun(files=files, argv=("bash", INSTALL_SCRIPT, *extra), protocols=tuple(protocols))


def crl_update_run(pki: ServerPKI) -> RemoteRun:
    """Ship the PKI's CRL to the running server and cut off every revoked device still connected."""
    names = sorted({d.common_name for d in list_devices(pki) if d.revoked_at is not None})
    return RemoteRun(
        files={"crl.pem": pki.crl_pem, "install.sh": config.install_script()},
        argv=("bash", INSTALL_SCRIPT, "update-crl", *names),
        protocols=("openvpn",),
    )


def peers_update_run(state: wireguard.WireGuardServer, *, port: int = wireguard.DEFAULT_PORT) -> RemoteRun:
    """Ship the server's peer list to the running WireGuard (same key, port and addresses)."""
    return RemoteRun(
        files={WIREGUARD_CONF: wireguard.render_server_conf(state, port=port).encode(),
               "install.sh": config.install_script()},
        argv=("bash", INSTALL_SCRIPT, "update-peers"),
        protocols=("wireguard",),
    )


def ssh_access_run(customer_keys: Sequence[str], *, key_only: bool) -> RemoteRun:
    """Root's SSH access on the running server: the customer's public keys (besides the worker's
    own, which stays) and whether the root password logs in (``key_only`` turns that off)."""
    for line in customer_keys:
        if not _PUBLIC_KEY_LINE.fullmatch(line):
            raise ValueError("each customer key must be one plain OpenSSH public key line")
    keys = "".join(f"{line}\n" for line in customer_keys).encode("utf-8")
    return RemoteRun(
        files={CUSTOMER_KEYS: keys, "install.sh": config.install_script()},
        argv=("bash", INSTALL_SCRIPT, "update-ssh", "key-only" if key_only else "password"),
    )
