"""Every job by name, and how often it runs: plain data, so the command line can list the
jobs without importing the scheduler or any adapter (``provisioner --help`` stays fast)."""

from __future__ import annotations

# The clock jobs the worker schedules (besides the planning tick, server_check).
CLOCK_JOBS = ("rebuild_daily", "rebuild_weekly", "rebuild_monthly", "reset_bandwidth_monthly", "sync_bandwidth",
              "sweep", "send_outbox", "purge_ip_history", "expire_identities")
NAMES = ("server_check", *CLOCK_JOBS)
