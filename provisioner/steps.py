"""The steps of create, rebuild and destroy. Each is idempotent: replaying it after a crash
(its side effect done, its result not yet recorded) converges to the same state.

A step takes the row, performs at most one kind of side effect, sets the ids it produced
on the row, and returns :class:`Next`: the next step (``None`` when the action is done),
what it did in words for the audit trail, and when the next step may start. It raises
:class:`Wait` to be polled again, :class:`PermanentStepError` when a human must look, and
the adapters' errors (:class:`~provisioner.cloud.errors.ProviderError`) otherwise.

    create:  prepare → instance → boot → install → dns → snapshot → finish
    rebuild:           instance → boot → install → dns → carry → retire → finish
    destroy: instances → dns → snapshot → wipe
    sync:    push                   (the customer's CRL, WireGuard peers and SSH access to the running server)
    restart: reboot → settle        (the customer's "Restart server")

The install step also ships the customer's SSH access, and a rebuild keeps the old address
and location on the row until its ``dns`` step moves the name to the new instance, so what
the customer sees always agrees with where their VPN connects.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session, object_session, sessionmaker

from provisioner import access, bandwidth, history, ip_history
from provisioner.cloud.errors import ProviderError
from provisioner.cloud.installer import Host, Remote
from provisioner.cloud.ssh import SSHTimeout, SSHUnreachable
from provisioner.cloud.vultr import VultrCloud, VultrNotFound, VultrPermanent
from provisioner.models import Server, Status, utcnow
from provisioner.naming import Names
from provisioner.secrets import SecretBox
from provisioner.server_secrets import ServerSecrets
from provisioner.settings.schema import Settings

__all__ = ["STEPS", "Context", "Next", "PermanentStepError", "ServerSecrets", "Wait"]

log = logging.getLogger(__name__)


class Wait(Exception):  # noqa: N818 - a signal, not an error
    """Not done yet: poll this step again after ``seconds``."""

    def __init__(self, seconds: float, reason: str) -> None:
        super().__init__(reason)
        self.seconds, self.reason = seconds, reason


class PermanentStepError(RuntimeError):
    """Retrying will not help; a human must look (message is shown to operators)."""


@dataclass(frozen=True)
class Next:
    """What a step hands back to the lifecycle."""

    step: str | None                        # the next step; None when the action is complete
    detail: str = ""                        # what happened, in words, for the "ok" event
    not_before: dt.datetime | None = None   # the next step starts no earlier than this


Crash = Callable[[str], None]


class BootTimes:
    """How long new instances take to boot here, so the first boot poll comes when the boot
    can plausibly be done instead of right after the create (a wasted call per server).

    Learnt in this process from the instances it created. An instance found ready at a first
    poll that came on time (within one poll interval of its wait) booted within the wait it
    was given (that wait is recorded: the boot may have been faster, but nothing says by how
    much); one that needed more polls, or whose first poll came late (a busy driver), is
    recorded with the time from the create's reply to the poll that saw it ready: all that is
    known of it (recording the wait would claim a boot faster than anything seen). The first
    poll waits the shortest of the last ``window`` records: stable at the fastest boot seen recently plus
    the polling granularity, so neither creeping up nor shrinking into extra polls. With
    nothing learnt yet the first poll waits the caller's fallback (``poll_seconds``).

    Before any boot has been seen over, an instance still booting ``w`` seconds after its
    create says the others created here will not be done sooner either (a burst of sales: the
    first polls all come at ``poll_seconds`` and would all find their instance booting): until
    a boot is seen over, a first poll comes no earlier than ``w + poll_seconds`` after its
    create, when that instance's own next poll comes (:meth:`hold_back`, and :meth:`started`
    for the creates after it). Once one is seen over, no earlier than the fastest recent boot.
    """

    def __init__(self, window: int = 32, *, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic
        # id -> (created, first wait, learn the time it took (polled again or held back), poll interval)
        self._pending: dict[str, tuple[float, float, bool, float]] = {}
        self._seen: deque[float] = deque(maxlen=window)
        self._booting = 0.0     # the longest time after its create an instance was seen still booting
        self._lock = threading.Lock()

    def expected(self, fallback: float) -> float:
        with self._lock:
            return self._earliest(fallback) or fallback

    def _earliest(self, poll: float) -> float:
        if self._seen:
            return min(self._seen)
        return self._booting + poll if self._booting else 0.0

    def hold_back(self, instance_id: str) -> float:
        """Seconds until this instance's boot poll can plausibly find it over (0: poll now), by
        what the other instances created here showed; 0 for one this process did not create."""
        with self._lock:
            found = self._pending.get(instance_id)
            if found is None:
                return 0.0
            created, wait, _, interval = found
            held = max(0.0, self._earliest(interval) - (self._monotonic() - created))
            if held:   # its first wait was not what it took: ready() records the time until it is seen over
                self._pending[instance_id] = (created, wait, True, interval)
            return held

    def started(self, instance_id: str, fallback: float) -> float:
        """Record a create's reply; returns how long to wait before the first boot poll."""
        wait = self.expected(fallback)
        with self._lock:
            if len(self._pending) >= 10_000:   # ids whose boot we never saw end (deleted, another worker)
                self._pending.clear()
            self._pending[instance_id] = (self._monotonic(), wait, False, fallback)
        return wait

    def not_yet(self, instance_id: str) -> None:
        with self._lock:
            if instance_id in self._pending:
                created, wait, _, interval = self._pending[instance_id]
                self._pending[instance_id] = (created, wait, True, interval)
                self._booting = max(self._booting, self._monotonic() - created)

    def ready(self, instance_id: str) -> None:
        with self._lock:
            found = self._pending.pop(instance_id, None)
        if found is not None:
            created, wait, measured, interval = found
            took = self._monotonic() - created
            self.observe(took if measured or took > wait + interval else wait)

    def observe(self, seconds: float) -> None:
        """Record that a boot was over within ``seconds`` of its create's reply."""
        with self._lock:
            self._seen.append(seconds)


