"""What a customer may ask of their own server, one rule each: rebuild now, the schedule, a
restart, the root password, their SSH keys and key-only login, and their devices.

The dashboard API calls these (and so will anything else that speaks for a customer); the
worker carries the requests out. Each function checks the request against the one rule
for it (:mod:`provisioner.locations`, the busy rule on the row, the rebuild cooldown, the
schedule vocabulary), records it on the row with an audit event in the caller's session,
and raises :class:`Refused` (a status, a code and a sentence for the customer) without
changing anything when the request cannot be honoured. The caller commits; the row's
version column fences the write against a worker that changed the row meanwhile.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import unicodedata
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from provisioner import access, actions, history, locations, sshkeys
from provisioner.models import Device, Server, ServerEvent, SSHKey, Status
from provisioner.schedule import SCHEDULES, last_slot
from provisioner.secrets import SecretBox
from provisioner.server_secrets import ServerSecrets
from provisioner.settings.schema import Settings
from provisioner.vpn import pki as vpn_pki
from provisioner.vpn import wireguard
from provisioner.vpn.devices import DeviceConflict, DeviceError

ACTOR = "customer"


class Refused(Exception):  # noqa: N818 - a verdict, not a bug
    """The request cannot be honoured now; ``message`` is written for the customer."""

    def __init__(self, status: int, code: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.retry_after = status, code, message, retry_after


def check_location(settings: Settings, row: Server, wanted: str) -> str:
    try:
        return locations.check(settings.product(row.product_id), wanted)
    except locations.LocationRefused:
        offered = ", ".join(locations.choices(settings.product(row.product_id)))
        raise Refused(422, "invalid_location",
                      f"'{wanted}' is not a location of your plan; choose one of {offered}.") from None


def busy_reason(row: Server) -> str | None:
    """Why a rebuild cannot be asked for now, in the customer's words (None: it can)."""
    if not row.busy:
        return None
    if row.on_hold:
        return "This server is suspended by support; please contact them."
    if row.paused:
        return "Support has paused this server while they look at it; a rebuild is possible once they resume it."
    if row.rebuild_now_status:
        return "A rebuild is already requested for this server; it starts within a minute or two."
    if row.action:
        return f"This server is busy ({row.status}); try again when it is Running."
    return f"This server is {row.status}; it can be rebuilt when it is Running."


def request_rebuild(session: Session, settings: Settings, row: Server, location: str, *, now: dt.datetime) -> None:
    """Record "rebuild now, in ``location``": the worker starts it within seconds."""
    wanted = check_location(settings, row, location)
    busy = busy_reason(row)
    if busy:
        raise Refused(409, "support_hold" if row.paused or row.on_hold else "busy", busy)
    _cool_down(row.rebuild_requested_at, settings.api.rebuild_cooldown_seconds, now, "rebuild_cooldown",
               "You asked for a rebuild recently; you can ask again in {} seconds.")
    row.rebuild_now_status, row.rebuild_now_location, row.rebuild_requested_at = True, wanted, now
    row.rebuild_due_at = None  # a customer's own rebuild is not spread like a scheduled one
    actions.record(session, row, "rebuild.requested", "info", f"location {wanted}", actor=ACTOR, now=now)


def set_schedule(session: Session, settings: Settings, row: Server, schedule: str, location: str, *,
                 now: dt.datetime) -> bool:
    """Set the rebuild schedule and where scheduled rebuilds go; False when nothing changed."""
    if schedule not in SCHEDULES:
        raise Refused(422, "invalid_schedule", f"'{schedule}' is not a schedule; choose one of "
                      f"{', '.join(SCHEDULES)}.")
    wanted = check_location(settings, row, location)
    before = (row.rebuild_schedule, row.rebuild_schedule_location)
    if before == (schedule, wanted):
        return False
    if row.rebuild_schedule != schedule:
        # A new schedule starts with the *next* slot (what the page shows as "next rebuild"),
        # not with a catch-up of a slot that began before the customer chose it.
        row.schedule_slot_done = last_slot(schedule, now, ZoneInfo(settings.worker.timezone))
        row.schedule_set_at = now
    row.rebuild_schedule, row.rebuild_schedule_location = schedule, wanted
    actions.record(session, row, "schedule.changed", "info", f"{before[0]}/{before[1]} -> {schedule}/{wanted}",
                   actor=ACTOR, now=now)
    return True


