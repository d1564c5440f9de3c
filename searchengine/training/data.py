"""Training data: decode + preprocess pairs in DataLoader workers; batches a function of the step.

The preprocessing is deterministic unless `augment` is on, so each process keeps the pixels of
the images it has decoded, up to `PIXEL_CACHE_BYTES`: an image with five captions is decoded once,
not five times per epoch, and a small data set is decoded once per worker for the whole run.
Augmented pixels (open_clip's random training crop, `augmentation`) are made afresh at every use.

The batch order is a pure function of (seed, step): epoch e uses the permutation of
`torch.randperm(n, generator seeded with epoch_seed(seed, e))`, so a resumed run sees exactly the
batches the uninterrupted run would have, whatever the number of workers, and the epochs of
neighbouring seeds are unrelated.

Decode workers run at idle priority where the system has it (`idle_decoding`), as `index`'s do;
`batches_until_starved` notices when something else keeps them off the CPU.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from searchengine.errors import ImageDecodeError, InvalidInputError
from searchengine.training.pairs import Pair

if TYPE_CHECKING:
    import torch
    from PIL import Image

log = logging.getLogger(__name__)

PIXEL_CACHE_BYTES = 256 * 2**20
"""Preprocessed pixels each process (main or DataLoader worker) keeps, per dataset: 256 MiB holds
~21,000 images at 32 px, ~5,300 at 64 px, ~440 at 224 px (float32)."""

STARVED_AFTER = 30.0
"""Seconds without a batch after which idle-priority decode workers count as starved (something
else keeps every core busy) and are restarted at normal priority. A worker decodes a whole batch,
so this is longer than `index`'s 10 s for a share of 16 files."""

STARVED_WAIT = 10.0
"""Seconds the loop may wait for idle-priority workers in all while that is over half of its
time; beyond, they are restarted at normal priority. Idle priority is there so that decoding
never slows the model; once the model mostly waits for the decoding it only slows the run
(measured: `--augment` on 2 cores at load 14 ran at 15-100 pairs/s against 100-1,250 without it,
the idle workers getting 4% of a core each)."""

STARVED_SHARE = 0.5
"""... and the share of the loop's time that those waits must exceed."""


@dataclass(frozen=True)
class Batch:
    """pixels: (n, 3, H, W) float32; tokens: (n, L) int64; image_ids: (n,) int64 (same id, same
    image); dropped: pairs of the planned batch whose image failed to decode. With swapped hard
    negatives (`negatives.SwapCollate`): extra_tokens (m, L) int64, captions that are negatives
    of every image, and extra_mask (n, m) bool, True where extra caption j is true of image i."""

    pixels: torch.Tensor
    tokens: torch.Tensor
    image_ids: torch.Tensor
    dropped: int
    extra_tokens: torch.Tensor | None = None
    extra_mask: torch.Tensor | None = None


def decode_image(source, image_size: int) -> Image.Image:
    """An upright RGB PIL image from a path or encoded bytes (JPEG decoded near `image_size`)."""
    from searchengine.images import load_image

    image, _ = load_image(source, target_size=image_size)
    return image


def augmentation(model) -> Callable:
    """open_clip's own training transform for `model` (`image_transform_v2(is_train=True)` with its
    default `AugmentationCfg`: RandomResizedCrop to the input size, scale 0.9-1.0, bicubic, then the
    model's normalisation), as open_clip_train applies it: PIL image -> (3, H, W) float32. Random:
    it draws from torch's global generator (seeded per DataLoader worker by torch)."""
    from open_clip.transform import PreprocessCfg, image_transform_v2

    return image_transform_v2(PreprocessCfg(**model.visual.preprocess_cfg), is_train=True)


class PairDataset:
    """Map-style dataset: index -> (pixels (3, H, W) float32 or None when undecodable, caption,
    image id). With `augment` (a random transform, `augmentation`) in place of `preprocess`,
    every use decodes and crops afresh: only undecodable images are remembered."""

    def __init__(self, pairs: tuple[Pair, ...], preprocess: Callable, image_size: int, *,
                 cache_bytes: int = PIXEL_CACHE_BYTES, augment: Callable | None = None):
        self.pairs = pairs
        self.preprocess = preprocess
        self.augment = augment
        self.image_size = image_size
        index: dict[str, int] = {}
        self.image_ids = [index.setdefault(pair.image_key, len(index)) for pair in pairs]
        self.cache: dict[int, torch.Tensor | None] = {}  # image id -> pixels (None: undecodable)
        self.cache_room = cache_bytes

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int):
        pair, image_id = self.pairs[i], self.image_ids[i]
        if image_id in self.cache:
            return self.cache[image_id], pair.caption, image_id
        transform = self.augment or self.preprocess
        try:
            pixels = transform(decode_image(pair.image, self.image_size))
        except ImageDecodeError as error:
            log.warning("skipping pair %d (%s): %s", i, pair.image_key, error)
            pixels = None
        size = 0 if pixels is None else pixels.numel() * pixels.element_size()
        if size <= self.cache_room and (self.augment is None or pixels is None):
            self.cache[image_id] = pixels
            self.cache_room -= size
        return pixels, pair.caption, image_id


