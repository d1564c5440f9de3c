"""Benchmark: recall@k over a captioned data set and zero-shot accuracy over a class folder.

Recall follows the standard protocol (as LAION's clip_benchmark): a caption hits at k when its
image is among its top k images; an image hits at k when any of its captions is among its top k
captions. It is measured twice on the same stored vectors:
- exactly, by brute force over the durable vectors of the catalog (`metrics`), and
- through the engine's own FAISS index (`Engine.search_vectors`), so the loss of an approximate
  index kind shows beside the exact figure. An exact (`flat`) index gives the same numbers.

The images and captions go through the engine (`index`, `add_texts`) into a scratch home, or a
home the caller keeps so that a second run reuses the embeddings.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import tempfile
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from searchengine.errors import InvalidInputError
from searchengine.eval.datasets import CaptionDataset, ClassFolder
from searchengine.eval.metrics import (
    RetrievalMetrics,
    caption_ranks,
    image_ranks,
    metrics_from_ranks,
)
from searchengine.eval.prompts import label_embeddings, templates_named
from searchengine.paths import catalog_path
from searchengine.settings import BENCH_TEXT_SET_PREFIX, IngestSettings

log = logging.getLogger(__name__)

CURVE_MAX_K = 50
_BLOCK = 1024  # query rows per exact-similarity block: bounds memory to block x n floats


@dataclass(frozen=True)
class RecallSettings:
    """What `bench recall` measures."""

    ks: tuple[int, ...] = (1, 5, 10)
    """Cut-offs of the reported recall@k."""
    curve_max_k: int = CURVE_MAX_K
    """The recall curves (and the index search depth) go from k = 1 to this."""
    index_kind: str | None = None
    """Vector index kind to measure (`flat`, `hnsw`, `ivf`); None keeps the home's kind."""
    ingest: IngestSettings = IngestSettings()
    """How the engine indexes the data set's images (batch size, decode workers)."""


@dataclass(frozen=True)
class RecallCurve:
    """Recall@k for k = 1..len(text_to_image), both directions (fractions in [0, 1])."""

    text_to_image: tuple[float, ...]
    image_to_text: tuple[float, ...]


@dataclass(frozen=True)
class RecallReport:
    """Exact and index recall of one model over one data set."""

    model: str
    index_kind: str
    dataset: dict
    """`CaptionDataset.summary()` plus `unindexed_images` (images the engine could not read)."""
    exact: RetrievalMetrics
    index_text_to_image: dict[int, float]
    index_image_to_text: dict[int, float]
    exact_curve: RecallCurve
    index_curve: RecallCurve

    def as_dict(self) -> dict:
        """JSON-ready: `{"model", "index_kind", "dataset", "exact", "index", "curves"}`."""
        return {
            "model": self.model,
            "index_kind": self.index_kind,
            "dataset": self.dataset,
            "exact": self.exact.as_dict(),
            "index": {
                "text_to_image": {f"R@{k}": v for k, v in self.index_text_to_image.items()},
                "image_to_text": {f"R@{k}": v for k, v in self.index_image_to_text.items()},
            },
            "curves": {
                "k": list(range(1, len(self.exact_curve.text_to_image) + 1)),
                "exact": _curve_dict(self.exact_curve),
                "index": _curve_dict(self.index_curve),
            },
        }

    def table(self) -> tuple[list[str], list[list[object]]]:
        """(headers, rows) for a readable table: one row per direction and k."""
        headers = ["direction", "k", "exact", f"index ({self.index_kind})", "loss"]
        rows: list[list[object]] = []
        for name, exact, index in (
            ("text->image", self.exact.text_to_image, self.index_text_to_image),
            ("image->text", self.exact.image_to_text, self.index_image_to_text),
        ):
            for k, value in exact.items():
                rows.append([name, k, value, index[k], value - index[k]])
        return headers, rows


def _curve_dict(curve: RecallCurve) -> dict:
    return {"text_to_image": list(curve.text_to_image), "image_to_text": list(curve.image_to_text)}


def recall_at(ranks: np.ndarray, ks: Sequence[int]) -> dict[int, float]:
    """Fraction of queries whose first hit ranks at or above each k. ranks: (m,) int, 1-based."""
    return {int(k): float((ranks <= k).mean()) for k in ks}


