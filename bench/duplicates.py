"""Near-duplicates: the time of `Engine.duplicates` on a home of --n vectors, per index kind.

A home is filled with --n catalog rows (no files, `fake_images`) and 512-d vectors: CLIP-
structured ones from bench/clipgen.py (fitted to the flickr8k-1k embeddings of the `demo`
model) with ../shared present, else uniform random unit vectors. A share --planted of them are
near-copies of earlier vectors (Gaussian noise to a cosine of about 0.97-0.99, as a resized or
re-encoded photo's embedding sits to its original's), in groups of 2 to 4. For each kind the
index is built as `index --index-kind KIND` builds it (not timed), then `Engine.duplicates` is
timed: every stored vector streamed from the catalog and searched, the groups formed and their
rows read. Printed beside: the planted pairs found in one group (recall), the groups and
photos grouped, and whether the groups equal those of flat (exact k-NN). `uptime` is printed
before and after: this host is about twice as fast quiet as busy. JSON only with --record.

    .venv/bin/python bench/duplicates.py [--n 100000] [--kinds flat,ivf,ivf-sq8] [--record]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import FAKE_BATCH, SHARED_DATA, fake_images, unit_vectors, write_result  # noqa: E402

MODEL = "ViT-B-32/random"  # only its name and width are used: nothing is encoded


def generator(dim: int):
    """bench/clipgen.py's CLIP-like generator, or None without ../shared."""
    from clipgen import ClipLike, real_embeddings

    if not (SHARED_DATA / "flickr8k-1k").is_dir():
        return None
    return ClipLike.fit(real_embeddings(SHARED_DATA / "flickr8k-1k", "demo").images, dim=dim)


