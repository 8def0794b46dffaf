"""What a customer keeps on their server, and what the running server must be sent of it.

- **Devices** (``provisioner_devices``): one row per device the server's PKI ever had (the PKI
  hands out the ids, whatever the product offers), with one profile per protocol
  (``provisioner_device_profiles``): ``openvpn`` where the product offers it, ``wireguard``
  where the server's WireGuard state has a peer for the device (:func:`profile_protocols`).
  Revoking a device revokes all its profiles. The keys stay in the sealed secrets; these rows
  are what a list shows without opening them, written in the same transaction as the sealed
  change.
- **SSH keys** (``provisioner_ssh_keys``) and **key-only login** (``Server.key_only``).
- **Pending**: a change the running server must get (a CRL, keys, the login mode) is marked on
  the row with :func:`mark_pending`. The leader starts a short ``sync`` action for a Running,
  idle row that has one (:func:`provisioner.operations.start_pending_syncs`); a create or
  rebuild already in progress carries the state its install step reads, and a change that
  lands after that step is still pending when the action ends, so the sync follows it.

:func:`install_runs` (create, rebuild) and :func:`push_runs` (sync) build the SSH runs from
the row alone, so a run is always the latest state the row has.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from sqlalchemy import ColumnElement, and_, delete, false, or_, select
from sqlalchemy.orm import Session

from provisioner.models import Device, DeviceProfile, Server, SSHKey
from provisioner.server_secrets import ServerSecrets
from provisioner.settings.schema import OPENVPN, PROTOCOL_NAMES, WIREGUARD, Settings
from provisioner.vpn import pki as vpn_pki
from provisioner.vpn import remote, wireguard
from provisioner.vpn.remote import RemoteRun

__all__ = ["OPENVPN", "PROTOCOL_NAMES", "WIREGUARD"]


def protocols(settings: Settings, row: Server) -> tuple[str, ...]:
    """What the server's product offers (OpenVPN for a product no longer configured)."""
    product = settings.product(row.product_id)
    return product.protocols if product is not None else (OPENVPN,)


def profile_protocols(offered: Sequence[str], wg: wireguard.WireGuardServer | None, device_id: str) -> list[str]:
    """The profiles one device has: OpenVPN where offered, WireGuard where the state has its peer."""
    out = [OPENVPN] if OPENVPN in offered else []
    if WIREGUARD in offered and wg is not None and any(p.device_id == device_id for p in wg.peers):
        out.append(WIREGUARD)
    return out


def ensure_wireguard(secrets: ServerSecrets, server_name: str, offered: Sequence[str],
                     now: dt.datetime) -> ServerSecrets:
    """For a product that offers WireGuard: the secrets with its state, generated the first time
    (a new server, or one whose product gained WireGuard), and a peer for every active device.
    Returns ``secrets`` itself when nothing was missing, so the caller re-seals only a change."""
    return secrets.with_wireguard_peers(server_name, now) if WIREGUARD in offered else secrets


# --- pending changes ------------------------------------------------------------------------------

def mark_pending(row: Server, now: dt.datetime) -> None:
    """The running server must get the row's state again (a sync follows within seconds)."""
    row.access_revision = (row.access_revision or 0) + 1
    if row.access_pending_since is None:
        row.access_pending_since = now


def shipped(row: Server) -> None:
    """The state the row has now reached the server (called in the commit of the step that sent it)."""
    row.access_pending_since = None


# --- devices --------------------------------------------------------------------------------------

def devices(session: Session, server_id: int) -> list[Device]:
    return list(session.scalars(select(Device).where(Device.server_id == server_id).order_by(Device.id)))


def profiles(session: Session, found: Sequence[Device]) -> dict[int, list[DeviceProfile]]:
    out: dict[int, list[DeviceProfile]] = {d.id: [] for d in found}
    if found:
        q = select(DeviceProfile).where(DeviceProfile.device_pk.in_(list(out))).order_by(DeviceProfile.id)
        for profile in session.scalars(q):
            out[profile.device_pk].append(profile)
    return out


def add_device_row(session: Session, row: Server, device_id: str, name: str, protocols: Sequence[str],
                   now: dt.datetime, revoked_at: dt.datetime | None = None) -> Device:
    device = Device(server_id=row.id, device_id=device_id, name=name, created_at=now, revoked_at=revoked_at)
    session.add(device)
    session.flush()
    for protocol in protocols:
        session.add(DeviceProfile(device_pk=device.id, protocol=protocol, created_at=now, revoked_at=revoked_at))
    return device


def revoke_device_row(session: Session, device: Device, now: dt.datetime) -> None:
    device.revoked_at = device.revoked_at or now
    for profile in session.scalars(select(DeviceProfile).where(DeviceProfile.device_pk == device.id)):
        profile.revoked_at = profile.revoked_at or now


