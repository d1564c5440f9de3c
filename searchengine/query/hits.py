"""From FAISS answers to ranked hits: the catalog rows behind the ids, ranks from an offset."""

from __future__ import annotations

import numpy as np

from searchengine.catalog import Catalog
from searchengine.errors import InvalidInputError
from searchengine.index.spaces import VectorSpace
from searchengine.query.results import SearchHit


def image_hits(
    catalog: Catalog, space: VectorSpace, vector: np.ndarray, k: int, offset: int
) -> list[SearchHit]:
    """The images of `space` closest to a (1, d) float32 unit `vector`: hits `offset + 1` to
    `offset + k`, each with its catalogued path."""
    if k < 1 or offset < 0:
        raise InvalidInputError("k must be >= 1 and offset >= 0")
    D, I = space.index.search(vector, k + offset)
    media = catalog.media(int(i) for i in I[0] if i >= 0)
    hits = [
        SearchHit(rank, float(score), int(i), path=media[int(i)].path)
        for rank, (score, i) in enumerate(zip(D[0], I[0], strict=True), start=1)
        if i >= 0 and int(i) in media
    ]
    return rerank(hits[offset:], start=offset + 1)


def text_hits(
    catalog: Catalog,
    space: VectorSpace,
    vector: np.ndarray,
    k: int,
    offset: int,
    *,
    allowed_ids: np.ndarray | None = None,
) -> list[SearchHit]:
    """The texts of `space` (only `allowed_ids` when given) closest to a (1, d) float32 unit
    `vector`: hits `offset + 1` to `offset + k`, each with its text."""
    D, I = space.index.search(vector, k + offset, allowed_ids=allowed_ids)
    texts = catalog.texts(int(i) for i in I[0] if i >= 0)
    hits = [
        SearchHit(rank, float(score), int(i), text=texts[int(i)].text)
        for rank, (score, i) in enumerate(zip(D[0], I[0], strict=True), start=1)
        if i >= 0 and int(i) in texts
    ]
    return rerank(hits[offset:], start=offset + 1)


def rerank(hits: list[SearchHit], start: int = 1) -> list[SearchHit]:
    """The same hits ranked from `start` on (rows the catalog no longer has leave no gaps)."""
    return [
        SearchHit(rank, h.score, h.id, h.path, h.text) for rank, h in enumerate(hits, start=start)
    ]


def check_query_text(query: str) -> str:
    """A non-blank query sentence, stripped; InvalidInputError otherwise."""
    if not isinstance(query, str) or not query.strip():
        raise InvalidInputError("empty query: give a sentence to search for")
    return query.strip()
