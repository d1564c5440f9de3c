"""Encoder: pixels and sentences in, float32 (n, d) unit vectors out."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from searchengine.errors import InvalidInputError
from searchengine.images import fit_for_model
from searchengine.models import ModelSpec, build_model, parse_model_spec
from searchengine.settings import EncoderSettings
from searchengine.text_tower import encode_text

if TYPE_CHECKING:
    import torch
    from PIL import Image

log = logging.getLogger(__name__)

QUERY_CACHE_SIZE = 256
"""Text vectors an Encoder keeps (least recently used out): 0.5 MB at 512 dimensions."""
QUERY_CACHE_BATCH = 64
"""Calls with more texts than this (indexing captions) neither read nor fill the cache."""
FEW_TEXTS = 8
"""Text batches up to this size (queries) run on `EncoderSettings.query_threads` threads."""


def resolve_device(device: str) -> str:
    """`auto` becomes `cuda` when torch sees a GPU, else `cpu`; anything else is kept."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class Encoder:
    """One loaded open_clip model, ready to embed images and texts.

    Attributes: `spec` (ModelSpec), `dim` (embedding width d), `image_size` (model input side),
    `preprocess` (PIL image -> (3, H, W) float32 tensor, open_clip's own validation transform),
    `draft_crop` (whether that transform starts with a bicubic shortest-side resize to
    `image_size` and a centre crop of that square, so a drafted JPEG may be resized straight to
    the crop: `load_image(..., crop=True)`).
    """

    def __init__(self, spec: ModelSpec, settings: EncoderSettings = EncoderSettings()):
        self.spec = spec
        self.settings = settings
        self.device = resolve_device(settings.device)
        self.model, self.preprocess, self.tokenizer = build_model(
            spec, device=self.device, precision=settings.precision, seed=settings.seed
        )
        size = self.model.visual.image_size
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.draft_crop = resizes_then_centre_crops(self.preprocess, self.image_size)
        self._text_cache: OrderedDict[str, np.ndarray] = OrderedDict()  # text -> (d,) float32
        self._text_cache_lock = threading.Lock()
        probe = _text_projection_width(self.model)
        self.dim = probe or int(self._vectors(self.tokenizer(["probe"])).shape[1])

    @classmethod
    def load(cls, spec: str | ModelSpec, settings: EncoderSettings = EncoderSettings()) -> Encoder:
        """Parse `spec` (a `--model` value) and load it."""
        return cls(parse_model_spec(spec) if isinstance(spec, str) else spec, settings)

    def pixels(self, image: Image.Image) -> torch.Tensor:
        """Upright RGB PIL image -> (3, H, W) float32 tensor: `preprocess(image)`, with every
        intermediate image bounded whatever the aspect ratio (`images.fit_for_model`: the centre
        square is cropped before it is scaled). Raises `ImageDecodeError` for a picture more
        elongated than `images.MAX_ASPECT_RATIO` when the transform needs the whole of it."""
        return self.preprocess(fit_for_model(image, self.image_size, crop=self.draft_crop))

    def encode_images(self, pixels: torch.Tensor) -> np.ndarray:
        """(n, 3, H, W) preprocessed float tensor -> (n, d) float32 unit vectors."""
        import torch

        with torch.inference_mode():
            features = self.model.encode_image(pixels.to(self.device), normalize=True)
        return features.float().cpu().numpy()

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """List of n non-empty sentences -> (n, d) float32 unit vectors.

        Sentences are tokenised to the model's context (77 tokens for CLIP) but encoded only up to
        the longest one in the batch: the text tower's attention is causal and it pools at the
        end-of-text token, so padding after it cannot change the result (tested against the full
        context), and a 10-token query costs a seventh of the full context. Longer sentences are
        cut to the context, with a warning through logging.

        The vectors of the last `QUERY_CACHE_SIZE` distinct texts of calls with at most
        `QUERY_CACHE_BATCH` texts are kept (exact text as key; one cache per Encoder, so per model
        and weights): a repeated query (paging, a refresh, several clients) costs no forward pass.
        A cached row was computed in another batch, so it may differ from a fresh one by float
        noise (`MODEL_NOISE` in the tests), never more.
        """
        if not texts or any(not text.strip() for text in texts):
            raise InvalidInputError("empty text: give at least one non-blank sentence")
        tokens = self.tokenizer(texts)  # (n, context) int64; ~0.1 ms a text
        self._warn_if_cut(texts, tokens)
        if len(texts) > QUERY_CACHE_BATCH:
            return self._vectors(tokens)
        with self._text_cache_lock:
            cached: dict[str, np.ndarray | None] = {t: self._text_cache.get(t) for t in texts}
            for text, vector in cached.items():
                if vector is not None:
                    self._text_cache.move_to_end(text)
        missing = [text for text, vector in cached.items() if vector is None]
        if missing:
            rows = [texts.index(text) for text in missing]
            fresh = self._vectors(tokens[rows])  # (m, d)
            with self._text_cache_lock:
                for text, vector in zip(missing, fresh, strict=True):
                    cached[text] = self._text_cache[text] = vector
                while len(self._text_cache) > QUERY_CACHE_SIZE:
                    self._text_cache.popitem(last=False)
        rows_out = [cached[text] for text in texts]
        return np.stack([row for row in rows_out if row is not None])  # (n, d) float32, new

    def clear_text_cache(self) -> None:
        """Forget the cached text vectors (see `encode_texts`)."""
        with self._text_cache_lock:
            self._text_cache.clear()

    def _vectors(self, tokens: torch.Tensor) -> np.ndarray:
        """(n, context) int64 tokens -> (n, d) float32 unit vectors (no cache). A query of at
        most FEW_TEXTS sentences on the CPU runs on `settings.query_threads` threads."""
        import torch

        few = self.device == "cpu" and len(tokens) <= FEW_TEXTS
        threads = query_threads(self.settings.query_threads) if few else None
        with torch.inference_mode(), _torch_threads(threads):
            features = self._encode_tokens(tokens.to(self.device))
        return features.float().cpu().numpy()

    def _warn_if_cut(self, texts: list[str], tokens: torch.Tensor) -> None:
        """Log a warning when a text of (n, context) int64 `tokens` was cut to the context.

        A row is full (no padding at its end) when the text fits exactly or was cut; only those
        rows are tokenised again one token wider to tell which."""
        context = tokens.shape[1]
        pad = int(self.tokenizer(["a"])[0, -1])  # what follows a short text: 0 for CLIP's BPE
        full = [i for i in range(len(texts)) if tokens[i, -1] != pad]
        if not full:
            return
        wider = self.tokenizer([texts[i] for i in full], context_length=context + 1)
        cut = [texts[i] for i, row in zip(full, wider, strict=True) if row[-1] != pad]
        if not cut:
            return
        example = cut[0] if len(cut[0]) <= 80 else cut[0][:77] + "..."
        if len(texts) == 1:
            log.warning(
                "the text is longer than the model's context of %d tokens and was cut to it "
                "(the end is not searched): %r", context, example,
            )
        else:
            log.warning(
                "%d of %d texts are longer than the model's context of %d tokens and were cut "
                "to it (the end is not searched), e.g. %r",
                len(cut), len(texts), context, example,
            )

    def _encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(n, context) int64 tokens -> (n, d) unit vectors, over the positions that matter
        (`text_tower.encode_text`)."""
        return encode_text(self.model, tokens)

    def encode_texts_reference(self, texts: list[str]) -> np.ndarray:
        """open_clip's own `encode_text` over the full context; the reference for the fast path."""
        import torch

        tokens = self.tokenizer(texts).to(self.device)
        with torch.inference_mode():
            features = self.model.encode_text(tokens, normalize=True)
        return features.float().cpu().numpy()