def sync_devices(session: Session, row: Server, secrets: ServerSecrets, offered: Sequence[str],
                 now: dt.datetime) -> None:
    """Give every device of the PKI its row, and each row the profiles it lacks (a new server's
    first device, a PKI kept from before devices, WireGuard profiles once the product offers it)."""
    found = devices(session, row.id)
    by_id = {d.device_id: d for d in found}
    have = profiles(session, found)
    wg = secrets.wg()
    for info in vpn_pki.list_devices(secrets.openvpn()):
        device = by_id.get(info.device_id)
        if device is None:
            device = add_device_row(session, row, info.device_id, info.name, (), now, revoked_at=info.revoked_at)
        existing = {p.protocol for p in have.get(device.id, [])}
        for protocol in profile_protocols(offered, wg, info.device_id):
            if protocol not in existing:
                session.add(DeviceProfile(device_pk=device.id, protocol=protocol, created_at=now,
                                          revoked_at=device.revoked_at))


def wipe_identity(session: Session, row: Server) -> None:
    """A destroyed server's identity goes for good: its sealed PKI, and with it its devices,
    the customer's keys (personal data) and the login mode (the rows say it, not the caller)."""
    row.secrets_enc, row.identity_kept_until = None, None
    row.key_only = False
    forget(session, row)


def forget(session: Session, row: Server) -> None:
    """A destroyed server keeps neither devices nor the customer's keys (personal data)."""
    pks = select(Device.id).where(Device.server_id == row.id).scalar_subquery()
    session.execute(delete(DeviceProfile).where(DeviceProfile.device_pk.in_(pks)))
    session.execute(delete(Device).where(Device.server_id == row.id))
    session.execute(delete(SSHKey).where(SSHKey.server_id == row.id))


# --- SSH ------------------------------------------------------------------------------------------

def ssh_keys(session: Session, server_id: int) -> list[SSHKey]:
    return list(session.scalars(select(SSHKey).where(SSHKey.server_id == server_id).order_by(SSHKey.id)))


def access_run(session: Session, row: Server) -> RemoteRun:
    return remote.ssh_access_run([k.public_key for k in ssh_keys(session, row.id)], key_only=bool(row.key_only))


# --- what the server is sent ----------------------------------------------------------------------

def install_runs(session: Session, row: Server, secrets: ServerSecrets, offered: Sequence[str]) -> list[RemoteRun]:
    """A new instance: the product's VPNs from the stored state (the PKI with its CRL, the
    WireGuard keys and peers), then the customer's SSH access."""
    vpn = remote.install_run(pki=secrets.openvpn() if OPENVPN in offered else None,
                             wireguard_state=secrets.wg() if WIREGUARD in offered else None)
    return [vpn, access_run(session, row)]


def push_runs(session: Session, row: Server, secrets: ServerSecrets, offered: Sequence[str]) -> list[RemoteRun]:
    """The running server: a protocol its product offers but it lacks (installed from the stored
    state), the CRL (it cuts off revoked devices), the WireGuard peer list (it drops revoked peers
    and adds new ones) and the customer's SSH access."""
    have = installed(row)
    new = [p for p in offered if p not in have]
    runs = [remote.install_run(pki=secrets.openvpn() if OPENVPN in new else None,
                               wireguard_state=secrets.wg() if WIREGUARD in new else None)] if new else []
    if OPENVPN in have:
        runs.append(remote.crl_update_run(secrets.openvpn()))
    wg = secrets.wg()
    if WIREGUARD in have and wg is not None:
        runs.append(remote.peers_update_run(wg))
    return [*runs, access_run(session, row)]


# --- which protocols the running instance has ------------------------------------------------------

def installed(row: Server) -> tuple[str, ...]:
    """The protocols the server's instance was installed with (NULL: before they were recorded,
    when every server ran OpenVPN alone)."""
    return tuple(row.vpn_protocols.split()) if row.vpn_protocols is not None else (OPENVPN,)


def record_installed(row: Server, protocols: Sequence[str]) -> None:
    row.vpn_protocols = " ".join(protocols)


def lacks(protocol: str) -> ColumnElement[bool]:
    """SQL: the row's instance was not installed with ``protocol`` (the same rule as :func:`installed`)."""
    recorded = Server.vpn_protocols
    missing = or_(recorded.is_(None), recorded.not_like(f"%{protocol}%"))
    return and_(recorded.is_not(None), recorded.not_like(f"%{protocol}%")) if protocol == OPENVPN else missing


def gaining(settings: Settings) -> ColumnElement[bool]:
    """SQL: the row's product offers a protocol its instance lacks (a sync installs it)."""
    return or_(false(), *(and_(Server.product_id == pid, lacks(protocol))
                          for pid, product in settings.products.items() for protocol in product.protocols))