@dataclass
class Context:
    """What steps need: settings, database, clouds, and a few hooks."""

    settings: Settings
    sessions: sessionmaker[Session]
    box: SecretBox
    vultr: VultrCloud
    dns: Any                     # provisioner.cloud.cloudflare.CloudflareDNS
    remote: Remote               # runs our scripts over pinned SSH (provisioner.cloud.installer)
    worker_public_key: str
    names: Names
    crash: Crash = lambda point: None
    clock: Callable[[], dt.datetime] = utcnow
    boots: BootTimes = field(default_factory=lambda: BootTimes())


# --- create ------------------------------------------------------------------------------------

def prepare(ctx: Context, row: Server) -> Next:
    from provisioner.cloudinit import generate_host_key
    from provisioner.vpn import pki as vpn_pki

    if ctx.settings.product(row.product_id) is None:
        raise PermanentStepError(f"product {row.product_id} is not configured in [products]")
    if not row.server_name:
        row.server_name = ctx.names.server_name(row.id)
    if not row.secrets_enc:
        host = generate_host_key()
        secrets = ServerSecrets(pki=vpn_pki.to_bytes(vpn_pki.generate_pki(row.server_name)),
                                host_private=host.private_pem, host_public=host.public_line)
        row.secrets_enc = secrets.seal(ctx.box)
    # Every device of the PKI has its row: a new server's first device (today's .ovpn), and a
    # kept PKI's devices when its row is built again (idempotent); a WireGuard product's server
    # gets its WireGuard keys now, with a peer for every device.
    _vpn_state(ctx, row)
    row.instance_label = ctx.names.instance_label(row.id, row.generation)
    row.status = Status.INSTALLING.value
    return Next("instance", f"name {row.server_name}, label {row.instance_label}")


