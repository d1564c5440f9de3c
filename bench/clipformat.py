"""Vectors in and out in clip-retrieval's format: export and import rates, and their memory.

A home is filled with --rows catalog rows and 512-d unit vectors (no model: `fake_images`-style
rows whose files exist, tiny, so that `import` finds them on disk), then, each in a fresh process
so its peak RSS is its own:
1. `export` to float16 and to float32 shards of --shard-size rows (rows/s, peak RSS);
2. `import` of the float16 folder into a new home with a flat index (rows/s: no model runs,
   the rows carry our own hash and size, so each file is only stat-ed; auto would build and
   tune IVF above 25k vectors, as `index` does), then the same import again (idempotent:
   nothing is written);
3. `embedding-reader` reading the export back (rows/s), as autofaiss would.

    .venv/bin/python bench/clipformat.py [--rows 20000] [--shard-size 5000] [--record]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import FAKE_BATCH, unit_vectors, write_result  # noqa: E402

DIM = 512
MODEL = "ViT-B-32/random"


def fill(home: Path, photos: Path, rows: int) -> None:
    """`rows` tiny files and their catalog rows with unit vectors of MODEL (no model loaded)."""
    import os

    from searchengine.catalog import NewImage
    from searchengine.engine import Engine
    from searchengine.images import ImageInfo

    info = ImageInfo(640, 480, "JPEG", None, None)
    photos.mkdir(parents=True)
    with Engine.open(home) as engine:
        engine.catalog.ensure_model(MODEL, DIM)
        space = engine.space(MODEL, "image", create=True, kind="flat")
        engine.catalog.set_setting("default_model", MODEL)
        for start in range(0, rows, FAKE_BATCH):
            count = min(FAKE_BATCH, rows - start)
            images = []
            for i in range(start, start + count):
                path = photos / f"{i:08d}.jpg"
                path.write_bytes(b"x")
                stat = os.stat(path)
                images.append(NewImage(str(path), stat.st_size, stat.st_mtime_ns, f"{i:064x}",
                                       info))
            vectors = unit_vectors(count, DIM, seed=start)
            written = engine.catalog.write_images(space.model.id, images, vectors, [])
            space.update(written.ids, vectors)
        space.save()


STEP = """
import json, sys, time
from pathlib import Path
from searchengine.engine import Engine
what, home, folder, extra = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
start = time.perf_counter()
if what == "export":
    dtype, shard_size = extra.split(":")
    with Engine.open(home, create=False) as engine:
        rows = engine.export_embeddings(folder, dtype=dtype, shard_size=int(shard_size)).rows
elif what == "import":
    with Engine.open(home) as engine:
        report = engine.import_embeddings(folder, model=extra, index_kind="flat")
        rows = report.images + report.present
else:
    from embedding_reader import EmbeddingReader
    reader = EmbeddingReader(str(folder / "img_emb"), file_format="parquet_npy",
                             metadata_folder=str(folder / "metadata"), meta_columns=["image_path"])
    rows = sum(len(b) for b, _ in reader(batch_size=10_000, show_progress=False))
seconds = time.perf_counter() - start
# VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so it would report the parent's
peak = next(int(line.split()[1]) for line in open("/proc/self/status")
            if line.startswith("VmHWM:")) / 1024
print(json.dumps({"rows": rows, "seconds": seconds, "peak_rss_mb": peak}))
"""


def step(what: str, home: Path, folder: Path, extra: str) -> dict:
    out = subprocess.run([sys.executable, "-c", STEP, what, str(home), str(folder), extra],
                         capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["rows_per_second"] = round(result["rows"] / result["seconds"])
    result["seconds"] = round(result["seconds"], 2)
    result["peak_rss_mb"] = round(result["peak_rss_mb"])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--shard-size", type=int, default=5_000)
    parser.add_argument("--record", action="store_true", help="write bench/results/clipformat.json")
    args = parser.parse_args()
    figures: dict = {"rows": args.rows, "dim": DIM, "shard_size": args.shard_size}
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        start = time.perf_counter()
        fill(root / "home", root / "photos", args.rows)
        print(f"filled a home with {args.rows} rows in {time.perf_counter() - start:.1f} s")
        for dtype in ("float16", "float32"):
            figures[f"export_{dtype}"] = step("export", root / "home", root / f"out-{dtype}",
                                              f"{dtype}:{args.shard_size}")
        figures["import"] = step("import", root / "target", root / "out-float16", MODEL)
        figures["import_again"] = step("import", root / "target", root / "out-float16", MODEL)
        figures["embedding_reader"] = step("read", root / "home", root / "out-float16", "")
    for name, value in figures.items():
        print(f"{name}: {value}")
    if args.record:
        write_result("clipformat", figures)


if __name__ == "__main__":
    main()
