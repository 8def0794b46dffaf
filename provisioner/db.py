"""Engines, sessions and schema migrations, for SQLite (embedded) and MySQL/MariaDB.

``upgrade(engine)`` runs the Alembic migrations shipped in ``provisioner/migrations``; it is
what ``provisioner db upgrade`` does, and it is safe to run at every start.
"""

from __future__ import annotations

import ast
import functools
import logging
import re
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"


class DatabaseUnavailable(RuntimeError):
    """The database cannot be reached or used; the message never includes the password."""


def safe_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(unparseable database url)"


def make_engine(url: str, *, echo: bool = False, concurrency: int = 0) -> Engine:
    """``concurrency``: how many threads of this process use the database at once (the worker's
    drive threads); the pool keeps a connection for each, and as many again for short bursts
    (their lease heartbeats, the clock's jobs). 0: SQLAlchemy's default pool (5 + 10)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise DatabaseUnavailable("database.url is not a valid SQLAlchemy URL "
                                  "(e.g. sqlite:///var/provisioner.db or mysql+pymysql://user:pw@host/db)") from None
    sqlite = parsed.get_backend_name() == "sqlite"
    # A ping before each checkout finds a server that dropped the connection; a SQLite file has no
    # server to lose, and the ping cost the worker ~2 % of its CPU in a burst of new servers.
    kwargs: dict[str, Any] = {"echo": echo, "pool_pre_ping": not sqlite}
    in_memory = sqlite and parsed.database in (None, "", ":memory:")
    if concurrency > 0 and not in_memory:   # an in-memory SQLite has one connection per thread, no queue
        # Fewer connections than threads makes the threads queue for one (32 drive threads on the
        # default 15 spent ~40 % of their time waiting in the pool).
        kwargs["pool_size"] = max(5, concurrency + 2)
        kwargs["max_overflow"] = max(10, concurrency)
    if sqlite:
        if not in_memory:
            Path(str(parsed.database)).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
    elif parsed.get_backend_name() in ("mysql", "mariadb"):
        kwargs["pool_recycle"] = 3600
        # read/write timeouts: a stalled server must fail a tick, not hang it forever
        kwargs["connect_args"] = {"connect_timeout": 10, "read_timeout": 60, "write_timeout": 60,
                                  "charset": "utf8mb4"}
        kwargs["isolation_level"] = "READ COMMITTED"
    try:
        engine = create_engine(parsed, **kwargs)
    except (SQLAlchemyError, ImportError) as exc:
        raise DatabaseUnavailable(f"cannot use database {safe_url(url)}: {type(exc).__name__}") from None
    if sqlite:
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets the API read while the worker writes; busy_timeout rides out short write locks.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def check_connection(engine: Engine) -> None:
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        raise DatabaseUnavailable(
            f"cannot connect to database {safe_url(str(engine.url.render_as_string(hide_password=False)))}: "
            f"{reason(exc)}") from None


def reason(exc: SQLAlchemyError) -> str:
    """The driver's own words for a database error, one line (never the URL or a password)."""
    orig = getattr(exc, "orig", None)
    if orig is not None and getattr(orig, "args", None):
        args = orig.args
        return str(args[1] if len(args) > 1 else args[0]).splitlines()[0]
    return type(exc).__name__


def session_factory(engine: Engine, info: dict[str, Any] | None = None) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False, info=info or {})


def upgrade(engine: Engine, revision: str = "head") -> None:
    _migrate(engine, revision, down=False)


def downgrade(engine: Engine, revision: str) -> None:
    """Roll the schema back to ``revision`` (every migration moves its data back too)."""
    _migrate(engine, revision, down=True)


def _migrate(engine: Engine, revision: str, *, down: bool) -> None:
    from alembic import command
    from alembic.config import Config

    check_connection(engine)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        (command.downgrade if down else command.upgrade)(cfg, revision)


def upgrade_if_needed(engine: Engine) -> bool:
    """:func:`upgrade` unless the database is already at the shipped head; True if it ran.

    The check reads the version table and the migration files' ids, without importing
    Alembic: a worker that starts on an up-to-date database never has Alembic (and Mako)
    resident for its whole life."""
    check_connection(engine)
    if current_revision(engine) in _heads() and len(_heads()) == 1:
        return False
    upgrade(engine)
    return True


_REVISION = re.compile(r"^revision\s*=\s*(.+)$", re.MULTILINE)
_DOWN = re.compile(r"^down_revision\s*=\s*(.+)$", re.MULTILINE)


@functools.lru_cache(maxsize=1)
def _heads() -> frozenset[str]:
    """The shipped migrations' heads: revisions no other migration names as its parent."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (MIGRATIONS / "versions").glob("*.py"):
        source = path.read_text(encoding="utf-8")
        rev, down = _REVISION.search(source), _DOWN.search(source)
        if rev is None:
            continue
        revisions.add(str(ast.literal_eval(rev.group(1).strip())))
        value = ast.literal_eval(down.group(1).strip()) if down else None
        parents.update(str(v) for v in (value if isinstance(value, tuple | list) else (value,)) if v)
    return frozenset(revisions - parents)


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        if not inspect(conn).has_table("provisioner_alembic_version"):
            return None
        return conn.execute(text("SELECT version_num FROM provisioner_alembic_version")).scalar()


def require_schema(engine: Engine) -> None:
    check_connection(engine)
    if current_revision(engine) is None:
        raise DatabaseUnavailable("the database has no provisioner schema yet; run `provisioner db upgrade`")
