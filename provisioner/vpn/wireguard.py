"""The WireGuard side of one server: its key pair, its devices (peers) and their addresses.

Owned by the worker like the OpenVPN PKI and kept across every rebuild and relocation, so a
device's ``.conf`` never changes: the server's X25519 key pair, and per device a key pair, a
preshared key and a tunnel address (IPv4 from a private network chosen at generation, by
default 10.66.66.0/24, and IPv6 from a ULA /64 derived from the server's public key, with the
same host number). Keys are made with ``cryptography``; WireGuard's wire format is the
base64 of the 32 raw bytes, which ``wg pubkey`` agrees with.

A :class:`WireGuardServer` is immutable: :func:`add_peer` and :func:`revoke_peer` return a
new one with the next ``revision`` (written into the server's ``wg0.conf`` so the server
refuses an older file that arrives late). A revoked peer keeps its id, name and address for
the record but loses its private and preshared keys, and leaves the server's peer list.

:func:`render_server_conf` writes the server's ``/etc/wireguard/wg0.conf`` (wg-quick
format; ``wg-quick strip`` turns it into what ``wg setconf``/``wg syncconf`` read) and
:func:`render_client_conf` a device's ``.conf``, pointing at the server's DNS name. A
WireGuard client resolves that name once, when the tunnel comes up: after a relocation the
device keeps sending to the old address until the customer switches the tunnel off and on.

:func:`to_bytes` / :func:`from_bytes` give a canonical JSON serialisation; encrypt it before
storing (it holds every private key). Nothing here puts key material into a repr, a log line
or an exception.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import ipaddress
import os
import re
from dataclasses import dataclass, replace
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from provisioner.vpn import stored
from provisioner.vpn.devices import (
    DeviceError,
    DeviceNotFound,
    DeviceRevoked,
    check_device_id,
    check_new_device,
    next_device_id,
    normalize_device_name,
)
from provisioner.vpn.inputs import DEFAULT_DNS, check_host_name, check_port, ip_address

FORMAT = "provisioner-wireguard"
VERSION = 1
DEFAULT_PORT = 51820
DEFAULT_NETWORK4 = "10.66.66.0/24"
# Keeps NAT mappings on phones and home routers open, so the server can reach the device.
PERSISTENT_KEEPALIVE = 25
_KEY_BYTES = 32
_SERVER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,252}")


class WireGuardFormatError(ValueError):
    """Serialised WireGuard state that cannot be used (the message never contains key material)."""


@dataclass(frozen=True, repr=False)
class Peer:
    """One device; ``private_key`` and ``preshared_key`` are empty once it is revoked."""

    device_id: str
    name: str
    host: int  # its host number in both tunnel networks
    public_key: bytes
    private_key: bytes
    preshared_key: bytes
    created_at: dt.datetime
    revoked_at: dt.datetime | None

    def __repr__(self) -> str:
        keys = "<hidden>" if self.private_key else "<erased>"
        return (
            f"Peer(device_id={self.device_id!r}, name={self.name!r}, host={self.host}, "
            f"public_key={encode_key(self.public_key)!r}, keys={keys})"
        )

    __str__ = __repr__

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True)
class PeerInfo:
    """What a device list shows: no secret, safe to log and to hand to the API layer."""

    device_id: str
    name: str
    address4: ipaddress.IPv4Address
    address6: ipaddress.IPv6Address
    public_key: str
    created_at: dt.datetime
    revoked_at: dt.datetime | None


@dataclass(frozen=True, repr=False)
class WireGuardServer:
    server_name: str
    private_key: bytes
    network4: ipaddress.IPv4Network
    network6: ipaddress.IPv6Network
    revision: int
    peers: tuple[Peer, ...]

    def __repr__(self) -> str:
        active = sum(1 for p in self.peers if p.active)
        return (
            f"WireGuardServer(server_name={self.server_name!r}, public_key={encode_key(self.public_key)!r}, "
            f"network4={str(self.network4)!r}, network6={str(self.network6)!r}, revision={self.revision}, "
            f"peers={len(self.peers)}, active={active}, keys=<hidden>)"
        )

    __str__ = __repr__

    @property
    def public_key(self) -> bytes:
        return public_key_of(self.private_key)

    @property
    def address4(self) -> ipaddress.IPv4Address:
        return self.network4[1]

    @property
    def address6(self) -> ipaddress.IPv6Address:
        return self.network6[1]

    def peer(self, device_id: str) -> Peer:
        for peer in self.peers:
            if peer.device_id == device_id:
                return peer
        raise DeviceNotFound(f"no device {device_id!r} on this server")

    def peer_addresses(self, peer: Peer) -> tuple[ipaddress.IPv4Address, ipaddress.IPv6Address]:
        return self.network4[peer.host], self.network6[peer.host]


def generate_server(server_name: str, *, network4: str = DEFAULT_NETWORK4) -> WireGuardServer:
    """A new server key pair, no peers; ``network4`` is a private IPv4 network of /16 to /29."""
    if not _SERVER_NAME.fullmatch(server_name):
        raise ValueError("server name must be 1-253 characters of letters, digits, '.', '_' or '-'")
    network = _parse_network4(network4)
    private_key = _new_private_key()
    return WireGuardServer(
        server_name=server_name,
        private_key=private_key,
        network4=network,
        network6=ula_network(public_key_of(private_key)),
        revision=1,
        peers=(),
    )


def ula_network(server_public_key: bytes) -> ipaddress.IPv6Network:
    """fdXX:XXXX:XXXX::/64 with the 40-bit global ID of RFC 4193 taken from the server's key."""
    global_id = hashlib.sha256(b"provisioner-wireguard-ula\0" + server_public_key).digest()[:5]
    return ipaddress.IPv6Network((b"\xfd" + global_id + bytes(10), 64))


