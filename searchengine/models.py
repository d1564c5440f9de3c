"""Model specs: what `--model ARCH/PRETRAINED` names, and building the open_clip model for it.

A spec is one of
- `ARCH/TAG`: an open_clip architecture and one of its pretrained tags (weights from the model hub
  the first time, then from the local cache);
- `ARCH/path/to/checkpoint.pt`: a local checkpoint, this project's trainer's or open_clip's;
- `ARCH/random`: seeded random weights, for tests and speed figures only;
- a bundled alias such as `demo` (see `BUNDLED_ALIASES`).
"""

from __future__ import annotations

import difflib
import functools
import importlib
import importlib.util
import logging
import pickle
import re
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from searchengine.errors import ModelError, ModelUnavailableError
from searchengine.model_imports import (
    CONFIG_DIR,
    architecture_config,
    import_open_clip,
    known_architectures,
)

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "searchengine.checkpoint/1"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
WEIGHTS_DIR = Path(__file__).with_name("weights")
# Aliases for models that ship inside the package: name -> (arch, file under WEIGHTS_DIR).
BUNDLED_ALIASES: dict[str, tuple[str, str]] = {"demo": ("se-scenes-rn128", "demo.pt")}


# A checkpoint's weights are named by their content: `ARCH/path#<first 12 hex of its digest>`.
DIGEST_SUFFIX = re.compile(r"#([0-9a-f]{12})$")
SHORT_DIGEST = 12


@dataclass(frozen=True)
class ModelSpec:
    """A parsed `--model` value.

    `id` is the readable spec (`ARCH/TAG`, `ARCH/path`, `demo`); `key` adds, for a checkpoint, the
    short content digest of the file (`ARCH/path#1f2e3d4c5b6a`), so that other weights written to
    the same path are another model. The engine keys a home's catalog on `id` for the first
    content it indexed under it and on `key` for any later content (see `Engine.model_id_of`).
    """

    arch: str
    source: str  # "pretrained" | "checkpoint" | "random"
    tag: str | None = None
    checkpoint: Path | None = None
    alias: str | None = None
    digest: str | None = None  # BLAKE3 hex of the checkpoint file (checkpoint specs only)

    @property
    def id(self) -> str:
        if self.alias:
            return self.alias
        if self.source == "checkpoint":
            return f"{self.arch}/{self.checkpoint}"
        return f"{self.arch}/{self.tag or 'random'}"

    @property
    def key(self) -> str:
        """`id`, with `#` and the short content digest for a checkpoint."""
        return f"{self.id}#{self.digest[:SHORT_DIGEST]}" if self.digest else self.id

    def __str__(self) -> str:
        return self.id


def register_bundled_configs(arch: str | None = None) -> None:
    """Make the architectures in `searchengine/model_configs/` known to open_clip (idempotent);
    `arch`: the architecture about to be used (see `model_imports.import_open_clip`)."""
    open_clip = import_open_clip(arch)

    if CONFIG_DIR.is_dir() and not any(
        name in open_clip.list_models() for name in _bundled_config_names()
    ):
        open_clip.add_model_config(CONFIG_DIR)


def _bundled_config_names() -> list[str]:
    return [p.stem for p in CONFIG_DIR.glob("*.json")]


