"""Groups of nearly identical vectors: the connected components of the pairs whose inner
product reaches a threshold, found through the index's own k-NN search (never all pairs).

Every stored vector is a query, streamed in batches. A row whose k-th neighbour still reaches
the threshold may have more: it is searched again with k four times larger (down to its last
neighbour or the whole index), in sub-batches of at most PAIR_BUDGET (query, neighbour) slots,
so memory stays that of a batch. Each batch's pairs are merged at once into a union-find over
the ids' positions (`Components`, NumPy only), so no list of pairs is ever kept.

A candidate pair is confirmed on the stored vectors themselves: its cosine is computed in float64
(the same number the report shows) from the query and the neighbour's vector (the index's own
where it stores vectors whole; the catalog's, through `vectors_of`, for a compressed kind, whose
candidates by code are also re-scored with them first: `index.search.rescore`).
An approximate kind (hnsw, ivf) finds what its tuned search finds; a pair it misses is still
grouped when its two photos connect through others.

Cost: about n queries of the index at k = FIRST_K, plus the widened rows. A low threshold
(every photo near many) widens towards k = n, which is all pairs: that is what it asks for.
"""

# faiss' short names (D scores, I ids, xq queries) are the house style in vector code.
# ruff: noqa: E741

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from searchengine.index.vectors import VectorIndex

FIRST_K = 16  # neighbours a query asks for first (self included)
WIDEN = 4  # the factor k grows by for rows whose k-th neighbour still reaches the threshold
PAIR_BUDGET = 1 << 22  # (query, neighbour) slots searched at once: 4M, ~48 MB of D and I
CONFIRM_CHUNK = 1 << 14  # candidate pairs whose cosine is computed at once (16k x d float64)
# Candidates are the neighbours whose index score reaches threshold - SLACK: a stored vector is
# rounded to float16 and not made unit length again (norm within a few 1e-4 of 1), so its inner
# products differ from its cosines by less than this; the cosine then decides.
SLACK = 2e-3

VectorsOf = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


class Components:
    """Union-find over positions 0..n-1 with vectorised merges: `labels[i]` is the smallest
    position of i's component once `union` returns (roots point at themselves, every label is
    at most its position, so hooking a larger root under a smaller one makes no cycle)."""

    def __init__(self, n: int):
        self.labels = np.arange(n, dtype=np.int64)

    def union(self, u: np.ndarray, v: np.ndarray) -> None:
        """Merge the components of each pair (u[j], v[j]) of (p,) int64 positions."""
        labels = self.labels
        u = np.asarray(u, dtype=np.int64)
        v = np.asarray(v, dtype=np.int64)
        while len(u):
            lu, lv = labels[u], labels[v]
            apart = lu != lv
            u, v, lu, lv = u[apart], v[apart], lu[apart], lv[apart]
            if not len(u):
                return
            # each root hooks under the smallest root it is paired with; pairs left apart by a
            # competing hook are merged on the next pass (the sum of labels drops every pass)
            np.minimum.at(labels, np.maximum(lu, lv), np.minimum(lu, lv))
            self._compress()

    def _compress(self) -> None:
        labels = self.labels
        while True:
            jumped = labels[labels]
            if np.array_equal(jumped, labels):
                return
            labels[:] = jumped

    def groups(self) -> list[np.ndarray]:
        """The components of more than one position: (m,) int64 positions ascending, the groups
        ordered by their smallest position."""
        order = np.argsort(self.labels, kind="stable")
        labels = self.labels[order]
        starts = np.flatnonzero(np.r_[True, labels[1:] != labels[:-1]])
        sizes = np.diff(np.r_[starts, len(labels)])
        return [order[s : s + size] for s, size in zip(starts, sizes, strict=True) if size > 1]


def near_components(
    index: VectorIndex,
    ids: np.ndarray,
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
    threshold: float,
    *,
    vectors_of: VectorsOf | None = None,
    components: Components | None = None,
) -> Components:
    """The components of `ids` joined by pairs of inner product >= `threshold`.

    `ids`: (n,) int64 ascending, the ids to group (positions in the result are indexes into
    it); `batches`: the queries, ((b,) int64 ids, (b, d) float32 vectors) as the catalog streams
    them; `index`: searched for each query's neighbours (ids it holds outside `ids` are
    ignored); `vectors_of`: the durable vectors, read to re-score a compressed kind's
    candidates. `components`: merged into (e.g. holding exact copies already), else new.
    """
    ids = np.asarray(ids, dtype=np.int64)
    found = components if components is not None else Components(len(ids))
    for query_ids, xq in batches:
        rows = _positions(ids, query_ids)
        keep = rows >= 0
        _join_neighbours(index, xq[keep], rows[keep], ids, threshold, vectors_of, found)
    return found


