"""What every benchmark records beside its figures, and where it writes them."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).with_name("results")
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def environment() -> dict:
    """CPU count, library versions and the git commit, so figures can be compared honestly."""
    import faiss
    import torch

    commit = _git("rev-parse", "--short", "HEAD")
    # Uncommitted changes to tracked files (earlier results aside): the figures then belong to a
    # tree that `git_commit` alone does not name.
    changes = _git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench/results")
    return {
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "faiss": faiss.__version__,
        "cuda": torch.cuda.is_available(),
        "git_commit": commit or "unknown",
        "git_dirty": None if changes is None else bool(changes),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def _git(*args: str) -> str | None:
    """Stripped stdout of a git command run at the repository root, or None without git."""
    try:
        return subprocess.run(
            ["git", *args],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parents[1],
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def require_flickr() -> Path:
    """../shared/data/flickr8k-1k, or exit with a message saying the benchmark needs it."""
    data = SHARED_DATA / "flickr8k-1k"
    if not data.is_dir():
        sys.exit(f"{data} is missing: this benchmark needs ../shared/data/flickr8k-1k")
    return data


def write_result(name: str, payload: dict) -> Path:
    """bench/results/<name>.json with the environment added; returns the path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"environment": environment(), **payload}, indent=2) + "\n")
    print(f"wrote {path}")
    return path


def percentiles(samples_ms: list[float]) -> dict:
    import numpy as np

    values = np.asarray(samples_ms)
    return {
        "p50_ms": round(float(np.percentile(values, 50)), 3),
        "p95_ms": round(float(np.percentile(values, 95)), 3),
        "p99_ms": round(float(np.percentile(values, 99)), 3),
        "n": len(values),
    }


FAKE_BATCH = 5000  # catalog rows written per transaction by `fake_images` callers


def unit_vectors(n: int, d: int, seed: int):
    """(n, d) float32 uniform random unit vectors (no neighbour structure: see clipgen.py)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def fake_images(start: int, count: int) -> list:
    """`count` catalog rows for images that need no file, numbered from `start`, with the sizes
    and hashes a real photo's row has (so bytes on disk are a photo library's)."""
    from searchengine.catalog import NewImage
    from searchengine.images import ImageInfo

    info = ImageInfo(640, 480, "JPEG", None, None)
    return [
        NewImage(f"/photos/2024/{start + i:08d}.jpg", 1_000_000, 1, f"{start + i:064x}", info)
        for i in range(count)
    ]
