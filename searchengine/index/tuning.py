"""The recall guard: search parameters of an approximate index tuned on the home's own vectors.

Held-out queries are a sample of the stored vectors. Each is searched exactly (streamed over the
stored vectors) and through the index; the query's own id is left out of both answers, or every
query would find itself and inflate recall. Where the home holds vectors of the other modality
under the same model (captions beside photos), a sample of those is searched too: text queries
sit across CLIP's modality gap, away from every photo, and an index tuned on photo queries alone
can miss them (HNSW tuned to 0.95 on photos gave 0.84 on captions, bench/scale.py). The recall
that must reach the target is the lower of the two.

FAISS' `ParameterSpace` enumerates the kind's search parameter (nprobe for IVF, efSearch for
HNSW) in increasing cost and sets it; the first value whose recall@k reaches the target is the
cheapest that does. autofaiss does the same search
around a latency budget with its own index builder; here the builder is ours (ids, streaming,
manifests), so only the FAISS piece is used.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from searchengine.errors import InvalidInputError

if TYPE_CHECKING:
    from searchengine.index.vectors import VectorIndex

log = logging.getLogger(__name__)

DEFAULT_TARGET = 0.95
RECALL_AT = 10
QUERIES = 500  # held-out queries: recall is measured to about +-0.01 at 0.95
# compressed kinds: candidates per hit re-scored with the catalog's vectors (VectorIndex.rerank).
# Their 8-bit codes misorder near-duplicates: IVF-SQ8 stalled at recall@10 0.93 on
# CLIP-structured photos at 100k whatever nprobe, 0.964 re-scoring 4 a hit (bench/scale.py)
RERANK = 4
STAND_IN_MISSES = 2.0
"""How much a miss of a stand-in sentence counts. The guard's everyday sentences are easier
queries than a home's real captions: at 100k CLIP-structured vectors (`bench/scale.py`), HNSW
tuned until the sentences reached recall 0.95 found 0.918 of the captions' neighbours (0.844 on
photo queries alone); with their misses counted twice (0.975 for a target of 0.95) it found
0.957."""
PLATEAU = 0.001  # recall gained over two steps below which searching wider stops


class RecallTargetError(InvalidInputError):
    """The recall target cannot be reached within the memory budget."""


@dataclass(frozen=True)
class Tuning:
    """Search parameters chosen for an index and the recall@k they measured."""

    params: dict[str, int] = field(default_factory=dict)  # e.g. {"nprobe": 8}; {} for flat
    recall: float = 1.0  # recall@k of the held-out queries against exact search
    target: float = DEFAULT_TARGET
    queries: int = 0
    vectors: int = 0  # vectors the index held when tuned
    tried: tuple[tuple[int, float], ...] = ()  # (parameter value, recall), cheapest first

    @property
    def reached(self) -> bool:
        return self.recall >= self.target


def check_target(target: float) -> float:
    if not 0.0 < target <= 1.0:
        raise InvalidInputError(f"the target recall must be in (0, 1], got {target}")
    return float(target)


def apply_params(faiss_index, params: dict[str, int]) -> None:
    """Set search parameters such as {"nprobe": 8} on a FAISS index (through ParameterSpace,
    which reaches through IndexIDMap2 wrappers)."""
    import faiss

    space = faiss.ParameterSpace()
    for name, value in params.items():
        if name != "rerank":  # ours, read by VectorIndex.rerank, not a FAISS parameter
            space.set_index_parameter(faiss_index, name, float(value))


def tune(
    index: VectorIndex,
    batches: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]],
    *,
    target: float = DEFAULT_TARGET,
    k: int = RECALL_AT,
    queries: int = QUERIES,
    cross: np.ndarray | None = None,
    vectors_of: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None,
    stand_in: bool = False,
) -> Tuning:
    """The cheapest search parameter of `index` whose recall@`k` reaches `target` on held-out
    stored vectors (`batches()` yields ((b,) int64 ids, (b, d) float32) and is read twice), set
    on the index. When no value reaches it, the best one is set and returned (`reached` False).
    `cross`: (c, d) float32 queries of the other modality (not stored in this index); recall is
    then the lower of the held-out and the cross-modal figure. `stand_in`: `cross` are not the
    home's texts but sentences that stand in for them, whose misses count twice (see
    STAND_IN_MISSES). `vectors_of(ids)` reads durable
    vectors: a compressed kind is then measured as it searches, its candidates re-scored
    (`VectorIndex.rerank`, recorded as the "rerank" parameter). Exact kinds return recall 1.0 and
    no parameters."""
    import faiss

    check_target(target)
    inner = index._inner()
    space = faiss.ParameterSpace()
    space.initialize(inner)
    ranges = [space.parameter_ranges.at(i) for i in range(space.parameter_ranges.size())]
    ranges = [r for r in ranges if r.name in ("nprobe", "efSearch")]
    if not ranges or index.count < 2:
        return Tuning({}, 1.0, target, 0, index.count)
    name = ranges[0].name
    values = [int(v) for v in faiss.vector_to_array(ranges[0].values)]
    if name == "nprobe":
        values = sorted({v for v in values if v < inner.nlist} | {int(inner.nlist)})
    k = min(k, index.count - 1)
    qids, xq = held_out(batches(), index.count, queries)
    own = len(qids)
    if cross is not None and len(cross):
        cross = np.ascontiguousarray(cross[:queries], dtype=np.float32)
        # -2 is no id (ids are >= 0, FAISS pads with -1): nothing is left out of their answers
        qids = np.concatenate([qids, np.full(len(cross), -2, dtype=np.int64)])
        xq = np.ascontiguousarray(np.concatenate([xq, cross]))
    truth = exact_neighbours(batches(), qids, xq, k)
    # compressed kinds re-score RERANK candidates a hit, then RERANK * 4 if the codes still
    # miss the target; kinds that store vectors whole (or no reader) search the index alone
    factors = [1] if index.stores_exact_vectors or vectors_of is None else [RERANK, 4 * RERANK]
    tried: list[tuple[int, float]] = []
    best: tuple[float, int, int] = (-1.0, 0, 1)  # (recall, -value, factor)
    for factor in factors:
        extra = {"rerank": factor} if factor > 1 else {}
        start = len(tried)
        for value in values:
            space.set_index_parameter(index.index, name, float(value))
            _, I = index.index.search(xq, (k + 1) * factor)
            if factor > 1:
                from searchengine.index.search import rescore

                _, I = rescore(xq, I, k + 1, vectors_of)  # type: ignore[arg-type]
            found = _without_self(I, qids, k)
            measured = recall_at(found[:own], truth[:own])
            if len(qids) > own:
                across = recall_at(found[own:], truth[own:])
                if stand_in:
                    across = 1.0 - STAND_IN_MISSES * (1.0 - across)
                measured = min(measured, across)
            tried.append((value, measured))
            best = max(best, (measured, -value, factor))
            log.debug("%s=%d rerank %d: recall@%d %.3f", name, value, factor, k, measured)
            if measured >= target:
                params = {name: value, **extra}
                return Tuning(params, measured, target, len(qids), index.count, tuple(tried))
            if len(tried) - start >= 3 and measured - tried[-3][1] < PLATEAU:
                break  # two doublings gained nothing: the codes, not the search, limit recall
    measured, value, factor = best[0], -best[1], best[2]
    space.set_index_parameter(index.index, name, float(value))
    params = {name: value, **({"rerank": factor} if factor > 1 else {})}
    return Tuning(params, measured, target, len(qids), index.count, tuple(tried))


def held_out(
    batches: Iterable[tuple[np.ndarray, np.ndarray]], count: int, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """(q,) int64 ids and (q, d) float32 vectors: about `size` stored vectors spread evenly over
    the batches, starting half a stride in (the IVF training sample starts at 0)."""
    step = max(1, -(-count // max(size, 1)))
    ids, vectors, seen = [], [], 0
    for batch_ids, batch in batches:
        first = (step // 2 - seen) % step
        # copies, not views: a view would keep its whole batch alive, and so every batch
        ids.append(np.array(batch_ids[first::step], dtype=np.int64))
        vectors.append(np.array(batch[first::step], dtype=np.float32))
        seen += len(batch_ids)
    return np.concatenate(ids), np.ascontiguousarray(np.concatenate(vectors))


def exact_neighbours(
    batches: Iterable[tuple[np.ndarray, np.ndarray]], qids: np.ndarray, xq: np.ndarray, k: int
) -> np.ndarray:
    """(q, k) int64 ids of the exact top-k by inner product of each query among the stored
    vectors other than itself, streamed batch by batch (a running top-k, no full matrix)."""
    best_scores = np.full((len(qids), k), -np.inf, dtype=np.float32)
    best_ids = np.full((len(qids), k), -1, dtype=np.int64)
    for ids, xb in batches:
        scores = xq @ np.asarray(xb, dtype=np.float32).T  # (q, b)
        scores[qids[:, None] == np.asarray(ids)[None, :]] = -np.inf  # not the query itself
        scores = np.concatenate([best_scores, scores], axis=1)
        candidates = np.concatenate([best_ids, np.broadcast_to(ids, (len(qids), len(ids)))], 1)
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        best_scores = np.take_along_axis(scores, top, 1)
        best_ids = np.take_along_axis(candidates, top, 1)
    return best_ids


def _without_self(I: np.ndarray, qids: np.ndarray, k: int) -> np.ndarray:
    """(q, k) ids: each row of (q, k + 1) `I` without its query's own id (else its last)."""
    keep = qids[:, None] != I
    keep[keep.sum(axis=1) > k, -1] = False  # the query was not found: drop the last instead
    return I[keep].reshape(len(I), k)


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over rows of |found ∩ truth| / k for (q, k) id arrays (-1 never matches)."""
    hits = sum(len(np.intersect1d(f[f >= 0], t[t >= 0])) for f, t in zip(found, truth, strict=True))
    return hits / max(truth.size, 1)
