"""Filtered search that loses no hits, for every index kind.

A FAISS id selector alone can lose hits under an approximate index: IVF probes the `nprobe`
lists nearest the query, which may hold few or none of the allowed vectors, and HNSW's walk keeps
`efSearch` candidates of which few may be allowed. So a filtered search takes one of two roads,
chosen by `plan_filtered_search` from a cost model:

- **exact**: inner products of the queries with the allowed vectors themselves (read back from
  the index when it stores full vectors, else from the catalog, the durable copy). Cost about
  a * d * (FETCH + q) multiply-adds for a allowed vectors, q queries, d dimensions; exact by
  construction.
- **selector**: the index's own search with the selector, its parameters widened for the
  selectivity s = a / n so that as many allowed candidates are scanned as an unfiltered search
  scans vectors: IVF nprobe / s (up to every list), HNSW max(efSearch, k) / s (up to EF_MAX). Cost
  about q * d * (tested * SELECTOR_TEST + computed): a flat scan tests all n ids and computes
  the a allowed, IVF tests the entries of its probed lists and computes the allowed ones (and
  the nlist centroids), HNSW computes every neighbour its walk meets. Rows that still come
  back with fewer than min(k, a) hits are answered exactly.

The exact road is taken when it is cheaper, when the widened parameters would pass their bound,
or when the filter allows no more than k vectors; never when the allowed vectors would take more
than EXACT_MAX_BYTES (the selector road then runs, with its fallback).
"""

# faiss' short names (D scores, I ids, xq queries) are the house style in vector code.
# ruff: noqa: E741

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from searchengine.index.spaces import VectorSpace
    from searchengine.index.vectors import VectorIndex

# Cost model, in multiply-adds of one float (bench/filters.py measures the crossing point).
FETCH_FROM_INDEX = 4.0  # per dimension: reconstructing a stored vector (an id lookup and a copy)
FETCH_FROM_CATALOG = 64.0  # per dimension: reading a vector back from the catalog (an SQL row)
SELECTOR_TEST = 0.25  # per dimension: testing an id against the selector (skipped if not allowed)
HNSW_NEIGHBOURS = 64  # distances computed per HNSW expansion (2M at level 0, M=32)
EF_MAX = 4096  # efSearch is widened no further: beyond, the exact road is cheaper anyway
BITMAP_MAX_BITS = 2**28  # a selector bitmap of at most 32 MiB
EXACT_MAX_BYTES = 512 * 2**20  # the allowed vectors the exact road may hold in memory at once
MISSING_SCORE = float(-np.finfo(np.float32).max)  # what FAISS pads scores with, beside id -1

VectorsOf = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class FilterPlan:
    """How one filtered search runs: `road` "exact" or "selector", with the widened parameters
    of the selector road (None where the kind has no such parameter), and why."""

    road: str
    allowed: int
    nprobe: int | None = None
    ef_search: int | None = None
    reason: str = ""


@dataclass(frozen=True)
class IndexShape:
    """What the cost model needs of an index: its size, dimension and approximate structure."""

    count: int
    dim: int
    nlist: int | None = None  # IVF lists; None when not IVF
    nprobe: int | None = None
    ef_search: int | None = None  # HNSW; None when not HNSW
    exact_vectors: bool = True  # does the index store full vectors (else: read the catalog)

    @property
    def approximate(self) -> bool:
        return self.nlist is not None or self.ef_search is not None


def index_shape(index: VectorIndex, *, exact_vectors: bool) -> IndexShape:
    """The shape of a VectorIndex, found by what its FAISS index is, not by its kind's name."""
    import faiss

    ivf = faiss.try_extract_index_ivf(index.index)
    if ivf is not None:
        return IndexShape(
            index.count, index.dim, nlist=int(ivf.nlist), nprobe=int(ivf.nprobe),
            exact_vectors=exact_vectors,
        )
    inner = faiss.downcast_index(index.index.index)
    if hasattr(inner, "hnsw"):
        return IndexShape(
            index.count, index.dim, ef_search=int(inner.hnsw.efSearch),
            exact_vectors=exact_vectors,
        )
    return IndexShape(index.count, index.dim, exact_vectors=exact_vectors)


