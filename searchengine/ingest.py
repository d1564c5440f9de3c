"""Ingestion: folders -> changed files -> decode (worker processes) -> encoder -> catalog + index.

`scan` and `plan` decide what to do without touching the model; `DecodeDataset` runs in
DataLoader workers so that decoding hides behind the model; `embed_files` writes each batch to
the catalog in one transaction (so an interrupted run resumes after its last finished batch) and
to the vector index.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from stat import S_ISBLK, S_ISCHR, S_ISDIR, S_ISFIFO, S_ISREG, S_ISSOCK

import numpy as np

from searchengine.catalog import Catalog, NewImage, Skip, StoredFile
from searchengine.errors import ImageDecodeError, InvalidInputError
from searchengine.hashing import content_hash
from searchengine.images import ImageInfo, fit_for_model, load_image
from searchengine.paths import catalog_path, display_path
from searchengine.progress import progress_bar
from searchengine.settings import IngestSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FileStat:
    path: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Plan:
    """What an `index` run will do: files to decode and embed, files gone from disk."""

    to_embed: list[FileStat]
    vanished: list[str]
    unchanged: int
    unreadable: list[Skip] = field(default_factory=list)


@dataclass(frozen=True)
class IngestReport:
    """What a run did. `images_per_second` counts files decoded and written per wall second."""

    scanned: int
    unchanged: int
    embedded: int
    reused: int
    skipped: int
    removed: int
    seconds: float

    @property
    def images_per_second(self) -> float:
        return (self.embedded + self.reused) / self.seconds if self.seconds > 0 else 0.0


def scan(roots: list[Path], settings: IngestSettings) -> tuple[dict[str, FileStat], list[Skip]]:
    """Walk `roots` (files or folders) for image files by extension.

    Returns path -> FileStat for every image file found, and Skips for folders or files that
    could not be read (unreadable folders, broken or looping symbolic links, devices, pipes).
    Symbolic links to folders are followed only when settings say so, and then each real folder
    is walked once (no cycles). Folders are walked with an explicit stack, so depth is unbounded.
    """
    found: dict[str, FileStat] = {}
    problems: list[Skip] = []
    extensions = tuple(e.lower() for e in settings.extensions)
    for root in roots:
        if not root.is_dir():
            _add_file(str(root), found, problems)
            continue
        for path in _image_files(str(root), extensions, settings.follow_symlinks, problems):
            _add_file(path, found, problems)
    return found, problems


def _image_files(
    root: str, extensions: tuple[str, ...], follow_symlinks: bool, problems: list[Skip]
) -> Iterator[str]:
    """Paths of non-hidden files ending in `extensions` under the folder `root`, in the order of
    a sorted top-down `os.walk` (a folder's files, then each sub-folder in name order); hidden
    folders are skipped and unreadable ones recorded in `problems`."""
    walked: set[tuple[int, int]] = set()  # (st_dev, st_ino) of folders met, when following links
    if follow_symlinks:
        walked.add(_identity(os.stat(root)))
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError as error:
            problems.append(Skip(folder, 0, 0, f"unreadable folder: {error.strerror}"))
            continue
        subfolders = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if _is_folder(entry):
                if _walk_into(entry, follow_symlinks, walked):
                    subfolders.append(entry.path)
            elif entry.name.lower().endswith(extensions):
                yield entry.path
        stack.extend(reversed(subfolders))  # the first sub-folder is walked next


def _is_folder(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows links: a link to a folder is a folder, never a file
    except OSError:  # a link loop or an unreadable target: looked at as a file
        return False


def _walk_into(entry: os.DirEntry, follow_symlinks: bool, walked: set[tuple[int, int]]) -> bool:
    if not follow_symlinks:
        return not entry.is_symlink()
    try:
        identity = _identity(entry.stat())
    except OSError:
        return False
    if identity in walked:
        log.debug("%s: a folder already walked (through a link); not walked again", entry.path)
        return False
    walked.add(identity)
    return True


def _identity(stat: os.stat_result) -> tuple[int, int]:
    return stat.st_dev, stat.st_ino


def _add_file(path: str, found: dict[str, FileStat], problems: list[Skip]) -> None:
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        target = _link_target(path)
        if target is not None:
            problems.append(Skip(path, 0, 0, f"broken symbolic link to {target}"))
        return  # else vanished between listing and stat: nothing to index, nothing to record
    except OSError as error:
        reason = (
            f"symbolic link loop (through {_link_target(path)})"
            if error.errno == errno.ELOOP
            else f"unreadable: {error.strerror}"
        )
        problems.append(Skip(path, 0, 0, reason))
        return
    if not S_ISREG(stat.st_mode):  # a named pipe or device would block the reader forever
        target = _link_target(path)
        link = f"symbolic link to {target}, " if target is not None else ""
        problems.append(
            Skip(path, 0, stat.st_mtime_ns, f"not a regular file ({link}{_kind(stat.st_mode)})")
        )
        return
    found[path] = FileStat(path, stat.st_size, stat.st_mtime_ns)


def _link_target(path: str) -> str | None:
    """Where the symbolic link `path` points (printable), or None when it is not a link."""
    try:
        return display_path(os.readlink(path))
    except OSError:
        return None


def _kind(mode: int) -> str:
    kinds = ((S_ISDIR, "a folder"), (S_ISFIFO, "a named pipe"), (S_ISCHR, "a character device"),
             (S_ISBLK, "a block device"), (S_ISSOCK, "a socket"))
    return next((name for test, name in kinds if test(mode)), "not a file")


def plan(
    catalog: Catalog, model_id: int, roots: list[Path], settings: IngestSettings
) -> tuple[Plan, int]:
    """Compare the disk under `roots` with the catalog for one model. Returns (plan, scanned)."""
    on_disk, unreadable = scan(roots, settings)
    root_strings = [str(r) for r in roots]
    stored = catalog.files_under(root_strings)
    skipped = catalog.skipped_under(root_strings)
    have_vector = set(catalog.vector_ids("image", model_id).tolist())
    to_embed: list[FileStat] = []
    unchanged = 0
    for path, stat in on_disk.items():
        old: StoredFile | None = stored.get(path)
        same = old is not None and (old.size, old.mtime_ns) == (stat.size, stat.mtime_ns)
        if same and old.id in have_vector:
            unchanged += 1
            continue
        known_bad = skipped.get(path)
        if known_bad is not None and (known_bad.size, known_bad.mtime_ns) == (
            stat.size,
            stat.mtime_ns,
        ):
            unchanged += 1
            continue
        to_embed.append(stat)
    vanished = [p for p in stored if p not in on_disk]
    vanished += [p for p in skipped if p not in on_disk]
    return Plan(to_embed, vanished, unchanged, unreadable), len(on_disk)


@dataclass(frozen=True)
class Decoded:
    """One file after the worker: pixels (3, H, W) float32 or the reason it was skipped."""

    stat: FileStat
    content_hash: str | None
    info: ImageInfo | None
    pixels: object | None  # torch.Tensor; typed loosely so this module imports without torch
    error: str | None


class DecodeDataset:
    """A map-style dataset for `torch.utils.data.DataLoader`: reads, hashes and preprocesses."""

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
        stat = self.files[i]
        try:
            data = Path(stat.path).read_bytes()
        except FileNotFoundError:
            return Decoded(stat, None, None, None, "file vanished before it could be read")
        except OSError as error:
            return Decoded(stat, None, None, None, f"unreadable: {error.strerror or error}")
        digest = content_hash(data)
        try:
            image, info = load_image(
                data, target_size=self.target_size, crop=self.crop, max_pixels=self.max_pixels
            )
            pixels = self.preprocess(fit_for_model(image, self.model_size, crop=self.crop))
        except ImageDecodeError as error:
            return Decoded(stat, digest, None, None, str(error))
        return Decoded(stat, digest, info, pixels, None)


def _shared_part(part: list[Decoded]) -> list[Decoded]:
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


def _worker_init(_worker_id: int, idle: bool = False) -> None:
    import torch

    torch.set_num_threads(1)  # decoding is single-threaded; leave the cores to the model
    if idle:
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        except OSError as error:  # a sandbox may forbid it: decode at normal priority
            log.debug("decode worker stays at normal priority: %s", error)


def idle_priority_available() -> bool:
    return hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_IDLE")


class _Starved(Exception):
    """Idle-priority workers delivered nothing for `starved_after` seconds."""


def decoded_batches(dataset, settings: IngestSettings) -> Iterator[list[Decoded]]:
    """Batches of `settings.batch_size` decoded files, produced by worker processes.

    Each model batch is decoded by all workers together, a share each (the DataLoader hands its
    workers consecutive index batches in turn and returns them in order), so the first batch is
    ready after 1/workers of the time one worker would take: on 12-megapixel JPEGs that start-up
    is otherwise ~0.6 s of idle model per `index` call. In the steady state it changes nothing.

    With `decode_priority="idle"` the workers run under `SCHED_IDLE`: they decode on CPU time the
    model leaves (its threads waiting at a barrier, the main process waiting for the next batch)
    and never preempt a model thread, whose partner would otherwise sleep at the next barrier.
    If they deliver nothing for `settings.starved_after` seconds, something else is keeping every
    core busy; they are restarted at normal priority from the first file not yet delivered.
    """
    idle = (
        settings.workers > 0
        and settings.decode_priority == "idle"
        and idle_priority_available()
    )
    done = 0  # files delivered, in order
    batch: list[Decoded] = []
    while done < len(dataset):
        try:
            for part in _decoded_parts(dataset, done, settings, idle):
                done += len(part)
                batch.extend(part)
                while len(batch) >= settings.batch_size:
                    yield batch[: settings.batch_size]
                    batch = batch[settings.batch_size :]
        except _Starved:
            log.warning(
                "decode workers got no CPU time for %.0f s (something else keeps every core "
                "busy); restarting them at normal priority",
                settings.starved_after,
            )
            idle = False
    if batch:
        yield batch


def _decoded_parts(dataset, start: int, settings: IngestSettings, idle: bool) -> Iterator[list]:
    """Lists of decoded files from `start` on, each one worker's share of a model batch."""
    from torch.utils.data import DataLoader, Subset

    share = -(-settings.batch_size // max(1, settings.workers))  # ceil
    remaining = dataset if start == 0 else Subset(dataset, range(start, len(dataset)))
    loader = DataLoader(
        remaining,
        batch_size=share,
        num_workers=settings.workers,
        collate_fn=_shared_part,
        worker_init_fn=partial(_worker_init, idle=idle) if settings.workers else None,
        prefetch_factor=4 if settings.workers else None,
        timeout=settings.starved_after if idle else 0,
    )
    parts = iter(loader)
    while True:
        waiting_since = time.monotonic()
        try:
            part = next(parts)
        except StopIteration:
            return
        except RuntimeError:
            if idle and time.monotonic() - waiting_since >= settings.starved_after:
                raise _Starved() from None  # the DataLoader's timeout, not a worker's failure
            raise
        yield part


def check_roots(paths: list[Path]) -> list[Path]:
    """Absolute, existing roots, named as the catalog names paths (`paths.catalog_path`); a missing
    one is an error before anything is touched."""
    if not paths:
        raise InvalidInputError("give at least one file or folder to index")
    roots = []
    for path in paths:
        resolved = Path(catalog_path(path))
        if not resolved.exists():
            raise InvalidInputError(f"{path} does not exist; give an existing file or folder")
        roots.append(resolved)
    return roots


@dataclass(frozen=True)
class BatchResult:
    embedded: int
    reused: int
    skipped: int


def embed_files(
    catalog: Catalog,
    encoder,
    space,
    files: list[FileStat],
    settings: IngestSettings,
    *,
    progress: bool = True,
) -> BatchResult:
    """Decode, embed and store `files` for the encoder's model, batch by batch.

    Each batch is one catalog transaction followed by an in-memory index update; the index file
    is saved every `settings.save_every` batches and at the end (also on Ctrl-C), so a crash
    loses at most the batch in flight and the next writer re-syncs the index from the catalog.
    A file whose content hash already has a vector of this model reuses it (renames, moves,
    duplicates) instead of running the model.
    """
    dataset = DecodeDataset(
        files, encoder.preprocess, encoder.image_size, settings, crop=encoder.draft_crop
    )
    totals = np.zeros(3, dtype=np.int64)  # embedded, reused, skipped
    bar = progress_bar(len(files), desc="index", unit="img", enabled=progress)
    try:
        for number, batch in enumerate(decoded_batches(dataset, settings), start=1):
            result = _store_batch(catalog, encoder, space, batch)
            totals += (result.embedded, result.reused, result.skipped)
            bar.update(len(batch))
            bar.set_postfix(skipped=int(totals[2]), reused=int(totals[1]), refresh=False)
            if number % settings.save_every == 0:
                space.save()
    finally:
        bar.close()
        space.save()
    return BatchResult(*map(int, totals))


def _store_batch(catalog: Catalog, encoder, space, batch: list[Decoded]) -> BatchResult:
    import torch

    skips = [Skip(d.stat.path, d.stat.size, d.stat.mtime_ns, d.error) for d in batch if d.error]
    good = [d for d in batch if d.error is None]
    if not good:
        written = catalog.write_images(space.model.id, [], np.zeros((0, space.model.dim)), skips)
        space.remove(written.removed)  # committed: the space follows the catalog
        return BatchResult(0, 0, len(skips))
    known = catalog.vectors_by_hash(space.model.id, [d.content_hash for d in good])
    fresh = [d for d in good if d.content_hash not in known]
    vectors: dict[str, np.ndarray] = {
        h: np.frombuffer(b, dtype=np.float32) for h, b in known.items()
    }
    unique_fresh = {d.content_hash: d for d in fresh}  # duplicates inside the batch embed once
    if unique_fresh:
        pixels = torch.stack([d.pixels for d in unique_fresh.values()])  # (b, 3, H, W)
        embedded = encoder.encode_images(pixels)  # (b, d) float32 unit
        vectors.update(zip(unique_fresh.keys(), embedded, strict=True))
    images = [
        NewImage(d.stat.path, d.stat.size, d.stat.mtime_ns, d.content_hash, d.info) for d in good
    ]
    matrix = np.vstack([vectors[d.content_hash] for d in good]).astype(np.float32)
    written = catalog.write_images(space.model.id, images, matrix, skips)
    # one update for the whole committed change: an approximate index rebuilt from the catalog
    # (which holds this batch already) must not get the batch added a second time
    space.update(np.asarray(written.ids, dtype=np.int64), matrix, removed=written.removed)
    return BatchResult(len(unique_fresh), len(good) - len(unique_fresh), len(skips))