def ensure_instance(ctx: Context, row: Server) -> Next:
    """Create this generation's instance: one POST, never sent twice blindly.

    ``create_sent_generation`` is committed before the POST. Finding it equal to this
    generation means an earlier attempt may have created the instance (a crash, a timeout,
    a lost reply): only then does the step list by label and adopt what it finds. A first
    attempt costs exactly the POST."""
    label = ctx.names.instance_label(row.id, row.generation)
    row.instance_label = label
    if row.instance_id:
        return Next("boot")
    if row.create_sent_generation == row.generation:
        found = sorted(ctx.vultr.list_instances(label=label), key=lambda i: (i.date_created, i.id))
        if found:
            keep, extra = found[0], found[1:]
            for dup in extra:  # two instances for one label can only come from a lost reply; keep the oldest
                log.warning("server %s: deleting duplicate instance %s with label %s", row.server_name, dup.id,
                            label)
                ctx.vultr.delete_instance(dup.id)
            row.instance_id = keep.id
            return Next("boot", f"adopted instance {keep.id} ({label})")
    product = ctx.settings.product(row.product_id)
    if product is None:
        raise PermanentStepError(f"product {row.product_id} is not configured in [products]")
    from provisioner.cloudinit import HostKey, render_user_data

    secrets = ServerSecrets.open(ctx.box, row.secrets_enc or "")
    user_data = render_user_data(HostKey(private_pem=secrets.host_private, public_line=secrets.host_public),
                                 [ctx.worker_public_key], hostname=row.server_name or label)
    region = row.target_location or product.default_region
    try:
        os_id = ctx.vultr.os_id(product.os)   # the catalogue is cached: one GET /os an hour
        row.create_sent_generation = row.generation
        _commit(row)
        inst = ctx.vultr.create_instance(label, region=region, plan=product.plan, user_data=user_data,
                                         tags=[ctx.settings.vultr.tag], os_id=os_id,
                                         ssh_key_ids=ctx.settings.vultr.ssh_key_ids,
                                         hostname=(row.server_name or label).split(".")[0])
    except VultrNotFound as exc:
        raise PermanentStepError(f"Vultr does not offer what product {product.id} asks for: {exc}") from exc
    except VultrPermanent as exc:
        raise PermanentStepError(f"Vultr refused to create the server in {region}: {exc}") from exc
    except ProviderError as exc:
        if not exc.outcome_unknown:   # a 429 or a refused connection: certainly not created
            row.create_sent_generation = None
        raise
    ctx.crash(f"{row.action}.instance:posted")
    # Saved in its own commit at once: the id is the only handle on something we pay for.
    row.instance_id = inst.id
    if inst.default_password:
        row.root_password_enc = ctx.box.seal(inst.default_password.encode())
    _commit(row)
    wait = ctx.boots.started(inst.id, ctx.settings.lifecycle.poll_seconds)
    return Next("boot", f"created instance {inst.id} in {region}",
                not_before=ctx.clock() + dt.timedelta(seconds=wait))


def boot(ctx: Context, row: Server) -> Next:
    held = ctx.boots.hold_back(row.instance_id or "")
    if held > 0:   # the other instances created here say this one is still booting: no call yet
        raise Wait(held, f"instance {row.instance_id} boot (not polled: others created here took longer)")
    try:
        inst = ctx.vultr.get_instance(row.instance_id or "")
    except VultrNotFound:
        # Gone behind our back (or never recorded): make it again under the same label.
        detail = f"instance {row.instance_id} disappeared; creating it again"
        if row.instance_id:
            ip_history.closed(_session(row), row.id, ctx.clock(), row.instance_id)
        row.instance_id = None
        return Next("instance", detail)
    if not inst.is_ready:
        ctx.boots.not_yet(inst.id)
        raise Wait(ctx.settings.lifecycle.poll_seconds, f"instance {inst.id} boot ({inst.status}/{inst.server_status})")
    ctx.boots.ready(inst.id)
    if row.action == "rebuild":
        row.new_ip = inst.main_ip       # the customer keeps seeing the old one until DNS moves
    else:
        row.server_ip = inst.main_ip
    ip_history.opened(_session(row), row, inst.main_ip, inst.id, ctx.clock())
    return Next("install", f"instance {inst.id} is up at {inst.main_ip}")


