"""The catalog: the durable source of truth for files, texts, models and their vectors.

SQLite in WAL mode by default (one file in the home), any SQLAlchemy URL otherwise. Opening a
catalog upgrades it to the newest Alembic revision; the schema never changes any other way.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

import numpy as np
from sqlalchemy import delete, func, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from searchengine.catalog.dialect import (
    catalog_error,
    current_revision,
    database_url,
    excluded,
    lock_schema,
    retryable,
    shown_url,
    upsert,
)
from searchengine.catalog.dialect import create_catalog_engine as _create_engine
from searchengine.catalog.records import ModelRow, NewImage, Skip, StoredFile, WriteResult
from searchengine.catalog.schema import (
    EmbeddingModel,
    ImageEmbedding,
    Media,
    Setting,
    SkippedFile,
    TextEmbedding,
    TextItem,
)
from searchengine.catalog.statements import (
    STORED_FILE_COLUMNS,
    chunks,
    embedding_table,
    existing_files,
    folder_set,
    is_under,
    media_values,
    skip_values,
    under,
    upsert_media,
    upsert_vectors,
)
from searchengine.catalog.vectors import BATCH_SIZE, SqlVectorStore, decode
from searchengine.errors import CatalogError

log = logging.getLogger(__name__)
CATALOG_NAME = "catalog.sqlite"  # the SQLite catalog's file in a home
CATALOG_ID_KEY = "catalog_id"  # the setting that names a catalog (`Catalog.identity`)
_ATTEMPTS = 3  # runs of a write transaction that PostgreSQL ended in a deadlock
T = TypeVar("T")
_ROOTS_PER_QUERY = 200  # two OR terms per root; SQLite's expression tree stops at depth 1000
INDEX_REVISION = "0003"
"""The newest revision that changed what index files are built from (the vectors' stored form,
their ids); index manifests record it. A later revision that only adds columns (0004: capture
metadata) leaves every index file valid: no rebuild after the upgrade."""


HEAD_REVISION = "0004"
"""The newest migration in `migrations/versions` (a test holds it to Alembic's own head): a
catalog found at it is opened without importing Alembic, a quarter of a second of a cold
command."""


@functools.cache
def head_revision() -> str:
    """The newest Alembic revision shipped with this package (kept in index manifests)."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config(None)).get_current_head() or "base"


def recorded_revision(engine) -> str | None:
    """The revision in Alembic's version table of the database behind the SQLAlchemy `engine`,
    read with plain SQL; None when there is no such table or row (a new catalog: Alembic makes
    it) or it cannot be read."""
    try:
        with engine.connect() as connection:
            return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except SQLAlchemyError:
        return None


def _alembic_config(url: str | None):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(resources.files("searchengine.migrations")))
    if url:
        config.set_main_option("sqlalchemy.url", url)
    return config


