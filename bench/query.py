"""Warm text->image query latency, split into text encoding and vector search.

For each stored-vector count and index kind: p50/p95/p99 of (a) `Encoder.encode_texts` on
typical short queries, (b) the vector search plus catalog lookup of a warm `Engine.search`
(homes up to --engine-max vectors are real homes with catalog rows; larger sizes time the FAISS
index alone on random unit vectors, and say so), and recall@10 of each kind against exact search.
With ../shared present, a home's vectors are CLIP-structured (bench/clipgen.py, fitted to the
flickr8k-1k embeddings) and recall is measured with real caption vectors; without it, uniform
random vectors and the encoded queries. JSON only with --record.

    .venv/bin/python bench/query.py [--model ViT-B-32/random] [--sizes 10000,100000,1000000]
        [--kinds flat,auto] [--engine-max 1000000] [--record]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import (  # noqa: E402
    FAKE_BATCH,
    fake_images,
    percentiles,
    unit_vectors,
    write_result,
)

QUERIES = [
    "a dog on the beach",
    "two children playing in the snow",
    "a red car parked on a street",
    "a man riding a bicycle",
    "people sitting at a cafe",
    "a black and white cat",
    "a mountain lake at sunset",
    "a woman in a blue dress",
    "a group of people hiking",
    "a boy jumping into a pool",
]


def clip_like(dim: int):
    """(generator, (m, dim) caption query vectors) from bench/clipgen.py, fitted to the real
    flickr8k-1k embeddings, or (None, None) without ../shared (uniform random vectors then)."""
    from clipgen import ClipLike, real_embeddings
    from common import SHARED_DATA

    if not (SHARED_DATA / "flickr8k-1k").is_dir():
        return None, None
    real = real_embeddings(SHARED_DATA / "flickr8k-1k", "demo")
    gen = ClipLike.fit(real.images, dim=dim)
    return gen, gen.lifted(real.captions[::25])


def fill_home(engine, model: str, n: int, dim: int, gen=None) -> None:
    """A home with `n` catalogued fake images (no files needed) and CLIP-structured vectors from
    `gen` (bench/clipgen.py), or random unit vectors without it."""
    from searchengine.catalog import as_stored

    space = engine.space(model, "image", create=True, kind="flat")
    for start in range(0, n, FAKE_BATCH):
        count = min(FAKE_BATCH, n - start)
        images = fake_images(start, count)
        number = start // FAKE_BATCH
        drawn = gen.batch(number, FAKE_BATCH)[:count] if gen else unit_vectors(count, dim, start)
        vectors = as_stored(drawn)  # what the catalog keeps
        written = engine.catalog.write_images(space.model.id, images, vectors, [])
        space.add(np.asarray(written.ids), vectors)
    space.save()


def time_calls(function, repeats: int) -> list[float]:
    samples = []
    for i in range(repeats):
        start = time.perf_counter()
        function(i)
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def bench_engine(args, n: int, kinds: list[str], encoder_ms: dict) -> list[dict]:
    from searchengine.engine import Engine

    home = Path(tempfile.mkdtemp(prefix="bench-query-"))
    rows = []
    try:
        engine = Engine.open(home)
        encoder = engine.encoder(args.model)
        gen, captions = clip_like(encoder.dim)
        start = time.perf_counter()
        fill_home(engine, args.model, n, encoder.dim, gen)
        print(f"filled a home of {n} vectors in {time.perf_counter() - start:.0f} s")
        query_vectors = encoder.encode_texts(QUERIES)  # (10, d)
        if captions is not None:
            query_vectors = captions  # real caption vectors, lifted like the collection
        exact = engine.space(args.model, "image").index.search(query_vectors, 10)[1]
        for kind in kinds:
            start = time.perf_counter()
            # as `index --index-kind KIND` does: the kind recorded, the index built and saved, so
            # every later search of the home reads this index
            space = engine.space(args.model, "image", create=True, kind=kind)
            space.index = space.rebuild(reason="benchmark kind switch")
            space.save()
            build_s = time.perf_counter() - start
            found = engine.search_vectors("image", query_vectors, k=10, model=args.model)[1]
            engine.search(QUERIES[0], k=10, model=args.model)  # warm
            search_ms = time_calls(
                lambda i, xq=query_vectors: engine.search_by_vector(
                    xq[i % len(xq) : i % len(xq) + 1], k=10, model=args.model
                ),
                args.repeats,
            )
            total_ms = time_calls(lambda i: _new_query(engine, args.model, i), args.repeats)
            rows.append(
                {
                    "vectors": n,
                    "kind": kind,
                    "path": "engine (catalog + index)",
                    "build_seconds": round(build_s, 2),
                    "text_encoding": encoder_ms,
                    "vector_search_and_lookup": percentiles(search_ms),
                    "search_total": percentiles(total_ms),
                    "recall_at_10_vs_exact": _recall(exact, found),
                }
            )
            _print(rows[-1])
        engine.close()
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return rows


def _new_query(engine, model: str, i: int):
    """A warm `Engine.search` of a query as if new: the encoder's query cache is emptied first."""
    engine.encoder(model).clear_text_cache()
    return engine.search(QUERIES[i % 10], k=10, model=model)