# --- the server itself: restart, root password ----------------------------------------------------

def request_restart(session: Session, settings: Settings, row: Server, *, now: dt.datetime) -> None:
    """Record "restart my server" (a reboot through the cloud): the worker starts it within seconds."""
    if row.restart_pending:
        raise Refused(409, "busy", "A restart is already requested for this server; it starts within seconds.")
    if not row.idle or row.rebuild_now_status or row.status != Status.RUNNING.value:
        raise Refused(409, "busy", busy_reason(row) or f"This server is {row.status}; it can be restarted when it "
                      "is Running.")
    _cool_down(row.restart_requested_at, settings.api.restart_cooldown_seconds, now, "restart_cooldown",
               "You restarted this server recently; you can restart it again in {} seconds.")
    row.restart_pending, row.restart_requested_at = True, now
    actions.record(session, row, "restart.requested", "info", f"instance {row.instance_id}", actor=ACTOR, now=now)


def reveal_root_password(session: Session, settings: Settings, box: SecretBox, row: Server, *, actor: str,
                         now: dt.datetime) -> str:
    """The server's root password, for its customer (``actor`` "customer": not with key-only login,
    at most ``api.root_password_views_per_hour``) or for support (``operator:<name>``). Every view
    is in the server's history, which the customer sees."""
    if row.status == Status.DESTROYED.value:
        raise Refused(409, "not_ready", "This server was removed; it has no root password any more.")
    if not row.root_password_enc:
        raise Refused(409, "not_ready", "The root password is set when the server is built; try again once it "
                      "is Running.")
    if actor == ACTOR:
        if row.key_only:
            raise Refused(409, "key_only", "Key-only login is on, so the root password does not log in. Turn "
                          "key-only login off to use it.")
        hour = dt.timedelta(hours=1)
        views = list(session.scalars(select(ServerEvent.at).where(
            ServerEvent.server_id == row.id, ServerEvent.what == "root_password.viewed",
            ServerEvent.actor == ACTOR, ServerEvent.at > now - hour).order_by(ServerEvent.at)))
        if len(views) >= settings.api.root_password_views_per_hour:
            wait = (views[0] + hour - now).total_seconds()
            raise Refused(429, "too_many_views", "You have shown the root password often in the last hour; you "
                          f"can show it again in {max(1, math.ceil(wait / 60))} minutes.", retry_after=wait)
    password = box.open(row.root_password_enc).decode("utf-8")
    actions.record(session, row, "root_password.viewed", "info", "", actor=actor, now=now)   # never the password
    return password


# --- SSH keys and key-only login ------------------------------------------------------------------

def add_ssh_key(session: Session, row: Server, text: str, *, now: dt.datetime) -> SSHKey:
    """Put one public key on the server (it reaches a running server within a minute)."""
    _still_here(row)
    try:
        key = sshkeys.parse(text)
    except sshkeys.KeyRefused as exc:
        raise Refused(422, "invalid_key", exc.args[0]) from None
    keys = access.ssh_keys(session, row.id)
    if any(k.fingerprint == key.fingerprint for k in keys):
        raise Refused(409, "duplicate_key", "This key is already on your server.")
    if len(keys) >= sshkeys.MAX_KEYS_PER_SERVER:
        raise Refused(409, "too_many_keys", f"A server takes at most {sshkeys.MAX_KEYS_PER_SERVER} keys; remove one "
                      "you no longer use first.")
    added = SSHKey(server_id=row.id, fingerprint=key.fingerprint, key_type=key.key_type, bits=key.bits,
                   comment=key.comment, public_key=key.line, created_at=now)
    session.add(added)
    access.mark_pending(row, now)
    actions.record(session, row, "ssh_key.added", "info",
                   history.note(fingerprint=key.fingerprint, name=key.comment or key.fingerprint), actor=ACTOR, now=now)
    return added