def exact_ranks(
    image_vectors: np.ndarray, text_vectors: np.ndarray, text_to_image: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """First-hit ranks by brute force, in blocks so memory stays bounded on large data sets.

    image_vectors: (n_images, d) float32; text_vectors: (n_texts, d) float32 (one per caption);
    text_to_image: (n_texts,) int64. Returns (text_ranks (n_texts,), image_ranks (n_images,)),
    int64, 1-based, exactly as `metrics.caption_ranks` / `metrics.image_ranks` on the whole matrix.
    """
    text_to_image = np.asarray(text_to_image, dtype=np.int64)
    text_ranks = np.concatenate([
        caption_ranks(text_vectors[i : i + _BLOCK] @ image_vectors.T, text_to_image[i : i + _BLOCK])
        for i in range(0, len(text_vectors), _BLOCK)
    ])
    # image_ranks numbers the rows of its matrix 0..b-1; shifting the caption owners by the
    # block's offset makes row r stand for image i + r (negative owners never match).
    image_ranks_ = np.concatenate([
        image_ranks(image_vectors[i : i + _BLOCK] @ text_vectors.T, text_to_image - i)
        for i in range(0, len(image_vectors), _BLOCK)
    ])
    return text_ranks, image_ranks_


def first_hit_ranks(
    hits: np.ndarray, positives: np.ndarray, *, miss_rank: int | None = None
) -> np.ndarray:
    """Rank of the first relevant hit of each query in a top-K list.

    hits: (m, K) int64 hit columns per query, -1 for padding; positives: (p, 2) int64 pairs
    (query row, relevant column). Returns (m,) int64, 1-based; `miss_rank` (default K + 1) where
    no hit is relevant.
    """
    m, depth = hits.shape
    width = int(max(hits.max(initial=0), positives[:, 1].max(initial=0))) + 2
    codes = np.arange(m, dtype=np.int64)[:, None] * width + (hits + 1)  # (m, K); pad -> col 0
    wanted = positives[:, 0].astype(np.int64) * width + positives[:, 1].astype(np.int64) + 1
    relevant = np.isin(codes, wanted) & (hits >= 0)  # (m, K) bool
    miss = depth + 1 if miss_rank is None else miss_rank
    return np.where(relevant.any(axis=1), relevant.argmax(axis=1) + 1, miss).astype(np.int64)


def curve(text_ranks: np.ndarray, image_ranks_: np.ndarray, max_k: int) -> RecallCurve:
    """Recall@k for k = 1..max_k from first-hit ranks, both directions."""
    ks = range(1, max_k + 1)
    return RecallCurve(
        text_to_image=tuple(recall_at(text_ranks, ks).values()),
        image_to_text=tuple(recall_at(image_ranks_, ks).values()),
    )


def measure_recall(
    engine,
    dataset: CaptionDataset,
    *,
    model: str | None = None,
    settings: RecallSettings,
    progress: bool = False,
) -> RecallReport:
    """Index `dataset` with `engine` (incrementally), then measure exact and index recall.
    With `progress`, indexing and caption embedding draw bars on stderr.

    Images the engine cannot read are left out with their captions (counted in the report). The
    engine's home must hold no other images for this model: they would compete in the search.
    """
    if not settings.ks or min(settings.ks) < 1:
        raise InvalidInputError(f"k values must be positive integers, got {settings.ks}")
    images, text_to_image, rows = _index_images(engine, dataset, model, settings, progress)
    captions = [dataset.captions[i] for i in rows]
    # Open the text space (with the asked kind) before adding texts: the index is then loaded
    # before the first vectors reach the catalog, so none is added to it twice.
    engine.space(model, "text", create=True, kind=settings.index_kind).index  # noqa: B018
    text_set, text_ids = _add_captions(engine, captions, model, progress)  # (n_texts,) text ids
    unique_text_ids, text_column = np.unique(text_ids, return_inverse=True)
    image_vectors = _vectors_for(engine, "image", images, model)
    unique_text_vectors = _vectors_for(engine, "text", unique_text_ids, model)
    text_vectors = unique_text_vectors[text_column]  # (n_texts, d): one per caption row
    exact_text, exact_image = exact_ranks(image_vectors, text_vectors, text_to_image)
    depth = max(settings.curve_max_k, *settings.ks)
    _, hits = engine.search_vectors("image", unique_text_vectors, k=min(depth, len(images)),
                                    model=model)
    index_text = first_hit_ranks(  # one query per distinct caption, expanded to caption rows
        _to_columns(hits, images)[text_column],
        np.stack([np.arange(len(rows)), text_to_image], 1), miss_rank=depth + 1,
    )
    _, hits = engine.search_vectors("text", image_vectors, k=min(depth, len(unique_text_ids)),
                                    model=model, text_set=text_set)
    # an image hits at a distinct caption that any of its caption rows carries
    positives = np.unique(np.stack([text_to_image, text_column], 1), axis=0)
    index_image = first_hit_ranks(_to_columns(hits, unique_text_ids), positives,
                                  miss_rank=depth + 1)
    summary = dataset.summary() | {"images": len(images), "captions": len(rows),
                                   "unindexed_images": len(dataset.images) - len(images)}
    return RecallReport(
        model=engine.model_id_of(model),
        index_kind=engine.space(model, "image").index.kind,  # the kind built (auto resolves)
        dataset=summary,
        exact=metrics_from_ranks(exact_text, exact_image, tuple(settings.ks)),
        index_text_to_image=recall_at(index_text, settings.ks),
        index_image_to_text=recall_at(index_image, settings.ks),
        exact_curve=curve(exact_text, exact_image, settings.curve_max_k),
        index_curve=curve(index_text, index_image, settings.curve_max_k),
    )


def _index_images(
    engine, dataset: CaptionDataset, model: str | None, settings: RecallSettings,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index the images; (image ids (n,), caption owners (t,) into them, caption rows (t,)).

    Captions of images the engine could not read are dropped (`rows` are the kept caption rows).
    """
    image_ids, kept = _indexed_ids(engine, dataset.images, model, settings.ingest,
                                   index_kind=settings.index_kind, progress=progress)
    space = engine.space(model, "image")
    stored = engine.catalog.vector_ids("image", space.model.id)  # (n,) int64, no vectors
    if len(np.setdiff1d(stored, image_ids)):
        raise InvalidInputError(
            f"the benchmark home holds {len(np.setdiff1d(stored, image_ids))} images that are not "
            f"in {dataset.source}; they would compete in the search. Use an empty --home"
        )
    position = np.full(len(dataset.images), -1, dtype=np.int64)
    position[kept] = np.arange(len(kept))
    rows = np.flatnonzero(position[dataset.text_to_image] >= 0)
    return image_ids, position[dataset.text_to_image[rows]], rows


def _indexed_ids(
    engine,
    images: Sequence[Path],
    model: str | None,
    ingest: IngestSettings,
    *,
    index_kind: str | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, list[int]]:
    """Index `images` (files); (catalog ids (n,) int64, positions in `images` they belong to).

    Files the engine skips (unreadable, not images) are left out; none readable is an error.
    """
    engine.index(
        list(images), model=model, settings=ingest, index_kind=index_kind, progress=progress
    )
    media = engine.media_ids_by_path(list(images))
    keys = [catalog_path(path) for path in images]  # the names media_ids_by_path answers with
    kept = [i for i, key in enumerate(keys) if key in media]
    if not kept:
        raise InvalidInputError("the engine could read none of the images; see the skipped files")
    return np.array([media[keys[i]] for i in kept], dtype=np.int64), kept


def _vectors_for(engine, modality: str, ids: np.ndarray, model: str | None) -> np.ndarray:
    """(n, d) float32 stored vectors in the order of `ids` (n,) int64, streamed from the
    catalog's `VectorStore` in batches: only the wanted rows are kept."""
    ids = np.asarray(ids, dtype=np.int64)
    space = engine.space(model, modality)
    out = np.zeros((len(ids), space.model.dim), dtype=np.float32)
    found = np.zeros(len(ids), dtype=bool)
    for batch_ids, vectors in engine.catalog.vector_store.iter_batches(modality, space.model.id):
        rows = _to_columns(ids[None, :], batch_ids)[0]  # (n,) row in this batch or -1
        hit = rows >= 0
        out[hit] = vectors[rows[hit]]
        found |= hit
    if not found.all():
        raise InvalidInputError(f"{int((~found).sum())} {modality} vectors are not stored")
    return out


def _to_columns(hit_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Positions in `ids` (n,) of the catalog ids `hit_ids` (m, K); unknown ids and -1 -> -1."""
    order = np.argsort(ids)
    sorted_ids = ids[order]
    where = np.clip(np.searchsorted(sorted_ids, hit_ids), 0, len(ids) - 1)
    found = (sorted_ids[where] == hit_ids) & (hit_ids >= 0)
    return np.where(found, order[where], -1).astype(np.int64)


def _add_captions(
    engine, captions: list[str], model: str | None, progress: bool = False
) -> tuple[str, np.ndarray]:
    """Store the distinct captions as a text set named by their content (so a reused home holds
    exactly these in it); returns (set name, (n,) int64 text id per caption)."""
    distinct = list(dict.fromkeys(captions))
    digest = hashlib.sha1("\n".join(distinct).encode("utf-8")).hexdigest()[:12]
    text_set = f"{BENCH_TEXT_SET_PREFIX}{digest}"
    with tempfile.TemporaryDirectory(prefix="searchengine-bench-") as scratch:
        table = Path(scratch) / "captions.csv"
        with table.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["caption"])
            writer.writerows([caption] for caption in distinct)
        engine.add_texts(
            table, column="caption", text_set=text_set, model=model, progress=progress
        )
    ids = engine.text_ids(text_set)
    missing = [caption for caption in distinct if caption not in ids]
    if missing:
        raise InvalidInputError(f"{len(missing)} captions were not stored, e.g. {missing[0]!r}")
    return text_set, np.array([ids[caption] for caption in captions], dtype=np.int64)


def plot_recall(report: RecallReport, path: Path) -> Path:
    """Write a PNG of recall@k against k (1..curve_max_k), both directions, exact and index."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = np.arange(1, len(report.exact_curve.text_to_image) + 1)
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for direction, color in (("text_to_image", "tab:blue"), ("image_to_text", "tab:orange")):
        label = direction.replace("_to_", "→")
        axis.plot(ks, getattr(report.exact_curve, direction), color=color, label=f"{label} exact")
        axis.plot(ks, getattr(report.index_curve, direction), color=color, linestyle="--",
                  label=f"{label} index ({report.index_kind})")
    axis.set(xlabel="k", ylabel="recall@k", ylim=(0, 1.02), xlim=(1, ks[-1]),
             title=f"{report.model} on {Path(report.dataset['source']).name}"
             + (f" ({report.dataset['split']})" if report.dataset.get("split") else ""))
    axis.grid(alpha=0.3)
    axis.legend(loc="upper left", fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)
    return path


# --- zero-shot -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ZeroShotReport:
    """Top-1/top-5 accuracy per template set over a class folder."""

    model: str
    source: str
    n_images: int
    labels: tuple[str, ...]
    accuracy: dict[str, dict[int, float]]
    """template set name -> {k: top-k accuracy}."""
    unindexed_images: int = 0
    empty_classes: tuple[str, ...] = field(default=())

    def as_dict(self) -> dict:
        return {
            "model": self.model,
            "source": self.source,
            "images": self.n_images,
            "classes": len(self.labels),
            "unindexed_images": self.unindexed_images,
            "empty_classes": list(self.empty_classes),
            "accuracy": {
                name: {f"top{k}": value for k, value in accuracy.items()}
                for name, accuracy in self.accuracy.items()
            },
        }

    def table(self) -> tuple[list[str], list[list[object]]]:
        """(headers, rows): one row per template set."""
        ks = sorted({k for accuracy in self.accuracy.values() for k in accuracy})
        headers = ["templates", *[f"top-{k}" for k in ks]]
        return headers, [[name, *[acc[k] for k in ks]] for name, acc in self.accuracy.items()]


def top_k_accuracy(
    image_vectors: np.ndarray, label_vectors: np.ndarray, targets: np.ndarray, ks: Sequence[int]
) -> dict[int, float]:
    """Fraction of images whose true label is among their k closest labels.

    image_vectors: (n, d) float32 unit; label_vectors: (c, d) float32 unit; targets: (n,) int.
    Ties count against the image (the true label ranks after equals). k above c counts as c.
    """
    scores = image_vectors @ label_vectors.T  # (n, c)
    own = scores[np.arange(len(targets)), targets]
    ranks = (scores >= own[:, None]).sum(axis=1)  # (n,) 1-based rank of the true label
    return {int(k): float((ranks <= k).mean()) for k in ks}


def measure_zero_shot(
    engine,
    folder: ClassFolder,
    *,
    model: str | None = None,
    template_sets: Sequence[str] = ("single", "ensemble"),
    ks: Sequence[int] = (1, 5),
    ingest: IngestSettings | None = None,
    progress: bool = False,
) -> ZeroShotReport:
    """Index the folder's images with `engine`, classify each by its labels, per template set
    (with `progress`, indexing draws a bar on stderr)."""
    ids, kept = _indexed_ids(engine, folder.images, model, ingest or IngestSettings(),
                             progress=progress)
    image_vectors = _vectors_for(engine, "image", ids, model)
    targets = folder.image_labels[kept]
    encoder = engine.encoder(model=model)
    accuracy = {
        name: top_k_accuracy(
            image_vectors, label_embeddings(encoder, folder.labels, templates_named(name)),
            targets, ks,
        )
        for name in template_sets
    }
    return ZeroShotReport(
        model=engine.model_id_of(model),
        source=str(folder.source),
        n_images=len(kept),
        labels=folder.labels,
        accuracy=accuracy,
        unindexed_images=len(folder.images) - len(kept),
        empty_classes=folder.empty_classes,
    )


def open_bench_engine(stack: ExitStack, home: Path | None):
    """The engine to benchmark with: on `home`, or on a scratch home removed when `stack` closes."""
    from searchengine.engine import Engine

    if home is None:
        home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="searchengine-bench-")))
    return stack.enter_context(Engine.open(Path(home)))
