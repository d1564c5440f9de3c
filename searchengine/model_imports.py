"""Importing open_clip without the libraries a model does not use.

`import open_clip` also imports transformers (for Hugging Face text towers and CoCa's text
generation) and timm (for timm image towers): about 1.5 s of a cold command's 3 s budget on a
quiet 2-core host, for nothing when the model is a plain CLIP such as ViT-B-32. open_clip imports
both inside `try: ... except ImportError`, so this module imports it with those two blocked when
the architecture's config names neither (its JSON is read from disk, nothing imported), and
imports them again into open_clip's modules as soon as an architecture that needs one is asked
for in the same process.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import logging
import re
import sys
from pathlib import Path
from types import ModuleType

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).with_name("model_configs")
# Optional library -> the open_clip modules that import it at their top, inside try/except.
OPTIONAL_LIBRARIES: dict[str, tuple[str, ...]] = {
    "transformers": ("open_clip.hf_model", "open_clip.coca_model"),
    "timm": ("open_clip.timm_model",),
}


def import_open_clip(arch: str | None = None) -> ModuleType:
    """The `open_clip` module, imported without transformers and timm unless `arch` (an
    architecture name; None for none in particular) needs them.

    Where open_clip was imported earlier without a library that `arch` needs, its modules that
    use the library are imported again (`importlib.reload`), now with it, so every architecture
    works in any order.
    """
    needed = libraries_needed(arch)
    if "open_clip" not in sys.modules:
        blocked = [name for name in OPTIONAL_LIBRARIES if name not in needed]
        _import_without(blocked)
    for name in needed:
        _restore(name)
    return sys.modules["open_clip"]


def libraries_needed(arch: str | None) -> set[str]:
    """Which of transformers and timm the model config of `arch` names (`text_cfg.hf_model_name`,
    `vision_cfg.timm_model_name`, or a CoCa `multimodal_cfg`); both where the config is not a
    file here (a hub model, an unknown name: open_clip then decides)."""
    if arch is None:
        return set()
    config = _config(arch)
    if config is None:
        return set(OPTIONAL_LIBRARIES)
    needed = set()
    if "hf_model_name" in config.get("text_cfg", {}) or "multimodal_cfg" in config:
        needed.add("transformers")
    if "timm_model_name" in config.get("vision_cfg", {}):
        needed.add("timm")
    return needed


def known_architectures() -> list[str]:
    """The architecture names open_clip knows plus the bundled ones (`searchengine/model_configs`),
    in open_clip's order. While open_clip is not imported yet they are read from its config files
    as open_clip itself reads them (a JSON file with `embed_dim`, `vision_cfg` and `text_cfg`), so
    validating a `--model` costs milliseconds instead of importing torch."""
    if "open_clip" in sys.modules:
        open_clip = sys.modules["open_clip"]
        if not set(_bundled_names()) <= set(open_clip.list_models()):
            open_clip.add_model_config(CONFIG_DIR)
        return open_clip.list_models()
    names = set()
    for folder in _config_folders():
        for path in folder.glob("*.json"):
            config = _read_config(path)
            if config and all(key in config for key in ("embed_dim", "vision_cfg", "text_cfg")):
                names.add(path.stem)
    return sorted(names, key=_natural_key)


def _bundled_names() -> list[str]:
    return [path.stem for path in CONFIG_DIR.glob("*.json")]


def _natural_key(name: str) -> list:
    """open_clip's sort key for architecture names (`factory._natural_key`)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name.lower())]


def _config_folders() -> list[Path]:
    found = importlib.util.find_spec("open_clip")
    folders = []
    if found and found.submodule_search_locations:
        folders += [Path(p) / "model_configs" for p in found.submodule_search_locations]
    return [*folders, CONFIG_DIR]


def _read_config(path: Path) -> dict | None:
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def architecture_config(arch: str) -> dict | None:
    """open_clip's configuration of `arch` (`embed_dim`, `vision_cfg`, ...) read from its JSON
    file as `known_architectures` reads it, without importing open_clip or torch; None when no
    file names it."""
    return _config(arch)


def _config(arch: str) -> dict | None:
    if "/" in arch or ":" in arch or not arch:
        return None
    for folder in _config_folders():
        path = folder / f"{arch}.json"
        if path.is_file():
            return _read_config(path)
    return None


def _import_without(libraries: list[str]) -> None:
    """Import open_clip while `libraries` (not imported yet) cannot be imported, and without
    importing torch._dynamo (see `_DeferredDynamo`)."""
    blocked = [name for name in libraries if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None  # type: ignore[assignment]  # None makes `import name` fail
    deferred = _DeferredDynamo() if "torch._dynamo" not in sys.modules else None
    try:
        importlib.import_module("open_clip")
    finally:
        for name in blocked:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]
        if deferred:
            deferred.remove()
    _WITHOUT.update(
        module for name in blocked for module in OPTIONAL_LIBRARIES[name] if module in sys.modules
    )


class _DeferredDynamo:
    """Stands in for `torch._dynamo.utils` while open_clip is imported, so that torchvision
    (0.29: `from torch._dynamo.utils import is_compile_supported` at the top of
    `torchvision/ops/roi_align.py`, whose own comment means to avoid "eagerly importing dynamo")
    does not import torch's compiler stack: about 1.5 s on a quiet 2-core host, for a function
    that only `roi_align` calls. The stand-in `is_compile_supported` imports the real one on its
    first call; any other name asked of the stand-ins imports the real modules and answers from
    them. The stand-ins leave `sys.modules` when the import is done, so a later
    `import torch._dynamo` (torch.compile) gets the real package."""

    NAMES = ("torch._dynamo", "torch._dynamo.utils")

    def __init__(self) -> None:
        self.stand_ins = {name: ModuleType(name) for name in self.NAMES}
        for name, module in self.stand_ins.items():
            module.__getattr__ = functools.partial(self._real_attribute, name)  # type: ignore
            sys.modules[name] = module
        self.stand_ins["torch._dynamo"].__path__ = []  # a package, so `.utils` may be imported
        utils = self.stand_ins["torch._dynamo.utils"]
        utils.is_compile_supported = _is_compile_supported  # type: ignore[attr-defined]

    def _real_attribute(self, module_name: str, attribute: str):
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        self.remove()
        return getattr(importlib.import_module(module_name), attribute)

    def remove(self) -> None:
        for name, module in self.stand_ins.items():
            if sys.modules.get(name) is module:
                del sys.modules[name]
        torch = sys.modules.get("torch")
        if torch is not None and torch.__dict__.get("_dynamo") is self.stand_ins["torch._dynamo"]:
            del torch._dynamo


def _is_compile_supported(device_type) -> bool:
    """torch._dynamo.utils.is_compile_supported, imported when first called."""
    from torch._dynamo.utils import is_compile_supported

    return is_compile_supported(device_type)


_WITHOUT: set[str] = set()  # the open_clip modules imported while a library was blocked


def _restore(library: str) -> None:
    """Import `library` into the open_clip modules that went without it (no-op otherwise)."""
    for module_name in OPTIONAL_LIBRARIES[library]:
        module = sys.modules.get(module_name)
        if module is None or module_name not in _WITHOUT:
            continue
        _WITHOUT.discard(module_name)
        if importlib.util.find_spec(library) is None:
            return  # not installed: open_clip says so when the model needs it
        log.debug("importing %s into %s for a model that needs it", library, module_name)
        importlib.reload(module)
