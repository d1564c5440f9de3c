"""The durable vectors: their stored form (float16) and the stores that stream them in batches.

Every vector the catalog keeps is stored as IEEE float16 bytes (2 bytes a dimension, half of
float32) and read back as float32. The conversion float32 -> float16 -> float32 is the one
rounding rule of the package (`as_stored`): what an index holds, what `check` compares and what
a rebuild reads are the same float32 numbers, bit for bit, on every CPU. Rounded vectors are not
re-normalised: their norm differs from 1 by at most a few 1e-4 (a float16 has an 11-bit
significand), far below the score gaps that order real hits, and re-normalising would put a
float reduction (whose last bit depends on the CPU's summation order) between the catalog and
the index.

A `VectorStore` yields a model's vectors as ((b,) int64 ids, (b, d) float32) batches in id
order; `SqlVectorStore` reads them from the catalog's tables with one short keyset query a batch
(`id > last ORDER BY id LIMIT b`), so no cursor stays open and memory holds one batch. A store of
Parquet shards beside the catalog could stand in for it later with the same method.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Protocol

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from searchengine.errors import CatalogError, InvalidInputError

STORED_DTYPE = np.dtype("<f2")  # little-endian float16, whatever the host's byte order
BATCH_SIZE = 10_000  # vectors a batch by default: 20 MB of float32 at 512-d
_FLOAT16_MAX = 65504.0


def as_stored(vectors: np.ndarray) -> np.ndarray:
    """(n, d) float32: `vectors` as the catalog stores and returns them (rounded to float16,
    through float32 first, so float64 input rounds exactly as float32 input does). Idempotent.
    Raises InvalidInputError for values a float16 cannot hold (unit vectors always fit)."""
    return _to_half(vectors).astype(np.float32)


def encode(vector: np.ndarray) -> bytes:
    """The stored bytes of one (d,) vector (any float dtype): little-endian float16."""
    return _to_half(vector).tobytes()


def decode(blobs: Sequence[bytes]) -> np.ndarray:
    """(n, d) float32 from n stored vectors of one model (equal lengths, float16 bytes)."""
    if not blobs:
        return np.zeros((0, 0), dtype=np.float32)
    width = len(blobs[0])
    if width % STORED_DTYPE.itemsize or any(len(blob) != width for blob in blobs):
        lengths = sorted({len(blob) for blob in blobs})
        raise CatalogError(
            f"stored vectors of one model have byte lengths {lengths}, not one even length; the "
            "catalog was changed outside searchengine: run `searchengine check`, then index the "
            "folders again into a new home (--home)"
        )
    flat = np.frombuffer(b"".join(blobs), dtype=STORED_DTYPE)
    return flat.reshape(len(blobs), width // STORED_DTYPE.itemsize).astype(np.float32)


def _to_half(vectors: np.ndarray) -> np.ndarray:
    single = np.asarray(vectors, dtype=np.float32)
    if single.size and not (np.abs(single) <= _FLOAT16_MAX).all():  # also catches NaN
        raise InvalidInputError(
            "vectors to store must be finite with values within +-65504 (the float16 range; "
            "unit vectors always are)"
        )
    return np.ascontiguousarray(single.astype(STORED_DTYPE))


class VectorStore(Protocol):
    """Where a home's durable vectors are read from in batches (the catalog's SQL tables today;
    Parquet shards later)."""

    def iter_batches(
        self, modality: str, model_id: int, batch_size: int = BATCH_SIZE
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every vector of `model_id` for `modality` ("image" or "text"), ids ascending, as
        ((b,) int64 ids, (b, d) float32) with 1 <= b <= batch_size."""
        ...


class SqlVectorStore:
    """The `VectorStore` over the catalog's image_embeddings and text_embeddings tables."""

    def __init__(self, session: Callable[[], AbstractContextManager[Session]]):
        self._session = session  # Catalog.session: errors surface as CatalogError

    def iter_batches(
        self, modality: str, model_id: int, batch_size: int = BATCH_SIZE
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every durable vector of `model_id`, in batches of at most `batch_size`, ids ascending.

        Yields ((b,) int64 ids, (b, d) float32 stored rows), fresh arrays. Each batch is its own
        short query on an id range, so no cursor stays open between batches (a writer may
        commit in between; ids committed above the last one read are then included)."""
        from searchengine.catalog.statements import embedding_table

        if batch_size < 1:
            raise InvalidInputError(f"batch size must be >= 1, got {batch_size}")
        table, key = embedding_table(modality)
        last = None
        while True:
            query = select(key, table.vector).where(table.model_id == model_id)
            if last is not None:
                query = query.where(key > last)
            with self._session() as session:
                rows = session.execute(query.order_by(key).limit(batch_size)).all()
            if not rows:
                return
            ids = np.fromiter((row[0] for row in rows), dtype=np.int64, count=len(rows))
            vectors = decode([row[1] for row in rows])
            del rows  # the row objects go before the caller gets the batch
            yield ids, vectors
            if len(ids) < batch_size:
                return
            last = int(ids[-1])

    def vectors(
        self, modality: str, model_id: int, ids: Sequence[int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """The stored vectors of the given ids that have one: (m,) int64 ids ascending and
        (m, d) float32, read in chunks of ids (no list of all rows is ever built)."""
        from searchengine.catalog.statements import chunks, embedding_table

        table, key = embedding_table(modality)
        query = select(key, table.vector).where(table.model_id == model_id)
        id_parts, vector_parts = [], []
        with self._session() as session:
            for chunk in chunks(sorted({int(i) for i in ids})):
                rows = session.execute(query.where(key.in_(chunk)).order_by(key)).all()
                if rows:
                    id_parts.append(np.fromiter((r[0] for r in rows), np.int64, len(rows)))
                    vector_parts.append(decode([r[1] for r in rows]))
        if not id_parts:
            return np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32)
        return np.concatenate(id_parts), np.concatenate(vector_parts)

    def all_vectors(self, modality: str, model_id: int) -> tuple[np.ndarray, np.ndarray]:
        """Every stored vector of `model_id` in one array pair (for small sets and tests; large
        readers use `iter_batches`): (n,) int64 ids ascending and (n, d) float32."""
        id_parts, vector_parts = [], []
        for ids, vectors in self.iter_batches(modality, model_id):
            id_parts.append(ids)
            vector_parts.append(vectors)
        if not id_parts:
            return np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32)
        return np.concatenate(id_parts), np.concatenate(vector_parts)
