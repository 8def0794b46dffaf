"""The orphan sweep: find provider resources of ours that no live server row references.

What is "ours":

- Vultr instances carrying ``vultr.tag``;
- Vultr snapshots whose description starts with ``"<vultr.label_prefix>-"``;
- Cloudflare A records named like our servers: ``<planner.server_name_prefix><digits>.<cloudflare.domain>``.
  Deliberately narrower than "anything under the domain": the domain is often the
  shop's own (the seed's ``g012.ghostifi.net`` next to ``www.ghostifi.net``), and the
  sweeper must never touch a record the worker could not have made.

What is referenced: anything named by a *live* row (status not ``Destroyed``; rows in
the middle of an action count): ``instance_id`` / ``old_instance_id``,
``dns_record_id`` or an A record named ``server_name``, ``snapshot_id``. A row with an
action in progress also owns every instance labelled ``<prefix>-<id>-g<n>`` and the
snapshot described ``<prefix>-<id>-snapshot``: a create whose reply was lost leaves
exactly those behind, and the lifecycle adopts them by name.

Order matters: the providers are listed *before* the rows are read. The lifecycle
records a row's intent before it creates anything, so every resource in the listing
has its row in the read that follows.

Each unreferenced resource becomes an :class:`~provisioner.models.Orphan`: reported
(WARNING) on first sight, ``sightings`` counted on every later sweep, and deleted through
the adapter once ``sightings >= worker.sweep_delete_after_sightings`` if that setting is
above 0 (the default 0 only reports). A resource that is referenced again, or has gone,
is forgotten; one we deleted keeps its row (``deleted_at``) for the audit.

If any listing fails the sweep is incomplete and changes nothing: no sightings, no
deletes -- never act on a partial view.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from provisioner.cloud.cloudflare import CloudflareError
from provisioner.cloud.vultr import VultrError
from provisioner.models import Orphan, Server, Status
from provisioner.settings.schema import Settings

log = logging.getLogger(__name__)

KINDS = ("instance", "dns", "snapshot")


class SweepCloud(Protocol):
    """What the sweep needs of :class:`provisioner.cloud.vultr.VultrCloud`."""

    def list_instances(self, *, label: str | None = None, tag: str | None = None) -> list[Any]: ...
    def list_snapshots(self, description: str | None = None) -> list[Any]: ...
    def delete_instance(self, instance_id: str) -> bool: ...
    def delete_snapshot(self, snapshot_id: str) -> bool: ...


class SweepDNS(Protocol):
    """What the sweep needs of :class:`provisioner.cloud.cloudflare.CloudflareDNS`."""

    def list_records(self, name_suffix: str | None = None) -> list[Any]: ...
    def delete(self, record_id: str) -> bool: ...


@dataclass(frozen=True)
class Resource:
    kind: str          # instance | dns | snapshot
    provider_id: str
    label: str         # instance label, record name, snapshot description


@dataclass
class SweepReport:
    complete: bool = True
    error: str | None = None
    listed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    new: list[Resource] = field(default_factory=list)        # first seen this sweep
    orphans: int = 0                                         # known, not deleted, after this sweep
    deleted: list[Resource] = field(default_factory=list)
    delete_failed: int = 0
    forgotten: int = 0                                       # referenced again, or gone by themselves

    @property
    def did_work(self) -> bool:
        return bool(self.new or self.deleted or self.forgotten or self.delete_failed)

    def summary(self) -> str:
        if not self.complete:
            return f"incomplete, nothing changed: {self.error}"
        listed = ", ".join(f"{n} {k}(s)" for k, n in self.listed.items())
        return (f"listed {listed}; {len(self.new)} new orphan(s), {self.orphans} known, {len(self.deleted)} deleted, "
                f"{self.delete_failed} delete(s) failed")


@dataclass
class _Live:
    instances: set[str] = field(default_factory=set)
    records: set[str] = field(default_factory=set)
    names: set[str] = field(default_factory=set)
    snapshots: set[str] = field(default_factory=set)
    busy: set[int] = field(default_factory=set)      # rows with an action in progress


def sweep(session: Session, vultr: SweepCloud, dns: SweepDNS, settings: Settings, now: dt.datetime) -> SweepReport:
    """One sweep (see the module docstring). Commits its own bookkeeping."""
    if now.tzinfo is None:
        raise ValueError("sweep() needs an aware datetime")
    report = SweepReport()
    try:
        found = _list_ours(vultr, dns, settings)
    except (VultrError, CloudflareError) as exc:
        report.complete, report.error = False, f"{type(exc).__name__}: {exc}"
        log.error("orphan sweep incomplete, nothing changed: listing failed: %s", report.error)
        return report
    for r in found:
        report.listed[r.kind] += 1
    live = _live(session)
    prefix = settings.vultr.label_prefix
    orphans = {(r.kind, r.provider_id): r for r in found if not _referenced(r, live, prefix)}

    known = {(o.kind, o.provider_id): o
             for o in session.scalars(select(Orphan).execution_options(populate_existing=True))}
    for key, row in known.items():
        if key in orphans:
            continue
        if row.deleted_at is None:  # referenced again, or removed by someone else: nothing to watch
            session.delete(row)
            report.forgotten += 1
            log.info("orphan %s %s (%s) is no longer an orphan; forgotten", row.kind, row.provider_id, row.label)
    for key, res in orphans.items():
        seen = known.get(key)
        if seen is None:
            session.add(Orphan(kind=res.kind, provider_id=res.provider_id, label=res.label[:191],
                               first_seen=now, last_seen=now, sightings=1))
            report.new.append(res)
            log.warning("orphan %s %s (%s): carries our tag/prefix but no live server references it",
                        res.kind, res.provider_id, res.label)
        else:
            seen.sightings += 1
            seen.last_seen, seen.label = now, res.label[:191]
            seen.deleted_at = None  # listed again after we deleted it: watch it again
    session.commit()

    threshold = settings.worker.sweep_delete_after_sightings
    for key, res in orphans.items():
        orphan = session.get(Orphan, key)
        if orphan is None:
            continue
        if threshold > 0 and orphan.sightings >= threshold:
            if _delete(vultr, dns, res):
                orphan.deleted_at = now
                report.deleted.append(res)
                session.commit()
                continue
            report.delete_failed += 1
        report.orphans += 1
    if report.did_work or report.orphans:
        log.info("orphan sweep: %d new, %d known, %d deleted, %d delete(s) failed, %d forgotten", len(report.new),
                 report.orphans, len(report.deleted), report.delete_failed, report.forgotten)
    return report


def _list_ours(vultr: SweepCloud, dns: SweepDNS, settings: Settings) -> list[Resource]:
    prefix = f"{settings.vultr.label_prefix}-"
    domain = settings.cloudflare.domain.lower().rstrip(".")
    name_re = re.compile(rf"{re.escape(settings.planner.server_name_prefix)}\d+\.{re.escape(domain)}")
    out = [Resource("instance", i.id, i.label) for i in vultr.list_instances(tag=settings.vultr.tag)]
    out += [Resource("dns", r.id, r.name) for r in dns.list_records(name_suffix=domain)
            if r.type == "A" and name_re.fullmatch(r.name)]
    out += [Resource("snapshot", s.id, s.description) for s in vultr.list_snapshots()
            if s.description.startswith(prefix)]
    return out


def _live(session: Session) -> _Live:
    live = _Live()
    q = select(Server.id, Server.action, Server.instance_id, Server.old_instance_id, Server.dns_record_id,
               Server.server_name, Server.snapshot_id).where(Server.status != Status.DESTROYED.value)
    for rid, action, inst, old, rec, name, snap in session.execute(q):
        live.instances.update(i for i in (inst, old) if i)
        if rec:
            live.records.add(rec)
        if name:
            live.names.add(name.lower())
        if snap:
            live.snapshots.add(snap)
        if action:
            live.busy.add(rid)
    return live


def _referenced(r: Resource, live: _Live, prefix: str) -> bool:
    if r.kind == "instance":
        if r.provider_id in live.instances:
            return True
        m = re.fullmatch(rf"{re.escape(prefix)}-(\d+)-g\d+", r.label)
        return m is not None and int(m.group(1)) in live.busy
    if r.kind == "dns":
        return r.provider_id in live.records or r.label.lower() in live.names
    if r.provider_id in live.snapshots:
        return True
    m = re.fullmatch(rf"{re.escape(prefix)}-(\d+)-snapshot", r.label)
    return m is not None and int(m.group(1)) in live.busy


def _delete(vultr: SweepCloud, dns: SweepDNS, r: Resource) -> bool:
    try:
        if r.kind == "instance":
            vultr.delete_instance(r.provider_id)
        elif r.kind == "dns":
            dns.delete(r.provider_id)
        else:
            vultr.delete_snapshot(r.provider_id)
    except (VultrError, CloudflareError) as exc:
        log.error("orphan %s %s (%s): delete failed, retried next sweep: %s", r.kind, r.provider_id, r.label, exc)
        return False
    log.warning("orphan %s %s (%s) deleted", r.kind, r.provider_id, r.label)
    return True