def add_peer(
    server: WireGuardServer, name: str, *, device_id: str | None = None, now: dt.datetime | None = None
) -> tuple[WireGuardServer, str]:
    """A new device with its own key pair, preshared key and addresses; returns the new state and its id.

    ``device_id`` defaults to the next unused number; pass the device's OpenVPN id to share
    it. Raises :class:`DeviceError` (bad name or id), :class:`DeviceConflict` (id ever used,
    or an active device has the name) or when the network has no free address left.
    """
    name = normalize_device_name(name)
    device_id = check_device_id(device_id) if device_id is not None else next_device_id(
        p.device_id for p in server.peers
    )
    check_new_device(device_id, name, ((p.device_id, p.name, p.active) for p in server.peers))
    private_key = _new_private_key()
    peer = Peer(
        device_id=device_id,
        name=name,
        host=_free_host(server),
        public_key=public_key_of(private_key),
        private_key=private_key,
        preshared_key=os.urandom(_KEY_BYTES),
        created_at=_second(now or _utcnow()),
        revoked_at=None,
    )
    return replace(server, peers=(*server.peers, peer), revision=server.revision + 1), device_id


def revoke_peer(server: WireGuardServer, device_id: str, *, now: dt.datetime | None = None) -> WireGuardServer:
    """Drop the device from the server's peers and erase its keys (idempotent).

    The server refuses the device once it runs the new peer list
    (:func:`provisioner.vpn.remote.peers_update_run`, no restart).
    """
    peer = server.peer(device_id)
    if not peer.active:
        return server
    revoked = replace(peer, private_key=b"", preshared_key=b"", revoked_at=_second(now or _utcnow()))
    peers = tuple(revoked if p.device_id == device_id else p for p in server.peers)
    return replace(server, peers=peers, revision=server.revision + 1)


def list_peers(server: WireGuardServer) -> tuple[PeerInfo, ...]:
    """Every device the server ever had, in the order they were added, revoked ones included."""
    return tuple(
        PeerInfo(
            device_id=p.device_id,
            name=p.name,
            address4=server.network4[p.host],
            address6=server.network6[p.host],
            public_key=encode_key(p.public_key),
            created_at=p.created_at,
            revoked_at=p.revoked_at,
        )
        for p in server.peers
    )