def parse_model_spec(text: str) -> ModelSpec:
    """Parse and validate a `--model` value without loading any weights.

    Raises `ModelError` naming the valid choices when the architecture or tag is unknown, and when a
    checkpoint path does not exist. A checkpoint's content digest is computed here (cached by path,
    size and mtime); a `#digest` suffix as `ModelSpec.key` writes it is accepted and ignored: the
    file's present content decides.
    """
    text = (text or "").strip()
    suffix = DIGEST_SUFFIX.search(text)
    if suffix and not Path(text.split("/", 1)[-1]).expanduser().is_file():
        text = text[: suffix.start()]
    if text in BUNDLED_ALIASES:
        arch, filename = BUNDLED_ALIASES[text]
        path = WEIGHTS_DIR / filename
        return ModelSpec(
            arch=arch,
            source="checkpoint",
            checkpoint=path,
            alias=text,
            digest=_digest_or_none(path),
        )
    if "/" not in text:
        raise ModelError(
            f"model spec {text!r} is not of the form ARCH/PRETRAINED, "
            "ARCH/path/to/checkpoint.pt or "
            f"ARCH/random; for example `ViT-B-32/laion2b_s34b_b79k`, `ViT-B-32/random`, or one of "
            f"the bundled models: {', '.join(BUNDLED_ALIASES)}"
        )
    arch, rest = text.split("/", 1)
    known = known_architectures()  # no import of open_clip (torch) just to check a name
    if arch not in known:
        close = difflib.get_close_matches(arch, known, n=5, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ModelError(
            f"unknown model architecture {arch!r}; {hint}see `searchengine models` for all "
            f"{len(known)} architectures"
        )
    if rest == "random":
        return ModelSpec(arch=arch, source="random")
    path = Path(rest).expanduser()
    if path.suffix in CHECKPOINT_SUFFIXES or "/" in rest or path.exists():
        if not path.is_file():
            raise ModelError(f"checkpoint {rest!r} for model {arch} does not exist")
        return ModelSpec(
            arch=arch,
            source="checkpoint",
            checkpoint=path.resolve(),
            digest=checkpoint_digest(path.resolve()),
        )
    tags = _published_weights_table().list_pretrained_tags_by_model(arch)
    if rest not in tags:
        choices = ", ".join(tags) if tags else "none published"
        raise ModelError(
            f"unknown pretrained tag {rest!r} for {arch}; pretrained tags: {choices}; or use "
            f"{arch}/random or {arch}/path/to/checkpoint.pt"
        )
    return ModelSpec(arch=arch, source="pretrained", tag=rest)


_DIGESTS: dict[tuple[str, int, int], str] = {}


def checkpoint_digest(path: Path) -> str:
    """BLAKE3 hex digest of a checkpoint file's bytes, cached in this process by (path, size,
    mtime): a checkpoint of hundreds of MB is read once (BLAKE3 reads ~4 GB/s on one core)."""
    from blake3 import blake3

    try:
        stat = path.stat()
        cache_key = (str(path), stat.st_size, stat.st_mtime_ns)
        if cache_key not in _DIGESTS:
            hasher = blake3()
            with path.open("rb") as handle:
                while block := handle.read(1 << 22):
                    hasher.update(block)
            _DIGESTS[cache_key] = hasher.hexdigest()
    except OSError as error:
        raise ModelError(f"cannot read checkpoint {path}: {error}") from error
    return _DIGESTS[cache_key]


def _digest_or_none(path: Path) -> str | None:
    """The digest of a bundled file, None while it is missing (loading it then says how to make
    it)."""
    return checkpoint_digest(path) if path.is_file() else None


def build_model(spec: ModelSpec, *, device: str = "cpu", precision: str = "fp32", seed: int = 0):
    """Create the open_clip model for `spec` in eval mode, with its preprocess and tokenizer.

    Returns `(model, preprocess, tokenizer)`: `preprocess` maps a PIL image to a (3, H, W) float32
    tensor exactly as open_clip's own validation transform does.
    """
    import torch

    register_bundled_configs(spec.arch)
    open_clip = import_open_clip(spec.arch)
    if spec.source == "pretrained":
        ensure_weights_available(spec.id)
    if spec.source == "random":
        log.warning(
            "model %s has random weights: results are meaningless (tests and speed figures only)",
            spec.id,
        )
    if spec.source == "checkpoint" and precision == "fp32":
        built = _build_from_checkpoint(spec, device)
        if built is not None:
            return built
    torch.manual_seed(seed)
    pretrained = spec.tag if spec.source == "pretrained" else None
    # open_clip warns that the model "initialized randomly" whenever no hub weights are asked for:
    # false for a checkpoint (loaded next), and said in our own words for `ARCH/random` above.
    quiet = _DropRecords(_OPEN_CLIP_NO_WEIGHTS) if pretrained is None else None
    root = logging.getLogger()
    if quiet:
        root.addFilter(quiet)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            spec.arch, pretrained=pretrained, precision=precision, device=device
        )
    except RuntimeError as error:  # open_clip reports download failures as RuntimeError
        raise ModelUnavailableError(
            f"could not load weights for {spec.id}: {error}. Alternatives: a local checkpoint "
            f"({spec.arch}/path/to/file.pt), {spec.arch}/random, or the bundled `demo` model"
        ) from error
    finally:
        if quiet:
            root.removeFilter(quiet)
    if spec.source == "checkpoint":
        load_checkpoint_weights(model, spec)
    model.eval()
    tokenizer = open_clip.get_tokenizer(spec.arch)
    return model, preprocess, tokenizer


