"""What the catalog needs of its database beyond portable SQL: upserts, the schema-upgrade
lock, and the translation of database errors into CatalogError. SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Sequence

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
    detail = str(getattr(error, "orig", None) or error).splitlines()[0]
    where = _shown(url)
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
    if opening:
        return CatalogError(f"cannot open the catalog at {where}: {detail}")
    return CatalogError(
        f"catalog error at {where}: {detail}; run `searchengine check` to see the home's state"
    )


def _shown(url: str) -> str:
    """The URL as shown to a person: a SQLite file's path, any other URL without its password."""
    if url.startswith("sqlite:///"):
        return url.removeprefix("sqlite:///")
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


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