class Catalog:
    """Typed operations on the catalog; each public method is one transaction."""

    def __init__(self, url: str, *, read_only: bool = False):
        self.url = url = database_url(url)
        self.read_only = read_only
        self.home: Path | None = None  # the home folder whose own SQLite file this is (in_home)
        self._identity: str | None = None
        try:
            self.engine = _create_engine(url, read_only=read_only)
            self._upgrade()
        except SQLAlchemyError as error:
            raise catalog_error(url, error, opening=True) from error
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.vector_store = SqlVectorStore(self.session)  # the durable vectors, in batches

    @classmethod
    def in_home(cls, home: Path) -> Catalog:
        """The default SQLite catalog of a home folder, created if missing.

        A home whose folder cannot be written (a read-only mount, an archive, a replica) opens
        its catalog read-only and immutable: SQLite then needs neither its WAL nor its shared
        memory file, so searches work there, and any write is refused by the database."""
        home.mkdir(parents=True, exist_ok=True)
        path = (home / CATALOG_NAME).resolve()
        if path.is_file() and not os.access(home, os.W_OK):
            catalog = cls(f"sqlite:///file:{quote(str(path))}?mode=ro&immutable=1&uri=true",
                          read_only=True)
        else:
            catalog = cls(f"sqlite:///{path}")
        catalog.home = home
        return catalog

    @property
    def shown_url(self) -> str:
        """The catalog's URL as shown to a person (a SQLite file's path; no password)."""
        return shown_url(self.url)

    def identity(self, *, create: bool = False) -> str | None:
        """The catalog's own name: a random id stored in its settings, recorded by every index
        file built from it, so that an index is never read against another catalog (a home
        pointed at another database). Made by the first writer that asks (`create`), once even
        when several ask at the same moment; None until then."""
        if self._identity is None:
            self._identity = self.get_setting(CATALOG_ID_KEY)
        if self._identity is None and create:
            import uuid

            with self.session() as session, session.begin():
                session.execute(
                    upsert(session, Setting)
                    .values(key=CATALOG_ID_KEY, value=uuid.uuid4().hex)
                    .on_conflict_do_nothing(index_elements=[Setting.key])
                )
            self._identity = self.get_setting(CATALOG_ID_KEY)
        return self._identity

    def _upgrade(self) -> None:
        """Bring the schema to head. A catalog already there is only read (a read-only home
        opens); otherwise the upgrade runs under the database's own write lock, so that two
        processes opening one new or old catalog at once upgrade it once, one after the other."""
        if recorded_revision(self.engine) == HEAD_REVISION:
            return  # the usual case, read with one query
        from alembic import command

        if self.revision() == head_revision():
            return
        if self.read_only:
            raise CatalogError(
                f"the catalog at {self.shown_url} is at schema revision {self.revision()} and "
                f"needs an upgrade to {head_revision()}, but its home is read-only; run any "
                "searchengine command on it once where it can be written"
            )
        config = _alembic_config(self.url)
        with self.engine.connect() as connection:
            lock_schema(connection)
            if current_revision(connection) != head_revision():  # not done meanwhile
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
            connection.commit()

    def revision(self) -> str:
        try:
            with self.engine.connect() as connection:
                return current_revision(connection)
        except SQLAlchemyError as error:
            raise catalog_error(self.url, error) from error

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose database errors surface as CatalogError with what to do, also those
        of its closing (the rollback of a connection the server dropped)."""
        try:
            with self._sessions() as session:
                yield session
        except SQLAlchemyError as error:
            raise catalog_error(self.url, error) from error

    def close(self) -> None:
        self.engine.dispose()

    # -- models ---------------------------------------------------------------------------

    def ensure_model(self, spec: str, dim: int, content_hash: str | None = None) -> ModelRow:
        """The row of `spec`, created on first use; a dimension change is refused.

        `content_hash` (a checkpoint's digest) is stored with a new row, and recorded on a row that
        has none yet (written before checkpoints were identified by content).
        """
        with self.session() as session, session.begin():
            session.execute(
                upsert(session, EmbeddingModel)
                .values(spec=spec, dim=dim, content_hash=content_hash, created_at=datetime.now())
                .on_conflict_do_nothing(index_elements=[EmbeddingModel.spec])
            )
            # The upsert above made sure the row exists.
            row = session.scalars(select(EmbeddingModel).where(EmbeddingModel.spec == spec)).one()
            if row.content_hash is None and content_hash is not None:
                row.content_hash = content_hash
            if row.dim != dim:
                raise CatalogError(
                    f"model {spec} was indexed with dimension {row.dim} but now gives {dim}; "
                    "save the new weights under another path (a new model), or index into a "
                    "new home with --home"
                )
            return ModelRow(row.id, row.spec, row.dim, row.content_hash)

    def models(self) -> list[ModelRow]:
        with self.session() as session:
            rows = session.scalars(select(EmbeddingModel).order_by(EmbeddingModel.id))
            return [ModelRow(r.id, r.spec, r.dim, r.content_hash) for r in rows]

    def find_model(self, spec: str) -> ModelRow | None:
        return next((m for m in self.models() if m.spec == spec), None)

    # -- files ----------------------------------------------------------------------------

    def files_under(self, roots: Sequence[str]) -> dict[str, StoredFile]:
        """Catalogued files equal to or below any of `roots` (absolute path strings)."""
        found: dict[str, StoredFile] = {}
        with self.session() as session:
            for chunk in chunks(list(roots), _ROOTS_PER_QUERY):
                rows = session.execute(
                    select(*STORED_FILE_COLUMNS).where(under(Media.path, chunk))
                )
                folders = folder_set(chunk)
                found.update({r.path: StoredFile(*r) for r in rows if is_under(r.path, folders)})
        return found

    def files_at(self, paths: Sequence[str]) -> dict[str, StoredFile]:
        """The catalogued files among `paths` (exact catalog paths; one indexed lookup a chunk,
        where `files_under` also walks what lies below each path)."""
        with self.session() as session:
            return existing_files(session, paths)

    def skipped_under(self, roots: Sequence[str]) -> dict[str, Skip]:
        found: dict[str, Skip] = {}
        with self.session() as session:
            for chunk in chunks(list(roots), _ROOTS_PER_QUERY):
                rows = session.scalars(select(SkippedFile).where(under(SkippedFile.path, chunk)))
                folders = folder_set(chunk)
                found.update({
                    r.path: Skip(r.path, r.size, r.mtime_ns, r.reason)
                    for r in rows
                    if is_under(r.path, folders)
                })
        return found

    def skipped(self) -> list[Skip]:
        with self.session() as session:
            rows = session.scalars(select(SkippedFile).order_by(SkippedFile.path))
            return [Skip(r.path, r.size, r.mtime_ns, r.reason) for r in rows]

    def vectors_by_hash(self, model_id: int, hashes: Iterable[str]) -> dict[str, np.ndarray]:
        """The stored (d,) float32 vector of `model_id` for each content hash that has one."""
        found: dict[str, np.ndarray] = {}
        with self.session() as session:
            for chunk in chunks(list(set(hashes))):
                rows = session.execute(
                    select(Media.content_hash, ImageEmbedding.vector)
                    .join(ImageEmbedding, ImageEmbedding.media_id == Media.id)
                    .where(ImageEmbedding.model_id == model_id, Media.content_hash.in_(chunk))
                ).all()
                if rows:
                    vectors = decode([r.vector for r in rows])
                    found.update({r.content_hash: v for r, v in zip(rows, vectors, strict=True)})
        return found

    def hashes_with_vector(self, model_id: int) -> list[str]:
        """The content hashes of every catalogued file that has a vector of `model_id` (what a
        distributed embed stage may skip: `ingest.cluster`)."""
        with self.session() as session:
            return list(
                session.scalars(
                    select(Media.content_hash)
                    .join(ImageEmbedding, ImageEmbedding.media_id == Media.id)
                    .where(ImageEmbedding.model_id == model_id, Media.content_hash.is_not(None))
                    .distinct()
                )
            )

    def same_content(self, model_id: int) -> list[list[int]]:
        """Exact copies: the ids of media that share a content hash and have a vector of
        `model_id`, one ascending list per hash held by two or more, ordered by first id."""
        held = (
            select(Media.content_hash, Media.id)
            .join(ImageEmbedding, ImageEmbedding.media_id == Media.id)
            .where(ImageEmbedding.model_id == model_id)
        )
        shared = (
            held.with_only_columns(Media.content_hash)
            .group_by(Media.content_hash)
            .having(func.count() > 1)
        )
        groups: dict[str, list[int]] = {}
        with self.session() as session:
            rows = session.execute(held.where(Media.content_hash.in_(shared)).order_by(Media.id))
            for content_hash, media_id in rows:
                groups.setdefault(content_hash, []).append(int(media_id))
        return list(groups.values())

    def write_images(
        self, model_id: int, images: Sequence[NewImage], vectors: np.ndarray, skips: Sequence[Skip]
    ) -> WriteResult:
        """Upsert files with their (n, d) float32 vectors and record skips, in one transaction.

        A file whose content changed keeps its id but loses the vectors of other models (they are
        re-made when those models index again). A catalogued file that is now skipped (it became
        corrupt) is forgotten. Returns the media ids in the order of `images`, and those removed.
        """
        return self._transaction(
            lambda session: self._write_images(session, model_id, images, vectors, skips)
        )

    def _write_images(
        self,
        session: Session,
        model_id: int,
        images: Sequence[NewImage],
        vectors: np.ndarray,
        skips: Sequence[Skip],
    ) -> WriteResult:
        now = datetime.now()
        existing = existing_files(session, [image.path for image in images])
        changed = [
            old.id
            for image in images
            if (old := existing.get(image.path)) and old.content_hash != image.content_hash
        ]
        for chunk in chunks(changed):
            session.execute(delete(ImageEmbedding).where(ImageEmbedding.media_id.in_(chunk)))
        id_of = upsert_media(session, [media_values(image, now) for image in images])
        ids = [id_of[image.path] for image in images]
        upsert_vectors(session, "image", model_id, ids, vectors)
        paths = [image.path for image in images] + [skip.path for skip in skips]
        for chunk in chunks(paths):
            session.execute(delete(SkippedFile).where(SkippedFile.path.in_(chunk)))
        removed = self._remove_paths(session, [skip.path for skip in skips])
        if skips:
            statement = upsert(session, SkippedFile)
            session.execute(
                statement.on_conflict_do_update(
                    index_elements=[SkippedFile.path],
                    set_=excluded(statement, ("size", "mtime_ns", "reason", "seen_at")),
                ),
                [skip_values(skip, now) for skip in skips],
            )
        return WriteResult(ids, removed)

    def add_image_vectors(
        self, model_id: int, media_ids: Sequence[int], vectors: np.ndarray
    ) -> None:
        """Store vectors of `model_id` for files already in the catalog (reuse, new model)."""
        ids = [int(media_id) for media_id in media_ids]
        self._transaction(
            lambda session: upsert_vectors(session, "image", model_id, ids, vectors)
        )

    def _transaction(self, work: Callable[[Session], T]) -> T:
        """`work(session)` in one transaction. One that PostgreSQL ends because another writer
        took the same rows in the other order (a deadlock) stored nothing: it runs again, up to
        `_ATTEMPTS` times in all, and the other writer's rows are then there to update."""
        attempt = 1
        while True:
            try:
                with self._sessions() as session, session.begin():
                    return work(session)
            except SQLAlchemyError as error:
                if attempt == _ATTEMPTS or not retryable(error):
                    raise catalog_error(self.url, error) from error
                log.info("the catalog ended a transaction that met another writer's (%s); "
                         "running it again", str(getattr(error, "orig", error)).splitlines()[0])
            time.sleep(0.05 * attempt)
            attempt += 1

    def remove_files(self, paths: Sequence[str]) -> list[int]:
        """Forget files (and their vectors); returns the media ids removed."""
        with self.session() as session, session.begin():
            for chunk in chunks(list(paths)):
                session.execute(delete(SkippedFile).where(SkippedFile.path.in_(chunk)))
            return self._remove_paths(session, paths)

    @staticmethod
    def _remove_paths(session: Session, paths: Sequence[str]) -> list[int]:
        removed: list[int] = []
        for chunk in chunks(list(paths)):
            ids = list(session.scalars(select(Media.id).where(Media.path.in_(chunk))))
            if ids:
                session.execute(delete(ImageEmbedding).where(ImageEmbedding.media_id.in_(ids)))
                session.execute(delete(Media).where(Media.id.in_(ids)))
                removed.extend(ids)
        return removed

    def files_without_vector(self, model_id: int) -> list[StoredFile]:
        """Every catalogued file that has no image vector of `model_id`, by id (what embedding
        the whole collection with a further model still has to do)."""
        embedded = select(ImageEmbedding.media_id).where(ImageEmbedding.model_id == model_id)
        with self.session() as session:
            rows = session.execute(
                select(Media.id, Media.path, Media.size, Media.mtime_ns, Media.content_hash)
                .where(Media.id.not_in(embedded))
                .order_by(Media.id)
            )
            return [StoredFile(*row) for row in rows]

    def remove_model(self, model_id: int, setting_keys: Sequence[str] = ()) -> None:
        """Forget a model: its image and text vectors, its row and the settings `setting_keys`,
        in one transaction (files and texts stay, with the vectors of other models)."""

        def work(session: Session) -> None:
            for table in (ImageEmbedding, TextEmbedding):
                session.execute(delete(table).where(table.model_id == model_id))
            session.execute(delete(EmbeddingModel).where(EmbeddingModel.id == model_id))
            if setting_keys:
                session.execute(delete(Setting).where(Setting.key.in_(list(setting_keys))))

        self._transaction(work)

    def media(self, ids: Iterable[int]) -> dict[int, Media]:
        """Media rows by id (detached, read-only use)."""
        found: dict[int, Media] = {}
        with self.session() as session:
            for chunk in chunks([int(i) for i in ids]):
                found.update(
                    {m.id: m for m in session.scalars(select(Media).where(Media.id.in_(chunk)))}
                )
        return found

    def media_by_path(self, path: str) -> Media | None:
        with self.session() as session:
            return session.scalar(select(Media).where(Media.path == path))

    # -- texts ----------------------------------------------------------------------------

    def add_texts(self, text_set: str, texts: Sequence[str]) -> int:
        """Add texts to a set, ignoring ones already there; returns how many were new."""
        now = datetime.now()
        unique = list(dict.fromkeys(texts))
        added = 0
        with self.session() as session, session.begin():
            statement = (
                upsert(session, TextItem)
                .on_conflict_do_nothing(index_elements=[TextItem.text_set, TextItem.text])
                .returning(TextItem.id)
            )
            for chunk in chunks(unique):
                rows = [{"text_set": text_set, "text": t, "created_at": now} for t in chunk]
                added += len(session.execute(statement, rows).all())
        return added

    def texts_without_vector(self, model_id: int) -> list[tuple[int, str]]:
        with self.session() as session:
            embedded = select(TextEmbedding.text_id).where(TextEmbedding.model_id == model_id)
            rows = session.execute(
                select(TextItem.id, TextItem.text)
                .where(TextItem.id.not_in(embedded))
                .order_by(TextItem.id)
            )
            return [(r.id, r.text) for r in rows]

    def write_text_vectors(
        self, model_id: int, ids: Sequence[int] | np.ndarray, vectors: np.ndarray
    ) -> None:
        with self.session() as session, session.begin():
            upsert_vectors(session, "text", model_id, ids, vectors)

    def texts(self, ids: Iterable[int]) -> dict[int, TextItem]:
        found: dict[int, TextItem] = {}
        with self.session() as session:
            for chunk in chunks([int(i) for i in ids]):
                rows = session.scalars(select(TextItem).where(TextItem.id.in_(chunk)))
                found.update({t.id: t for t in rows})
        return found

    def text_ids(self, text_set: str | None = None) -> dict[str, int]:
        """Text -> id, for one set or all (later sets win on equal texts)."""
        with self.session() as session:
            query = select(TextItem.id, TextItem.text)
            if text_set is not None:
                query = query.where(TextItem.text_set == text_set)
            return {r.text: r.id for r in session.execute(query.order_by(TextItem.id))}

    def text_sets(self) -> dict[str, int]:
        with self.session() as session:
            rows = session.execute(
                select(TextItem.text_set, func.count())
                .group_by(TextItem.text_set)
                .order_by(TextItem.text_set)
            )
            return {r[0]: int(r[1]) for r in rows}

    # -- vectors --------------------------------------------------------------------------

    def vector_ids(self, modality: str, model_id: int) -> np.ndarray:
        """(n,) int64 ids that have a durable vector of `model_id`, ascending."""
        table, key = embedding_table(modality)
        with self.session() as session:
            ids = session.scalars(select(key).where(table.model_id == model_id).order_by(key))
            return np.fromiter(ids, dtype=np.int64)

    def vectors(
        self, modality: str, model_id: int, ids: Sequence[int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Durable vectors: (n,) int64 ids ascending and (n, d) float32 stored rows (float16
        values, `catalog.vectors.as_stored`), of `ids` or of all. Read in batches; readers of
        all vectors of a large home use `iter_vectors` instead of holding them at once."""
        if ids is None:
            return self.vector_store.all_vectors(modality, model_id)
        return self.vector_store.vectors(modality, model_id, ids)

    def iter_vectors(
        self, modality: str, model_id: int, *, batch_size: int = BATCH_SIZE
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every durable vector of `model_id`, in batches of at most `batch_size`, ids ascending:
        ((b,) int64 ids, (b, d) float32), as `SqlVectorStore.iter_batches` (`vector_store`)."""
        return self.vector_store.iter_batches(modality, model_id, batch_size)

    def vector_stats(self, modality: str, model_id: int) -> tuple[int, int]:
        """(how many vectors `model_id` has, the sum of their ids): one aggregate query, compared
        with an index manifest's count and id sum to tell whether the index is in step."""
        table, key = embedding_table(modality)
        with self.session() as session:
            query = select(func.count(), func.coalesce(func.sum(key), 0)).where(
                table.model_id == model_id
            )
            count, total = session.execute(query).one()
            return int(count), int(total)

    # -- settings and counts --------------------------------------------------------------

    def get_setting(self, key: str) -> str | None:
        with self.session() as session:
            row = session.get(Setting, key)
            return row.value if row else None

    def set_setting(self, key: str, value: str) -> None:
        with self.session() as session, session.begin():
            statement = upsert(session, Setting).values(key=key, value=value)
            session.execute(
                statement.on_conflict_do_update(
                    index_elements=[Setting.key], set_=excluded(statement, ("value",))
                )
            )

    def delete_setting(self, key: str) -> None:
        """Forget a setting (`get_setting` then returns None)."""
        with self.session() as session, session.begin():
            session.execute(delete(Setting).where(Setting.key == key))

    def is_empty(self) -> bool:
        """True while nothing was ever stored: no model, file, skip, text or setting."""
        with self.session() as session:
            tables = (EmbeddingModel, Media, SkippedFile, TextItem, Setting)
            return all(session.scalar(select(table).limit(1)) is None for table in tables)

    def count_media(self) -> int:
        with self.session() as session:
            return int(session.scalar(select(func.count()).select_from(Media)) or 0)

    def count_vectors(self, modality: str, model_id: int) -> int:
        table, _ = embedding_table(modality)
        with self.session() as session:
            query = select(func.count()).select_from(table).where(table.model_id == model_id)
            return int(session.scalar(query) or 0)