def _build_from_checkpoint(spec: ModelSpec, device: str):
    """`build_model` for a checkpoint without random initialisation: open_clip builds the model
    while its random initialisers do nothing (`_skipping_random_init`), and the checkpoint's
    tensors become its parameters (`load_state_dict(strict=True, assign=True)`: every parameter
    and persistent buffer is replaced, none is copied). For ViT-B-32 that saves filling 151M
    floats with random numbers and copying 600 MB of weights over them.

    Returns `(model, preprocess, tokenizer)` as `build_model` does, or None (the caller then
    takes the ordinary path) when the model has a buffer that no checkpoint holds other than the
    causal masks (computed, never random). The meta device would skip the allocation too, but
    arithmetic on meta tensors imports torch._dynamo, a second and a half.
    Tested against the ordinary path: the same parameters and buffers.
    """
    open_clip = import_open_clip(spec.arch)
    quiet = _DropRecords(_OPEN_CLIP_NO_WEIGHTS)
    root = logging.getLogger()
    root.addFilter(quiet)
    try:
        with _skipping_random_init():
            model, _, preprocess = open_clip.create_model_and_transforms(
                spec.arch, pretrained=None, precision="fp32", load_weights=False
            )
    finally:
        root.removeFilter(quiet)
    unsaved = {
        name
        for module in model.modules()
        for name in getattr(module, "_non_persistent_buffers_set", ())
    }
    if unsaved - {"attn_mask"}:
        log.debug("building %s the ordinary way: buffers %s are not in checkpoints", spec, unsaved)
        return None
    load_checkpoint_weights(model, spec, assign=True)
    model.float()  # the ordinary path copies a half-precision checkpoint into fp32 parameters
    model.to(device)
    model.eval()
    return model, preprocess, open_clip.get_tokenizer(spec.arch)