def install(ctx: Context, row: Server) -> Next:
    from provisioner.vpn import config as vpn_config
    from provisioner.vpn.pki import FIRST_DEVICE_ID

    secrets, offered = _vpn_state(ctx, row)
    # The product's VPNs from the stored state (the PKI with its CRL, the WireGuard keys and
    # peers), then the customer's keys and login mode.
    ctx.remote.run(_host(ctx, row, row.new_ip or row.server_ip, secrets),
                   access.install_runs(_session(row), row, secrets, offered), after_boot=True)
    access.shipped(row)
    access.record_installed(row, offered)
    pki = secrets.openvpn()
    # the first device's .ovpn, unless the customer revoked it (or the product offers no OpenVPN)
    if access.OPENVPN in offered and pki.device(FIRST_DEVICE_ID).key_pem:
        ovpn = vpn_config.render_client_ovpn(pki, row.server_name or "")
        vpn_config.validate_ovpn(ovpn)
        row.ovpn_file_enc = ctx.box.seal(ovpn)
    daemons = " and ".join(access.PROTOCOL_NAMES[p] for p in offered)
    return Next("dns", f"{daemons} installed and active; the customer's SSH access applied")


def _vpn_state(ctx: Context, row: Server) -> tuple[ServerSecrets, tuple[str, ...]]:
    """The row's secrets with what its product offers ready (WireGuard keys the first time it
    offers WireGuard, a peer for every device), every device with its rows, and the protocols."""
    offered = access.protocols(ctx.settings, row)
    secrets = ServerSecrets.open(ctx.box, row.secrets_enc or "")
    ready = access.ensure_wireguard(secrets, row.server_name or "", offered, ctx.clock())
    if ready is not secrets:
        row.secrets_enc = ready.seal(ctx.box)
    access.sync_devices(_session(row), row, ready, offered, ctx.clock())
    return ready, offered


_ACCESS_LISTS = {access.OPENVPN: "CRL", access.WIREGUARD: "WireGuard peers"}


def point_dns(ctx: Context, row: Server) -> Next:
    detail = ""
    if row.action == "rebuild":  # the name moves: so do the address and the location the customer sees
        detail = "; " + history.moved(row.current_location, row.target_location)
        row.server_ip, row.new_ip = row.new_ip or row.server_ip, None
        row.current_location = row.target_location
    # One write on the happy path: PUT the record we made before (a rebuild), or POST a new one.
    row.dns_record_id = ctx.dns.point_a(row.server_name, row.server_ip, row.dns_record_id)
    return Next("snapshot" if row.action == "create" else "carry", f"{row.server_name} → {row.server_ip}{detail}")


def snapshot(ctx: Context, row: Server) -> Next:
    if not ctx.settings.lifecycle.snapshots:
        return Next("finish")
    if row.snapshot_id:
        snap = ctx.vultr.get_snapshot(row.snapshot_id)
    else:
        description = ctx.names.snapshot_description(row.id)
        existing = ctx.vultr.list_snapshots(description=description)
        snap = existing[0] if existing else ctx.vultr.create_snapshot(row.instance_id or "", description)
        row.snapshot_id = snap.id
        _commit(row)
    if snap.status != "complete":
        raise Wait(ctx.settings.lifecycle.poll_seconds, f"snapshot {snap.id}")
    return Next("finish", f"snapshot {snap.id} complete")


def finish(ctx: Context, row: Server) -> Next:
    row.status = Status.RUNNING.value
    row.current_location = row.target_location
    if row.action == "rebuild":
        row.last_rebuilt_at = ctx.clock()
    return Next(None, f"running in {row.current_location}")


# --- rebuild -----------------------------------------------------------------------------------

