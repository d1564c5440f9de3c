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
REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
# `python -c` puts the working directory first on sys.path, ahead of PYTHONPATH: run from a
# checkout's root it imports that checkout whatever PYTHONPATH says (until this was found,
# every "before" segment of bench/train.py, serve.py and tune.py ran the checkout's own code).
# So the command drops that entry, and says which package it imported.
_CLI_FROM_PATH = (
    "import sys; sys.path.pop(0); import searchengine; "
    "print('searchengine from', searchengine.__file__, file=sys.stderr, flush=True); "
    "from searchengine.cli import cli; sys.exit(cli())"
)


def cli_from(code: Path | None = None) -> tuple[list[str], dict]:
    """(command, environment) that run the `searchengine` CLI of the source tree `code` (an
    export of another commit: `git archive COMMIT | tar -x -C code`), else of this checkout;
    append the CLI's arguments to the command. `imported_from` checks the run's stderr."""
    tree = (code or REPO).resolve()
    return [sys.executable, "-c", _CLI_FROM_PATH], {**os.environ, "PYTHONPATH": str(tree)}


def imported_from(stderr: str, code: Path | None = None) -> Path:
    """The package a `cli_from(code)` run imported, read from its stderr; exits when it is not
    the tree asked for (a comparison of a tree with itself would look like a real one)."""
    tree = (code or REPO).resolve()
    line = next((rest for line in stderr.splitlines()
                 for before, _, rest in [line.partition("searchengine from ")]
                 if not before and rest), None)
    if line is None or not Path(line).resolve().is_relative_to(tree):
        sys.exit(f"the run meant to use the searchengine of {tree} imported {line}")
    return Path(line)


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