def _skipping_random_init():
    """A context in which torch's random initialisers (`torch.nn.init.*_`, `Tensor.normal_`,
    `Tensor.uniform_`) leave their tensor as it is and `torch.randn`/`torch.rand` are
    `torch.empty` (uninitialised memory), for a model whose every parameter a checkpoint is about
    to replace."""
    import torch
    from torch.overrides import TorchFunctionMode

    init = torch.nn.init
    skipped = {
        init.normal_, init.uniform_, init.trunc_normal_, init.kaiming_uniform_,
        init.kaiming_normal_, init.xavier_uniform_, init.xavier_normal_, init.orthogonal_,
        torch.Tensor.normal_, torch.Tensor.uniform_,
    }

    drawn = {torch.randn, torch.rand}  # `scale * torch.randn(width)`: made, then replaced

    class SkipRandomInit(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func in skipped:
                return args[0] if args else kwargs["tensor"]
            if func in drawn:
                kwargs.pop("generator", None)
                return torch.empty(*args, **kwargs)
            return func(*args, **kwargs)

    return SkipRandomInit()


_OPEN_CLIP_NO_WEIGHTS = "No pretrained weights loaded for model "


class _DropRecords(logging.Filter):
    """Drops log records whose message starts with `prefix`; every other record passes."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


def load_checkpoint_weights(
    model: torch.nn.Module, spec: ModelSpec, *, assign: bool = False
) -> None:
    """Load a local checkpoint into `model`: this project's format or open_clip_train's.

    `assign`: the checkpoint's tensors become the parameters (a model built on the meta device);
    otherwise they are copied into the existing ones."""
    import torch

    open_clip = import_open_clip(spec.arch)
    path = spec.checkpoint
    if path is None or not path.is_file():
        hint = " (train it with `make demo-model`)" if spec.alias else ""
        raise ModelError(f"checkpoint {path} for model {spec.id} does not exist{hint}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, ValueError, EOFError, pickle.UnpicklingError) as error:
        raise ModelError(f"cannot read checkpoint {path}: {error}") from error
    if isinstance(checkpoint, dict) and checkpoint.get("format") == CHECKPOINT_FORMAT:
        trained_for = checkpoint.get("arch")
        if trained_for != spec.arch:
            if not _only_image_size_differs(checkpoint.get("model_config"), spec.arch):
                raise ModelError(
                    f"checkpoint {path} was trained for architecture {trained_for!r}, not "
                    f"{spec.arch!r}; use --model {trained_for}/{path}"
                )
            log.info("loading %s weights into %s: the same model at another image size, its "
                     "position embeddings resized", trained_for, spec.arch)
        state_dict = checkpoint["state_dict"]
    else:  # open_clip_train writes {"epoch", "name", "state_dict" (maybe "module."-prefixed), ...}
        state_dict = (
            checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
        )
        if not isinstance(state_dict, dict):
            raise ModelError(f"{path} is not a model checkpoint (no state_dict inside)")
        state_dict = {_strip_module_prefix(k): v for k, v in state_dict.items()}
    try:
        open_clip.factory.resize_pos_embed(state_dict, model)  # a ViT's grid
        _resize_attention_pool(state_dict, model)  # a ModifiedResNet's
        model.load_state_dict(state_dict, strict=True, assign=assign)
    except RuntimeError as error:
        raise ModelError(
            f"checkpoint {path} does not fit architecture {spec.arch}: {str(error)[:300]}"
        ) from error


def _only_image_size_differs(trained: Any, arch: str) -> bool:
    """Whether a checkpoint's `model_config` is `arch`'s configuration at another input size:
    then its weights fit `arch` once the grid of position embeddings is resized (a model
    fine-tuned at a higher resolution than it was trained at)."""
    target = architecture_config(arch)
    if not isinstance(trained, dict) or not isinstance(target, dict):
        return False
    vision, wanted = trained.get("vision_cfg"), target.get("vision_cfg")
    if not isinstance(vision, dict) or not isinstance(wanted, dict):
        return False
    if vision.get("image_size") == wanted.get("image_size"):
        return False  # the same configuration under another name: not known to fit

    def without_size(config: dict, vision_cfg: dict) -> dict:
        return {**config, "vision_cfg": {k: v for k, v in vision_cfg.items() if k != "image_size"}}

    return without_size(trained, vision) == without_size(target, wanted)


def _resize_attention_pool(state_dict: dict[str, Any], model: torch.nn.Module) -> None:
    """What open_clip's `resize_pos_embed` does for a ViT, for a ModifiedResNet: the attention
    pool's grid of position embeddings (one per cell of the last feature map, after one for the
    pooled token) is resized bicubically to the model's grid, in place in `state_dict`."""
    import math

    import torch

    key = "visual.attnpool.positional_embedding"
    old = state_dict.get(key)
    pool = getattr(getattr(model, "visual", None), "attnpool", None)
    if old is None or pool is None or old.shape == pool.positional_embedding.shape:
        return
    old_side = math.isqrt(old.shape[0] - 1)
    new_side = math.isqrt(pool.positional_embedding.shape[0] - 1)
    if old.ndim != 2 or old_side**2 + 1 != old.shape[0] or new_side**2 + 1 != len(
            pool.positional_embedding):
        return  # not a square grid: load_state_dict reports the mismatch
    grid = old[1:].reshape(1, old_side, old_side, -1).permute(0, 3, 1, 2).float()
    grid = torch.nn.functional.interpolate(
        grid, size=(new_side, new_side), mode="bicubic", antialias=new_side < old_side,
        align_corners=False)  # antialias only when shrinking (it changes the kernel too)
    cells = grid.permute(0, 2, 3, 1).reshape(new_side * new_side, -1).to(old.dtype)
    state_dict[key] = torch.cat([old[:1], cells])


def _strip_module_prefix(key: str) -> str:
    return key[len("module.") :] if key.startswith("module.") else key


HUB_TIMEOUT = 5.0
"""Seconds the model-hub check waits for an answer (huggingface_hub's client, proxies honoured)."""
HUB_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def ensure_weights_available(text: str) -> None:
    """Fail at once, before anything heavy is imported, when `text` names hub weights
    (`ARCH/TAG`) that are neither in the local cache nor downloadable now.

    Downloadable means: `HF_HUB_OFFLINE` is not set and the hub answers a HEAD request for the
    weights within `HUB_TIMEOUT` seconds through huggingface_hub's own HTTP client (so
    `HTTPS_PROXY`, `HF_ENDPOINT` and the rest of its configuration apply). Any other spec passes
    (aliases, checkpoints, random weights, unknown names: `parse_model_spec` judges those). Raises
    `ModelUnavailableError` naming the alternatives.
    """
    arch, _, tag = (text or "").strip().partition("/")
    if not tag or tag == "random" or DIGEST_SUFFIX.search(tag):
        return
    config = _published_weights(arch, tag)
    if config:
        _ensure_weights_reachable(arch, tag, config)