def carry_bandwidth(ctx: Context, row: Server) -> Next:
    """Add the old instance's traffic this month to the carried total (same commit as the step)."""
    detail = ""
    if row.old_instance_id:
        try:
            days = ctx.vultr.bandwidth(row.old_instance_id)
        except VultrNotFound:
            days = {}
        used = bandwidth.carry(row, days, ctx.clock())
        bandwidth.record_days(_session(row), row.id, row.old_instance_id, days, bandwidth.month_of(ctx.clock()))
        detail = f"carried {used} bytes from instance {row.old_instance_id}"
    # Resolvers may still hand out the old address until the TTL runs out.
    return Next("retire", detail,
                not_before=ctx.clock() + dt.timedelta(seconds=ctx.settings.lifecycle.retire_delay_seconds))


def retire(ctx: Context, row: Server) -> Next:
    detail = ""
    if row.old_instance_id:
        _delete_ours(ctx, row, row.old_instance_id)
        ip_history.closed(_session(row), row.id, ctx.clock(), row.old_instance_id)
        detail = f"deleted old instance {row.old_instance_id}"
        row.old_instance_id = None
    return Next("finish", detail)


# --- destroy -----------------------------------------------------------------------------------

def delete_instances(ctx: Context, row: Server) -> Next:
    """By the stored ids: O(1) calls whatever the fleet's size. A create POST whose instance
    id was never recorded (``create_sent_generation`` set, no ``instance_id``) may have left
    an instance: that generation's label is looked up, one filtered list call."""
    ids = {i for i in (row.instance_id, row.old_instance_id) if i}
    if row.create_sent_generation is not None and not row.instance_id:
        label = ctx.names.instance_label(row.id, row.create_sent_generation)
        ids |= {i.id for i in ctx.vultr.list_instances(label=label) if ctx.names.is_servers_instance(i.label, row.id)}
    for instance_id in sorted(ids):
        _delete_ours(ctx, row, instance_id)
    ip_history.closed(_session(row), row.id, ctx.clock())
    row.instance_id = row.old_instance_id = row.create_sent_generation = None
    return Next("dns", f"deleted {len(ids)} instance(s)")


def delete_dns(ctx: Context, row: Server) -> Next:
    if row.dns_record_id:
        ctx.dns.delete(row.dns_record_id)
    if row.server_name:
        for rec in ctx.dns.list_by_name(row.server_name):
            ctx.dns.delete(rec.id)
    row.dns_record_id = None
    return Next("snapshot")


def delete_snapshot(ctx: Context, row: Server) -> Next:
    ids = {row.snapshot_id} if row.snapshot_id else set()
    description = ctx.names.snapshot_description(row.id)
    ids |= {s.id for s in ctx.vultr.list_snapshots(description=description)}
    for sid in sorted(ids):
        ctx.vultr.delete_snapshot(sid)
    row.snapshot_id = None
    return Next("wipe")


def wipe(ctx: Context, row: Server) -> Next:
    """The end of a destroy. The server's name and sealed PKI (with its SSH host key, its devices
    and the customer's SSH keys) stay for ``lifecycle.keep_identity_days``: a renewal within them
    revives the server with the same ``.ovpn`` (:func:`provisioner.actions.begin_create`); then
    ``expire_identities`` wipes them. A server an operator took down keeps them until released.
    The root password and the sealed ``.ovpn`` go now (the ``.ovpn`` is rebuilt, byte for byte,
    from the PKI)."""
    now = ctx.clock()
    keep = dt.timedelta(days=ctx.settings.lifecycle.keep_identity_days)
    row.ovpn_file_enc = row.root_password_enc = None
    row.server_ip = row.new_ip = row.vpn_protocols = None
    row.access_pending_since, row.restart_pending = None, False
    row.status = Status.DESTROYED.value
    row.destroyed_at = now
    if row.on_hold:
        # Taken down by an operator, not ended: `provisioner release` builds it again with this PKI,
        # so the customer's .ovpn (rendered from it again, byte for byte) keeps working.
        row.identity_kept_until = None
        return Next(None, "instance, DNS record and snapshot removed; PKI kept until the operator releases it")
    if keep and row.secrets_enc:
        row.identity_kept_until = now + keep
        return Next(None, f"instance, DNS record, snapshot and password removed; name and PKI kept until "
                          f"{row.identity_kept_until:%Y-%m-%d %H:%M} UTC for a renewal")
    access.wipe_identity(_session(row), row)
    return Next(None, "instance, DNS record, snapshot and secrets removed")


