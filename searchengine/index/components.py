"""Groups of nearly identical vectors: the connected components of the pairs whose inner
product reaches a threshold, found through the index's own k-NN search (never all pairs).

Every stored vector is a query, streamed in batches, for its FIRST_K nearest neighbours. A row
whose k-th neighbour still reaches the threshold may have more: it is searched again among the
ids outside its component only (`near_components`), in sub-batches of at most PAIR_BUDGET
(query, neighbour) slots, so memory stays that of a batch. Pairs are merged at once into a
union-find over the ids' positions (`Components`, NumPy only), so no list of pairs is kept.

A candidate pair is confirmed on the stored vectors themselves: its cosine is computed in float64
(the same number the report shows) from the query and the neighbour's vector (the index's own
where it stores vectors whole; the catalog's, through `vectors_of`, for a compressed kind, whose
candidates by code are also re-scored with them first: `index.search.rescore`).
An approximate kind (hnsw, ivf) finds what its tuned search finds; a pair it misses is still
grouped when its two photos connect through others.

Cost: about n queries of the index at k = FIRST_K, plus the rows searched again (filtered to
the ids outside their component: a dense region costs about its rows times what lies outside
it). A very low threshold still approaches all pairs (every photo near many components).
"""

# faiss' short names (D scores, I ids, xq queries) are the house style in vector code.
# ruff: noqa: E741

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from searchengine.index.vectors import VectorIndex

FIRST_K = 16  # neighbours a query asks for first (self included)
FILTERED_COMPONENTS = 64  # pending components above which a round widens k instead of filtering
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
    """The components of `ids` joined by pairs of cosine >= `threshold`.

    `ids`: (n,) int64 ascending, the ids to group (positions in the result are indexes into
    it); `batches`: the queries, ((b,) int64 ids, (b, d) float32 vectors) as the catalog streams
    them; `index`: searched for each query's neighbours (ids it holds outside `ids` are
    ignored); `vectors_of`: the durable vectors, read for a compressed kind. `components`:
    merged into (e.g. holding exact copies already), else new.

    A row whose last neighbour may still reach the threshold is searched again among the ids
    outside its component only (neighbours inside it join nothing new), with k growing by WIDEN
    a round, until its last neighbour there falls below the threshold: exact for flat, and in a
    dense region (a long burst) the search shrinks as the component grows instead of widening
    towards all pairs.
    """
    ids = np.asarray(ids, dtype=np.int64)
    found = components if components is not None else Components(len(ids))
    pending_rows, pending_xq = [], []
    for query_ids, xq in batches:
        rows = _positions(ids, query_ids)
        xq, rows = xq[rows >= 0], rows[rows >= 0]
        full = _search_and_merge(index, xq, rows, ids, threshold, vectors_of, found, FIRST_K)
        pending_rows.append(rows[full])
        pending_xq.append(xq[full])
    rows = np.concatenate(pending_rows) if pending_rows else np.zeros(0, dtype=np.int64)
    xq = np.concatenate(pending_xq) if pending_xq else np.zeros((0, index.dim), np.float32)
    k = FIRST_K
    while len(rows):
        labels = found.labels[rows]
        if len(np.unique(labels)) > FILTERED_COMPONENTS:
            # many components: one filter each would cost O(n) apiece; widen k for all instead
            # (their merges leave fewer components for the next round)
            k = min(k * WIDEN, max(index.count, 1))
            full = _search_and_merge(index, xq, rows, ids, threshold, vectors_of, found, k)
            rows, xq = rows[full], xq[full]
            continue
        still = []
        for label in np.unique(labels):
            mine = np.flatnonzero(labels == label)
            outside = ids[found.labels != label]  # (a,) int64 ascending
            if len(outside):
                full = _search_and_merge(
                    index, xq[mine], rows[mine], ids, threshold, vectors_of, found, k, outside
                )
                still.append(mine[full])
        keep = np.concatenate(still) if still else np.zeros(0, dtype=np.int64)
        rows, xq = rows[keep], xq[keep]
        k = min(k * WIDEN, max(index.count, 1))
    return found


def _search_and_merge(
    index: VectorIndex,
    xq: np.ndarray,
    rows: np.ndarray,
    ids: np.ndarray,
    threshold: float,
    vectors_of: VectorsOf | None,
    found: Components,
    k: int,
    allowed: np.ndarray | None = None,
) -> np.ndarray:
    """Search (b, d) float32 queries at positions `rows` for their top k (among `allowed` ids
    when given), merging every pair whose cosine reaches `threshold`; returns (b,) bool: the rows
    whose k-th neighbour may still reach it (more may lie beyond)."""
    k = min(k, max(index.count, 1))
    full = np.zeros(len(rows), dtype=bool)
    step = max(1, PAIR_BUDGET // k)
    for start in range(0, len(rows), step):
        part = slice(start, start + step)
        D, I = index.search(xq[part], k, allowed_ids=allowed, vectors_of=vectors_of)
        _merge(index, xq[part], D, I, rows[part], ids, threshold, vectors_of, found)
        if D.shape[1] == k and k < index.count:
            full[part] = (I[:, -1] >= 0) & np.greater_equal(D[:, -1], threshold - SLACK)
    return full


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
    float64 from the stored vectors, reaches `threshold` (candidates: D >= threshold - SLACK;
    pairs already in one component are not looked at)."""
    hit = (I >= 0) & np.greater_equal(D, threshold - SLACK)
    query_rows, slots = np.nonzero(hit)
    neighbour_ids = I[query_rows, slots]
    neighbours = _positions(ids, neighbour_ids)
    keep = neighbours >= 0
    keep[keep] = found.labels[neighbours[keep]] != found.labels[rows[query_rows[keep]]]
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