def bench_index_only(args, n: int, dim: int, kinds: list[str], encoder_ms: dict) -> list[dict]:
    from searchengine.index.vectors import VectorIndex

    xb = unit_vectors(n, dim, seed=1)
    xq = unit_vectors(100, dim, seed=2)
    ids = np.arange(n, dtype=np.int64)
    exact = VectorIndex.build("flat", dim, ids, xb)
    reference = exact.search(xq, 10)[1]
    rows = []
    for kind in kinds:
        start = time.perf_counter()
        index = exact if kind == "flat" else VectorIndex.build(kind, dim, ids, xb)
        build_s = time.perf_counter() - start
        samples = time_calls(
            lambda i, index=index: index.search(xq[i % 100 : i % 100 + 1], 10), args.repeats
        )
        rows.append(
            {
                "vectors": n,
                "kind": kind,
                "path": "FAISS index alone, random unit vectors",
                "build_seconds": round(build_s, 2),
                "text_encoding": encoder_ms,
                "vector_search": percentiles(samples),
                "recall_at_10_vs_exact": _recall(reference, index.search(xq, 10)[1]),
            }
        )
        _print(rows[-1])
    return rows


def text_encoding(encoder, repeats: int) -> tuple[dict, dict, dict]:
    """Percentiles of one 5-15 token query through `Encoder.encode_texts` with an empty query
    cache (a new query), with the query cached (a repeated one), and through open_clip's own
    `encode_text` over the full context; interleaved, so all three see the same host load."""
    encoder.encode_texts(QUERIES[:1])  # warm: the first forward sets up the kernels
    fresh, cached, reference = [], [], []
    for i in range(repeats):
        query = [QUERIES[i % 10]]
        encoder.clear_text_cache()
        fresh += time_calls(lambda _, q=query: encoder.encode_texts(q), 1)
        cached += time_calls(lambda _, q=query: encoder.encode_texts(q), 1)
        reference += time_calls(lambda _, q=query: encoder.encode_texts_reference(q), 1)
    return percentiles(fresh), percentiles(cached), percentiles(reference)


def _recall(reference: np.ndarray, found: np.ndarray) -> float:
    hits = [len(set(r) & set(f)) for r, f in zip(reference, found, strict=True)]
    return round(float(np.sum(hits)) / reference.size, 4)


def _print(row: dict) -> None:
    search = row.get("search_total") or row.get("vector_search")
    print(
        f"{row['vectors']:>8} {row['kind']:5} p50 {search['p50_ms']:.2f} ms p95 "
        f"{search['p95_ms']:.2f} ms recall@10 {row['recall_at_10_vs_exact']} ({row['path']})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-32/random")
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--kinds", default="flat,hnsw,ivf")
    parser.add_argument("--engine-max", type=int, default=100_000)
    parser.add_argument(
        "--large-kinds",
        default="flat,ivf",
        help="kinds timed above --engine-max (building HNSW over 1M vectors takes most of an "
        "hour on 2 cores)",
    )
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--record", action="store_true", help="write bench/results/query.json")
    args = parser.parse_args()

    from searchengine.encoder import Encoder

    encoder = Encoder.load(args.model)
    encoder_ms, cached_ms, reference_ms = text_encoding(encoder, args.repeats)
    print(f"text encoding: p50 {encoder_ms['p50_ms']:.1f} ms p95 {encoder_ms['p95_ms']:.1f} ms; "
          f"a cached query p50 {cached_ms['p50_ms']:.3f} ms; open_clip's encode_text over the "
          f"full context p50 {reference_ms['p50_ms']:.1f} ms")
    kinds = args.kinds.split(",")
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        if n <= args.engine_max:
            rows += bench_engine(args, n, kinds, encoder_ms)
        else:
            rows += bench_index_only(args, n, encoder.dim, args.large_kinds.split(","), encoder_ms)
    if not args.record:
        return
    write_result("query", {
        "model": args.model,
        "text_encoding": encoder_ms,
        "text_encoding_cached": cached_ms,
        "text_encoding_open_clip_reference": reference_ms,
        "results": rows,
    })


if __name__ == "__main__":
    main()