def render_server_conf(server: WireGuardServer, *, port: int = DEFAULT_PORT) -> str:
    """``/etc/wireguard/wg0.conf`` for ``wg-quick@wg0``: the active peers only."""
    check_port(port)
    lines = [
        f"# WireGuard server {server.server_name}, written by provisioner; edits are overwritten.",
        f"# revision: {server.revision}",
        "[Interface]",
        f"Address = {server.address4}/{server.network4.prefixlen}, {server.address6}/{server.network6.prefixlen}",
        f"ListenPort = {port}",
        f"PrivateKey = {encode_key(server.private_key)}",
    ]
    for peer in server.peers:
        if not peer.active:
            continue
        address4, address6 = server.peer_addresses(peer)
        lines += [
            "",
            "[Peer]",
            f"# device {peer.device_id}",
            f"PublicKey = {encode_key(peer.public_key)}",
            f"PresharedKey = {encode_key(peer.preshared_key)}",
            f"AllowedIPs = {address4}/32, {address6}/128",
        ]
    return "\n".join(lines) + "\n"


def render_client_conf(
    server: WireGuardServer,
    device_id: str,
    endpoint_host: str,
    *,
    port: int = DEFAULT_PORT,
    dns: tuple[str, ...] = DEFAULT_DNS,
) -> bytes:
    """A device's ``.conf`` (a secret: it holds the device's key). Same inputs, same bytes.

    ``endpoint_host`` is the server's DNS name, never its address, so the file survives a
    rebuild. Raises DeviceNotFound or DeviceRevoked.
    """
    peer = server.peer(device_id)
    if not peer.active:
        raise DeviceRevoked(f"device {device_id!r} was revoked")
    check_host_name(endpoint_host)
    check_port(port)
    address4, address6 = server.peer_addresses(peer)
    lines = [
        "[Interface]",
        f"PrivateKey = {encode_key(peer.private_key)}",
        f"Address = {address4}/32, {address6}/128",
        *([f"DNS = {', '.join(ip_address(d) for d in dns)}"] if dns else []),
        "",
        "[Peer]",
        f"PublicKey = {encode_key(server.public_key)}",
        f"PresharedKey = {encode_key(peer.preshared_key)}",
        f"Endpoint = {endpoint_host}:{port}",
        "AllowedIPs = 0.0.0.0/0, ::/0",
        f"PersistentKeepalive = {PERSISTENT_KEEPALIVE}",
    ]
    return ("\n".join(lines) + "\n").encode("ascii")


def encode_key(raw: bytes) -> str:
    """WireGuard's text form of a 32-byte key (standard base64, 44 characters)."""
    return base64.b64encode(raw).decode("ascii")


def decode_key(text: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, AttributeError):
        raise WireGuardFormatError(f"the {what} is not base64") from None
    if len(raw) != _KEY_BYTES:
        raise WireGuardFormatError(f"the {what} is not {_KEY_BYTES} bytes")
    return raw


def public_key_of(private_key: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private_key).public_key().public_bytes_raw()


def to_bytes(server: WireGuardServer) -> bytes:
    """Canonical JSON: the same state always gives the same bytes (encrypt before storing)."""
    doc: dict[str, Any] = {
        "server_name": server.server_name,
        "private_key": encode_key(server.private_key),
        "network4": str(server.network4),
        "network6": str(server.network6),
        "revision": server.revision,
        "peers": [
            {
                "id": p.device_id,
                "name": p.name,
                "host": p.host,
                "public_key": encode_key(p.public_key),
                "private_key": encode_key(p.private_key) if p.private_key else "",
                "preshared_key": encode_key(p.preshared_key) if p.preshared_key else "",
                "created_at": p.created_at.isoformat(),
                "revoked_at": p.revoked_at.isoformat() if p.revoked_at else None,
            }
            for p in server.peers
        ],
    }
    return stored.dump(FORMAT, VERSION, doc)


def from_bytes(data: bytes) -> WireGuardServer:
    """Parse and check what :func:`to_bytes` wrote."""
    doc, _ = stored.load(data, FORMAT, (VERSION,), WireGuardFormatError, "serialised WireGuard state")
    name = doc.get("server_name")
    if not isinstance(name, str) or not _SERVER_NAME.fullmatch(name):
        raise WireGuardFormatError("serialised WireGuard state has an invalid server_name")
    revision = doc.get("revision")
    if not isinstance(revision, int) or isinstance(revision, bool) or revision < 1:
        raise WireGuardFormatError("serialised WireGuard state has an invalid revision")
    try:
        network4 = _parse_network4(str(doc.get("network4")))
        network6 = ipaddress.IPv6Network(str(doc.get("network6")))
    except ValueError:
        raise WireGuardFormatError("serialised WireGuard state has an invalid network") from None
    raw_peers = doc.get("peers")
    if not isinstance(raw_peers, list):
        raise WireGuardFormatError("serialised WireGuard state has no peer list")
    server = WireGuardServer(
        server_name=name,
        private_key=decode_key(str(doc.get("private_key")), "server private key"),
        network4=network4,
        network6=network6,
        revision=revision,
        peers=tuple(_peer_from(entry) for entry in raw_peers),
    )
    check_server(server)
    return server