def _join_neighbours(
    index: VectorIndex,
    xq: np.ndarray,
    rows: np.ndarray,
    ids: np.ndarray,
    threshold: float,
    vectors_of: VectorsOf | None,
    found: Components,
) -> None:
    """Search (b, d) float32 queries at positions `rows`, merging every pair whose cosine
    reaches `threshold`; rows whose last neighbour may still reach it are searched again,
    wider."""
    k = min(FIRST_K, max(index.count, 1))
    reach = threshold - SLACK
    while len(rows):
        step = max(1, PAIR_BUDGET // k)
        wider = []
        for start in range(0, len(rows), step):
            part = slice(start, start + step)
            D, I = index.search(xq[part], k, vectors_of=vectors_of)
            _merge(index, xq[part], D, I, rows[part], ids, threshold, vectors_of, found)
            if D.shape[1] == k and k < index.count:
                wider.append(start + np.flatnonzero(D[:, -1] >= reach))
        if not wider or k >= index.count:
            return
        again = np.concatenate(wider)
        xq, rows = xq[again], rows[again]
        k = min(k * WIDEN, index.count)


def _merge(
    index: VectorIndex,
    xq: np.ndarray,
    D: np.ndarray,
    I: np.ndarray,
    rows: np.ndarray,
    ids: np.ndarray,
    threshold: float,
    vectors_of: VectorsOf | None,
    found: Components,
) -> None:
    """Merge the pairs (row, neighbour) of (b, k) scores D and ids I whose cosine, computed in
    float64 from the stored vectors, reaches `threshold` (candidates: D >= threshold - SLACK)."""
    hit = (I >= 0) & np.greater_equal(D, threshold - SLACK)
    query_rows, slots = np.nonzero(hit)
    neighbour_ids = I[query_rows, slots]
    neighbours = _positions(ids, neighbour_ids)
    keep = (neighbours >= 0) & (neighbours != rows[query_rows])
    query_rows, neighbour_ids, neighbours = query_rows[keep], neighbour_ids[keep], neighbours[keep]
    for start in range(0, len(query_rows), CONFIRM_CHUNK):
        part = slice(start, start + CONFIRM_CHUNK)
        cosines = _cosines(index, xq[query_rows[part]], neighbour_ids[part], vectors_of)
        near = cosines >= threshold
        found.union(rows[query_rows[part]][near], neighbours[part][near])


def _cosines(
    index: VectorIndex, xq: np.ndarray, neighbour_ids: np.ndarray, vectors_of: VectorsOf | None
) -> np.ndarray:
    """(p,) float64 cosines of (p, d) float32 query vectors with the stored vectors of (p,)
    int64 `neighbour_ids` (the index's own where it stores them whole, else the catalog's)."""
    unique, back = np.unique(neighbour_ids, return_inverse=True)
    if index.stores_exact_vectors or vectors_of is None:
        vectors = index.reconstruct_batch(unique)
    else:
        read, vectors = vectors_of(unique)
        if len(read) != len(unique) or not np.array_equal(read, unique):
            at = _positions(np.asarray(read, dtype=np.int64), unique)
            vectors = np.where((at >= 0)[:, None], vectors[np.maximum(at, 0)], np.nan)
    a = xq.astype(np.float64)
    b = vectors.astype(np.float64)[back]
    dots = np.einsum("pd,pd->p", a, b)
    cosines = dots / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return np.nan_to_num(cosines, nan=-2.0)  # a vector gone from the catalog joins nothing


def _positions(ids: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """(m,) int64: the position of each of `wanted` in ascending `ids`, -1 where absent."""
    wanted = np.asarray(wanted, dtype=np.int64)
    if not len(ids):
        return np.full(len(wanted), -1, dtype=np.int64)
    at = np.minimum(np.searchsorted(ids, wanted), len(ids) - 1)
    return np.where(ids[at] == wanted, at, -1)
