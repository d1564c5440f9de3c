"""Index kinds by size: where exact flat search stops being a few milliseconds a query (auto's
threshold), and each kind's build time, tuned parameters, recall@10 and memory.

    .venv/bin/python bench/index_kinds.py [--flat-sizes 10000,25000,50000,100000]
        [--kind-size 50000] [--kinds flat,hnsw,ivf,ivf-sq8,ivf-pq,auto] [--removal] [--record]

Vectors: 512-d unit vectors drawn around 1000 random centres (a clustered generator: uniform
random vectors have no neighbours worth finding). Flat latency does not depend on the structure;
recall does, so the kinds' recall here is indicative, not a figure for real embeddings. Writes
bench/results/index_kinds.json only with --record.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import numpy as np  # noqa: E402
from common import percentiles, write_result  # noqa: E402

DIM = 512


def clustered(n: int, seed: int, centres: int = 1000) -> np.ndarray:
    """(n, DIM) float32 unit vectors around `centres` random directions."""
    rng = np.random.default_rng(seed)
    middle = rng.normal(size=(centres, DIM)).astype(np.float32)
    x = middle[rng.integers(0, centres, n)] + 0.8 * rng.normal(size=(n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def batches_of(x: np.ndarray, size: int = 10_000):
    def batches():
        for start in range(0, len(x), size):
            yield np.arange(start, min(start + size, len(x)), dtype=np.int64), x[start:start + size]

    return batches


def query_ms(index, xq: np.ndarray) -> list[float]:
    """Milliseconds of one search of one query, for each row of `xq`."""
    samples = []
    for row in xq:
        start = time.perf_counter()
        index.search(row[None, :], 10)
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def flat_latency(sizes: list[int], queries: int) -> list[dict]:
    from searchengine.index.vectors import VectorIndex

    rows = []
    xb = clustered(max(sizes), seed=1)
    xq = clustered(queries, seed=2)
    for n in sizes:
        index = VectorIndex.build("flat", DIM, np.arange(n), xb[:n])
        query_ms(index, xq[:5])  # warm
        figures = percentiles(query_ms(index, xq))
        rows.append({"vectors": n, **figures})
        print(f"flat {n:>8} vectors: p50 {figures['p50_ms']:.2f} ms, "
              f"p95 {figures['p95_ms']:.2f} ms")
    return rows


def kinds(kinds_: list[str], n: int, queries: int, target: float) -> list[dict]:
    from searchengine.index.kinds import IndexSettings, auto_candidates, plan_index
    from searchengine.index.tuning import tune
    from searchengine.index.vectors import VectorIndex

    xb = clustered(n, seed=3)
    xq = clustered(queries, seed=4)
    batches = batches_of(xb)
    rows = []
    for kind in kinds_:
        if kind == "auto":
            plan = auto_candidates(DIM, n, flat_limit=IndexSettings().flat_limit)[0]
        else:
            plan = plan_index(kind, DIM, n)
        start = time.perf_counter()
        index = VectorIndex.build_from_batches(plan.kind, DIM, n, batches, plan=plan)
        built = time.perf_counter() - start
        tuning = tune(index, batches, target=target)
        index.apply_tuning(tuning)
        tuned = time.perf_counter() - start - built
        query_ms(index, xq[:5])
        figures = percentiles(query_ms(index, xq))
        memory = len(_serialized(index))
        row = {"kind": kind, "built": plan.kind, "factory": plan.factory, "vectors": n,
               "build_s": round(built, 2), "tune_s": round(tuned, 2), "params": tuning.params,
               "recall_at_10": round(tuning.recall, 4), "memory_bytes": memory, **figures}
        rows.append(row)
        print(f"{kind:>8} ({plan.factory}): build {built:.1f} s, tune {tuned:.1f} s, "
              f"{tuning.params or 'exact'}, recall@10 {tuning.recall:.3f}, "
              f"{memory / 1e6:.1f} MB, p50 {figures['p50_ms']:.2f} ms")
    return rows


def removal(n: int, removed: int = 100) -> dict:
    """Milliseconds to drop `removed` ids from an ivf index of `n` vectors in place, beside the
    seconds of the rebuild from all vectors that every removal cost before (IndexIDMap2)."""
    from searchengine.index.vectors import VectorIndex

    xb = clustered(n, seed=5)
    batches = batches_of(xb)
    start = time.perf_counter()
    index = VectorIndex.build_from_batches("ivf", DIM, n, batches)
    rebuild_s = time.perf_counter() - start
    start = time.perf_counter()
    index.remove(np.arange(0, removed * 7, 7))
    remove_ms = (time.perf_counter() - start) * 1000
    print(f"ivf {n} vectors: remove {removed} ids in place {remove_ms:.1f} ms; "
          f"a rebuild (what each removal cost before) {rebuild_s:.1f} s")
    return {"vectors": n, "removed": removed, "remove_in_place_ms": round(remove_ms, 2),
            "rebuild_s": round(rebuild_s, 2)}


def _serialized(index) -> bytes:
    import faiss

    return faiss.serialize_index(index.index)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flat-sizes", default="10000,25000,50000,100000")
    parser.add_argument("--kind-size", type=int, default=50_000)
    parser.add_argument("--kinds", default="flat,hnsw,ivf,ivf-sq8,ivf-pq,auto")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--target", type=float, default=0.95)
    parser.add_argument("--removal", action="store_true", help="time removals from ivf")
    parser.add_argument("--record", action="store_true", help="write bench/results/*.json")
    args = parser.parse_args()
    sizes = [int(s) for s in args.flat_sizes.split(",") if s]
    payload = {"dim": DIM, "flat": flat_latency(sizes, args.queries) if sizes else []}
    if args.kinds:
        payload["kinds"] = kinds(args.kinds.split(","), args.kind_size, args.queries, args.target)
    if args.removal:
        payload["removal"] = removal(args.kind_size)
    if args.record:
        print(f"wrote {write_result('index_kinds', payload)}")


if __name__ == "__main__":
    main()
