"""A records written by many servers' ``dns`` steps at once go to Cloudflare as one batch.

Cloudflare counts a request, not the records in it, against its 1,200 per 5 minutes: a burst
of new sales whose servers reach their ``dns`` step together would otherwise queue one write
per server behind the limiter (100 servers: ~20 s on top of the installs). :class:`DnsBatcher`
stands in for the adapter in the lifecycle's context; its :meth:`~DnsBatcher.point_a` is the
adapter's, with the same result and errors, but the writes that arrive while a request is in
flight (or waiting for the limiter) leave together in the next one (group commit: a write that
finds nothing in flight leaves at once, alone, as a plain ``point_a``; nothing waits for a
timer). A batch Cloudflare refuses or whose outcome is unknown is rolled back by Cloudflare as
a whole, and each of its writes is then made on its own through ``point_a``, which settles
"already exists" and "vanished" by reading back: the same end state as without batching.
Everything else passes through to the adapter.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from provisioner.cloud.cloudflare import MAX_BATCH, normal_name
from provisioner.cloud.errors import ProviderError

log = logging.getLogger(__name__)


@dataclass
class _Write:
    name: str
    ip: str
    record_id: str | None
    done: bool = False
    alone: bool = False               # the batch failed: write it on its own
    result: str | None = None
    error: BaseException | None = field(default=None, repr=False)


class DnsBatcher:
    """The DNS adapter, with :meth:`point_a` calls from concurrent threads batched."""

    def __init__(self, dns: Any) -> None:
        self._dns = dns
        self._cond = threading.Condition()
        self._queue: list[_Write] = []
        self._sending = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._dns, name)

    def __repr__(self) -> str:
        return f"batched({self._dns!r})"

    @property
    def queued(self) -> int:
        """Writes waiting for the request in flight to end."""
        with self._cond:
            return len(self._queue)

    def point_a(self, name: str, ip: str, record_id: str | None = None) -> str:
        """The adapter's ``point_a``: ``name`` resolves to ``ip``; returns the record id."""
        write = _Write(name, ip, record_id)
        with self._cond:
            self._queue.append(write)
        while not write.done:
            with self._cond:
                while self._sending and not write.done:
                    self._cond.wait()
                if write.done:
                    break
                self._sending = True      # nothing in flight: this thread sends what is queued
                batch = self._take()
            try:
                self._send(batch)         # holds this write, unless it waits for a later batch
            finally:
                with self._cond:
                    self._sending = False
                    self._cond.notify_all()
        if write.alone:
            result: str = self._dns.point_a(name, ip, record_id)
            return result
        if write.error is not None:
            raise write.error
        assert write.result is not None
        return write.result

    def _take(self) -> list[_Write]:
        """Up to the batch limit of the queued writes, each name once (a batch may not write a
        name twice); the rest stay queued in their order. Called holding the lock."""
        batch: list[_Write] = []
        names: set[str] = set()
        rest: list[_Write] = []
        for w in self._queue:
            key = normal_name(w.name)
            if len(batch) < MAX_BATCH and key not in names:
                names.add(key)
                batch.append(w)
            else:
                rest.append(w)
        self._queue = rest
        return batch

    def _send(self, batch: list[_Write]) -> None:
        try:
            if len(batch) == 1:
                one = batch[0]
                one.result = self._dns.point_a(one.name, one.ip, one.record_id)
            else:
                ids = self._dns.point_a_many([(w.name, w.ip, w.record_id) for w in batch])
                for w, record_id in zip(batch, ids, strict=True):
                    w.result = record_id
        except ProviderError as exc:
            if len(batch) == 1:
                batch[0].error = exc
            else:
                log.info("cloudflare: a batch of %d A records was not applied (%s); writing each on its own",
                         len(batch), exc)
                for w in batch:
                    w.alone = True
        except BaseException as exc:  # noqa: BLE001 - a bug or an interrupt: every waiter sees it
            for w in batch:
                w.error = exc
            raise
        finally:
            for w in batch:
                w.done = True
