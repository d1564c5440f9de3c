"""Index kinds against collection size on CLIP-structured vectors: latency, recall, memory, build.

For each size (10k, 100k, 1M, 10M by default) and index kind, in a fresh process (so its peak RSS is
its own): draw the collection from a generator fitted to real embeddings (`clipgen.py`: the
flickr8k-1k photos under the bundled `demo` model, lifted isometrically to 512-d) into a float16
file (the catalog's form of the durable copy), build the index through searchengine's own
`VectorIndex` from it (streamed batches, never the whole collection in memory; approximate kinds
tuned by the recall guard, besides photo queries on 500 other captions as the home's text set
(--cross captions), the guard's everyday sentences of a home of photos alone (sentences), or
nothing (none);
compressed kinds re-score their candidates from the float16 copy), then search it with real caption
vectors (one query at a time, k=10) and compare with exact search streamed over the same collection.
Kinds too big for `--memory` (flat at 10M is 20 GB) are skipped and say so. Also reports recall of
each kind on the real embeddings themselves, and the relative contrast of real, generated and
uniform vectors (how much neighbour structure each has).

    .venv/bin/python bench/scale.py [--sizes 10000,100000,1000000] [--kinds flat,ivf,auto]
        [--queries 200] [--record] [--plot docs/scale.png]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from clipgen import ClipLike, exact_top_k, real_embeddings, structure_report  # noqa: E402
from common import RESULTS, SHARED_DATA, percentiles, write_result  # noqa: E402

K = 10
BATCH = 50_000


def generator(args) -> tuple[ClipLike, np.ndarray, np.ndarray, dict]:
    """The fitted generator, the (m, D) caption query vectors, (c, D) other captions the home
    holds as a text set (the recall guard's cross-modal queries), and the structure report."""
    real = real_embeddings(SHARED_DATA / "flickr8k-1k", args.model)
    gen = ClipLike.fit(real.images, dim=args.dim)
    rng = np.random.default_rng(7)
    picked = rng.permutation(len(real.captions))
    queries = gen.lifted(real.captions[picked[: args.queries]])
    held = gen.lifted(real.captions[picked[args.queries : args.queries + 500]])
    return gen, queries, held, structure_report(gen, real)


def guard_sentence_vectors(gen: ClipLike, model: str) -> np.ndarray:
    """(500, D): the recall guard's everyday sentences (`index/guard_queries.py`) encoded by
    `model` and lifted as the generator lifts its photos: what a home of photos alone tunes on."""
    from searchengine.encoder import Encoder
    from searchengine.index.guard_queries import guard_sentences
    from searchengine.index.tuning import QUERIES

    return gen.lifted(Encoder.load(model).encode_texts(guard_sentences(QUERIES)))


class Stored:
    """The durable copy of a generated collection: float16 rows in a file, as the catalog
    stores vectors, read by id (ids are row numbers) for the re-ranking of compressed kinds."""

    def __init__(self, gen: ClipLike, n: int):
        self.path = Path(tempfile.gettempdir()) / f"scale-{n}-{gen.dim}-{os.getpid()}.f16"
        rows = np.lib.format.open_memmap(self.path, "w+", np.float16, (n, gen.dim))
        for ids, vectors in gen.batches(n, BATCH):
            rows[ids[0] : ids[-1] + 1] = vectors
        rows.flush()
        self.rows = np.load(self.path, mmap_mode="r")

    def __call__(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ids = np.asarray(ids, dtype=np.int64)
        return ids, np.asarray(self.rows[ids], dtype=np.float32)

    def batches(self):
        for start in range(0, len(self.rows), BATCH):
            stop = min(start + BATCH, len(self.rows))
            ids = np.arange(start, stop, dtype=np.int64)
            yield ids, np.asarray(self.rows[start:stop], dtype=np.float32)

    def close(self) -> None:
        self.path.unlink(missing_ok=True)


def index_bytes(index) -> int:
    """Bytes of the index as saved (what `index` writes and `serve` loads)."""
    import faiss

    with tempfile.NamedTemporaryFile(suffix=".faiss") as handle:
        faiss.write_index(index.index, handle.name)
        return Path(handle.name).stat().st_size


def one(args) -> dict:
    """Build and measure one (size, kind); runs in its own process."""
    from searchengine.index.vectors import VectorIndex

    gen, queries, held, _ = generator(args)
    n, kind = args.one_size, args.one_kind
    stored = Stored(gen, n)  # the catalog's float16 copy; the index is built from it, as a home's
    try:
        start = time.perf_counter()
        cross = {"captions": held, "none": None}.get(args.cross)
        if args.cross == "sentences":
            cross = guard_sentence_vectors(gen, args.model)
        index = build(VectorIndex, kind, gen.dim, n, stored.batches, args, cross=cross,
                      vectors_of=stored)
        build_s = time.perf_counter() - start
        index.search(queries[:1], K, vectors_of=stored)  # warm
        samples = []
        found = np.zeros((len(queries), K), dtype=np.int64)
        for i, query in enumerate(queries):
            t = time.perf_counter()
            _, ids = index.search(query[None], K, vectors_of=stored)
            samples.append((time.perf_counter() - t) * 1000)
            found[i] = ids[0]
        exact = exact_top_k(queries, stored.batches(), K)[1]
    finally:
        stored.close()
    row = {
        "vectors": n,
        "kind": kind,
        "cross": args.cross,
        "built_kind": index.kind,
        "factory": index.plan.factory,
        "params": dict(index.tuning.params) if index.tuning else {},
        "tuned_recall": index.tuning.recall if index.tuning else None,
        "build_seconds": round(build_s, 1),
        "index_bytes": index_bytes(index),
        "search": percentiles(samples),
        "recall_at_10_vs_exact": recall(exact, found),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    return row


def build(VectorIndex, kind: str, dim: int, n: int, batches, args, *, cross=None,
          vectors_of=None):
    """searchengine's own build from streamed batches, as a home builds it (`VectorSpace._build`):
    the plan for the size and budget (auto tries its candidates in order until one reaches the
    target), then the recall guard tunes the search parameters on held-out stored vectors."""
    from searchengine.index.kinds import auto_candidates, plan_index
    from searchengine.index.tuning import tune

    if kind == "auto":
        plans = auto_candidates(dim, n, memory=args.memory) or [
            plan_index("auto", dim, n, memory=args.memory)  # raises, saying why
        ]
    else:
        plans = [plan_index(kind, dim, n)]
    for plan in plans:
        index = VectorIndex.build_from_batches(plan.kind, dim, n, batches, plan=plan)
        tuning = tune(index, batches, target=args.target_recall, cross=cross,
                      stand_in=args.cross == "sentences",
                      vectors_of=vectors_of)
        index.apply_tuning(tuning)
        if tuning.reached:
            break
    return index


def recall(exact: np.ndarray, found: np.ndarray) -> float:
    hits = [len(set(e) & set(f) - {-1}) for e, f in zip(exact, found, strict=True)]
    return round(float(np.sum(hits)) / exact.size, 4)


def real_recall(args) -> list[dict]:
    """Recall@10 of each kind on the real photo vectors with real caption queries."""
    from searchengine.index.vectors import VectorIndex

    real = real_embeddings(SHARED_DATA / "flickr8k-1k", args.model)
    gen = ClipLike.fit(real.images, dim=args.dim)
    xb, xq = gen.lifted(real.images), gen.lifted(real.captions)
    ids = np.arange(len(xb), dtype=np.int64)
    exact = exact_top_k(xq, iter([(ids, xb)]), K)[1]
    rows = []
    for kind in args.kinds.split(","):
        index = build(VectorIndex, kind, xb.shape[1], len(xb), lambda: iter([(ids, xb)]), args,
                      vectors_of=lambda i: (i, xb[i]))
        rows.append(
            {
                "vectors": len(xb),
                "kind": kind,
                "built_kind": index.kind,
                "params": dict(index.tuning.params) if index.tuning else {},
                "recall_at_10_vs_exact": recall(
                    exact, index.search(xq, K, vectors_of=lambda i: (i, xb[i]))[1]
                ),
            }
        )
    return rows


def fits(kind: str, n: int, dim: int, memory: int | None) -> bool:
    """Whether the kind's planned index of `n` vectors fits the budget (flat and IVF-Flat at 10M
    are 20 GB: skipped rather than swapping the machine to death)."""
    from searchengine.index.kinds import plan_index

    if memory is None or kind == "auto":
        return True
    return plan_index(kind, dim, n).memory_bytes <= memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000,10000000")
    parser.add_argument("--kinds", default="flat,hnsw,ivf,ivf-sq8,ivf-pq,auto")
    parser.add_argument("--model", default="demo", help="model whose real embeddings are fitted")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--target-recall", type=float, default=0.95)
    parser.add_argument("--memory", type=int, default=8 * 2**30, help="index memory budget, bytes")
    parser.add_argument("--hnsw-max", type=int, default=1_000_000,
                        help="largest size HNSW is built at (its build is slow on 2 cores)")
    parser.add_argument("--cross", default="captions", choices=["captions", "sentences", "none"],
                        help="what the recall guard tunes on besides photo queries: 500 other "
                        "captions (a home with a text set), the guard's everyday sentences "
                        "encoded by the model (a home of photos alone, as `index` does it now), "
                        "or nothing (a home of photos alone before)")
    parser.add_argument("--no-cross", dest="cross", action="store_const", const="none",
                        help="the same as --cross none")
    parser.add_argument("--record", action="store_true", help="write bench/results/scale.json")
    parser.add_argument("--append", action="store_true",
                        help="with --record: keep the recorded rows of sizes and kinds not run now")
    parser.add_argument("--plot", type=Path, default=None, help="write the latency/recall plot")
    parser.add_argument("--one-size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--one-kind", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not (SHARED_DATA / "flickr8k-1k").is_dir():
        sys.exit(f"needs {SHARED_DATA / 'flickr8k-1k'} (the real embeddings the generator fits)")
    if args.one_size:
        print(json.dumps(one(args)))
        return

    _, _, _, structure = generator(args)
    print("structure:", structure)
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        for kind in args.kinds.split(","):
            if not fits(kind, n, args.dim, args.memory) or (kind == "hnsw" and n > args.hnsw_max):
                print(f"{n:>9} {kind:8} skipped (over the memory budget or --hnsw-max)")
                rows.append({"vectors": n, "kind": kind, "skipped": True})
                continue
            command = [sys.executable, __file__, "--one-size", str(n), "--one-kind", kind]
            command += ["--cross", args.cross]
            for flag in ("model", "dim", "queries", "target_recall", "memory"):
                value = getattr(args, flag)
                if value is not None:
                    command += [f"--{flag.replace('_', '-')}", str(value)]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                print(f"{n:>9} {kind:8} FAILED: {done.stderr.strip().splitlines()[-1:]}")
                rows.append({"vectors": n, "kind": kind, "error": done.stderr[-2000:]})
                continue
            row = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(
                f"{n:>9} {kind:8} -> {row['built_kind']:8} p50 {row['search']['p50_ms']:7.2f} ms "
                f"p95 {row['search']['p95_ms']:7.2f} ms recall@10 {row['recall_at_10_vs_exact']}"
                f" {row['index_bytes'] / 2**20:8.1f} MiB build {row['build_seconds']} s "
                f"peak RSS {row['peak_rss_mb']} MB {row['params']}"
            )
    real = real_recall(args)
    for row in real:
        print(f"real {row['vectors']} {row['kind']}: recall@10 {row['recall_at_10_vs_exact']}")
    payload = {"generator": structure, "results": rows, "real_embeddings": real,
               "queries": args.queries, "memory_budget": args.memory}
    if args.record and args.append and (RESULTS / "scale.json").exists():
        payload = merged(json.loads((RESULTS / "scale.json").read_text()), payload)
    if args.record:
        write_result("scale", payload)
    if args.plot:
        plot(payload["results"], args.plot)


def merged(earlier: dict, now: dict) -> dict:
    """`now` with the rows of `earlier` it did not measure again (by size and kind), each row
    keeping the commit and date of the run that measured it."""
    stamp = {"git_commit": earlier.get("environment", {}).get("git_commit"),
             "date": earlier.get("environment", {}).get("date")}
    fresh = {(r["vectors"], r["kind"]) for r in now["results"]}
    kept = [{**stamp, **r} for r in earlier["results"] if (r["vectors"], r["kind"]) not in fresh]
    real = {r["kind"]: r for r in earlier.get("real_embeddings", [])}
    real.update({r["kind"]: r for r in now["real_embeddings"]})
    rows = sorted(kept + now["results"], key=lambda r: (r["vectors"], r["kind"]))
    return {**now, "results": rows, "real_embeddings": list(real.values())}


def plot(rows: list[dict], path: Path) -> None:
    """Search p50 and recall@10 against size, one line per kind; auto's choices marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if "search" in r]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for kind in dict.fromkeys(r["kind"] for r in done):
        if kind == "auto":
            continue
        mine = [r for r in done if r["kind"] == kind]
        sizes = [r["vectors"] for r in mine]
        left.plot(sizes, [r["search"]["p50_ms"] for r in mine], "o-", label=kind)
        right.plot(sizes, [r["recall_at_10_vs_exact"] for r in mine], "o-", label=kind)
    auto = [r for r in done if r["kind"] == "auto"]
    if auto:
        left.scatter([r["vectors"] for r in auto], [r["search"]["p50_ms"] for r in auto],
                     s=160, facecolors="none", edgecolors="black", label="auto's choice")
        right.scatter([r["vectors"] for r in auto], [r["recall_at_10_vs_exact"] for r in auto],
                      s=160, facecolors="none", edgecolors="black", label="auto's choice")
    for axis, label in ((left, "search p50 (ms, one query, k=10)"), (right, "recall@10 vs exact")):
        axis.set_xscale("log")
        axis.set_xlabel("vectors (512-d, CLIP-structured)")
        axis.set_ylabel(label)
        axis.grid(True, alpha=0.3)
    left.set_yscale("log")
    right.axhline(0.95, color="grey", linestyle="--", linewidth=1)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
