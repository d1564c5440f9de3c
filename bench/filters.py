"""Filtered search: latency and recall@10 of each road, per index kind and selectivity.

For each kind (flat, hnsw, ivf) over n clustered 512-d unit vectors and each share of allowed
ids (0.1%, 1%, 10%, 50%), one query at a time (as a lookup makes):
- `old`: the FAISS selector with the kind's parameters unchanged (the search before the
  filtered-search change; it loses hits under hnsw and ivf);
- `selector`: the new selector (a bitmap where small) with nprobe / efSearch widened for the
  selectivity (efSearch capped at EF_MAX, past which the search goes exact instead);
- `exact`: inner products with the allowed vectors, reconstructed from the index;
- `auto`: what `VectorIndex.search(..., allowed_ids=)` does (the cost model's road, and an
  exact answer for rows the selector leaves short), with the road it chose.
Recall@10 is against float64 brute force over the allowed vectors.

The vectors are clustered (n/100 Gaussian clusters, each point at cosine about 0.8 to its
centre), not uniform: uniform random vectors have no neighbours to find. The cluster width is a
stand-in, not fitted to stored CLIP embeddings. `uptime` is printed beside the figures: this host
is about twice as fast quiet as busy.

    .venv/bin/python bench/filters.py [--n 100000] [--queries 50] [--record]
"""

# faiss' short names (D scores, I ids, xq queries) are the house style in vector code.
# ruff: noqa: E741

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import percentiles, write_result  # noqa: E402

SHARES = (0.001, 0.01, 0.1, 0.5)
KINDS = ("flat", "hnsw", "ivf")
K = 10


def clustered(n: int, d: int, clusters: int, seed: int) -> np.ndarray:
    """(n, d) float32 unit vectors around `clusters` random centres."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[rng.integers(clusters, size=n)]
    x += rng.standard_normal((n, d), dtype=np.float32) * (0.75 / np.sqrt(d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def params_for(selector, *, nprobe: int | None, ef: int | None):
    import faiss

    if nprobe is not None:
        return faiss.SearchParametersIVF(sel=selector, nprobe=nprobe)
    if ef is not None:
        return faiss.SearchParametersHNSW(sel=selector, efSearch=ef)
    return faiss.SearchParameters(sel=selector)


def roads(index, allowed: np.ndarray):
    """name -> search(xq (1, d)) -> (D, I), for each road of the module's docstring."""
    import faiss

    from searchengine.index.search import (
        EF_MAX,
        exact_search,
        held_ids,
        id_selector,
        index_shape,
        plan_filtered_search,
    )

    shape = index_shape(index, exact_vectors=True)
    plan = plan_filtered_search(shape, len(allowed), K, 1)
    nprobe, ef = shape.nprobe, shape.ef_search
    if nprobe is not None:
        nprobe = min(shape.nlist, int(np.ceil(nprobe * shape.count / len(allowed))))
    elif ef is not None:
        ef = min(EF_MAX, int(np.ceil(max(ef, K) * shape.count / len(allowed))))

    def selector_search(widened: bool):
        """The selector made per search: the old search's hash set, or the new one's."""
        def search(xq):
            if widened:
                selector, _bits = id_selector(allowed)
                params = params_for(selector, nprobe=nprobe, ef=ef)
            else:
                selector = faiss.IDSelectorBatch(allowed)
                params = params_for(selector, nprobe=shape.nprobe, ef=shape.ef_search)
            return index.index.search(xq, K, params=params)

        return search

    def exact(xq):
        ids = held_ids(index, allowed)
        return exact_search(xq, K, ids, index.reconstruct_batch(ids))

    searches = {
        "old": selector_search(widened=False),
        "selector": selector_search(widened=True),
        "exact": exact,
        "auto": lambda xq: index.search(xq, K, allowed_ids=allowed),
    }
    return searches, plan.road


def recall(I: np.ndarray, truth: np.ndarray) -> float:
    return len(set(I[0].tolist()) & set(truth.tolist())) / len(truth)


