"""Run checkpoints: plain dicts in `models.CHECKPOINT_FORMAT` that load with `weights_only=True`.

`best.pt` holds the model alone (it is what `--model ARCH/path/best.pt` loads); `last.pt` adds the
optimiser, loss scaler, step, RNG states and the run's bookkeeping so `--resume` continues exactly.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

from searchengine.errors import InvalidInputError
from searchengine.models import CHECKPOINT_FORMAT

if TYPE_CHECKING:
    import torch


def model_checkpoint(model: torch.nn.Module, arch: str, step: int, **extra: Any) -> dict:
    """The weights of `model` with the config that rebuilds it (open_clip's JSON config)."""
    import open_clip

    state_dict = {key: value.detach().cpu().clone() for key, value in model.state_dict().items()}
    return {
        "format": CHECKPOINT_FORMAT,
        "arch": arch,
        "model_config": open_clip.get_model_config(arch),
        "state_dict": state_dict,
        "step": step,
        **extra,
    }


def rng_states() -> dict:
    """torch CPU/CUDA and Python RNG states as tensors, lists and ints (no numpy arrays)."""
    import torch

    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": [version, list(internal), gauss],
    }


def restore_rng_states(states: dict) -> None:
    import torch

    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))


def save(checkpoint: dict, path: Path) -> None:
    """Write atomically (temporary file, then rename): a crash never leaves half a checkpoint."""
    import torch

    temporary = path.with_name(path.name + ".tmp")
    torch.save(checkpoint, temporary)
    os.replace(temporary, path)


def load(path: Path) -> dict:
    """Read one of our checkpoints with `weights_only=True`."""
    import torch

    if not path.is_file():
        raise InvalidInputError(f"no checkpoint to resume from at {path}; run without --resume")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise InvalidInputError(f"{path} is not a checkpoint written by `searchengine train`")
    return checkpoint
