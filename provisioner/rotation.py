"""Key rotation: re-seal every stored secret under the first Fernet key.

The procedure (README "Rotating the encryption key"): put a new key first in
``secrets.fernet_keys`` and keep the old ones after it, restart the worker and the API (they
then seal with the new key and still open the old tokens), run :func:`rotate`, then drop the
old key and restart again.

:func:`rotate` walks every column listed in :data:`provisioner.models.SEALED_COLUMNS` in
primary-key batches, one commit per batch. A token the first key already opens is left
alone, so an interrupted run simply starts again and skips what is done. Each write is a
compare-and-set on the token it read (``UPDATE … WHERE id = ? AND col = <old token>``),
without touching the row's ``version``: a worker busy with the row is not fenced out, and a
token the worker rewrote meanwhile is not overwritten but looked at again in a later pass.
Tokens are never logged or printed; only table, column and row ids are.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Column, Table, select, update
from sqlalchemy.orm import Session, sessionmaker

from provisioner.models import SEALED_COLUMNS
from provisioner.secrets import SecretBox, UndecryptableSecret

log = logging.getLogger(__name__)

MAX_PASSES = 3


@dataclass
class ColumnReport:
    resealed: int = 0
    current: int = 0                                   # under the first key at the end
    unreadable: list[Any] = field(default_factory=list)  # primary keys of tokens no key opens
    stale: int = 0                                     # left under an old key after the last pass


@dataclass
class RotationReport:
    columns: dict[str, ColumnReport] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        """Every stored secret opens with the first key alone."""
        return all(not c.unreadable and not c.stale for c in self.columns.values())


def sealed_columns(columns: Iterable[Any] = SEALED_COLUMNS) -> list[tuple[str, Table, Column[Any], Column[Any]]]:
    """(``table.column``, table, its one-column primary key, the sealed column) for each."""
    out = []
    for attr in columns:
        col = attr.property.columns[0]
        table = col.table
        (pk,) = table.primary_key.columns
        out.append((f"{table.name}.{col.name}", table, pk, col))
    return out


def rotate(sessions: sessionmaker[Session], box: SecretBox, *, batch: int = 200,
           columns: Iterable[Any] = SEALED_COLUMNS,
           progress: Callable[[str, ColumnReport], None] = lambda name, report: None) -> RotationReport:
    report = RotationReport()
    cols = sealed_columns(columns)
    for name, *_ in cols:
        report.columns[name] = ColumnReport()
    for _ in range(MAX_PASSES):
        changed = 0
        for name, table, pk, col in cols:
            changed += _pass(sessions, box, table, pk, col, report.columns[name], batch, _named(progress, name))
        if not changed:
            break
    for name, _table, pk, col in cols:  # the outcome, and what a process sealing with an old key wrote meanwhile
        _final_count(sessions, box, pk, col, batch, report.columns[name])
    return report


def _named(progress: Callable[[str, ColumnReport], None], name: str) -> Callable[[ColumnReport], None]:
    return lambda report: progress(name, report)


def _batches(sessions: sessionmaker[Session], pk: Column[Any], col: Column[Any],
             batch: int) -> Iterator[tuple[Session, list[tuple[Any, str]]]]:
    """The column's tokens in primary-key order, ``batch`` rows at a time, each batch with an
    open session (what it writes is committed by the caller before the next batch)."""
    last = None
    while True:
        with sessions() as s:
            q = select(pk, col).where(col.is_not(None)).order_by(pk).limit(batch)
            if last is not None:
                q = q.where(pk > last)
            rows = [(key, token) for key, token in s.execute(q).tuples()]
            if not rows:
                return
            yield s, rows
        last = rows[-1][0]


def _pass(sessions: sessionmaker[Session], box: SecretBox, table: Table, pk: Column[Any], col: Column[Any],
          report: ColumnReport, batch: int, progress: Callable[[ColumnReport], None]) -> int:
    """One walk over a column; how many tokens it re-sealed."""
    resealed = 0
    unreadable = set(report.unreadable)
    for s, rows in _batches(sessions, pk, col, batch):
        for key, token in rows:
            if box.sealed_with_primary(token):
                continue
            try:
                fresh = box.rotate(token)
            except UndecryptableSecret:
                if key not in unreadable:
                    unreadable.add(key)
                    report.unreadable.append(key)
                    log.error("%s of row %s cannot be opened with any configured key", col, key)
                continue
            result = s.execute(update(table).where(pk == key, col == token).values({col.name: fresh}))
            if getattr(result, "rowcount", 0):
                resealed += 1
                report.resealed += 1
        s.commit()
        progress(report)
    return resealed


def _final_count(sessions: sessionmaker[Session], box: SecretBox, pk: Column[Any], col: Column[Any], batch: int,
                 report: ColumnReport) -> None:
    unreadable = set(report.unreadable)
    for _, rows in _batches(sessions, pk, col, batch):
        for key, token in rows:
            if box.sealed_with_primary(token):
                report.current += 1
            elif key not in unreadable:
                report.stale += 1