def planted_collection(n: int, dim: int, share: float, seed: int, clip_like: bool = True):
    """(n, dim) float32 unit vectors and the planted groups, as lists of row numbers: about
    `share` * n rows are noisy copies of an original among the first rows."""
    gen = generator(dim) if clip_like else None
    parts = [
        gen.batch(number, FAKE_BATCH)[: min(FAKE_BATCH, n - start)] if gen
        else unit_vectors(min(FAKE_BATCH, n - start), dim, start)
        for number, start in enumerate(range(0, n, FAKE_BATCH))
    ]
    x = np.concatenate(parts)
    rng = np.random.default_rng(seed)
    copies = int(n * share)
    originals = rng.choice(n - copies, size=max(1, copies // 2), replace=False)
    owner = rng.choice(originals, size=copies)  # 1 to several copies an original
    target = np.arange(n - copies, n)
    noise = rng.standard_normal((copies, dim), dtype=np.float32)
    noise *= rng.uniform(0.10, 0.25, size=(copies, 1)).astype(np.float32) / np.sqrt(dim)
    x[target] = x[owner] + noise
    x[target] /= np.linalg.norm(x[target], axis=1, keepdims=True)
    groups: dict[int, list[int]] = {}
    for original, copy in zip(owner.tolist(), target.tolist(), strict=True):
        groups.setdefault(original, [original]).append(copy)
    return x, list(groups.values()), gen is not None


def fill_home(engine, x: np.ndarray) -> np.ndarray:
    """Catalog rows and vectors for every row of `x`; returns the (n,) int64 catalog ids."""
    from searchengine.catalog import as_stored

    engine.catalog.ensure_model(MODEL, x.shape[1])
    space = engine.space(MODEL, "image", create=True, kind="flat")
    ids = []
    for start in range(0, len(x), FAKE_BATCH):
        vectors = as_stored(x[start : start + FAKE_BATCH])
        images = fake_images(start, len(vectors))
        written = engine.catalog.write_images(space.model.id, images, vectors, [])
        space.add(np.asarray(written.ids), vectors)
        ids.extend(written.ids)
    space.save()
    return np.asarray(ids, dtype=np.int64)


def run_kind(engine, kind: str, threshold: float, ids: np.ndarray, planted: list[list[int]]):
    space = engine.space(MODEL, "image", create=True, kind=kind)
    if space.index.kind != kind:
        space.index = space.rebuild(reason="benchmark kind switch")
        space.save()
    start = time.perf_counter()
    report = engine.duplicates(threshold=threshold, model=MODEL)
    seconds = time.perf_counter() - start
    group_of = {p.id: g for g, group in enumerate(report.groups) for p in group.photos}
    pairs = [(ids[group[0]], ids[c]) for group in planted for c in group[1:]]
    planted_ids = {int(ids[row]) for group in planted for row in group}
    found = sum(1 for a, b in pairs if a in group_of and group_of.get(a) == group_of.get(b))
    groups = sorted(sorted(p.id for p in g.photos) for g in report.groups)
    return {
        "kind": kind,
        "seconds": round(seconds, 2),
        "groups": len(report.groups),
        "photos_grouped": sum(len(g.photos) for g in report.groups),
        "unplanted_grouped": sum(1 for i in group_of if i not in planted_ids),
        "planted_pair_recall": round(found / max(len(pairs), 1), 4),
        "largest_group": max((len(g.photos) for g in report.groups), default=0),
    }, groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="stored vectors")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--planted", type=float, default=0.01, help="share of near-copies")
    parser.add_argument("--threshold", type=float, default=0.95)
    parser.add_argument("--kinds", default="flat,ivf,ivf-sq8")
    parser.add_argument(
        "--vectors", choices=("clip", "random"), default="clip",
        help="clip: bench/clipgen.py's generator (fitted to the demo model, whose photos sit "
        "close together: past ~50k vectors distinct ones chain into groups at 0.95); random: "
        "uniform unit vectors, where only the planted copies are near-duplicates")
    parser.add_argument("--record", action="store_true", help="write bench/results/duplicates.json")
    args = parser.parse_args()

    from searchengine.engine import Engine

    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"n={args.n} dim={args.dim} planted={args.planted} threshold={args.threshold}; "
          f"uptime: {uptime}")
    x, planted, clip_like = planted_collection(args.n, args.dim, args.planted, seed=0,
                                               clip_like=args.vectors == "clip")
    sample = np.random.default_rng(1).integers(0, args.n, size=(2, 200_000))
    sample = sample[:, sample[0] != sample[1]]  # pairs of two photos
    close = float(np.mean(np.sum(x[sample[0]] * x[sample[1]], axis=1) >= args.threshold))
    print(f"random pairs at cosine >= {args.threshold}: {close:.2e} (distinct photos that "
          f"group by themselves)")
    print(f"vectors: {'CLIP-like (clipgen)' if clip_like else 'uniform random'}, "
          f"{sum(len(g) - 1 for g in planted)} planted copies in {len(planted)} groups")
    home = Path(tempfile.mkdtemp(prefix="bench-duplicates-"))
    rows, reference = [], None
    try:
        with Engine.open(home) as engine:
            start = time.perf_counter()
            ids = fill_home(engine, x)
            print(f"filled the home in {time.perf_counter() - start:.0f} s")
            for kind in args.kinds.split(","):
                row, groups = run_kind(engine, kind, args.threshold, ids, planted)
                if kind == "flat":
                    reference = groups
                row["same_groups_as_flat"] = None if reference is None else groups == reference
                rows.append(row)
                print("  ".join(f"{k}={v}" for k, v in row.items()))
    finally:
        shutil.rmtree(home, ignore_errors=True)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    uptime_after = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"peak RSS {peak_mb:.0f} MB (the whole run); uptime after: {uptime_after}")
    if args.record:
        write_result("duplicates", {
            "n": args.n, "dim": args.dim, "planted": args.planted, "threshold": args.threshold,
            "clip_like": clip_like, "random_pairs_above_threshold": close,
            "uptime_before": uptime, "uptime_after": uptime_after,
            "peak_rss_mb": round(peak_mb), "rows": rows,
        })


if __name__ == "__main__":
    main()
