"""The catalog's SQL building blocks: path prefixes, chunked IN lists, multi-row upserts.

Portable between SQLite and PostgreSQL (`dialect.upsert`); used by `store.Catalog`, whose public
methods are each one transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from searchengine.catalog.dialect import excluded, upsert
from searchengine.catalog.records import NewImage, Skip, StoredFile
from searchengine.catalog.schema import ImageEmbedding, Media, TextEmbedding
from searchengine.catalog.vectors import encode
from searchengine.errors import InvalidInputError
from searchengine.exif import METADATA_VERSION
from searchengine.images import ImageInfo

MODALITIES = ("image", "text")
STORED_FILE_COLUMNS = (Media.id, Media.path, Media.size, Media.mtime_ns, Media.content_hash,
                       Media.metadata_version)  # a `StoredFile`, in its fields' order
CHUNK = 500  # ids per IN (...) clause; SQLite allows 32766 variables, keep statements small


def embedding_table(modality: str):
    if modality == "image":
        return ImageEmbedding, ImageEmbedding.media_id
    if modality == "text":
        return TextEmbedding, TextEmbedding.text_id
    raise InvalidInputError(f"unknown modality {modality!r}; choose one of {', '.join(MODALITIES)}")


def under(column, roots: Sequence[str]):
    from sqlalchemy import or_

    clauses = []
    for root in roots:
        clauses.append(column == root)
        clauses.append(column.startswith(root.rstrip("/") + "/", autoescape=True))
    return or_(*clauses)


def folder_set(roots: Sequence[str]) -> frozenset[str]:
    return frozenset(root.rstrip("/") or "/" for root in roots)


def is_under(path: str, folders: frozenset[str]) -> bool:
    """`under` in Python, case-sensitive (`folders` from `folders`): SQLite's LIKE ignores ASCII
    case (`/Photos/%` matches `/photos/a.jpg`), which made `index /Photos` forget `/photos`."""
    if path in folders or "/" in folders:
        return True
    cut = path.rfind("/")
    while cut > 0:  # every folder above `path`, nearest first
        if path[:cut] in folders:
            return True
        cut = path.rfind("/", 0, cut)
    return False


def existing_files(session: Session, paths: Sequence[str]) -> dict[str, StoredFile]:
    found: dict[str, StoredFile] = {}
    for chunk in chunks(list(paths)):
        rows = session.execute(
            select(*STORED_FILE_COLUMNS).where(Media.path.in_(chunk))
        )
        found.update({r.path: StoredFile(*r) for r in rows})
    return found


def upsert_media(session: Session, rows: list[dict]) -> dict[str, int]:
    """Insert media rows, updating those whose path is catalogued (ids kept); ids by path.
    New rows take ids in the order given."""
    if not rows:
        return {}
    statement = upsert(session, Media)
    updated = [column for column in rows[0] if column != "path"]
    statement = statement.on_conflict_do_update(
        index_elements=[Media.path], set_=excluded(statement, updated)
    ).returning(Media.id, Media.path)
    return {row.path: int(row.id) for row in session.execute(statement, rows)}


def upsert_vectors(
    session: Session,
    modality: str,
    model_id: int,
    ids: Sequence[int] | np.ndarray,
    vectors: np.ndarray,
) -> None:
    """Store one (d,) vector of `model_id` per id (media or text), replacing any it had, in its
    stored form (float16, `catalog.vectors.as_stored`): one multi-row upsert, on SQLite and
    PostgreSQL."""
    if not len(ids):
        return
    table, key = embedding_table(modality)
    statement = upsert(session, table)
    pairs = sorted(zip((int(i) for i in ids), vectors, strict=True), key=lambda pair: pair[0])
    rows = [  # in id order: writers of overlapping batches lock shared rows in one order
        {key.key: i, "model_id": model_id, "vector": blob(v)} for i, v in pairs
    ]
    session.execute(
        statement.on_conflict_do_update(
            index_elements=[key, table.model_id],
            set_=excluded(statement, ("vector",)),
        ),
        rows,
    )


def media_values(image: NewImage, now: datetime) -> dict:
    info = image.info
    return {
        "path": image.path,
        "size": image.size,
        "mtime_ns": image.mtime_ns,
        "content_hash": image.content_hash,
        "width": info.width,
        "height": info.height,
        "format": info.format,
        "taken_at": info.taken_at,
        "camera": info.camera,
        "indexed_at": now,
    } | metadata_values(image.path, info)


def metadata_values(path: str, info: ImageInfo) -> dict:
    """The capture-metadata columns of a file (revision 0004) from its `ImageInfo`; an info
    without them (`extended` false: an imported row) leaves metadata_version NULL, so the next
    `index` reads them from the file."""
    return {
        "taken_offset": info.taken_offset,
        "camera_make": info.make,
        "lens": info.lens,
        "gps_lat": info.latitude,
        "gps_lon": info.longitude,
        "folder": parent_folder(path),
        "metadata_version": METADATA_VERSION if info.extended else None,
    }


def parent_folder(path: str) -> str:
    """The folder of a catalog path (absolute, `/`-separated): the text before its last slash."""
    return path.rsplit("/", 1)[0] or "/"


def skip_values(skip: Skip, now: datetime) -> dict:
    return {
        "path": skip.path,
        "size": skip.size,
        "mtime_ns": skip.mtime_ns,
        "reason": skip.reason,
        "seen_at": now,
    }


def blob(vector: np.ndarray) -> bytes:
    """The stored bytes of a (d,) vector: float16 (`catalog.vectors`, revision 0003)."""
    return encode(vector)


def chunks(items: list, size: int = CHUNK) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