class Collate:
    """Stacks decoded pairs into a `Batch`, dropping undecodable ones; tokenises the captions."""

    def __init__(self, tokenizer: Callable):
        self.tokenizer = tokenizer

    def __call__(self, items: list) -> Batch:
        import torch

        kept = [item for item in items if item[0] is not None]
        if not kept:
            raise InvalidInputError("a whole training batch failed to decode; check the images")
        return Batch(
            pixels=torch.stack([item[0] for item in kept]),
            tokens=self.tokenizer([item[1] for item in kept]),
            image_ids=torch.tensor([item[2] for item in kept], dtype=torch.int64),
            dropped=len(items) - len(kept),
        )


class StepBatches:
    """Batch sampler: the index lists of steps `start` .. `total - 1` (drop-last epochs)."""

    def __init__(self, n: int, batch_size: int, *, seed: int, start: int, total: int):
        if n < batch_size:
            raise InvalidInputError(
                f"batch size {batch_size} is larger than the {n} training pairs; lower --batch-size"
            )
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.start, self.total = start, total
        self.per_epoch = n // batch_size

    def __len__(self) -> int:
        return max(self.total - self.start, 0)

    def __iter__(self) -> Iterator[list[int]]:
        import torch

        epoch, order = -1, torch.empty(0, dtype=torch.int64)  # set at the first step
        for step in range(self.start, self.total):
            step_epoch, position = divmod(step, self.per_epoch)
            if step_epoch != epoch:
                epoch = step_epoch
                generator = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
                order = torch.randperm(self.n, generator=generator)
            yield order[position * self.batch_size:(position + 1) * self.batch_size].tolist()


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch `epoch`'s order in a run seeded `seed`: numpy's SeedSequence hash of the
    pair (63 bits), so that (seed, epoch + 1) and (seed + 1, epoch) give unrelated orders (a plain
    `seed + epoch` made epoch e of seed s shuffle exactly like epoch 0 of seed s + e)."""
    import numpy as np

    state = np.random.SeedSequence([seed % 2**64, epoch]).generate_state(1, dtype=np.uint64)
    return int(state[0]) >> 1


def idle_decoding(workers: int) -> bool:
    """Whether a run with `workers` decode processes runs them at idle priority (Linux
    `SCHED_IDLE`, as `index` does): they then decode only on CPU time the model leaves."""
    from searchengine.ingest.local import idle_priority_available

    return workers > 0 and idle_priority_available()


def decode_worker_init(worker_id: int, idle: bool = False) -> None:
    """`worker_init_fn` of the training DataLoader: `index`'s own (one torch thread; `SCHED_IDLE`
    when `idle`, normal priority where the system forbids it)."""
    from searchengine.ingest.local import _worker_init

    _worker_init(worker_id, idle=idle)


class WorkersStarved(Exception):
    """Idle-priority decode workers keep the model waiting (the message says how)."""


def batches_until_starved(batches: Iterable, idle: bool) -> Iterator:
    """The items of a DataLoader iterator. With `idle` (workers at idle priority, the loader built
    with `timeout=STARVED_AFTER`) raises `WorkersStarved` when a wait for one ran into that
    timeout, or before a wait once the waits add up to `STARVED_WAIT` seconds and over
    `STARVED_SHARE` of the time since the start. A worker's own failure is raised as it is."""
    iterator = iter(batches)
    started, waited = time.monotonic(), 0.0
    while True:
        waiting_since = time.monotonic()
        if idle and waited >= STARVED_WAIT and waited > STARVED_SHARE * (waiting_since - started):
            raise WorkersStarved(f"the model waited for them {waited:.0f} s of "
                                 f"{waiting_since - started:.0f} s")
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except RuntimeError:
            if idle and time.monotonic() - waiting_since >= STARVED_AFTER:
                # the DataLoader's timeout, not a worker's fault
                raise WorkersStarved(f"no batch for {STARVED_AFTER:.0f} s") from None
            raise
        waited += time.monotonic() - waiting_since
        yield batch


def load_pixels(pairs: list[Pair], preprocess: Callable, image_size: int, *, workers: int = 0):
    """Decode one image per pair: ((n_ok, 3, H, W) float32, keys of the decoded images)."""
    import torch

    dataset = PairDataset(tuple(pairs), preprocess, image_size, cache_bytes=0)  # once each
    loader: torch.utils.data.DataLoader[tuple] = torch.utils.data.DataLoader(
        dataset,  # type: ignore[arg-type]  # torch's stub wants a Dataset; any map-style one runs
        batch_size=64, num_workers=workers, collate_fn=list
    )
    tensors, keys = [], []
    offset = 0
    for items in loader:
        for j, (pixels, _, _) in enumerate(items):
            if pixels is not None:
                tensors.append(pixels)
                keys.append(pairs[offset + j].image_key)
        offset += len(items)
    if not tensors:
        raise InvalidInputError("no validation image could be decoded")
    return torch.stack(tensors), keys
