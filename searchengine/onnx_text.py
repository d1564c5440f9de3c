"""A text query without torch: the text tower exported to ONNX and run by ONNX Runtime, with
open_clip's tokenizer rebuilt in Hugging Face `tokenizers` (words split as open_clip splits
them, with its pattern and the `regex` module).

A fresh `searchengine search` spent most of its seconds importing torch (2-3 s on a quiet 2-core
host) and building the model, to encode one sentence. Importing ONNX Runtime takes about 0.15 s
and opening the exported tower (its weights in a side file that ONNX Runtime maps) about 0.3 s,
so a cold search needs neither torch nor open_clip (`bench/cold.py`).

One export per model content, in the user's cache (`cache_root()`), made by a process that has
the model loaded anyway (`index`, or the first `search` that had to load it) and checked there
against the model itself before it is used: the tokens must equal open_clip's and the vectors
agree to `EXPORT_TOLERANCE`. Only open_clip's plain CLIP text tower with its default tokenizer
is exported (`exportable`); other models keep the torch path. A missing, partial or damaged
export, or no ONNX Runtime, falls back to torch: the export is a cache and never an error.
"""

from __future__ import annotations

import contextlib
import hashlib
import html
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from searchengine.errors import InvalidInputError
from searchengine.models import ModelSpec

if TYPE_CHECKING:
    from searchengine.encoder import Encoder

log = logging.getLogger(__name__)

FORMAT = 1
"""Layout of an export folder; a folder of another format is ignored (and replaced)."""
EXPORT_TOLERANCE = 1e-4
"""Largest difference allowed between an exported and the torch model's unit text vectors, per
coordinate; ONNX Runtime's fused kernels differ from torch's by about 1e-6."""
PROBE_TEXTS = (
    "a dog on the beach",
    "Two children play in the snow near a red house .",
    "ÜNÏCÖDÉ façade — naïve café, 日本語, emoji 🐶",
    "&amp;lt;b&amp;gt; tags, tabs\tand\nnewlines, don't it's we'll",
    "x",
)
"""Sentences an export is checked on: plain, long, non-ASCII and HTML-escaped."""
_FILES = ("text.onnx", "text.onnx.data", "tokenizer.json", "meta.json")