def _delete_ours(ctx: Context, row: Server, instance_id: str) -> None:
    """Delete by stored id, after checking the instance really is one of this server's."""
    try:
        inst = ctx.vultr.get_instance(instance_id)
    except VultrNotFound:
        return
    if not ctx.names.is_servers_instance(inst.label, row.id):
        raise PermanentStepError(f"instance {instance_id} is labelled {inst.label!r}, not one of this server's; "
                                 "refusing to delete it")
    ctx.vultr.delete_instance(instance_id)


# --- sync and restart: short actions on a running server ------------------------------------------

def push(ctx: Context, row: Server) -> Next:
    """Send the running server the customer's latest CRL, WireGuard peers and SSH access (all idempotent)."""
    revision = row.access_revision
    # A protocol the product gained since the install gets its keys now and is installed first.
    secrets, offered = _vpn_state(ctx, row)
    before = access.installed(row)
    runs = access.push_runs(_session(row), row, secrets, offered)
    ctx.remote.run(_host(ctx, row, row.server_ip, secrets), runs)
    # Recorded in the same commit as the step: if the customer changed something meanwhile, the
    # row's version moved, this commit fails, and the step runs again with the newer state.
    access.shipped(row)
    now_has = [*before, *(p for p in offered if p not in before)]
    access.record_installed(row, now_has)
    gained = [access.PROTOCOL_NAMES[p] for p in now_has if p not in before]
    lists = ", ".join(_ACCESS_LISTS[p] for p in now_has)
    done = f"{' and '.join(gained)} installed; " if gained else ""
    return Next(None, f"{done}{lists} and SSH access applied (revision {revision})")


def reboot(ctx: Context, row: Server) -> Next:
    ctx.vultr.reboot_instance(row.instance_id or "")
    return Next("settle", f"instance {row.instance_id} rebooting",
                not_before=ctx.clock() + dt.timedelta(seconds=ctx.settings.lifecycle.poll_seconds))


def settle(ctx: Context, row: Server) -> Next:
    """Back when it answers SSH with its own host key again (until the step's deadline)."""
    secrets = ServerSecrets.open(ctx.box, row.secrets_enc or "")
    try:
        ctx.remote.probe(_host(ctx, row, row.server_ip, secrets))
    except (SSHUnreachable, SSHTimeout) as exc:
        raise Wait(ctx.settings.lifecycle.poll_seconds, f"the server to come back ({exc})") from None
    row.status = Status.RUNNING.value
    return Next(None, "the server answers again")


def _host(ctx: Context, row: Server, ip: str | None, secrets: ServerSecrets) -> Host:
    if not ip:
        raise PermanentStepError(f"server {row.server_name} has no address to connect to")
    return Host(ip, ctx.settings.ssh.port, secrets.host_public)


def _commit(row: Server) -> None:
    session = object_session(row)
    if session is not None:
        session.commit()


def _session(row: Server) -> Session:
    """The row's session: what a step records beside the row lands in the step's own commit."""
    session = object_session(row)
    if session is None:
        raise RuntimeError("a step's row must belong to a session")
    return session


Step = Callable[[Context, Server], Next]

STEPS: dict[str, dict[str, Step]] = {
    "create": {"prepare": prepare, "instance": ensure_instance, "boot": boot, "install": install,
               "dns": point_dns, "snapshot": snapshot, "finish": finish},
    "rebuild": {"instance": ensure_instance, "boot": boot, "install": install, "dns": point_dns,
                "carry": carry_bandwidth, "retire": retire, "finish": finish},
    "destroy": {"instances": delete_instances, "dns": delete_dns, "snapshot": delete_snapshot, "wipe": wipe},
    "sync": {"push": push},
    "restart": {"reboot": reboot, "settle": settle},
}
