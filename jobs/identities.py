"""``expire_identities``: wipe what a destroyed server kept for a late renewal.

A destroy keeps the server's name and sealed PKI for ``lifecycle.keep_identity_days``
(:func:`provisioner.steps.wipe`), so a customer who renews late gets the same ``.ovpn``
back. Once that time is up this job wipes the sealed PKI (the name stays: it is derived
from the row's id and names the audit trail). A renewal after the time gets a fresh PKI
even if this job has not run yet (:func:`provisioner.actions.begin_create`).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from provisioner import access
from provisioner.actions import record
from provisioner.models import Server, Status

log = logging.getLogger(__name__)


@dataclass
class IdentityReport:
    wiped: int = 0
    skipped: int = 0          # changed under us (a renewal revived it meanwhile)

    @property
    def failed(self) -> int:
        return 0

    def summary(self) -> str:
        return f"{self.wiped} kept identity(ies) wiped, {self.skipped} skipped"


def expire_identities(session: Session, now: dt.datetime) -> IdentityReport:
    report = IdentityReport()
    ids = list(session.scalars(select(Server.id).where(
        Server.status == Status.DESTROYED.value, Server.identity_kept_until.is_not(None),
        Server.identity_kept_until <= now)))
    for rid in ids:
        row = session.get(Server, rid)
        if row is None or row.status != Status.DESTROYED.value:
            continue
        access.wipe_identity(session, row)
        record(session, row, "identity.wiped", "info", "lifecycle.keep_identity_days passed: name kept; PKI, "
               "devices and SSH keys wiped",
               actor="worker", now=now)
        try:
            session.commit()
            report.wiped += 1
        except StaleDataError:
            session.rollback()
            report.skipped += 1
    return report
