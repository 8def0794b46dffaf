"""SIMULATOR ONLY: the seam between the simulated Vultr cloud and simulated hosts.

The Vultr simulator calls a :class:`HostRunner` when an instance becomes reachable
(booted and running: ``start``) and when it stops being reachable (halted, rebooting,
reinstalling or deleted: ``stop``).  ``start`` may be called again for the same id after
the sandbox restarts; implementations must treat it as "make sure it runs".
Calls come from a sandbox thread, never while the simulator holds its state lock.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

log = logging.getLogger(__name__)


class HostRunner(Protocol):
    # user_data = decoded cloud-config; root_password = the one the create reply gave (password login)
    def start(self, instance_id: str, ip: str, user_data: str, root_password: str = "") -> None: ...

    def stop(self, instance_id: str) -> None: ...

    def set_fault(self, target: str, kind: str, **params: Any) -> None: ...  # ValueError: unknown fault

    def clear_faults(self) -> None: ...


class NoopHostRunner:
    """No hosts at all: instances boot on paper only."""

    def set_fault(self, target: str, kind: str, **params: Any) -> None:
        raise ValueError("this sandbox runs no simulated hosts (started with --no-hosts)")

    def clear_faults(self) -> None:
        return None

    def start(self, instance_id: str, ip: str, user_data: str, root_password: str = "") -> None:
        log.debug("sandbox host %s would start on %s", instance_id, ip)

    def stop(self, instance_id: str) -> None:
        log.debug("sandbox host %s would stop", instance_id)
