"""What the catalog needs of its database beyond portable SQL: its engine (SQLite's pragmas,
PostgreSQL's connection options), upserts, the schema-upgrade lock, and the translation of
database errors into CatalogError that says what to do. SQLite and PostgreSQL."""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Sequence

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine as SqlEngine
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from searchengine.errors import CatalogError

_UPGRADE_LOCK_KEY = 0x5EA4C4  # PostgreSQL advisory lock id of schema upgrades


def current_revision(connection) -> str:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision() or "base"


def lock_schema(connection) -> None:
    """Take the database-wide lock that serialises schema upgrades, until the transaction ends.

    SQLite: BEGIN IMMEDIATE takes the single writer lock (a second process waits busy_timeout).
    PostgreSQL: a transaction-scoped advisory lock. Other databases run the upgrade unguarded.
    """
    dialect = connection.dialect.name
    if dialect == "sqlite":
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    elif dialect == "postgresql":
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_UPGRADE_LOCK_KEY})")


def catalog_error(url: str, error: SQLAlchemyError, *, opening: bool = False) -> CatalogError:
    """The library's error for a database failure, with what a person can do about it."""
    detail = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
    where = shown_url(url)
    if isinstance(error, OperationalError) and "locked" in detail:
        return CatalogError(
            f"the catalog at {where} stayed locked by another process ({detail}); wait for the "
            "other searchengine command to finish, then run this one again"
        )
    if isinstance(error, IntegrityError):
        return CatalogError(
            f"the catalog at {where} refused a write ({detail}); another process may have "
            "changed it at the same moment: run the command again, then `searchengine check`"
        )
    advice = _server_advice(url, detail)
    if opening:
        return CatalogError(f"cannot open the catalog at {where}: {detail}" + (
            f"; {advice}" if advice else ""))
    return CatalogError(f"catalog error at {where}: {detail}; " + (
        advice or "run `searchengine check` to see the home's state"))


_UNREACHABLE = ("connection refused", "could not translate host name", "timeout expired",
                "no such file or directory", "network is unreachable", "no route to host",
                "name or service not known", "connection timed out")
_LOST = ("server closed the connection", "terminating connection", "connection is closed",
         "consuming input failed", "connection is lost")
_CONFLICT = ("deadlock detected", "could not serialize")


def _server_advice(url: str, detail: str) -> str | None:
    """What to do about a PostgreSQL server's answer `detail`, or None for other errors."""
    if not url.startswith("postgres"):
        return None
    text = detail.lower()
    if "password" in text and ("authentication failed" in text or "no password" in text):
        return "check the user name and password (in the URL, in PGPASSWORD or in ~/.pgpass)"
    missing = re.search(r'\b(role|database) "[^"]*" does not exist', text)
    if missing and missing.group(1) == "role":
        return "check the user name in the URL: the server has no such role"
    if missing:
        return ("create the database first (`createdb NAME`, or CREATE DATABASE NAME as a user "
                "who may), or correct its name in the URL")
    if any(part in text for part in _UNREACHABLE):
        return "check that the PostgreSQL server runs and that the URL's host and port reach it"
    if any(part in text for part in _LOST):
        return ("the connection to the PostgreSQL server was lost; what was committed is kept: "
                "run the command again once the server is back")
    if any(part in text for part in _CONFLICT):
        return ("another process wrote the same rows at the same moment and nothing of this "
                "transaction was stored: run the command again")
    return None


# SQLSTATEs of transactions PostgreSQL ended for meeting another's, which stored nothing
_RETRYABLE = ("40P01", "40001")  # deadlock_detected, serialization_failure


def retryable(error: SQLAlchemyError) -> bool:
    """Whether `error` ended a transaction that may simply run again (a deadlock)."""
    return getattr(getattr(error, "orig", None), "sqlstate", None) in _RETRYABLE


def shown_url(url: str) -> str:
    """The URL as shown to a person: a SQLite file's path, any other URL without its password."""
    if url.startswith("sqlite:///"):
        return url.removeprefix("sqlite:///")
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "a URL that is not a database URL"


