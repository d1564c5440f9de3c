"""TrainSettings: everything a training run is configured by, as data (the CLI mirrors it)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from searchengine.errors import InvalidInputError

PRECISIONS = ("fp32", "bf16", "fp16")
LOCKS = ("image", "text")


@dataclass(frozen=True)
class TrainSettings:
    model: str = "ViT-B-32/laion2b_s34b_b79k"
    """The starting model: ARCH/PRETRAINED, ARCH/path/to/checkpoint.pt or ARCH/random."""
    loss: str = "clip"
    """`clip` (softmax over the batch, learnable temperature) or `siglip` (sigmoid, + bias)."""
    lock: str | None = None
    """Freeze the `image` or `text` tower (locked-image tuning trains only the text side)."""
    steps: int | None = None
    """Optimiser steps to run; when None, `epochs` passes over the training pairs."""
    epochs: int = 1
    """Passes over the training pairs when `steps` is not given."""
    batch_size: int = 64
    """Pairs per contrastive batch (the other pairs are the negatives): bigger is better."""
    micro_batch: int | None = None
    """Pairs whose activations are held at a time (gradient caching); None: the whole batch."""
    lr: float = 1e-5
    """Peak learning rate; 1e-5 suits fine-tuning pretrained weights, ~5e-4 training from random."""
    warmup: int | None = None
    """Steps of linear warmup before the cosine decay; None: a tenth of the run, at most 500."""
    weight_decay: float = 0.2
    """AdamW decay of weight matrices (never of gains, biases or the temperature)."""
    precision: str = "fp32"
    """`fp32`, `bf16` (autocast on CPU or GPU) or `fp16` (autocast + loss scaling, GPU only)."""
    grad_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about a third more compute."""
    augment: bool = False
    """Random crops (open_clip's training transform: RandomResizedCrop, scale 0.9-1.0, bicubic)
    instead of the evaluation crop; images are then decoded at every use, never cached. Off by
    default so that a run is reproducible bit for bit and a small set decodes once."""
    workers: int = field(default_factory=lambda: min(2, os.cpu_count() or 1))
    """DataLoader processes that decode images beside the model (0: in the main process)."""
    seed: int = 0
    """Seed of the data order, random weights and every other random choice."""
    device: str = "auto"
    """`auto` (CUDA when present), `cpu` or `cuda[:n]`."""
    eval_every: int = 100
    """Steps between validation passes (recall@1/5/10 both ways, diagonal gap)."""
    save_every: int = 500
    """Steps between checkpoints of the run (`last.pt`); one is also written at the end."""
    patience: int | None = None
    """Stop after this many validation passes without a better recall; None never stops early."""
    val_fraction: float = 0.1
    """Share of the training images held out for validation when no separate set is given."""
    eval_max_pairs: int = 5000
    """Cap on validation captions per pass (the first images' captions), to bound eval time."""
    progress: bool = True
    """Show a progress bar (loss, pairs/s, temperature) on stderr."""
    hard_negatives: str | None = None
    """`mined` (batches of near pairs), `swapped` (extra false captions), `both`, or None."""
    refresh_every: int = 100
    """Mined: steps between re-embeddings of the training captions with the current model."""
    mine_group: int = 8
    """Mined: pairs per group of a batch (a random anchor and its nearest unseen pairs)."""
    swap_vocabulary: str | None = None
    """Swapped: the word-group file (see negatives.py); None: the default English one."""
    swaps_per_caption: int = 2
    """Swapped: false captions made from each caption (fewer when it has too few words)."""
    swap_seen_only: bool = True
    """Swapped: only swaps whose neighbouring attribute words occur side by side in a training
    caption (a combination the data never shows is unknown, not false)."""

    def __post_init__(self) -> None:
        if self.loss not in ("clip", "siglip"):
            raise InvalidInputError(f"unknown loss {self.loss!r}; choices: clip, siglip")
        if self.lock is not None and self.lock not in LOCKS:
            raise InvalidInputError(f"unknown tower to lock {self.lock!r}; choices: image, text")
        if self.precision not in PRECISIONS:
            raise InvalidInputError(
                f"unknown precision {self.precision!r}; choices: {', '.join(PRECISIONS)}"
            )
        positive = {"batch_size": self.batch_size, "epochs": self.epochs,
                    "eval_every": self.eval_every, "save_every": self.save_every}
        for name, value in positive.items():
            if value < 1:
                raise InvalidInputError(f"{name} must be at least 1, got {value}")
        if self.steps is not None and self.steps < 1:
            raise InvalidInputError(f"steps must be at least 1, got {self.steps}")
        if self.micro_batch is not None and self.micro_batch < 1:
            raise InvalidInputError(f"micro_batch must be at least 1, got {self.micro_batch}")
        if self.lr <= 0 or (self.warmup or 0) < 0 or self.workers < 0:
            raise InvalidInputError("lr must be > 0, warmup and workers >= 0")
        self._check_hard_negatives()

    def _check_hard_negatives(self) -> None:
        from searchengine.training.negatives import HARD_NEGATIVES

        if self.hard_negatives is not None and self.hard_negatives not in HARD_NEGATIVES:
            raise InvalidInputError(f"unknown hard negatives {self.hard_negatives!r}; choices: "
                                    f"{', '.join(HARD_NEGATIVES)}")
        if self.swap_vocabulary is not None and self.hard_negatives not in ("swapped", "both"):
            raise InvalidInputError("a swap vocabulary is used by --hard-negatives swapped or "
                                    "both; add one of them or leave out --swap-vocabulary")
        counts = {"refresh_every": self.refresh_every, "mine_group": self.mine_group,
                  "swaps_per_caption": self.swaps_per_caption}
        for name, value in counts.items():
            if value < 1:
                raise InvalidInputError(f"{name} must be at least 1, got {value}")

    def as_dict(self) -> dict:
        return {key: (str(v) if isinstance(v, Path) else v) for key, v in asdict(self).items()}
