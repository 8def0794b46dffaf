"""One leader: only one worker runs the clock and the planner.

- MySQL/MariaDB: ``GET_LOCK(name, 0)`` on a dedicated, never-pooled connection. MySQL
  releases it when that connection ends, however it ends, so a killed leader hands over.
  ``held()`` asks the server (``IS_USED_LOCK(name) = CONNECTION_ID()``); a dropped
  connection means the lock is lost.
- SQLite (one machine): an exclusive ``flock`` on ``worker.lock_file``; the kernel releases
  it when the process dies.

A worker that finds it no longer holds the lock stops all side effects and exits
(fail-stop): systemd restarts it as a follower.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

log = logging.getLogger(__name__)


class LeaderLock(Protocol):
    def acquire(self) -> bool: ...
    def held(self) -> bool: ...
    def release(self) -> None: ...


class MySQLLeaderLock:
    def __init__(self, engine: Engine) -> None:
        self._engine = create_engine(engine.url, poolclass=NullPool,
                                     connect_args={"connect_timeout": 10, "read_timeout": 30})
        self.name = f"provisioner:{engine.url.database}:leader"[:64]
        self._conn: Any = None

    def acquire(self) -> bool:
        if self._conn is not None:
            return self.held()
        try:
            conn = self._engine.connect()
            got = conn.execute(text("SELECT GET_LOCK(:n, 0)"), {"n": self.name}).scalar()
        except SQLAlchemyError as exc:
            log.warning("leader lock: cannot reach the database: %s", type(exc).__name__)
            return False
        if got == 1:
            self._conn = conn
            return True
        conn.close()
        return False

    def held(self) -> bool:
        if self._conn is None:
            return False
        try:
            mine = self._conn.execute(text("SELECT IS_USED_LOCK(:n) = CONNECTION_ID()"), {"n": self.name}).scalar()
        except SQLAlchemyError:
            self._drop()
            return False
        return bool(mine)

    def release(self) -> None:
        if self._conn is not None:
            try:
                self._conn.execute(text("SELECT RELEASE_LOCK(:n)"), {"n": self.name})
            except SQLAlchemyError:
                pass
            self._drop()

    def _drop(self) -> None:
        try:
            self._conn.close()
        except SQLAlchemyError:
            pass
        self._conn = None


class FileLeaderLock:
    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self) -> bool:
        if self._fd is not None:
            return self.held()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def held(self) -> bool:
        if self._fd is None:
            return False
        try:  # the file we lock must still be the one at the path (not deleted or replaced)
            return os.fstat(self._fd).st_ino == os.stat(self.path).st_ino
        except OSError:
            return False

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def leader_lock(engine: Engine, lock_file: str) -> LeaderLock:
    if engine.dialect.name in ("mysql", "mariadb"):
        return MySQLLeaderLock(engine)
    return FileLeaderLock(lock_file)
