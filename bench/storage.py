"""What the catalog's durable vectors cost, what storing them as float16 changes, and the memory
of a rebuild from the catalog.

1. **Bytes on disk per vector**: a real catalog (media rows and 512-d image vectors written
   through `Catalog.write_images`, --rows of them) is measured at the head revision (float16),
   then downgraded to revision 0002 (float32) and measured again, each after VACUUM; SQLite's
   `dbstat` splits the file into the vectors' table with its indexes and the rest. Both in 4 KB
   pages (what catalogs had) and 16 KB pages (new catalogs). The migration times are printed.
2. **What float16 changes in search**: real embeddings of flickr8k-1k (--split, --model; the
   bundled `demo` model and ViT-B-32/random by default, any model with weights at hand) in
   float32 and in the stored form: exact recall@1/5/10 both ways, the largest score change, the
   top-10 overlap and the norms. (Random ViT-B-32 weights rank near chance, but their 512-d
   vectors show what the rounding does at CLIP's width.)
3. **Peak RSS of a rebuild** from the catalog in a fresh process (`VectorSpace.rebuild`, flat),
   against the index's bytes and against all rows held as Python objects (the old way).

    .venv/bin/python bench/storage.py [--rows 50000] [--memory-rows 100000] [--record]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import (  # noqa: E402
    FAKE_BATCH,
    SHARED_DATA,
    fake_images,
    unit_vectors,
    write_result,
)

DIM = 512


def fill_catalog(catalog, n: int, dim: int, spec: str = "bench/random") -> int:
    """`n` catalogued fake images with unit vectors (no files needed); returns the model id."""
    model = catalog.ensure_model(spec, dim)
    for start in range(0, n, FAKE_BATCH):
        count = min(FAKE_BATCH, n - start)
        vectors = unit_vectors(count, dim, seed=start)
        catalog.write_images(model.id, fake_images(start, count), vectors, [])
    return model.id


def table_bytes(path: Path) -> dict:
    """Bytes of the file, of the vectors' table with its indexes, and of everything else."""
    import sqlite3

    with sqlite3.connect(path) as connection:
        connection.execute("VACUUM")
        rows = connection.execute(
            "SELECT tbl_name, SUM(pgsize) FROM dbstat JOIN sqlite_master USING (name) "
            "GROUP BY tbl_name"
        ).fetchall()
    by_table = {name: int(size) for name, size in rows}
    vectors = by_table.get("image_embeddings", 0)
    return {"file": path.stat().st_size, "vectors_table": vectors,
            "rest": sum(by_table.values()) - vectors}


def bench_disk(rows: int, page_size: int) -> dict:
    """Bytes per vector as float16 (head) and float32 (downgraded to 0002) in `page_size` pages
    (4096: SQLite's default, which catalogs had before; 16384: what new catalogs get)."""
    import sqlite3

    from alembic import command

    from searchengine.catalog import Catalog
    from searchengine.catalog.store import _alembic_config

    with tempfile.TemporaryDirectory(prefix="bench-storage-") as folder:
        path = Path(folder) / "catalog.sqlite"
        with sqlite3.connect(path) as raw:  # the page size is fixed once the file is in WAL mode
            raw.execute(f"PRAGMA page_size={page_size}")
            raw.execute("PRAGMA journal_mode=WAL")
        catalog = Catalog(f"sqlite:///{path}")
        start = time.perf_counter()
        fill_catalog(catalog, rows, DIM)
        fill_s = time.perf_counter() - start
        catalog.close()
        half = table_bytes(path)
        config = _alembic_config(f"sqlite:///{path}")
        start = time.perf_counter()
        command.downgrade(config, "0002")
        downgrade_s = time.perf_counter() - start
        single = table_bytes(path)
        start = time.perf_counter()
        command.upgrade(config, "head")
        upgrade_s = time.perf_counter() - start
    result = {"rows": rows, "dim": DIM, "page_size": page_size, "fill_seconds": round(fill_s, 1),
              "upgrade_0003_seconds": round(upgrade_s, 2),
              "downgrade_0003_seconds": round(downgrade_s, 2)}
    for name, sizes in (("float32", single), ("float16", half)):
        result[name] = {
            "file_bytes_per_vector": round(sizes["file"] / rows, 1),
            "vector_table_bytes_per_vector": round(sizes["vectors_table"] / rows, 1),
            "other_tables_bytes_per_vector": round(sizes["rest"] / rows, 1),
            "vector_table_gb_per_million": round(sizes["vectors_table"] / rows * 1e6 / 1e9, 3),
            "file_gb_at_10M": round(sizes["file"] / rows * 1e7 / 1e9, 2),
        }
    return result