def plan_filtered_search(shape: IndexShape, allowed: int, k: int, queries: int) -> FilterPlan:
    """Choose the road of a search of `queries` queries for the top `k` among `allowed` held ids
    (see the module's docstring for the cost model)."""
    n, d = max(shape.count, 1), shape.dim
    s = min(1.0, allowed / n)
    fits = allowed * d * 4 <= EXACT_MAX_BYTES
    fetch = FETCH_FROM_INDEX if shape.exact_vectors else FETCH_FROM_CATALOG
    exact_cost = allowed * d * (fetch + queries)
    nprobe = ef = None
    if shape.nlist is not None:
        nprobe = min(shape.nlist, int(np.ceil((shape.nprobe or 1) / max(s, 1e-12))))
        entries = nprobe * n / shape.nlist  # in the probed lists
        work = shape.nlist + entries * (SELECTOR_TEST + s)
        widened_past_bound = False
    elif shape.ef_search is not None:
        wanted = int(np.ceil(max(shape.ef_search, k) / max(s, 1e-12)))
        ef = min(EF_MAX, wanted)
        work = ef * HNSW_NEIGHBOURS
        widened_past_bound = wanted > EF_MAX
    else:
        work = n * SELECTOR_TEST + allowed
        widened_past_bound = False
    selector_cost = queries * work * d  # work: vectors' worth of d multiply-adds a query
    if allowed == 0:
        return FilterPlan("exact", 0, reason="the filter allows nothing")
    if fits and allowed <= k:
        return FilterPlan("exact", allowed, reason="the filter allows no more than k vectors")
    if fits and widened_past_bound:
        return FilterPlan("exact", allowed, reason=f"efSearch would pass {EF_MAX}")
    if fits and exact_cost <= selector_cost:
        return FilterPlan("exact", allowed, reason="cheaper than the selector")
    return FilterPlan(
        "selector", allowed, nprobe=nprobe, ef_search=ef,
        reason="cheaper than exact" if fits else "too many allowed vectors to hold",
    )


