"""Where a decode worker's time goes on one 12-megapixel JPEG, step by step, and what a batch
costs to cross from the workers to the main process.

The figures behind the ingestion ceiling in bench/README.md: each step is timed alone, in this
process pinned to one core where the OS allows, over the same generated 4000x3000 JPEGs that
`bench/ingest.py` indexes. The hand-over is timed as the CPU time (main process + workers) a
DataLoader spends moving ready-made tensors, one tensor per image against one per worker share.

    .venv/bin/python bench/decode_stages.py [--files 40] [--repeats 3]
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import write_result  # noqa: E402
from ingest import CACHE, make_large_jpegs  # noqa: E402


def per_file_ms(step, items, repeats: int) -> float:
    """Best of `repeats` passes over `items`, in milliseconds per item."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for item in items:
            step(item)
        best = min(best, (time.perf_counter() - start) / len(items) * 1000)
    return round(best, 3)


def decode_steps(paths: list[Path], repeats: int) -> dict:
    import open_clip
    import torch
    from PIL import Image

    from searchengine.hashing import content_hash
    from searchengine.images import _finish_draft, _reduced_jpeg, load_image

    torch.set_num_threads(1)  # as in a decode worker
    preprocess = open_clip.image_transform(224, is_train=False)
    datas = [path.read_bytes() for path in paths]

    def pillow_draft(data: bytes):
        image = Image.open(io.BytesIO(data))
        image.draft("RGB", (299, 224))
        image.load()
        return image

    reduced = [_reduced_jpeg(data, Image.open(io.BytesIO(data)), 224) for data in datas]
    finished = [load_image(data, target_size=224, crop=True)[0] for data in datas]
    return {
        "read": per_file_ms(lambda path: path.read_bytes(), paths, repeats),
        "blake3_hash": per_file_ms(content_hash, datas, repeats),
        "header_and_exif": per_file_ms(lambda d: Image.open(io.BytesIO(d)).getexif(), datas,
                                       repeats),
        "pillow_draft_decode": per_file_ms(pillow_draft, datas, repeats),
        "simplejpeg_reduced_decode": per_file_ms(
            lambda d: _reduced_jpeg(d, Image.open(io.BytesIO(d)), 224), datas, repeats),
        "resize_whole": per_file_ms(lambda r: _finish_draft(*r, 224, crop=False), reduced,
                                    repeats),
        "resize_to_crop": per_file_ms(lambda r: _finish_draft(*r, 224, crop=True), reduced,
                                      repeats),
        "preprocess": per_file_ms(preprocess, finished, repeats),
        "worker_total_as_index_runs_it": per_file_ms(
            lambda path: (content_hash(data := path.read_bytes()),
                          preprocess(load_image(data, target_size=224, crop=True)[0])),
            paths, repeats),
    }


class _Tensors:
    """Ready-made (3, 224, 224) float tensors, as decode workers hand them over."""

    def __init__(self, count: int):
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int):
        import torch

        from searchengine.ingest.decode import Decoded
        from searchengine.ingest.scan import FileStat

        return Decoded(FileStat(str(i), 1, 1), str(i), None, torch.full((3, 224, 224), i / 1e4),
                       None)


def _one_per_image(part):
    return part


def handover_cpu(shared: bool, count: int) -> tuple[float, float]:
    """CPU seconds of this process, and of all its finished children so far, after moving
    `count` tensors through a DataLoader with 2 workers and shares of 8 and stacking them as the
    main process does."""
    import torch
    from torch.utils.data import DataLoader

    from searchengine.ingest.decode import shared_part

    before_self = resource.getrusage(resource.RUSAGE_SELF)
    loader = DataLoader(_Tensors(count), batch_size=8, num_workers=2, prefetch_factor=4,
                        collate_fn=shared_part if shared else _one_per_image)
    total = 0.0
    for part in loader:
        total += float(torch.stack([d.pixels for d in part]).sum())  # touch every page
    after_self = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # workers, joined by now
    cpu = (after_self.ru_utime + after_self.ru_stime - before_self.ru_utime
           - before_self.ru_stime)
    assert total > 0  # the pixels were read
    return cpu, children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--handover-images", type=int, default=1600)
    parser.add_argument("--record", action="store_true",
                        help="write bench/results/decode_stages.json")
    args = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `searchengine index` runs
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})

    paths = sorted(make_large_jpegs(args.files, CACHE / "large").glob("*.jpg"))[: args.files]
    steps = decode_steps(paths, args.repeats)
    for name, value in steps.items():
        print(f"  {name:32s} {value:7.3f} ms a file")

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    handover = {}
    children_before = 0.0
    for shared in (False, True, False, True):  # interleaved: the machine's speed drifts
        main_cpu, children_cpu = handover_cpu(shared, args.handover_images)
        workers_cpu, children_before = children_cpu - children_before, children_cpu
        key = "one_tensor_per_share" if shared else "one_tensor_per_image"
        per_image = (main_cpu + workers_cpu) / args.handover_images * 1000
        handover.setdefault(key, []).append(round(per_image, 3))
        print(f"  hand-over, {key:22s} {per_image:6.3f} CPU ms an image "
              f"(main {main_cpu:.2f} s, workers {workers_cpu:.2f} s)")
    if not args.record:
        return
    write_result("decode_stages", {
        "files": len(paths),
        "image": "4000x3000 JPEG, quality 90 (bench/ingest.py make_large_jpegs)",
        "per_file_ms": steps,
        "handover_cpu_ms_per_image": {k: float(np.median(v)) for k, v in handover.items()},
        "handover_runs": handover,
    })


if __name__ == "__main__":
    main()