def remove_ssh_key(session: Session, row: Server, key_id: int, *, now: dt.datetime) -> SSHKey:
    keys = access.ssh_keys(session, row.id)
    gone = next((k for k in keys if k.id == key_id), None)
    if gone is None:
        raise Refused(404, "key_not_found", "There is no such key on your server.")
    if row.key_only and len(keys) == 1:
        raise Refused(409, "last_key", "Key-only login is on and this is your only key: you could not log in any "
                      "more. Add another key, or turn key-only login off first.")
    session.delete(gone)
    access.mark_pending(row, now)
    actions.record(session, row, "ssh_key.removed", "info",
                   history.note(fingerprint=gone.fingerprint, name=gone.comment or gone.fingerprint), actor=ACTOR,
                   now=now)
    return gone


def set_key_only(session: Session, row: Server, key_only: bool, *, now: dt.datetime) -> bool:
    """Key-only login on (the root password no longer logs in) or off; False when nothing changed."""
    _still_here(row)
    if bool(row.key_only) == key_only:
        return False
    if key_only and not access.ssh_keys(session, row.id):
        raise Refused(409, "no_keys", "Add an SSH key first: with key-only login the root password no longer works.")
    row.key_only = key_only
    access.mark_pending(row, now)
    actions.record(session, row, "ssh.key_only", "info", history.note(key_only=key_only), actor=ACTOR, now=now)
    return True


# --- devices: one profile per protocol each --------------------------------------------------------

def add_device(session: Session, settings: Settings, box: SecretBox, row: Server, name: str, *,
               now: dt.datetime) -> Device:
    """A new device with one profile per protocol of the product. OpenVPN changes nothing on the
    server (its CA vouches for the new device); a WireGuard peer reaches it within a minute."""
    _still_here(row)
    if not row.secrets_enc:
        raise Refused(409, "not_ready", "Devices can be added once your server is being built.")
    product = settings.product(row.product_id)
    limit = product.max_devices if product is not None else 1
    if sum(1 for d in access.devices(session, row.id) if d.revoked_at is None) >= limit:
        raise Refused(409, "too_many_devices", f"Your plan allows {limit} devices at a time; revoke one you no "
                      "longer use first.")
    secrets = ServerSecrets.open(box, row.secrets_enc)
    offered = access.protocols(settings, row)
    wg = secrets.wg() if access.WIREGUARD in offered else None   # None until the server has WireGuard keys
    try:
        pki, device_id = vpn_pki.add_device(secrets.openvpn(), name, now=now)
        stored_name = pki.device(device_id).name
        if wg is not None:
            wg, _ = wireguard.add_peer(wg, stored_name, device_id=device_id, now=now)
    except DeviceConflict as exc:
        raise Refused(409, "device_exists", _sentence(exc)) from None
    except DeviceError as exc:
        raise Refused(422, "invalid_device_name", _sentence(exc)) from None
    secrets = secrets.with_openvpn(pki)
    if wg is not None:
        secrets = secrets.with_wireguard(wg)
        access.mark_pending(row, now)   # the running server gets the new peer list
    row.secrets_enc = secrets.seal(box)
    device = access.add_device_row(session, row, device_id, stored_name,
                                   access.profile_protocols(offered, wg, device_id), now)
    actions.record(session, row, "device.added", "info", history.note(device=device_id, name=stored_name),
                   actor=ACTOR, now=now)
    return device