def check_server(server: WireGuardServer) -> None:
    """Raise WireGuardFormatError unless the state is consistent (keys, addresses, ids)."""
    if server.network6 != ula_network(server.public_key):
        raise WireGuardFormatError("the IPv6 network does not belong to the server's key")
    ids: set[str] = set()
    active_hosts: set[int] = set()
    for peer in server.peers:
        label = f"peer {peer.device_id!r}"
        try:
            check_device_id(peer.device_id)
            normalize_device_name(peer.name)
        except DeviceError as exc:
            raise WireGuardFormatError(f"{label}: {exc}") from None
        if peer.device_id in ids:
            raise WireGuardFormatError(f"{label} appears twice")
        if not 2 <= peer.host < server.network4.num_addresses - 1:
            raise WireGuardFormatError(f"{label} has an address outside the tunnel network")
        if peer.active:
            if not peer.private_key or len(peer.preshared_key) != _KEY_BYTES:
                raise WireGuardFormatError(f"{label} is active but has no keys")
            if public_key_of(peer.private_key) != peer.public_key:
                raise WireGuardFormatError(f"{label} private key does not match its public key")
            if peer.host in active_hosts:
                raise WireGuardFormatError(f"{label} shares its address with another device")
            active_hosts.add(peer.host)
        elif peer.private_key or peer.preshared_key:
            raise WireGuardFormatError(f"{label} is revoked but keeps its keys")
        ids.add(peer.device_id)


def _peer_from(entry: object) -> Peer:
    if not isinstance(entry, dict):
        raise WireGuardFormatError("serialised WireGuard state has a peer that is not an object")
    device_id, name, host = entry.get("id"), entry.get("name"), entry.get("host")
    if not isinstance(device_id, str) or not isinstance(name, str) or not isinstance(host, int):
        raise WireGuardFormatError("serialised WireGuard state has a peer without id, name or host")
    label = f"peer {device_id!r}"
    private = entry.get("private_key") or ""
    preshared = entry.get("preshared_key") or ""
    try:
        created_at = dt.datetime.fromisoformat(str(entry.get("created_at")))
        revoked_raw = entry.get("revoked_at")
        revoked_at = dt.datetime.fromisoformat(str(revoked_raw)) if revoked_raw is not None else None
    except ValueError:
        raise WireGuardFormatError(f"{label} has an invalid date") from None
    return Peer(
        device_id=device_id,
        name=name,
        host=host,
        public_key=decode_key(str(entry.get("public_key")), f"{label} public key"),
        private_key=decode_key(str(private), f"{label} private key") if private else b"",
        preshared_key=decode_key(str(preshared), f"{label} preshared key") if preshared else b"",
        created_at=created_at,
        revoked_at=revoked_at,
    )


def _free_host(server: WireGuardServer) -> int:
    """The lowest host number never given out; once all were, the lowest a revoked device left."""
    usable = range(2, server.network4.num_addresses - 1)  # .1 is the server; the last is broadcast
    active = {p.host for p in server.peers if p.active}
    ever = {p.host for p in server.peers}
    for host in usable:
        if host not in ever:
            return host
    for host in usable:
        if host not in active:
            return host
    raise DeviceError(f"no free tunnel address left in {server.network4}")


def _parse_network4(value: str) -> ipaddress.IPv4Network:
    try:
        network = ipaddress.IPv4Network(value)
    except ValueError:
        raise ValueError("the WireGuard network must be an IPv4 network such as 10.66.66.0/24") from None
    if not network.is_private or not 16 <= network.prefixlen <= 29:
        raise ValueError("the WireGuard network must be a private IPv4 network of /16 to /29")
    return network


def _new_private_key() -> bytes:
    return X25519PrivateKey.generate().private_bytes_raw()


def _second(moment: dt.datetime) -> dt.datetime:
    return moment.astimezone(dt.UTC).replace(microsecond=0)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
