"""From FAISS answers to ranked hits: the catalog rows behind the ids, ranks from an offset."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime

import numpy as np

from searchengine.catalog import Catalog
from searchengine.catalog.filtering import matching_ids
from searchengine.catalog.schema import Media
from searchengine.errors import InvalidInputError
from searchengine.index.search import held_ids, search_space
from searchengine.index.spaces import VectorSpace
from searchengine.query.filters import SearchFilter, check_min_score, check_sort
from searchengine.query.results import PhotoInfo, SearchHit, SearchResult


def image_hits(
    catalog: Catalog,
    space: VectorSpace,
    vector: np.ndarray,
    k: int,
    offset: int,
    *,
    allowed_ids: np.ndarray | None = None,
) -> list[SearchHit]:
    """The images of `space` (only `allowed_ids` when given) closest to a (1, d) float32 unit
    `vector`: hits `offset + 1` to `offset + k`, each with its catalogued path and metadata."""
    D, I = _search(space, vector, k, offset, allowed_ids)
    media = catalog.media(int(i) for i in I[0] if i >= 0)
    return _ranked(D, I, offset, lambda i, rank, score: (
        SearchHit(rank, score, i, path=media[i].path, photo=photo_info(media[i]))
        if i in media else None
    ))


def photo_info(row: Media) -> PhotoInfo:
    """The metadata of a catalog row that a hit shows."""
    return PhotoInfo(taken_at=row.taken_at, taken_offset=row.taken_offset, camera=row.camera,
                     latitude=row.gps_lat, longitude=row.gps_lon, width=row.width,
                     height=row.height, folder=row.folder)


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
    return [replace(h, rank=rank) for rank, h in enumerate(hits, start=start)]


def check_query_text(query: str) -> str:
    """A non-blank query sentence, stripped; InvalidInputError otherwise."""
    if not isinstance(query, str) or not query.strip():
        raise InvalidInputError("empty query: give a sentence to search for")
    return query.strip()


def check_refinements(
    filters: SearchFilter | None, min_score: float | None, sort: str
) -> tuple[SearchFilter | None, float | None, str]:
    """The filter, threshold and order of an image search, checked before any work is done:
    InvalidInputError for a filter that is no SearchFilter, a threshold outside [-1, 1] or an
    unknown sort. An empty filter is None (no filter)."""
    if filters is not None and not isinstance(filters, SearchFilter):
        raise InvalidInputError(
            f"filters is a SearchFilter, e.g. SearchFilter(after='2023-01-01'); "
            f"got {type(filters).__name__}")
    return (filters if filters is not None and filters.active else None,
            check_min_score(min_score), check_sort(sort))


def image_result(
    catalog: Catalog,
    space: VectorSpace,
    vector: np.ndarray,
    label: str,
    *,
    k: int,
    offset: int,
    filters: SearchFilter | None = None,
    min_score: float | None = None,
    sort: str = "score",
) -> SearchResult:
    """The images of `space` closest to a (1, d) float32 unit `vector`, among those that pass
    `filters` (the allowed ids go to the vector search: k hits whenever k photos pass), ranked
    `offset + 1` to `offset + k`; hits scoring below `min_score` are dropped, and `sort="date"`
    orders the hits left by capture time, newest first (photos without one last). `matched`
    counts the photos the filter left (None without a filter)."""
    filters, min_score, sort = check_refinements(filters, min_score, sort)
    allowed, matched = None, None
    if filters is not None:  # the photos that pass and that this space holds
        allowed = held_ids(space.index, matching_ids(catalog, filters))
        matched = len(allowed)
    if matched == 0:
        if k < 1 or offset < 0:
            raise InvalidInputError("k must be >= 1 and offset >= 0")
        return SearchResult(label, space.model.spec, [], matched)
    hits = image_hits(catalog, space, vector, k, offset, allowed_ids=allowed)
    if min_score is not None:
        hits = [hit for hit in hits if hit.score >= min_score]
    if sort == "date":
        hits = rerank(sorted(hits, key=_date_key), start=offset + 1)
    return SearchResult(label, space.model.spec, hits, matched)


def _date_key(hit: SearchHit) -> tuple[bool, float]:
    """Newest first by capture time (as photo timelines show them); photos without one after
    all others, in score order (the sort is stable)."""
    taken = hit.photo.taken_at if hit.photo is not None else None
    return taken is None, -(taken - datetime.min).total_seconds() if taken else 0.0