def cache_root() -> Path:
    """`$SEARCHENGINE_CACHE`, else `$XDG_CACHE_HOME/searchengine`, else
    `~/.cache/searchengine`: what is there is rebuilt when missing, so it is safe to delete."""
    if os.environ.get("SEARCHENGINE_CACHE"):
        return Path(os.environ["SEARCHENGINE_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "searchengine"


def export_folder(spec: ModelSpec) -> Path | None:
    """Where the export of `spec`'s weights lives; None for random weights (they depend on a
    seed and are never worth a cache). A checkpoint is named by its content digest, a pretrained
    model by its tag; the open_clip version is part of the name (it defines the architecture)."""
    if spec.source == "random":
        return None
    from importlib.metadata import PackageNotFoundError, version

    try:
        open_clip_version = version("open_clip_torch")
    except PackageNotFoundError:
        open_clip_version = "unknown"
    identity = "|".join([str(FORMAT), open_clip_version, spec.arch, spec.source,
                         spec.tag or "", spec.digest or "", spec.alias or ""])
    digest = hashlib.sha256(identity.encode()).hexdigest()[:20]
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in spec.arch)[:40]
    return cache_root() / "onnx-text" / f"{slug}-{digest}"


def exportable(encoder: Encoder) -> bool:
    """True for open_clip's plain CLIP text tower (causal mask, end-of-text pooling) with its
    default tokenizer (BPE, lower-case cleaning, truncation), fp32 on the CPU."""
    from open_clip.tokenizer import SimpleTokenizer, _clean_lower

    from searchengine.text_tower import can_trim

    tokenizer = encoder.tokenizer
    return (
        can_trim(encoder.model)
        and isinstance(tokenizer, SimpleTokenizer)
        and tokenizer.clean_fn is _clean_lower
        and tokenizer.reduction_fn is None
        and encoder.settings.precision == "fp32"
    )


def export(encoder: Encoder, folder: Path | None = None, *, replace: bool = False
           ) -> Path | None:
    """Write the ONNX export of `encoder`'s text tower to `folder` (default: `export_folder`) and
    return it; None when the model is not `exportable`, is random, or its export differs from it
    (logged). Written in a temporary folder beside it and renamed into place, so a reader sees a
    whole export or none; a folder another process finished first is kept. `replace`: the
    export there is damaged (it did not open): write a new one over it."""
    folder = folder or export_folder(encoder.spec)
    if folder is None or not exportable(encoder):
        return None
    if ready(folder) and not replace:
        return folder
    started = time.perf_counter()
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        _write_graph(encoder, work / "text.onnx")
        _tokenizer_from(encoder.tokenizer).save(str(work / "tokenizer.json"))
        meta = {
            "format": FORMAT,
            "model": encoder.spec.key,
            "dim": encoder.dim,
            "context_length": int(encoder.tokenizer.context_length),
            "sot": int(encoder.tokenizer.sot_token_id),
            "eot": int(encoder.tokenizer.eot_token_id),
            "word_pattern": encoder.tokenizer.pat.pattern,
            "word_pattern_flags": int(encoder.tokenizer.pat.flags),
        }
        (work / "meta.json").write_text(json.dumps(meta))
        difference = _check(encoder, work)
        if difference is None:
            return None
        meta["max_difference"] = difference
        (work / "meta.json").write_text(json.dumps(meta, indent=1))
        if folder.exists() and (replace or not ready(folder)):  # damage, never a rename's
            shutil.rmtree(folder, ignore_errors=True)  # work, which is whole
        try:
            work.rename(folder)
        except OSError:  # another process put a whole export there first
            if not ready(folder):
                raise
        log.info("exported the text tower of %s to ONNX in %.1f s (max difference %.1e): %s",
                 encoder.spec, time.perf_counter() - started, difference, folder)
        return folder
    finally:
        shutil.rmtree(work, ignore_errors=True)


def ready(folder: Path) -> bool:
    """True when `folder` holds a whole export of this format."""
    with contextlib.suppress(OSError, ValueError):
        meta = json.loads((folder / "meta.json").read_text())
        return meta.get("format") == FORMAT and all((folder / name).is_file() for name in _FILES)
    return False


def _write_graph(encoder: Encoder, path: Path) -> None:
    """open_clip's `encode_text(tokens, normalize=True)` as an ONNX graph of (n, context) int64
    tokens, n dynamic, with its weights in `path.data`, which ONNX Runtime maps. (The whole
    context: the tracing exporter fixes the sequence length inside attention, and a cold process
    pays ~40 ms for it against ~5 s for torch.)"""
    import warnings

    import onnx
    import torch

    class TextTower(torch.nn.Module):
        def __init__(self, model) -> None:
            super().__init__()
            self.model = model

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            return self.model.encode_text(tokens, normalize=True)

    example = encoder.tokenizer(["a photo of a dog", "two red squares"])  # (2, context)
    graph = path.with_suffix(".single.onnx")
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracing notes
        torch.onnx.export(
            TextTower(encoder.model).eval(), (example,), str(graph), dynamo=False,
            input_names=["tokens"], output_names=["vectors"], opset_version=17,
            dynamic_axes={"tokens": {0: "texts"}, "vectors": {0: "texts"}},
        )
    model = onnx.load(str(graph))
    graph.unlink()
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=path.name + ".data", size_threshold=1024)


def _tokenizer_from(tokenizer):
    """open_clip's `SimpleTokenizer` as a `tokenizers.Tokenizer` of words already split (by
    `OnnxTextEncoder.tokens`, with open_clip's own pattern and `regex` module, whose Unicode
    tables the Rust engine does not share): the same vocabulary and merges, GPT-2's
    byte-to-character map (which CLIP's BPE uses too) and `</w>` at word ends."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

    merges = [pair for pair, _ in sorted(tokenizer.bpe_ranks.items(), key=lambda item: item[1])]
    built = Tokenizer(models.BPE(vocab=dict(tokenizer.encoder), merges=merges,
                                 end_of_word_suffix="</w>", fuse_unk=False))
    built.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    # open_clip maps the text of its start and end tokens to their ids wherever it appears
    specials = [tokenizer.decoder[tokenizer.sot_token_id],
                tokenizer.decoder[tokenizer.eot_token_id]]
    built.add_special_tokens([AddedToken(token, normalized=False) for token in specials])
    return built


def _check(encoder: Encoder, folder: Path) -> float | None:
    """The largest coordinate difference between the export's and `encoder`'s vectors of
    PROBE_TEXTS, or None (logged) when the tokens differ or it exceeds EXPORT_TOLERANCE."""
    exported = OnnxTextEncoder.open(folder, encoder.spec, threads=1)
    if exported is None:
        return None
    texts = list(PROBE_TEXTS)
    ours = exported.tokens(texts)
    if not np.array_equal(ours, encoder.tokenizer(texts).numpy()):
        log.warning("not using the ONNX export of %s: its tokens differ from open_clip's",
                    encoder.spec)
        return None
    difference = float(np.abs(exported.encode_texts(texts) - encoder.encode_texts(texts)).max())
    if difference > EXPORT_TOLERANCE:
        log.warning("not using the ONNX export of %s: its vectors differ from the model's by "
                    "%.1e (more than %.0e)", encoder.spec, difference, EXPORT_TOLERANCE)
        return None
    return difference


def _clean(text: str) -> str:
    """open_clip's default text cleaning (`_clean_lower`): ftfy's fixes, HTML entities undone
    twice, runs of whitespace made one space, lower case."""
    import ftfy

    return " ".join(html.unescape(html.unescape(ftfy.fix_text(text))).split()).lower()


def _runtime_errors() -> tuple[type[BaseException], ...]:
    """What ONNX Runtime raises for a file it cannot load or run (its own classes derive from
    Exception directly), with the OS's and numpy's errors."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    return (state.Fail, state.InvalidArgument, state.InvalidProtobuf, state.NoSuchFile,
            state.RuntimeException, state.EngineError, OSError, ValueError)