def time_road(search, xq: np.ndarray, truths: np.ndarray) -> tuple[dict, float]:
    """Percentiles of one query at a time, and the mean recall@10 against `truths` (m, K)."""
    search(xq[:1])  # warm: direct maps, caches
    samples, recalls = [], []
    for q in range(len(xq)):
        start = time.perf_counter()
        _, I = search(xq[q : q + 1])
        samples.append((time.perf_counter() - start) * 1000)
        recalls.append(recall(I, truths[q]))
    return percentiles(samples), round(float(np.mean(recalls)), 4)


def top_ids(xq: np.ndarray, xb: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """(m, K) ids of the float64 brute-force top-K."""
    exact = xq.astype(np.float64) @ xb.astype(np.float64).T  # (m, n)
    return ids[np.argsort(-exact, axis=1)[:, :K]]


def bench_kind(kind: str, xb: np.ndarray, ids: np.ndarray, xq: np.ndarray) -> list[dict]:
    from searchengine.index.vectors import VectorIndex

    start = time.perf_counter()
    index = VectorIndex.build(kind, xb.shape[1], ids, xb)
    print(f"{kind}: built in {time.perf_counter() - start:.1f} s", flush=True)
    figures, found = time_road(lambda x: index.search(x, K), xq, top_ids(xq, xb, ids))
    rows = [{"kind": kind, "share": 1.0, "allowed": len(ids), "road": "unfiltered",
             "auto_chose": None, "recall_at_10": found, **figures}]
    print(f"  unfiltered: p50 {figures['p50_ms']:8.3f} ms  recall@10 {found:.3f}")
    rng = np.random.default_rng(7)
    for share in SHARES:
        picked = np.sort(rng.choice(len(ids), max(K, int(share * len(ids))), replace=False))
        allowed = ids[picked]
        truths = top_ids(xq, xb[picked], allowed)
        searches, road = roads(index, allowed)
        for name, search in searches.items():
            figures, found = time_road(search, xq, truths)
            rows.append({
                "kind": kind, "share": share, "allowed": len(allowed), "road": name,
                "auto_chose": road if name == "auto" else None, "recall_at_10": found, **figures,
            })
            chose = f"  (chose {road})" if name == "auto" else ""
            print(f"  {share:>6.1%} {name:>8}: p50 {figures['p50_ms']:8.3f} ms  p95 "
                  f"{figures['p95_ms']:8.3f} ms  recall@10 {found:.3f}{chose}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="stored vectors")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=50, help="timed queries per road")
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--threads", type=int, default=1,
                        help="FAISS (OpenMP) threads; 1 keeps one-query timings steady on a busy "
                        "host (one query is not split across threads anyway)")
    parser.add_argument("--record", action="store_true", help="write bench/results/filters.json")
    args = parser.parse_args()

    import faiss

    faiss.omp_set_num_threads(args.threads)
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"n={args.n} dim={args.dim} queries={args.queries} threads={args.threads}; "
          f"uptime: {uptime}")
    xb = clustered(args.n, args.dim, clusters=max(1, args.n // 100), seed=1)
    ids = np.arange(1, 1 + args.n, dtype=np.int64) * 3  # catalog ids, not row numbers
    rng = np.random.default_rng(2)
    xq = xb[rng.choice(args.n, args.queries, replace=False)]
    xq = xq + rng.standard_normal(xq.shape, dtype=np.float32) * (0.5 / np.sqrt(args.dim))
    xq /= np.linalg.norm(xq, axis=1, keepdims=True)
    rows = [row for kind in args.kinds.split(",") for row in bench_kind(kind, xb, ids, xq)]
    uptime_after = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"uptime after: {uptime_after}")
    if args.record:
        write_result("filters", {
            "n": args.n, "dim": args.dim, "k": K, "queries": args.queries,
            "threads": args.threads,
            "vectors": "clustered: n/100 Gaussian clusters, within-cluster cosine ~0.8",
            "uptime_before": uptime, "uptime_after": uptime_after, "rows": rows,
        })


if __name__ == "__main__":
    main()
