"""From FAISS answers to ranked hits: the catalog rows behind the ids, ranks from an offset."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from searchengine.catalog import Catalog
from searchengine.errors import InvalidInputError
from searchengine.index.search import search_space
from searchengine.index.spaces import VectorSpace
from searchengine.query.results import SearchHit


def image_hits(
    catalog: Catalog, space: VectorSpace, vector: np.ndarray, k: int, offset: int
) -> list[SearchHit]:
    """The images of `space` closest to a (1, d) float32 unit `vector`: hits `offset + 1` to
    `offset + k`, each with its catalogued path."""
    D, I = _search(space, vector, k, offset, None)
    media = catalog.media(int(i) for i in I[0] if i >= 0)
    return _ranked(D, I, offset, lambda i, rank, score: (
        SearchHit(rank, score, i, path=media[i].path) if i in media else None
    ))


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
    D, I = _search(space, vector, k, offset, allowed_ids)
    texts = catalog.texts(int(i) for i in I[0] if i >= 0)
    return _ranked(D, I, offset, lambda i, rank, score: (
        SearchHit(rank, score, i, text=texts[i].text) if i in texts else None
    ))


def _search(
    space: VectorSpace, vector: np.ndarray, k: int, offset: int, allowed_ids: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """The top `k + offset` of `space` for a (1, d) query: (1, k + offset) scores and ids."""
    if k < 1 or offset < 0:
        raise InvalidInputError("k must be >= 1 and offset >= 0")
    return search_space(space, vector, k + offset, allowed_ids=allowed_ids)


def _ranked(
    D: np.ndarray,
    I: np.ndarray,
    offset: int,
    hit: Callable[[int, int, float], SearchHit | None],
) -> list[SearchHit]:
    """Hits from one row of FAISS answers (`hit` makes each, None for a row the catalog no
    longer has), the first `offset` dropped, ranked from `offset + 1`."""
    made = (
        hit(int(i), rank, float(score))
        for rank, (score, i) in enumerate(zip(D[0], I[0], strict=True), start=1)
        if i >= 0
    )
    return rerank([h for h in made if h is not None][offset:], start=offset + 1)


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
