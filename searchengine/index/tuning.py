"""The recall guard: search parameters of an approximate index tuned on the home's own vectors.

Held-out queries are a sample of the stored vectors. Each is searched exactly (streamed over the
stored vectors) and through the index; the query's own id is left out of both answers, or every
query would find itself and inflate recall. FAISS' `ParameterSpace` enumerates the kind's search
parameter (nprobe for IVF, efSearch for HNSW) in increasing cost and sets it; the first value
whose recall@k reaches the target is the cheapest that does. autofaiss does the same search
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
        space.set_index_parameter(faiss_index, name, float(value))


def tune(
    index: VectorIndex,
    batches: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]],
    *,
    target: float = DEFAULT_TARGET,
    k: int = RECALL_AT,
    queries: int = QUERIES,
) -> Tuning:
    """The cheapest search parameter of `index` whose recall@`k` reaches `target` on held-out
    stored vectors (`batches()` yields ((b,) int64 ids, (b, d) float32) and is read twice), set
    on the index. When no value reaches it, the best one is set and returned (`reached` False).
    Exact kinds return recall 1.0 and no parameters."""
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
    truth = exact_neighbours(batches(), qids, xq, k)
    tried: list[tuple[int, float]] = []
    for value in values:
        space.set_index_parameter(index.index, name, float(value))
        _, I = index.index.search(xq, k + 1)
        measured = recall_at(_without_self(I, qids, k), truth)
        tried.append((value, measured))
        log.debug("%s=%d: recall@%d %.3f", name, value, k, measured)
        if measured >= target:
            return Tuning({name: value}, measured, target, len(qids), index.count, tuple(tried))
        if len(tried) >= 3 and measured - tried[-3][1] < PLATEAU:
            break  # two doublings gained nothing: the codes, not the search, limit recall
    value, measured = max(tried, key=lambda t: (t[1], -t[0]))
    space.set_index_parameter(index.index, name, float(value))
    return Tuning({name: value}, measured, target, len(qids), index.count, tuple(tried))


def held_out(
    batches: Iterable[tuple[np.ndarray, np.ndarray]], count: int, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """(q,) int64 ids and (q, d) float32 vectors: about `size` stored vectors spread evenly over
    the batches, starting half a stride in (the IVF training sample starts at 0)."""
    step = max(1, -(-count // max(size, 1)))
    ids, vectors, seen = [], [], 0
    for batch_ids, batch in batches:
        first = (step // 2 - seen) % step
        ids.append(np.asarray(batch_ids[first::step], dtype=np.int64))
        vectors.append(np.asarray(batch[first::step], dtype=np.float32))
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