def _ensure_weights_reachable(arch: str, tag: str, config: dict[str, Any]) -> None:
    if config.get("file") and Path(config["file"]).exists():
        return
    hub_id = config.get("hf_hub", "").rstrip("/")
    if not hub_id:  # a plain URL: open_clip downloads (or fails) with its own messages
        return
    if _cached_on_hub(hub_id):
        return
    problem = _hub_problem(hub_id)
    if problem:
        raise ModelUnavailableError(
            f"weights for {arch}/{tag} are not in the local cache and cannot be downloaded now "
            f"({problem}). Alternatives: the bundled `demo` model, a local checkpoint "
            f"({arch}/path/to/file.pt), or {arch}/random for speed tests; or fetch the weights "
            f"once on a connected machine (they are then found in the Hugging Face cache)"
        )


def _cached_on_hub(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(repo_id, n), str) for n in HUB_WEIGHT_FILES)


def _hub_problem(repo_id: str) -> str | None:
    """Why the hub cannot serve `repo_id`'s weights now, or None when it answers."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    url = hf_hub_url(repo_id, HUB_WEIGHT_FILES[0])
    try:
        get_hf_file_metadata(url, timeout=HUB_TIMEOUT)
    except OfflineModeIsEnabled:
        return "HF_HUB_OFFLINE is set"
    except HfHubHTTPError:
        return None  # the hub answered (a missing file, an auth error): the download will say
    except _connection_errors() as error:
        return f"the model hub {constants.ENDPOINT} cannot be reached{_via_proxy(url)}: {error}"
    return None


def _via_proxy(url: str) -> str:
    """' through the proxy P' when the environment sends `url` through one, else ''."""
    import urllib.request
    from urllib.parse import urlparse

    parsed = urlparse(url)
    proxy = urllib.request.getproxies().get(parsed.scheme)
    if not proxy or urllib.request.proxy_bypass(parsed.hostname or ""):
        return ""
    return f" through the proxy {proxy}"


def _connection_errors() -> tuple[type[Exception], ...]:
    """The errors of huggingface_hub's HTTP client when no answer comes: OSError (requests' are
    OSErrors) and the transport errors of httpx2 (huggingface_hub 2) or httpx (1.x)."""
    errors: list[type[Exception]] = [OSError]
    for name in ("httpx2", "httpx"):
        try:
            errors.append(importlib.import_module(name).TransportError)
        except (ImportError, AttributeError):
            continue
    return tuple(errors)


_ABSENT = object()


@functools.cache
def _published_weights_table() -> Any:
    """open_clip's table of published weights (`open_clip/pretrained.py`), read as a private module
    without importing the `open_clip` package, whose import (torch, transformers) takes seconds:
    the offline check must answer before that. Falls back to the real package."""
    found = importlib.util.find_spec("open_clip")
    locations = list(found.submodule_search_locations or []) if found else []
    name = "_searchengine_open_clip_table"
    # A module, None (its import blocked) or _ABSENT (not in sys.modules): restored at the end.
    blocked: dict[str, Any] = {"safetensors.torch": sys.modules.get("safetensors.torch", _ABSENT)}
    try:
        if not locations:
            raise ImportError("open_clip is not a package")
        package = types.ModuleType(name)
        package.__path__ = locations
        sys.modules[name] = package
        spec = importlib.util.spec_from_file_location(
            f"{name}.pretrained", Path(locations[0]) / "pretrained.py"
        )
        if spec is None or spec.loader is None:
            raise ImportError("open_clip/pretrained.py not found")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        # None blocks the import (typeshed types sys.modules as modules only): no torch for a table
        sys.modules["safetensors.torch"] = None  # type: ignore[assignment]
        spec.loader.exec_module(module)
        module.get_pretrained_cfg  # noqa: B018 -- the one function used
        return module
    except (ImportError, OSError, AttributeError, SyntaxError) as error:
        log.debug("reading open_clip's weights table through the package: %s", error)
        import open_clip

        return open_clip.pretrained
    finally:
        for key, value in blocked.items():
            if value is _ABSENT:
                sys.modules.pop(key, None)
            else:
                sys.modules[key] = value


def _published_weights(arch: str, tag: str) -> dict[str, Any]:
    """open_clip's download config of (arch, tag): `hf_hub`, `url`, ...; {} when unpublished."""
    return dict(_published_weights_table().get_pretrained_cfg(arch, tag) or {})


def available_models(*, pretrained: bool = False) -> list[str]:
    """Architecture names, or `ARCH/TAG` specs with published weights, plus bundled aliases."""
    register_bundled_configs()
    open_clip = import_open_clip()
    if pretrained:
        names = [f"{arch}/{tag}" for arch, tag in open_clip.list_pretrained()]
    else:
        names = [f"{arch}/random" for arch in open_clip.list_models()]
    return sorted(BUNDLED_ALIASES) + names
