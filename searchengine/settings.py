"""Settings are data: one frozen dataclass per concern, every field with a default and its help."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

DEFAULT_MODEL = "ViT-B-32/laion2b_s34b_b79k"
DEFAULT_HOME = "indexes"
"""The home folder (catalog + vector indexes) when neither --home nor $SEARCHENGINE_HOME names one:
relative to the working directory (the checkout's git-ignored `indexes/`)."""
IMAGE_EXTENSIONS = (
    ".jpg", ".jpeg", ".jpe", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".heic", ".heif",
)


@dataclass(frozen=True)
class EncoderSettings:
    device: str = "auto"
    """`auto` (CUDA when torch sees it, else CPU), `cpu`, `cuda`, `cuda:1`, ..."""
    precision: str = "fp32"
    """fp32 everywhere; `fp16`/`bf16` halve memory on a GPU at a small cost in exactness."""
    seed: int = 0
    """Seed for `ARCH/random` weights, so that random models are reproducible."""
    query_threads: int | None = None
    """CPU threads for a text query of a few sentences. None (default): one thread per core no
    other work runs on at that moment, plus one (`encoder.query_threads`): two threads halve a
    ViT-B-32 query on an idle 2-core host (18 ms against 32 ms) but wait for each other on a
    loaded one (794 ms against 30 ms; `bench/query_threads.py`). 0: torch's default (all
    cores); n: always n. Image batches and long text batches always use every thread."""
    onnx_text: bool = False
    """Encode text queries with the ONNX export of the model's text tower (`onnx_text`, no torch
    needed) until something loads the model itself; when no export is ready, the model loads as
    usual. For one-shot processes (the CLI's `search`): a fresh process answers in about a
    second less than the time it takes to import torch."""


BENCH_TEXT_SET_PREFIX = "bench-"
"""`bench recall` keeps a dataset's captions in a text set named by this prefix and their digest;
`lookup` without `--set` leaves such sets out when the home holds texts of its own."""

DECODE_PRIORITIES = ("idle", "normal")
"""Values of `IngestSettings.decode_priority` (and `index --decode-priority`)."""

DUPLICATE_THRESHOLD = 0.95
"""The cosine from which `duplicates` counts two photos as near-copies (`Engine.duplicates`)."""


@dataclass(frozen=True)
class IngestSettings:
    batch_size: int = 16
    """Images per model call; 16 keeps two CPU cores busy, raise it on a GPU."""
    workers: int = field(default_factory=lambda: min(2, os.cpu_count() or 1))
    """Decode processes that run beside the model (0 decodes in the main process)."""
    decode_priority: str = "idle"
    """`idle`: decode workers use only CPU time the model leaves unused (Linux `SCHED_IDLE`; other
    systems run them as `normal`), so they never preempt its threads: on two cores, 12-megapixel
    JPEGs index at 0.75 of the model's own speed instead of 0.72 (docs/architecture.md).
    `normal`: ordinary processes sharing the cores."""
    starved_after: float = 10.0
    """Seconds without a decoded batch after which idle-priority workers are restarted at normal
    priority (something else keeps every core busy, and idle workers would wait for it)."""
    draft: bool = True
    """Decode JPEGs at a reduced DCT scale (libjpeg, 1/2 to 1/8) when they are much larger than the
    model's input; pixels move by a bounded amount (see docs/preprocessing.md)."""
    max_pixels: int = 200_000_000
    """Images with more pixels than this are skipped as possible decompression bombs (this limit
    decides, also above Pillow's own 179 MP ceiling: `images.pillow_limits`)."""
    save_every: int = 20
    """Batches between atomic saves of the vector index during a run (the catalog commits every
    batch, so a crash never loses finished batches; the index is re-synced from it on open)."""
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS
    """File name endings that are treated as images (case-insensitive)."""
    follow_symlinks: bool = False
    """Walk into symbolic links to folders (off: avoids cycles and escapes)."""



@dataclass(frozen=True)
class RaySettings:
    """`searchengine index --ray`: where the Ray cluster is and how the embed stage is laid out.

    The driver (this process) plans and is the one writer; Ray Data decodes in CPU tasks and
    embeds in a pool of actors that load the model once each (`ingest.cluster`)."""

    address: str | None = None
    """`auto` (the cluster this node belongs to), `ray://HOST:10001` (Ray Client), or None: a
    local Ray instance started for the run and stopped after it."""
    num_gpus: float | None = None
    """GPUs per embed actor; None: 1 where the cluster has GPUs, else 0 (the model on CPUs)."""
    concurrency: int | None = None
    """Embed actors (each loads the model once); None: one per GPU, or 1 without GPUs."""
    actor_cpus: float = 1.0
    """CPUs Ray reserves for each embed actor."""
    embed_threads: int = 0
    """Torch threads of an embed actor without a GPU; 0: `actor_cpus` (at least 1). More than it
    reserves lets the model use cores the decode tasks leave, as the local backend's model does;
    those tasks then decode at `IngestSettings.decode_priority`."""
    ship_bytes: bool = False
    """The driver reads every file and ships its bytes to the workers (small collections, or
    workers that do not mount the photos). Off: workers read the paths themselves, so every node
    must see the folders at the same paths (shared storage)."""


def passive_openmp_waits() -> bool:
    """Let torch's OpenMP threads sleep rather than spin while they wait (OMP_WAIT_POLICY=PASSIVE)
    unless the caller chose a policy. For indexing: the decode workers share the cores with the
    model's threads, and spinning threads take those cores from them; measured here it indexes
    12-megapixel JPEGs ~10% faster but slows a lone text query ~15% (bench/ingest.py,
    docs/architecture.md), so only `searchengine index` asks for it.

    OpenMP reads the policy once, when torch is first imported: returns False (and changes
    nothing) when torch is already loaded in this process.
    """
    if "torch" in sys.modules:
        return False
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return True
