"""Search filters: what turning a filter into allowed ids costs, and a filtered search end to end.

A SQLite catalog of n photos (random capture times over ten years, four cameras, GPS for two in
three, three folders, three formats) and clustered unit vectors; then, per filter, the median of
`--repeats` runs of:
- `ids`: `catalog.filtering.matching_ids` (SQL, and the Python finish for folder and near);
- `search`: `query.hits.image_result` (ids, the filtered vector search, the hits' rows) on a
  flat index, beside the unfiltered search;
and the time `catalog.filtering.write_metadata` takes to store the metadata of every photo again
(what the first `index` of a home from before revision 0004 spends, besides reading headers).
`uptime` is printed beside the figures: this host is about twice as fast quiet as busy.

    .venv/bin/python bench/metadata_filters.py [--n 100000] [--dim 512] [--record]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import write_result  # noqa: E402

FILTERS = {
    "none": None,
    "year+camera (selective)": dict(after="2019-01-01", before="2019-12-31", camera="pixel"),
    "format (broad)": dict(formats="jpeg,png"),
    "near 50 km": dict(near=(47.5, 2.5, 50)),
    "folder": dict(folder="/photos/trip"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()

    from searchengine.catalog import Catalog, NewImage
    from searchengine.catalog.filtering import matching_ids, write_metadata
    from searchengine.images import ImageInfo
    from searchengine.index.spaces import VectorSpace
    from searchengine.query.filters import SearchFilter
    from searchengine.query.hits import image_result

    rng = np.random.default_rng(0)
    folder = Path(tempfile.mkdtemp(prefix="bench-filters-"))
    catalog = Catalog(f"sqlite:///{folder / 'catalog.sqlite'}")
    model = catalog.ensure_model("bench/model", args.dim)
    start = datetime(2015, 1, 1)
    infos = []
    for i in range(args.n):
        located = i % 3 != 0
        infos.append(ImageInfo(
            width=4000, height=3000, format=("JPEG", "PNG", "HEIF")[i % 3],
            taken_at=start + timedelta(seconds=int(rng.integers(0, 10 * 365 * 86400))),
            camera=("Pixel 7", "iPhone 13", "EOS R5", "D750")[i % 4],
            latitude=float(rng.uniform(40, 55)) if located else None,
            longitude=float(rng.uniform(-5, 10)) if located else None, extended=True))
    centres = rng.normal(size=(max(1, args.n // 100), args.dim))
    for begin in range(0, args.n, 5000):
        end = min(args.n, begin + 5000)
        x = centres[rng.integers(len(centres), size=end - begin)]
        x = x + 0.5 * rng.normal(size=x.shape)
        x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
        images = [NewImage(f"/photos/{('home', 'trip', 'work')[i % 3]}/{i % 50}/{i}.jpg", 1, 1,
                           f"h{i}", infos[i]) for i in range(begin, end)]
        catalog.write_images(model.id, images, x, [])
    space = VectorSpace(catalog, folder, model, "image", "flat")
    space.index  # noqa: B018 (built now, not in the first timed search)
    xq = space.index.reconstruct_batch(np.arange(1, 21, dtype=np.int64))

    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"n={args.n} dim={args.dim}  ({load})")
    rows = {}
    for name, options in FILTERS.items():
        filters = SearchFilter(**options) if options else None
        ids_ms, search_ms, matched = [], [], None
        for repeat in range(args.repeats):
            if filters is not None:
                began = time.perf_counter()
                matched = len(matching_ids(catalog, filters))
                ids_ms.append((time.perf_counter() - began) * 1000)
            began = time.perf_counter()
            image_result(catalog, space, xq[repeat % len(xq)][None], "q", k=10, offset=0,
                         filters=filters)
            search_ms.append((time.perf_counter() - began) * 1000)
        rows[name] = {"matched": matched,
                      "ids_ms": statistics.median(ids_ms) if ids_ms else None,
                      "search_ms": statistics.median(search_ms)}
        ids = f"{rows[name]['ids_ms']:8.1f}" if ids_ms else "       -"
        print(f"{name:26s} matched {matched if matched is not None else '-':>7}  ids {ids} ms"
              f"  search {rows[name]['search_ms']:8.1f} ms")
    began = time.perf_counter()
    for begin in range(0, args.n, 500):
        write_metadata(catalog, [(i + 1, infos[i]) for i in range(begin, min(args.n, begin + 500))])
    refresh = time.perf_counter() - began
    print(f"write_metadata of {args.n} rows: {refresh:.1f} s")
    catalog.close()
    if args.record:
        print(write_result("metadata_filters", {"n": args.n, "dim": args.dim, "uptime": load,
                                                "filters": rows, "write_metadata_s": refresh}))


if __name__ == "__main__":
    main()
