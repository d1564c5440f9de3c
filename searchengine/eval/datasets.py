"""Datasets: image-caption collections to measure retrieval on (the DATASET of `bench recall`).

Accepted sources (`read_caption_dataset` picks by what `source` is):
- a captions CSV/TSV (`image,caption`, several rows per image) or a Parquet file with such
  columns (the image column may hold encoded bytes: they are written out to `image_folder`);
- a folder in the `flickr8k-1k` layout: `images/`, `captions.csv`, optional `split.csv`;
- a COCO captions JSON (`images` with `id`/`file_name`, `annotations` with `image_id`/`caption`)
  or a Karpathy-split JSON (`images` with `filename`, optional `filepath`, `split`, `sentences`).

Tables and folders are read by the trainer's `training.pairs.read_pairs` (one reader of PAIRS for
the whole project); this module adds the JSON formats and the benchmark's bookkeeping: a repeated
(image, caption) row is counted and dropped, and an image that the data set lists but no caption
describes (an `images/` file or `split.csv` row with no caption, a JSON image without sentences) is
counted and left out, as the standard protocol only ranks captioned images.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np

from searchengine.errors import InvalidInputError
from searchengine.paths import catalog_path
from searchengine.settings import IMAGE_EXTENSIONS
from searchengine.training.pairs import SPLIT_FILE, Pair, PairSet, read_pairs

log = logging.getLogger(__name__)

KARPATHY_TEST_SPLITS = ("test", "val", "train", "restval")


@dataclass(frozen=True)
class CaptionDataset:
    """Captioned images ready for a recall benchmark.

    `images`: (n_images,) distinct image files, in order of first appearance;
    `captions`: (n_captions,) caption strings; `text_to_image`: (n_captions,) int64 index into
    `images` of each caption's image. Every image has at least one caption.
    """

    source: Path
    format: str
    split: str | None
    images: tuple[Path, ...]
    captions: tuple[str, ...]
    text_to_image: np.ndarray = field(repr=False)
    skipped: dict[str, int] = field(default_factory=dict)
    """Caption rows left out, by reason (missing image, empty caption, ...)."""
    duplicate_captions: int = 0
    """Rows that repeat an (image, caption) pair already read; dropped."""
    images_without_captions: int = 0
    """Images the data set lists that no caption describes; left out."""
    shared_captions: int = 0
    """Caption texts that describe more than one image (kept; each is a caption of each image)."""

    def summary(self) -> dict:
        """Counts for reports: images, captions and everything that was left out."""
        return {
            "source": str(self.source),
            "format": self.format,
            "split": self.split,
            "images": len(self.images),
            "captions": len(self.captions),
            "skipped_captions": dict(self.skipped),
            "duplicate_captions": self.duplicate_captions,
            "images_without_captions": self.images_without_captions,
            "shared_captions": self.shared_captions,
        }


def read_caption_dataset(
    source: Path | str, *, split: str | None = None, image_folder: Path | None = None
) -> CaptionDataset:
    """Read a data set of captioned images (see the module doc for the formats).

    `split` keeps one split (`test`, `train`, ...) where the data set has splits, and is an error
    where it has none. `image_folder` receives images stored as bytes inside a Parquet file.
    Raises `InvalidInputError` for an unreadable source or when no captioned image is left.
    """
    source = Path(source).expanduser()
    if not source.exists():
        raise InvalidInputError(f"data set {source} does not exist")
    if source.is_file() and source.suffix.lower() == ".json":
        return _from_json(source, split)
    pairs = read_pairs(source, split=split)
    pairs = _materialise_bytes(pairs, image_folder)
    listed = _listed_images(source, split)
    fmt = "folder" if source.is_dir() else source.suffix.lower().lstrip(".")
    return _build(source, fmt, split, pairs.pairs, listed, skipped=pairs.skip_reasons())


def _build(
    source: Path,
    fmt: str,
    split: str | None,
    pairs: tuple[Pair, ...] | list[Pair],
    listed: set[Path] | None,
    *,
    skipped: dict[str, int],
) -> CaptionDataset:
    """Drop repeated (image, caption) rows, index images, count what was left out."""
    seen: set[tuple[str, str]] = set()
    images: dict[str, int] = {}
    paths: list[Path] = []
    captions: list[str] = []
    text_to_image: list[int] = []
    duplicates = 0
    for pair in pairs:
        if (pair.image_key, pair.caption) in seen:
            duplicates += 1
            continue
        seen.add((pair.image_key, pair.caption))
        if pair.image_key not in images:
            images[pair.image_key] = len(paths)
            # Images held as bytes were written to files first (`_materialise_bytes`).
            paths.append(Path(cast(Path, pair.image)))
        captions.append(pair.caption)
        text_to_image.append(images[pair.image_key])
    if not captions:
        raise InvalidInputError(f"no captioned image left in {source} (split {split!r})")
    owners: dict[str, set[int]] = {}
    for caption, image in zip(captions, text_to_image, strict=True):
        owners.setdefault(caption, set()).add(image)
    captioned = {catalog_path(path) for path in paths}
    without = len({catalog_path(path) for path in listed} - captioned) if listed is not None else 0
    if duplicates or without:
        log.info("%s: %d repeated captions dropped, %d images without captions left out",
                 source, duplicates, without)
    return CaptionDataset(
        source=source,
        format=fmt,
        split=split,
        images=tuple(paths),
        captions=tuple(captions),
        text_to_image=np.asarray(text_to_image, dtype=np.int64),
        skipped=skipped,
        duplicate_captions=duplicates,
        images_without_captions=without,
        shared_captions=sum(1 for owner in owners.values() if len(owner) > 1),
    )


def _listed_images(source: Path, split: str | None) -> set[Path] | None:
    """The images a folder data set lists (its split's rows of split.csv, else images/), or None."""
    if not source.is_dir():
        return None
    folder = source / "images" if (source / "images").is_dir() else source
    split_file = source / SPLIT_FILE
    if split_file.is_file():
        import csv

        with split_file.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
        return {
            folder / row["image"].strip()
            for row in rows
            if row.get("image") and (split is None or str(row.get("split", "")).strip() == split)
            and (folder / row["image"].strip()).is_file()
        }
    return {p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS}


def _materialise_bytes(pairs: PairSet, image_folder: Path | None) -> PairSet:
    """Write images stored as bytes to `image_folder` so the engine can index them as files."""
    if not any(isinstance(pair.image, bytes) for pair in pairs.pairs):
        return pairs
    if image_folder is None:
        raise InvalidInputError(
            f"{pairs.source} holds images as bytes; give a folder to write them to"
        )
    image_folder.mkdir(parents=True, exist_ok=True)
    written: list[Pair] = []
    for pair in pairs.pairs:
        if isinstance(pair.image, bytes):
            name = pair.image_key.rsplit("sha1:", 1)[-1] + _suffix_of(pair.image)
            path = image_folder / name
            if not path.exists():
                path.write_bytes(pair.image)
            pair = Pair(image=path, caption=pair.caption, image_key=str(path))
        written.append(pair)
    return PairSet(source=pairs.source, pairs=tuple(written), skipped=pairs.skipped)


def _suffix_of(data: bytes) -> str:
    """File name ending for encoded image bytes, from their magic number (JPEG when unknown)."""
    if data.startswith(b"\x89PNG"):
        return ".png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    if data[:3] == b"GIF":
        return ".gif"
    if data[:2] == b"BM":
        return ".bmp"
    return ".jpg"


def _from_json(path: Path, split: str | None) -> CaptionDataset:
    """A COCO captions JSON or a Karpathy-split JSON."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidInputError(f"cannot read JSON data set {path}: {error}") from error
    images = document.get("images") if isinstance(document, dict) else None
    if not isinstance(images, list):
        raise InvalidInputError(
            f"{path} is not a COCO or Karpathy captions JSON: it has no `images` list"
        )
    if "annotations" in document:
        return _from_coco(path, document, split)
    return _from_karpathy(path, images, split)


def _resolve(base: Path, *parts: str) -> Path:
    """`base/parts`, else `base/images/parts` when only that exists."""
    direct = base.joinpath(*parts)
    fallback = base.joinpath("images", *parts)
    return fallback if not direct.exists() and fallback.exists() else direct


def _from_coco(path: Path, document: dict, split: str | None) -> CaptionDataset:
    if split is not None:
        raise InvalidInputError(
            f"{path} is a COCO captions file, which holds one split; drop --split {split}"
        )
    files = {entry["id"]: entry["file_name"] for entry in document["images"]}
    rows: list[tuple[str | None, object]] = []
    for annotation in document["annotations"]:
        name = files.get(annotation.get("image_id"))
        rows.append((name, annotation.get("caption")))
    listed = {_resolve(path.parent, name) for name in files.values()}
    return _from_rows(path, "coco-json", None, rows, listed)


def _from_karpathy(path: Path, images: list, split: str | None) -> CaptionDataset:
    splits = sorted({str(entry.get("split")) for entry in images if "split" in entry})
    if split is not None and split not in splits:
        choices = ", ".join(splits) if splits else "none"
        raise InvalidInputError(f"unknown split {split!r} in {path}; its splits: {choices}")
    rows: list[tuple[str | None, object]] = []
    listed: set[Path] = set()
    for entry in images:
        if split is not None and entry.get("split") != split:
            continue
        name = str(Path(entry.get("filepath") or "") / entry.get("filename", ""))
        listed.add(_resolve(path.parent, name))
        for sentence in entry.get("sentences") or []:
            text = sentence.get("raw") if isinstance(sentence, dict) else sentence
            rows.append((name, text))
    return _from_rows(path, "karpathy-json", split, rows, listed)


def _from_rows(
    path: Path, fmt: str, split: str | None, rows: list[tuple[str | None, object]],
    listed: set[Path],
) -> CaptionDataset:
    """(image name, caption) rows -> dataset; rows with no caption or no image file are skipped."""
    skipped: Counter[str] = Counter()
    pairs: list[Pair] = []
    for name, caption in rows:
        caption = caption.strip() if isinstance(caption, str) else ""
        if not name:
            skipped["no image in the row"] += 1
            continue
        if not caption:
            skipped["empty caption"] += 1
            continue
        image = _resolve(path.parent, name)
        if not image.is_file():
            skipped["missing image"] += 1
            continue
        pairs.append(Pair(image=image, caption=caption, image_key=str(image)))
    listed = {image for image in listed if image.is_file()}
    return _build(path, fmt, split, pairs, listed, skipped=dict(skipped.most_common()))


@dataclass(frozen=True)
class ClassFolder:
    """A zero-shot data set: one sub-folder per class, its images (recursively) in it.

    `labels`: (n_classes,) class names from the folder names (`_` and `-` become spaces);
    `images`: (n_images,) files; `image_labels`: (n_images,) int64 index into `labels`.
    """

    source: Path
    labels: tuple[str, ...]
    images: tuple[Path, ...]
    image_labels: np.ndarray = field(repr=False)
    empty_classes: tuple[str, ...] = ()
    """Sub-folders with no image file; left out of `labels`."""


def read_class_folder(folder: Path | str) -> ClassFolder:
    """Read a folder with one sub-folder of images per class (hidden folders are ignored).

    Raises `InvalidInputError` when the folder is missing or has fewer than two non-empty classes.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise InvalidInputError(f"{folder} is not a folder of class sub-folders")
    labels: list[str] = []
    images: list[Path] = []
    image_labels: list[int] = []
    empty: list[str] = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        label = " ".join(sub.name.replace("_", " ").replace("-", " ").split())
        files = sorted(
            p for p in sub.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not files:
            empty.append(label)
            continue
        images.extend(files)
        image_labels.extend([len(labels)] * len(files))
        labels.append(label)
    if len(labels) < 2:
        raise InvalidInputError(
            f"{folder} needs at least two sub-folders of images, one per class (found "
            f"{len(labels)} with images); e.g. {folder}/dog/1.jpg, {folder}/cat/2.jpg"
        )
    return ClassFolder(
        source=folder,
        labels=tuple(labels),
        images=tuple(images),
        image_labels=np.asarray(image_labels, dtype=np.int64),
        empty_classes=tuple(empty),
    )
