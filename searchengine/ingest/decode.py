"""The decode stage: a file -> its content hash, metadata and the model's pixels, or a reason.

Runs wherever the bytes are (DataLoader worker processes locally); it never raises for a bad
file: the reason travels with the batch to the writer, which records it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from searchengine.errors import ImageDecodeError
from searchengine.hashing import content_hash
from searchengine.images import ImageInfo, fit_for_model, load_image
from searchengine.ingest.scan import FileStat
from searchengine.settings import IngestSettings


@dataclass(frozen=True)
class Decoded:
    """One file after the worker: pixels (3, H, W) float32 or the reason it was skipped.

    A file without `error` has its `content_hash`, `info` and `pixels`; a file that could be read
    but not decoded has its `content_hash` and `error` only."""

    stat: FileStat
    content_hash: str | None
    info: ImageInfo | None
    pixels: Any  # a torch.Tensor or None; Any, so that this module imports without torch
    error: str | None


class DecodeDataset:
    """A map-style dataset for `torch.utils.data.DataLoader`: `decode_file` over a list of files."""

    def __init__(
        self,
        files: list[FileStat],
        preprocess: Callable,
        target_size: int,
        settings: IngestSettings,
        *,
        crop: bool = False,
    ):
        self.files = files
        self.preprocess = preprocess
        self.model_size = target_size
        self.target_size = target_size if settings.draft else None
        self.crop = crop  # `preprocess` centre-crops to target_size: drafts may be resized to it
        self.max_pixels = settings.max_pixels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Decoded:
        return decode_file(
            self.files[i],
            self.preprocess,
            self.model_size,
            draft_size=self.target_size,
            crop=self.crop,
            max_pixels=self.max_pixels,
        )


def decode_file(
    stat: FileStat,
    preprocess: Callable,
    model_size: int,
    *,
    draft_size: int | None,
    crop: bool,
    max_pixels: int,
) -> Decoded:
    """The decode stage for one file: read it, hash it, decode it (JPEGs at a reduced scale
    towards `draft_size` when given) and turn it into the model's (3, H, W) float32 pixels with
    `preprocess`, every intermediate image bounded (`images.fit_for_model`). A file that is not
    an image comes back with the reason instead of pixels; nothing here raises for a bad file."""
    try:
        data = Path(stat.path).read_bytes()
    except FileNotFoundError:
        return Decoded(stat, None, None, None, "file vanished before it could be read")
    except OSError as error:
        return Decoded(stat, None, None, None, f"unreadable: {error.strerror or error}")
    return decode_data(
        stat, data, preprocess, model_size, draft_size=draft_size, crop=crop, max_pixels=max_pixels
    )


def decode_data(
    stat: FileStat,
    data: bytes,
    preprocess: Callable,
    model_size: int,
    *,
    draft_size: int | None,
    crop: bool,
    max_pixels: int,
) -> Decoded:
    """`decode_file` for bytes already read (the Ray backend's workers, or shipped by the
    driver): hash, decode and preprocess them; never raises for a bad image."""
    digest = content_hash(data)
    try:
        image, info = load_image(data, target_size=draft_size, crop=crop, max_pixels=max_pixels)
        pixels = preprocess(fit_for_model(image, model_size, crop=crop))
    except ImageDecodeError as error:
        return Decoded(stat, digest, None, None, str(error))
    return Decoded(stat, digest, info, pixels, None)


def shared_part(part: list[Decoded]) -> list[Decoded]:
    """One worker's share of a batch, its pixels stacked into one tensor that each file views.

    The DataLoader sends every tensor storage to the main process as its own shared-memory
    segment (a file descriptor, an mmap, page faults on first touch). One segment per share
    takes ~0.2 ms of CPU per image off the main process, where the model runs, for a little
    more stacking in the workers (`bench/decode_stages.py`: 1.27 -> 1.19 CPU ms an image in all).
    """
    import torch

    def has_pixels(item) -> bool:
        return isinstance(getattr(item, "pixels", None), torch.Tensor)

    good = [d for d in part if has_pixels(d)]
    if len(good) < 2 or len({d.pixels.shape for d in good}) > 1:
        return part
    views = iter(torch.stack([d.pixels for d in good]))  # (n, 3, H, W), one storage
    return [replace(d, pixels=next(views)) if has_pixels(d) else d for d in part]
