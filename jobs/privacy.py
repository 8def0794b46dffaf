"""``purge_ip_history``: forget who held an address once that is older than the retention.

Holdings (:mod:`provisioner.ip_history`) that ended more than ``privacy.ip_history_days``
ago are deleted, daily. Open holdings (addresses servers hold now) are kept.
"""

from __future__ import annotations

from dataclasses import dataclass

from provisioner import ip_history
from provisioner.wiring import App


@dataclass
class PurgeReport:
    deleted: int
    days: int

    def summary(self) -> str:
        return f"{self.deleted} address holding(s) older than {self.days} days deleted"


def purge_ip_history(app: App) -> PurgeReport:
    days = app.settings.privacy.ip_history_days
    with app.sessions() as s:
        deleted = ip_history.purge(s, app.clock(), days)
        s.commit()
    return PurgeReport(deleted, days)