def bench_quality(dataset: Path, split: str, model: str) -> dict:
    """Exact recall and score changes of float16-stored real embeddings against float32."""
    from searchengine.catalog import as_stored
    from searchengine.demo.run import encode_image_files
    from searchengine.encoder import Encoder
    from searchengine.eval.benchmark import exact_ranks, recall_at
    from searchengine.eval.datasets import read_caption_dataset

    data = read_caption_dataset(dataset, split=split)
    encoder = Encoder.load(model)
    images = encode_image_files(encoder, list(data.images), 32)  # (n, d) float32 unit
    texts = np.concatenate([encoder.encode_texts(list(data.captions[i:i + 64]))
                            for i in range(0, len(data.captions), 64)])  # (t, d)
    result: dict = {"model": model, "dataset": f"{dataset.name} ({split})",
                    "images": len(images), "captions": len(texts), "dim": images.shape[1]}
    scores = {}
    for name, (xb, xq) in {"float32": (images, texts),
                           "float16": (as_stored(images), as_stored(texts))}.items():
        text_ranks, image_ranks = exact_ranks(xb, xq, data.text_to_image)
        result[name] = {"text_to_image": recall_at(text_ranks, (1, 5, 10)),
                        "image_to_text": recall_at(image_ranks, (1, 5, 10))}
        scores[name] = xq.astype(np.float64) @ xb.astype(np.float64).T  # (t, n)
    change = np.abs(scores["float16"] - scores["float32"])
    top32 = np.argsort(-scores["float32"], axis=1)[:, :10]
    top16 = np.argsort(-scores["float16"], axis=1)[:, :10]
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top32, top16, strict=True)])
    norms = np.linalg.norm(as_stored(np.vstack([images, texts])).astype(np.float64), axis=1)
    result["score_change"] = {"max": float(change.max()), "mean": float(change.mean())}
    result["top10_overlap_text_to_image"] = float(overlap)
    result["stored_norm_minus_1_max"] = float(np.abs(norms - 1).max())
    return result


_CHILD = r"""
import json, sys
from pathlib import Path
import numpy as np
from searchengine.catalog import Catalog
from searchengine.index.spaces import VectorSpace
from searchengine.index.vectors import VectorIndex

path, what = Path(sys.argv[1]), sys.argv[2]
catalog = Catalog(f"sqlite:///{path}")
model = catalog.models()[0]
VectorIndex.build("flat", 4, np.arange(2), np.eye(2, 4, dtype=np.float32))  # load faiss
def status(field):  # VmRSS now, VmHWM its peak in this process (ru_maxrss survives exec)
    line = next(x for x in open("/proc/self/status") if x.startswith(field + ":"))
    return int(line.split()[1]) * 1024
rss = lambda: status("VmRSS")
before = rss()
if what == "rebuild":
    space = VectorSpace(catalog, path.parent, model, "image", "flat")
    index = space.rebuild(reason=None)
    peak = status("VmHWM")
    held = index.count * (4 * model.dim + 8)  # the vectors and their ids
    print(json.dumps({"peak_growth": peak - before, "index_bytes": held}))  # >= the growth
else:  # every row as a Python object, as a whole read of the table holds them
    from sqlalchemy import select
    from searchengine.catalog.schema import ImageEmbedding
    with catalog.session() as session:
        rows = session.execute(select(ImageEmbedding.media_id, ImageEmbedding.vector)).all()
        print(json.dumps({"rows": len(rows), "rows_bytes": rss() - before}))
"""


def measure_child(path: Path, what: str) -> dict:
    """Run one memory measurement in a fresh interpreter (its peak RSS is its own)."""
    done = subprocess.run([sys.executable, "-c", _CHILD, str(path), what], check=True,
                          capture_output=True, text=True, env=os.environ | {"OMP_NUM_THREADS": "1"})
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_memory(rows: int) -> dict:
    from searchengine.catalog import Catalog
    from searchengine.catalog.vectors import BATCH_SIZE

    with tempfile.TemporaryDirectory(prefix="bench-storage-") as folder:
        path = Path(folder) / "catalog.sqlite"
        catalog = Catalog(f"sqlite:///{path}")
        fill_catalog(catalog, rows, DIM)
        catalog.close()
        rebuild = measure_child(path, "rebuild")
        objects = measure_child(path, "rows")
    return {
        "rows": rows, "dim": DIM, "batch_size": BATCH_SIZE,
        "rebuild_peak_rss_growth_mb": round(rebuild["peak_growth"] / 2**20, 1),
        "index_mb": round(rebuild["index_bytes"] / 2**20, 1),
        "growth_over_index": round(rebuild["peak_growth"] / rebuild["index_bytes"], 2),
        "growth_beyond_index_mb": round((rebuild["peak_growth"] - rebuild["index_bytes"])
                                        / 2**20, 1),
        "all_rows_as_python_objects_mb": round(objects["rows_bytes"] / 2**20, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--memory-rows", type=int, default=100_000)
    parser.add_argument("--dataset", type=Path, default=SHARED_DATA / "flickr8k-1k")
    parser.add_argument("--split", default="test")
    parser.add_argument("--model", default="demo,ViT-B-32/random", help="comma list")
    parser.add_argument("--skip", default="", help="comma list of parts: disk,quality,memory")
    parser.add_argument("--record", action="store_true", help="write bench/results/storage.json")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    report: dict = {"load_average": os.getloadavg()}
    if "disk" not in skip:
        report["disk"] = [bench_disk(args.rows, size) for size in (4096, 16384)]
        print(json.dumps(report["disk"], indent=2))
    if "quality" not in skip and args.dataset.is_dir():
        report["quality"] = [bench_quality(args.dataset, args.split, model)
                             for model in args.model.split(",")]
        print(json.dumps(report["quality"], indent=2))
    if "memory" not in skip:
        report["memory"] = bench_memory(args.memory_rows)
        print(json.dumps(report["memory"], indent=2))
    if args.record:
        write_result("storage", report)


if __name__ == "__main__":
    main()