@dataclass
class OnnxTextEncoder:
    """An export opened for queries: `encode_texts` as `Encoder.encode_texts` does it."""

    spec: ModelSpec
    folder: Path
    dim: int
    context_length: int
    sot: int
    eot: int
    _session: Any  # onnxruntime.InferenceSession
    _tokenizer: Any  # tokenizers.Tokenizer
    _words: Any  # open_clip's word pattern, compiled by `regex`

    @classmethod
    def open(cls, folder: Path | None, spec: ModelSpec,
             threads: int | None = None) -> OnnxTextEncoder | None:
        """The export in `folder` for `spec`, or None when there is none, it is partial or
        damaged, it is of another model, or ONNX Runtime or `tokenizers` is not installed.
        `threads`: ONNX Runtime's threads (None: as a torch query would use now, see
        `encoder.threads_now`; fixed for the session, which suits a one-shot process)."""
        if folder is None or not ready(folder):
            return None
        from searchengine.encoder import threads_now

        try:
            import onnxruntime
            import regex
            from tokenizers import Tokenizer
        except ImportError:
            log.debug("no onnxruntime or tokenizers: text queries load torch")
            return None
        try:
            meta = json.loads((folder / "meta.json").read_text())
            if meta["model"] != spec.key:
                return None
            options = onnxruntime.SessionOptions()
            options.log_severity_level = 3  # errors only
            options.intra_op_num_threads = threads or threads_now()
            session = onnxruntime.InferenceSession(str(folder / "text.onnx"), options,
                                                   providers=["CPUExecutionProvider"])
            tokenizer = _load_tokenizer(Tokenizer, folder / "tokenizer.json")
            words = regex.compile(meta["word_pattern"], int(meta["word_pattern_flags"]))
            return cls(spec, folder, int(meta["dim"]), int(meta["context_length"]),
                       int(meta["sot"]), int(meta["eot"]), session, tokenizer, words)
        except (*_runtime_errors(), KeyError, TypeError, regex.error) as error:
            log.warning("ignoring the damaged ONNX export %s (%s); the next command that loads "
                        "the model replaces it",
                        folder, error)
            return None

    def tokens(self, texts: list[str]) -> np.ndarray:
        """(n, context) int64 token ids, as open_clip's tokenizer gives them; a text longer than
        the context is cut to it, with a warning through logging, as `Encoder.encode_texts`
        does."""
        words = [self._words.findall(_clean(text)) for text in texts]
        encoded = self._tokenizer.encode_batch(
            words, is_pretokenized=True, add_special_tokens=False)
        rows = [[self.sot, *row.ids, self.eot] for row in encoded]
        cut = [text for text, row in zip(texts, rows, strict=True)
               if len(row) > self.context_length]
        if cut:
            example = cut[0] if len(cut[0]) <= 80 else cut[0][:77] + "..."
            log.warning("%d of %d texts are longer than the model's context of %d tokens and "
                        "were cut to it (the end is not searched), e.g. %r",
                        len(cut), len(texts), self.context_length, example)
        rows = [row[: self.context_length - 1] + [self.eot] if len(row) > self.context_length
                else row for row in rows]
        tokens = np.zeros((len(rows), self.context_length), dtype=np.int64)
        for i, row in enumerate(rows):
            tokens[i, : len(row)] = row
        return tokens

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """List of n non-empty sentences -> (n, d) float32 unit vectors."""
        if not texts or any(not text.strip() for text in texts):
            raise InvalidInputError("empty text: give at least one non-blank sentence")
        return self._session.run(
            None, {"tokens": self.tokens(texts)})[0].astype(np.float32, copy=False)


def _load_tokenizer(tokenizer_class, path: Path):
    """`tokenizers.Tokenizer.from_file`, whose errors for a damaged file are plain Exceptions
    (from Rust): those become ValueError, so only they are caught."""
    try:
        return tokenizer_class.from_file(str(path))
    except Exception as error:  # noqa: BLE001 -- tokenizers raises nothing narrower
        raise ValueError(f"{path}: {error}") from error