def filtered_search(
    index: VectorIndex,
    xq: np.ndarray,
    k: int,
    allowed_ids: np.ndarray,
    *,
    vectors_of: VectorsOf | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k among `allowed_ids` for (m, d) float32 queries, losing no hit to the index's
    approximation: D (m, k) float32 scores descending, I (m, k) int64 ids, -1 padding.

    `vectors_of((a,) int64 ids)` returns (ids found, (a', d) float32 vectors) from the durable
    copy; it is used when the index does not store full vectors (compressed kinds): the exact
    road reads the allowed vectors through it, the selector road re-scores its `rerank`
    candidates a hit with it. Without it such an index's own codes are used.
    """
    exact_vectors = getattr(index, "stores_exact_vectors", index.kind in ("flat", "hnsw", "ivf"))
    shape = index_shape(index, exact_vectors=exact_vectors or vectors_of is None)
    asked = np.ascontiguousarray(allowed_ids, dtype=np.int64)
    # Ids the index does not hold count as allowed here (counting them costs a sort): a filter
    # that names many such ids widens too little and is answered exactly for the rows it leaves
    # short.
    plan = plan_filtered_search(shape, len(asked), k, len(xq))
    if plan.road == "exact":
        held = held_ids(index, asked)
        return exact_search(xq, k, *_allowed_vectors(index, held, exact_vectors, vectors_of))
    selector, _bits = id_selector(asked)  # _bits: the bitmap FAISS reads, alive while it does
    rescored = not exact_vectors and vectors_of is not None
    # a compressed kind's selector hits are ranked by their codes: take `rerank` candidates a
    # hit and rank them by the durable vectors, as an unfiltered search does
    wide = max(k, min(index.count, k * index.rerank)) if rescored else k
    D, I = index.index.search(xq, wide, params=_search_params(plan, selector))
    if rescored:
        assert vectors_of is not None
        D, I = rescore(xq, I, k, vectors_of)
    short = (I >= 0).sum(axis=1) < min(k, len(asked))  # (m,) rows perhaps left short
    if short.any():
        held = held_ids(index, asked)
        short &= (I >= 0).sum(axis=1) < min(k, len(held))
    if short.any():
        ids, vectors = _allowed_vectors(index, held, exact_vectors, vectors_of)
        D[short], I[short] = exact_search(xq[short], k, ids, vectors)
    return D, I


def id_selector(ids: np.ndarray) -> tuple[object, np.ndarray | None]:
    """A FAISS selector of (a,) int64 `ids`, and the bitmap it reads (None for a hash set).

    A bitmap over 0..max(ids) is made with NumPy in about a millisecond for 50k ids, where FAISS'
    hash-set `IDSelectorBatch` takes about 30 ms; it is used while it is small (at most 64 bits
    per allowed id, or 1 Mbit, and at most BITMAP_MAX_BITS). Keep the bitmap referenced for as
    long as the selector is used: FAISS holds a bare pointer to it.
    """
    import faiss

    bound = min(BITMAP_MAX_BITS, max(64 * len(ids), 2**20))
    if not len(ids) or ids.min() < 0 or ids.max() >= bound:
        return faiss.IDSelectorBatch(ids), None
    top = int(ids.max()) + 1
    member = np.zeros(top, dtype=bool)
    member[ids] = True
    bits = np.packbits(member, bitorder="little")  # FAISS reads bit i as byte i >> 3, bit i & 7
    return faiss.IDSelectorBitmap(len(bits), faiss.swig_ptr(bits)), bits  # n in bytes


def held_ids(index: VectorIndex, allowed_ids: np.ndarray) -> np.ndarray:
    """(a,) int64: the distinct `allowed_ids` the index holds, ascending."""
    allowed = np.asarray(allowed_ids, dtype=np.int64)
    if len(allowed) > 1 and not (allowed[1:] > allowed[:-1]).all():  # (sorting is the cost)
        allowed = np.unique(allowed)
    held = index.sorted_ids()
    if not len(held):
        return allowed[:0]
    where = np.minimum(np.searchsorted(held, allowed), len(held) - 1)
    return allowed[held[where] == allowed]


def exact_search(
    xq: np.ndarray, k: int, ids: np.ndarray, vectors: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top-k by inner product of (m, d) float32 queries against (a, d) float32
    `vectors` with (a,) int64 `ids`: D (m, k) float32, I (m, k) int64, padded as FAISS pads."""
    import faiss

    m = len(xq)
    D = np.full((m, k), MISSING_SCORE, dtype=np.float32)
    I = np.full((m, k), -1, dtype=np.int64)
    found = min(k, len(ids))
    if found and m:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        D_pos, I_pos = faiss.knn(xq, vectors, found, metric=faiss.METRIC_INNER_PRODUCT)
        D[:, :found] = D_pos
        I[:, :found] = np.where(I_pos >= 0, ids[np.maximum(I_pos, 0)], -1)
    return D, I


def space_vectors(space: VectorSpace) -> VectorsOf:
    """A reader of `space`'s durable vectors from the catalog, for `filtered_search`."""

    def read(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        found, vectors = space.catalog.vectors(space.modality, space.model.id, ids=ids.tolist())
        return found, np.asarray(vectors, dtype=np.float32).reshape(len(found), -1)

    return read


def search_space(
    space: VectorSpace, xq: np.ndarray, k: int, *, allowed_ids: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """`VectorIndex.search` of a space's index, a filter reading the catalog where it must."""
    return space.index.search(xq, k, allowed_ids=allowed_ids, vectors_of=space_vectors(space))


def _allowed_vectors(
    index: VectorIndex, allowed: np.ndarray, exact_vectors: bool, vectors_of: VectorsOf | None
) -> tuple[np.ndarray, np.ndarray]:
    """((a,) int64 ids, (a, d) float32 vectors) of the held `allowed` ids."""
    if exact_vectors or vectors_of is None:
        return allowed, index.reconstruct_batch(allowed) if len(allowed) else _none(index.dim)
    ids, vectors = vectors_of(allowed)
    return ids, vectors if len(ids) else _none(index.dim)


def _none(dim: int) -> np.ndarray:
    return np.zeros((0, dim), dtype=np.float32)


def _search_params(plan: FilterPlan, selector):
    import faiss

    if plan.nprobe is not None:
        return faiss.SearchParametersIVF(sel=selector, nprobe=plan.nprobe)
    if plan.ef_search is not None:
        return faiss.SearchParametersHNSW(sel=selector, efSearch=plan.ef_search)
    return faiss.SearchParameters(sel=selector)


def reranked_search(
    index: VectorIndex, xq: np.ndarray, k: int, vectors_of: VectorsOf, factor: int
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of a compressed index re-scored exactly: its `factor * k` best candidates by their
    codes, then inner products with their durable vectors (`vectors_of`, the catalog's copy).

    FAISS' IndexRefine does this with a second index in memory; here the full vectors stay on
    disk and only the candidates are read, so memory stays that of the codes while the ranking
    and the scores are those of the stored vectors."""
    wide = max(k, min(index.count, k * factor))
    _, candidates = index._searcher(wide).search(xq, wide)
    return rescore(xq, candidates, k, vectors_of)


def rescore(
    xq: np.ndarray, candidates: np.ndarray, k: int, vectors_of: VectorsOf, chunk: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """(m, k) scores and ids: the best k of each row of (m, c) int64 `candidates` (-1 = none) by
    inner product of (m, d) `xq` with their vectors read through `vectors_of`, descending; rows
    with fewer than k candidates are padded with -1 ids as FAISS pads them."""
    m = len(xq)
    D = np.full((m, k), MISSING_SCORE, dtype=np.float32)
    I = np.full((m, k), -1, dtype=np.int64)
    held = np.unique(candidates[candidates >= 0])
    if not len(held):
        return D, I
    found, vectors = vectors_of(held)
    order = np.argsort(found)
    found, vectors = np.asarray(found, dtype=np.int64)[order], vectors[order]
    for start in range(0, m, chunk):  # (chunk, c, d) gathered at a time
        rows = candidates[start : start + chunk]
        at = np.clip(np.searchsorted(found, rows), 0, max(len(found) - 1, 0))
        valid = (rows >= 0) & (found[at] == rows)
        scores = np.einsum("md,mcd->mc", xq[start : start + chunk], vectors[at])
        scores[~valid] = -np.inf
        best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        top = np.take_along_axis(scores, best, axis=1)
        ids = np.take_along_axis(rows, best, axis=1)
        missing = ~np.isfinite(top)
        D[start : start + chunk, : top.shape[1]] = np.where(missing, MISSING_SCORE, top)
        I[start : start + chunk, : ids.shape[1]] = np.where(missing, -1, ids)
    return D, I