URL_FORMS = "sqlite:///PATH or postgresql+psycopg://USER@HOST[:PORT]/DATABASE"


def database_url(url: str) -> str:
    """`url` checked and normalised: PostgreSQL's plain forms (postgresql://, postgres://) go
    through psycopg (v3). Raises CatalogError for text that is no URL of a supported database."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        shown = "***@" + url.rsplit("@", 1)[1] if "@" in url else url  # no password shows
        raise CatalogError(
            f"the catalog {shown!r} is not a database URL; give {URL_FORMS}"
        ) from None
    backend = parsed.get_backend_name()
    if backend == "postgres" or parsed.drivername == "postgresql":
        return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    if backend not in ("sqlite", "postgresql"):
        raise CatalogError(
            f"the catalog supports SQLite and PostgreSQL, not {backend}; give {URL_FORMS}"
        )
    return url  # as given: a SQLite path keeps its exact spelling


def engine_options(url: str) -> dict:
    """create_engine options for `url`: a PostgreSQL connection gives up after 10 s on an
    unreachable host (libpq waits minutes), and a pooled one is tested before use (a long `serve`
    outlives server restarts). Options set in the URL's query win."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        return {}
    defaults = {"connect_timeout": 10, "application_name": "searchengine"}
    return {
        "pool_pre_ping": True,
        "connect_args": {k: v for k, v in defaults.items() if k not in parsed.query},
    }


def driver_missing(url: str, error: ImportError) -> CatalogError:
    """The error for a database driver that is not installed."""
    if url.startswith("postgresql"):
        return CatalogError(
            f"a PostgreSQL catalog needs the psycopg package ({error}); install it with "
            "`pip install 'searchengine[postgres]'`"
        )
    return CatalogError(f"cannot load the database driver for {shown_url(url)} ({error})")


def upsert(session: Session, table):
    """INSERT for `table` with ON CONFLICT clauses (SQLite and PostgreSQL spell them alike)."""
    dialect = session.get_bind().dialect.name
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table)
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as postgresql_insert

        return postgresql_insert(table)
    raise CatalogError(f"the catalog supports SQLite and PostgreSQL, not {dialect}")


def excluded(statement, columns: Sequence[str]) -> dict:
    """SET column = excluded.column for an ON CONFLICT DO UPDATE."""
    return {column: statement.excluded[column] for column in columns}


_BUSY_TIMEOUT_MS = 30_000  # how long a statement waits for another connection's lock
# SQLite's page size for new catalogs: a 512-d float16 vector row (~1.04 KB) fits 3 times in a
# 4 KB page (1.39 KB a vector on disk) and 15 times in 16 KB (1.12 KB). Existing files keep theirs.
_PAGE_SIZE = 16_384


def _use_wal(cursor) -> None:
    """Switch the file to WAL mode (a no-op once it is). On a new file that needs an exclusive
    lock, and SQLite answers a second process asking at the same moment with "database is
    locked" at once, without waiting (waiting could deadlock both): ask again, for up to the
    busy timeout, as two commands opening one new home at once must both succeed."""
    deadline = time.monotonic() + _BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def create_catalog_engine(url: str, *, read_only: bool = False) -> SqlEngine:
    """The SQLAlchemy engine of a catalog, connected once: SQLite in WAL mode with its busy
    timeout and foreign keys, PostgreSQL through psycopg with `engine_options`. Raises
    CatalogError, saying what to do, when the driver is missing or no connection opens."""
    try:
        engine = create_engine(url, **engine_options(url))
    except ImportError as error:
        raise driver_missing(url, error) from error
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection, _record) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
            if not read_only:  # the journal mode of a read-only file is what it is
                cursor.execute(f"PRAGMA page_size={_PAGE_SIZE}")  # a new file only (before WAL)
                _use_wal(cursor)
                cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

    try:
        with engine.connect():
            pass
    except OperationalError as error:
        engine.dispose()
        raise catalog_error(url, error, opening=True) from error
    return engine


