"""`index --ray` against the local backend: images/s of each on the same folder and model.

Both index the same photos into fresh homes, interleaved (local, Ray, local, Ray, ...), on a
local Ray instance with this machine's CPUs; the ratio is Ray's best over local's best (issue 15
goal: >= 0.8 on 2 cores), end to end. It also prints each run's time to its first committed
batch (sampled from the catalog) and its rate after it: that shows the fixed start (Ray's worker
processes importing torch, the actor loading the model), but Ray's rate after it is flattered
by the files its decode tasks finished while the actor was starting. The Ray instance's start
is timed apart (a cluster is already up); the embed actor's start and model load are inside the
Ray figure, as the local run's model load is inside its own. It also times the stages one
image at a time on one core (decode, embed, the single writer's commit), the per-image costs
docs/ray.md scales from.

    nice -n 19 .venv/bin/python bench/ray_ingest.py [--model ViT-B-32/random] [--count 300]
        [--batch-size 16] [--rounds 2] [--actor-cpus 1] [--embed-threads 0] [--record]

Photos: the first --count of ../shared/data/flickr8k-1k (generated 640x480 JPEGs without it).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from searchengine.settings import passive_openmp_waits  # noqa: E402  (torch-free)

passive_openmp_waits()  # as `searchengine index` does, before torch loads
from common import SHARED_DATA, write_result  # noqa: E402


def photos(count: int, folder: Path) -> tuple[Path, str]:
    """A folder of `count` photos (links to flickr8k-1k, or generated JPEGs) and its name."""
    flickr = SHARED_DATA / "flickr8k-1k" / "images"
    folder.mkdir(parents=True, exist_ok=True)
    if flickr.is_dir():
        for path in sorted(flickr.glob("*.jpg"))[:count]:
            (folder / path.name).symlink_to(path)
        return folder, f"flickr8k-1k (first {count})"
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(count):
        blocks = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        image = Image.fromarray(blocks).resize((640, 480), Image.Resampling.BICUBIC)
        image.save(folder / f"g{i:04d}.jpg", quality=90)
    return folder, f"generated 640x480 JPEGs ({count})"


def index_once(folder: Path, args, ray_settings) -> dict:
    from searchengine.engine import Engine
    from searchengine.settings import IngestSettings

    home = Path(tempfile.mkdtemp(prefix="ray-bench-home-"))
    samples: list[tuple[float, int]] = []  # (time, files committed), polled from the catalog
    done = threading.Event()
    watcher = threading.Thread(target=watch, args=(home, samples, done), daemon=True)
    watcher.start()
    try:
        with Engine.open(home) as engine:
            report = engine.index(
                [folder], model=args.model, settings=IngestSettings(batch_size=args.batch_size),
                ray=ray_settings,
            )
        end = time.perf_counter()
    finally:
        done.set()
        watcher.join()
        shutil.rmtree(home, ignore_errors=True)
    if report.embedded != args.count:
        raise SystemExit(f"expected {args.count} embedded, got {report}")
    first_time, first_count = next((t, n) for t, n in samples if n > 0)
    return {
        "seconds": round(report.seconds, 2),
        "images_per_second": report.images_per_second,
        "first_batch_seconds": round(report.seconds - (end - first_time), 2),
        "steady_images_per_second": (args.count - first_count) / (end - first_time),
    }


def watch(home: Path, samples: list[tuple[float, int]], done: threading.Event) -> None:
    """Sample the number of committed files every 50 ms (a read-only SQLite connection)."""
    while not done.is_set():
        try:
            with sqlite3.connect(f"file:{home / 'catalog.sqlite'}?mode=ro", uri=True) as db:
                count = int(db.execute("SELECT count(*) FROM media").fetchone()[0])
            samples.append((time.perf_counter(), count))
        except sqlite3.Error:  # not created yet
            pass
        time.sleep(0.05)


def stage_costs(folder: Path, args) -> dict:
    """Milliseconds per image of each stage on one core, in this process: decode (read, hash,
    decode, preprocess), embed (the model, batches of --batch-size) and commit (the single
    writer: catalog transaction + index update, batches of 256 with made-up vectors)."""
    import torch

    from searchengine.catalog import Catalog
    from searchengine.encoder import Encoder
    from searchengine.engine import Engine
    from searchengine.images import ImageInfo
    from searchengine.ingest.commit import commit_batch
    from searchengine.ingest.decode import Decoded, decode_file
    from searchengine.ingest.scan import FileStat
    from searchengine.settings import IngestSettings

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    encoder = Encoder.load(args.model)
    settings = IngestSettings()
    files = [FileStat(str(p), p.stat().st_size, p.stat().st_mtime_ns)
             for p in sorted(folder.iterdir())[:64]]
    start = time.perf_counter()
    decoded = [decode_file(f, encoder.preprocess, encoder.image_size,
                           draft_size=encoder.image_size, crop=encoder.draft_crop,
                           max_pixels=settings.max_pixels) for f in files]
    decode_ms = (time.perf_counter() - start) * 1000 / len(files)
    pixels = torch.stack([d.pixels for d in decoded[: args.batch_size]])
    encoder.encode_images(pixels)  # warm
    start = time.perf_counter()
    for _ in range(2):
        encoder.encode_images(pixels)
    embed_ms = (time.perf_counter() - start) * 1000 / (2 * len(pixels))
    torch.set_num_threads(threads)

    home = Path(tempfile.mkdtemp(prefix="ray-bench-commit-"))
    try:
        with Engine.open(home) as engine:
            space = engine.space(args.model, "image", create=True)
            space.maintain()
            catalog: Catalog = engine.catalog
            rng = np.random.default_rng(0)
            batches, size = 8, 256
            info = ImageInfo(640, 480, "JPEG", None, None)
            start = time.perf_counter()
            for b in range(batches):
                batch = [Decoded(FileStat(f"/bench/{b}/{i}.jpg", 1000, 1), f"{b:032x}{i:032x}",
                                 info, None, None) for i in range(size)]
                vectors = rng.normal(size=(size, space.model.dim)).astype(np.float32)
                vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
                commit_batch(catalog, space, batch,
                             dict(zip((d.content_hash for d in batch), vectors, strict=True)),
                             embedded=size)
            space.save()
            commit_ms = (time.perf_counter() - start) * 1000 / (batches * size)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return {"decode_ms": round(decode_ms, 2), "embed_ms": round(embed_ms, 2),
            "commit_ms": round(commit_ms, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="ViT-B-32/random")
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--actor-cpus", type=float, default=1.0)
    parser.add_argument("--embed-threads", type=int, default=0,
                        help="torch threads of the CPU embed actor (0: --actor-cpus)")
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    import ray

    from searchengine.settings import RaySettings

    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"uptime: {load}")
    work = Path(tempfile.mkdtemp(prefix="ray-bench-"))
    try:
        folder, source = photos(args.count, work / "photos")
        start = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), object_store_memory=300 * 2**20,
                 include_dashboard=False, log_to_driver=False, logging_level="WARNING")
        ray_start = time.perf_counter() - start
        ray_settings = RaySettings(actor_cpus=args.actor_cpus, embed_threads=args.embed_threads)
        runs: dict[str, list[dict]] = {"local": [], "ray": []}
        for round_number in range(args.rounds):
            for name, chosen in (("local", None), ("ray", ray_settings)):
                result = index_once(folder, args, chosen)
                runs[name].append(result)
                print(f"round {round_number + 1} {name:5s} {result['images_per_second']:6.1f} "
                      f"images/s ({result['seconds']} s; first batch after "
                      f"{result['first_batch_seconds']} s, then "
                      f"{result['steady_images_per_second']:.1f} images/s)")
        best = {name: max(r["images_per_second"] for r in rows) for name, rows in runs.items()}
        steady = {name: max(r["steady_images_per_second"] for r in rows)
                  for name, rows in runs.items()}
        ratio = best["ray"] / best["local"]
        steady_ratio = steady["ray"] / steady["local"]
        print(f"{source}, {args.model}, batch {args.batch_size}, {os.cpu_count()} CPUs, "
              f"actor CPUs {args.actor_cpus}, threads {args.embed_threads or 'as CPUs'}: "
              f"local {best['local']:.1f} images/s, Ray "
              f"{best['ray']:.1f} images/s, ratio {ratio:.2f} (goal >= 0.8); Ray instance "
              f"start {ray_start:.1f} s (not counted); after the first batch: local "
              f"{steady['local']:.1f}, Ray {steady['ray']:.1f} images/s, ratio {steady_ratio:.2f} "
              "(Ray's counts files decoded while its actor started)")
        ray.shutdown()
        costs = stage_costs(folder, args)
        print(f"one core, per image: decode {costs['decode_ms']} ms, embed "
              f"{costs['embed_ms']} ms, commit {costs['commit_ms']} ms (batches of 256)")
        load_after = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
        print(f"uptime: {load_after}")
        if args.record:
            write_result("ray_ingest", {
                "photos": source, "model": args.model, "batch_size": args.batch_size,
                "actor_cpus": args.actor_cpus,
                "embed_threads": args.embed_threads, "runs": runs, "best": best,
                "ratio": round(ratio, 3), "goal": 0.8, "steady": steady,
                "steady_ratio": round(steady_ratio, 3), "ray_start_seconds": round(ray_start, 1),
                "stage_costs_one_core": costs, "uptime_before": load, "uptime_after": load_after,
            })
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
