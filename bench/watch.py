"""`watch`: how soon a copied photo is searchable, and what a burst costs against one `index`.

    .venv/bin/python bench/watch.py [--model se-tiny/random] [--photos 200] [--burst 100]
                                    [--trials 5] [--record]

- latency: one photo copied into a watched folder of `--photos` photos, until its vector is in
  the catalog (default `WatchSettings`: 1.5 s quiet, 1 s settle), `--trials` times;
- burst: `--burst` photos copied at once: the rounds the watcher made of them and the seconds
  until all were indexed, against one `index` of the same photos in a fresh home (same model
  and ingest settings, a home holding the same `--photos` photos first), run in turn.

Prints the figures; writes bench/results/watch.json only with --record.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from common import percentiles, write_result  # noqa: E402
from conftest import write_image  # noqa: E402

from searchengine.engine import Engine  # noqa: E402
from searchengine.ingest.watch import Watcher, WatchSettings  # noqa: E402
from searchengine.settings import EncoderSettings, IngestSettings  # noqa: E402

SIZE = (1024, 768)  # pixels of the generated photos


def photos(folder: Path, start: int, count: int) -> list[Path]:
    return [write_image(folder / f"p{start + i:05d}.jpg", seed=start + i, size=SIZE)
            for i in range(count)]


def wait_until(condition, seconds: float = 600.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit("gave up waiting")
        time.sleep(0.02)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="se-tiny/random")
    parser.add_argument("--photos", type=int, default=200)
    parser.add_argument("--burst", type=int, default=100)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    ingest = IngestSettings(workers=0)
    work = Path(tempfile.mkdtemp(prefix="bench-watch-"))
    try:
        watched, stage = work / "watched", work / "stage"
        photos(watched, 0, args.photos)
        shutil.copytree(watched, stage / "base")  # the reference home holds the same photos
        singles = photos(stage / "singles", 100_000, args.trials)
        burst = photos(stage / "burst", 200_000, args.burst)
        encoder_settings = EncoderSettings(device="cpu")
        engine = Engine.open(work / "home", encoder_settings=encoder_settings)
        reader = Engine.open(work / "home", encoder_settings=encoder_settings)
        watcher = Watcher(engine, [watched], model=args.model, ingest=ingest)
        rounds: list = []
        stop = threading.Event()
        thread = threading.Thread(target=watcher.run, args=(stop, rounds.append))
        thread.start()
        wait_until(lambda: rounds)

        def catalogued() -> int:
            return reader.catalog.count_media()

        latencies = []
        for single in singles:
            before = catalogued()
            start = time.perf_counter()
            shutil.copyfile(single, watched / single.name)
            wait_until(lambda before=before: catalogued() > before)
            latencies.append((time.perf_counter() - start) * 1000)
        before_rounds, before = len(rounds), catalogued()
        start = time.perf_counter()
        for photo in burst:
            shutil.copyfile(photo, watched / photo.name)
        wait_until(lambda: catalogued() >= before + len(burst))
        watch_seconds = time.perf_counter() - start
        time.sleep(2)
        burst_rounds = [r for r in rounds[before_rounds:] if r.changed]
        stop.set()
        thread.join()
        engine.close()
        reader.close()

        with Engine.open(work / "reference", encoder_settings=encoder_settings) as reference:
            reference.index([stage / "base"], model=args.model, settings=ingest)  # as watched
            start = time.perf_counter()
            reference.index([stage / "burst"], model=args.model, settings=ingest)
            index_seconds = time.perf_counter() - start
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "model": args.model, "photos": args.photos, "pixels": list(SIZE),
        "settings": WatchSettings().__dict__,
        "latency": percentiles(latencies),
        "burst": {"photos": args.burst, "rounds": len(burst_rounds),
                  "watch_seconds": round(watch_seconds, 2),
                  "index_seconds": round(index_seconds, 2)},
    }
    print(f"copy -> catalogued, one photo: p50 {result['latency']['p50_ms']:.0f} ms, "
          f"max {max(latencies):.0f} ms over {len(latencies)} trials")
    print(f"burst of {args.burst}: {len(burst_rounds)} rounds, {watch_seconds:.1f} s until all "
          f"were catalogued; one `index` of the same photos: {index_seconds:.1f} s")
    print(f"(median of rounds: {np.median([r.report.seconds for r in burst_rounds]):.2f} s)"
          if burst_rounds else "")
    if args.record:
        write_result("watch", result)


if __name__ == "__main__":
    main()