def revoke_device(session: Session, box: SecretBox, row: Server, device_id: str, *, now: dt.datetime) -> Device:
    """Revoke every profile of one device: its keys are erased at once, and the server refuses it
    as soon as the new CRL and WireGuard peer list reach it (within a minute; a rebuild carries
    them too). Idempotent."""
    device = _device(session, row, device_id)
    if device.revoked_at is not None:
        return device
    secrets = ServerSecrets.open(box, row.secrets_enc or "")
    secrets = secrets.with_openvpn(vpn_pki.revoke_device(secrets.openvpn(), device_id, now=now))
    wg = secrets.wg()
    if wg is not None and any(p.device_id == device_id for p in wg.peers):
        secrets = secrets.with_wireguard(wireguard.revoke_peer(wg, device_id, now=now))
    row.secrets_enc = secrets.seal(box)
    if device_id == vpn_pki.FIRST_DEVICE_ID:
        row.ovpn_file_enc = None    # the server's original profile is this device's
    access.revoke_device_row(session, device, now)
    access.mark_pending(row, now)
    actions.record(session, row, "device.revoked", "info", history.note(device=device_id, name=device.name),
                   actor=ACTOR, now=now)
    return device


def device_profile(session: Session, box: SecretBox, row: Server, device_id: str,
                   protocol: str = access.OPENVPN) -> tuple[bytes, str]:
    """A device's profile for one protocol and its file name (the bytes are a secret: they hold
    the device's key): an ``.ovpn``, or a WireGuard ``.conf`` naming the server's DNS name."""
    device = _device(session, row, device_id)
    if device.revoked_at is not None:
        raise Refused(410, "device_revoked", f"The device '{device.name}' was revoked; its profile no longer works.")
    if protocol not in {p.protocol for p in access.profiles(session, [device])[device.id]}:
        raise Refused(404, "profile_not_found", f"This device has no {access.PROTOCOL_NAMES[protocol]} profile.")
    if not profiles_ready(row):
        raise Refused(409, "not_ready", "The profile is ready once the server has been installed.")
    secrets = ServerSecrets.open(box, row.secrets_enc or "")
    short = (row.server_name or "server").split(".", 1)[0]
    if protocol == access.WIREGUARD:
        wg = secrets.wg()
        if wg is None:   # a profile row without state: never written so, but never a 500
            raise Refused(409, "not_ready", "The WireGuard profile is ready once the server has been installed.")
        # WireGuard apps name the tunnel after the file: at most 15 characters of [A-Za-z0-9_=+.-].
        tunnel = f"{short}-{device_id}"[:15]
        return wireguard.render_client_conf(wg, device_id, row.server_name or ""), f"{tunnel}.conf"
    from provisioner.vpn.config import render_device_ovpn

    return (render_device_ovpn(secrets.openvpn(), device_id, row.server_name or ""),
            f"{short}-{_slug(device.name, device_id)}.ovpn")


def profiles_ready(row: Server) -> bool:
    """Device profiles can be downloaded once the server has been installed (it has been running)."""
    return bool(row.secrets_enc and row.server_name and (row.ovpn_file_enc or row.current_location))


def _sentence(exc: Exception) -> str:
    return f"{str(exc)[0].upper()}{str(exc)[1:]}."


def _cool_down(last: dt.datetime | None, seconds: float, now: dt.datetime, code: str, message: str) -> None:
    """429 while ``seconds`` since ``last`` have not passed (``message`` gets the seconds left)."""
    wait = (last - now).total_seconds() + seconds if last is not None else 0.0
    if wait > 0:
        raise Refused(429, code, message.format(max(1, math.ceil(wait))), retry_after=wait)


def _device(session: Session, row: Server, device_id: str) -> Device:
    found = next((d for d in access.devices(session, row.id) if d.device_id == device_id), None)
    if found is None:
        raise Refused(404, "device_not_found", "There is no such device on your server.")
    return found


def _still_here(row: Server) -> None:
    if row.status in (Status.DESTROYING.value, Status.DESTROYED.value):
        raise Refused(409, "busy", "This server is being removed.")


def _slug(name: str, fallback: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().lower())
    return slug.strip("-")[:30] or f"device-{fallback}"
