"""Notifications: :mod:`.enqueue` decides what to tell whom and writes it to the outbox in
the caller's transaction; :mod:`.outbox` sends it (retries, backoff, never twice)."""

from provisioner.notify.enqueue import KINDS, enqueue, render, templates

__all__ = ["KINDS", "enqueue", "render", "templates"]