def _text_projection_width(model) -> int | None:
    """The embedding width d read from the text projection of open_clip's CLIP (a (width, d)
    matrix or a Linear layer); None for other text towers, which a probe sentence then measures
    (a forward pass a cold command would otherwise pay once more)."""
    import torch

    projection = getattr(model, "text_projection", None)
    if isinstance(projection, torch.nn.Linear):
        return int(projection.out_features)
    if isinstance(projection, torch.Tensor) and projection.ndim == 2:
        return int(projection.shape[1])
    return None


def resizes_then_centre_crops(preprocess, size: int) -> bool:
    """True when `preprocess` begins with open_clip's `resize_mode="shortest"` steps for a square
    input: a bicubic Resize of the short side to `size`, then a CenterCrop to `size` x `size`.

    Only then may decoding crop for the model (`load_image(..., crop=True)`); a squash resize,
    a longest-side resize with padding or any other pipeline must see the whole picture.
    """
    from torchvision.transforms import CenterCrop, InterpolationMode, Resize

    steps = getattr(preprocess, "transforms", None)
    if not steps or len(steps) < 2:
        return False
    resize, crop = steps[0], steps[1]
    if type(resize) is not Resize or type(crop) is not CenterCrop:
        return False
    side = resize.size if isinstance(resize.size, int) else tuple(resize.size)
    return (
        side in (size, (size,))
        and resize.max_size is None
        and resize.interpolation == InterpolationMode.BICUBIC
        and tuple(crop.size) == (size, size)
    )


def query_threads(setting: int | None) -> int | None:
    """Torch threads for a short text query under `EncoderSettings.query_threads` (None: leave
    torch's setting as it is)."""
    import torch

    if setting is not None:
        return setting or None
    return threads_now(torch.get_num_threads())


def threads_now(most: int | None = None) -> int:
    """Threads for a short query at this moment (`threads_for_load` under the present load), at
    most `most` (None: the usable cores)."""
    busy = _busy_elsewhere()
    if busy is None:  # no way to tell on this system: the safe one-thread policy
        return 1
    cpus = _usable_cpus()
    return threads_for_load(busy, cpus, most or cpus)


def threads_for_load(load: float, cpus: int, most: int) -> int:
    """Threads for a short query on `cpus` cores while `load` cores' worth of other work runs:
    one a core left idle by the others, plus this query's own; at least 1, at most `most`.

    A short query is a chain of small matrix products with a barrier after each. On an idle core
    a second thread halves it; on a busy one each barrier waits for a thread the scheduler gave
    to someone else, and the query gets several times slower than on one thread.
    """
    idle = max(0, int(cpus - load))  # whole cores nobody else is using
    return max(1, min(most, idle + 1))


def _busy_elsewhere() -> float | None:
    """Threads of other work running or waiting for a core right now: the kernel's count of
    runnable tasks (`/proc/loadavg`, 4th field) less this thread. The 1-minute load average
    where there is no /proc: it lags by a minute and counts this process's own past queries."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/loadavg") as stat:
            running = int(stat.read().split()[3].split("/")[0])
        return max(0, running - 1)
    with contextlib.suppress(OSError, AttributeError):
        return os.getloadavg()[0]
    return None


def _usable_cpus() -> int:
    with contextlib.suppress(AttributeError):  # sched_getaffinity: Linux only
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """Run torch's CPU work on `threads` intra-op threads within the block (None: unchanged).
    torch's setting is the process's: callers run one model call at a time (`serve` does, through
    its gate)."""
    import torch

    before = torch.get_num_threads()
    if threads is None or threads == before:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
