"""Pairs: read image-caption pairs (PAIRS) from a table or a folder, skipping bad rows with reasons.

Accepted sources (`read_pairs` picks by what `source` is):
- a CSV (`.csv`) or TSV (`.tsv`, `.tab`) file with an image column and a caption column; several
  rows may name one image; relative paths are relative to the file's folder (or its `images/`);
- a Parquet file (`.parquet`, `.pq`) whose image column holds a path, the encoded image bytes, or a
  `{bytes, path}` struct (the Hugging Face `Image` feature), read with pyarrow;
- a folder holding a captions table (`captions.csv`, `.tsv` or `.parquet`) and usually `images/`
  (the layout of `flickr8k-1k`), with an optional `split.csv` (`image,split`);
- any other folder: every image file with a same-named `.txt` beside it, one caption per non-blank
  line.

A `split` (e.g. `train`, `test`) keeps only the rows of that split, from a `split` column of the
table or from `split.csv` beside it.
"""

from __future__ import annotations

import csv
import hashlib
import random
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from searchengine.errors import InvalidInputError
from searchengine.settings import IMAGE_EXTENSIONS

IMAGE_COLUMN_CANDIDATES = ("image", "filepath", "file", "path", "image_path", "img", "filename")
CAPTION_COLUMN_CANDIDATES = ("caption", "text", "title", "sentence", "raw")
TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t", ".tab": "\t"}
PARQUET_SUFFIXES = (".parquet", ".pq")
DATASET_TABLES = ("captions.csv", "captions.tsv", "captions.parquet")
SPLIT_FILE = "split.csv"


@dataclass(frozen=True)
class Pair:
    """One image-caption pair.

    `image` is a file path or the encoded image bytes; `image_key` names the image, so several
    captions of one image share it (the trainer never treats them as negatives of each other).
    """

    image: Path | bytes = field(repr=False)
    caption: str
    image_key: str


@dataclass(frozen=True)
class SkippedRow:
    """A row that was not used: `location` is `file:line` or a file name, `reason` says why."""

    location: str
    reason: str


@dataclass(frozen=True)
class PairSet:
    """The usable pairs of a source and the rows skipped on the way, in source order."""

    source: Path
    pairs: tuple[Pair, ...]
    skipped: tuple[SkippedRow, ...] = ()

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def image_keys(self) -> tuple[str, ...]:
        """Distinct image keys in order of first appearance."""
        return tuple(dict.fromkeys(pair.image_key for pair in self.pairs))

    def images(self) -> list[Pair]:
        """The first pair of every distinct image, in order: one entry per image to embed."""
        first: dict[str, Pair] = {}
        for pair in self.pairs:
            first.setdefault(pair.image_key, pair)
        return list(first.values())

    def text_to_image(self) -> np.ndarray:
        """(n_pairs,) int64: index into `images()` of each pair's image (for retrieval metrics)."""
        index = {key: i for i, key in enumerate(self.image_keys)}
        return np.array([index[pair.image_key] for pair in self.pairs], dtype=np.int64)

    def skip_reasons(self) -> dict[str, int]:
        """How many rows were skipped for each reason, most common first."""
        return dict(Counter(row.reason for row in self.skipped).most_common())

    def select_images(self, keys: Iterable[str]) -> PairSet:
        """The pairs whose image key is in `keys` (skipped rows are kept for reporting)."""
        wanted = set(keys)
        kept = tuple(pair for pair in self.pairs if pair.image_key in wanted)
        return PairSet(source=self.source, pairs=kept, skipped=self.skipped)

    def split_by_image(self, fraction: float, *, seed: int = 0) -> tuple[PairSet, PairSet]:
        """Hold out about `fraction` of the images (with all their captions) as a validation set.

        Splitting by image, not by row, keeps one image's captions from landing on both sides.
        Returns `(train, validation)`; raises `InvalidInputError` when either side would be empty.
        """
        if not 0.0 < fraction < 1.0:
            raise InvalidInputError(f"validation fraction must be in (0, 1), got {fraction}")
        keys = list(self.image_keys)
        random.Random(seed).shuffle(keys)
        n_val = round(len(keys) * fraction)
        if n_val < 1 or n_val >= len(keys):
            raise InvalidInputError(
                f"cannot hold out {fraction:.0%} of {len(keys)} images for validation; give more "
                "images, a different --val-fraction, or a separate --val file"
            )
        val_keys = set(keys[:n_val])
        train = tuple(pair for pair in self.pairs if pair.image_key not in val_keys)
        val = tuple(pair for pair in self.pairs if pair.image_key in val_keys)
        return (
            PairSet(source=self.source, pairs=train, skipped=self.skipped),
            PairSet(source=self.source, pairs=val, skipped=()),
        )


def read_pairs(
    source: Path | str,
    *,
    image_column: str | None = None,
    caption_column: str | None = None,
    split: str | None = None,
    check_images: bool = True,
) -> PairSet:
    """Read the image-caption pairs of `source`: a CSV/TSV/Parquet file or a folder (module doc).

    `image_column` / `caption_column` default to the first present of `IMAGE_COLUMN_CANDIDATES` /
    `CAPTION_COLUMN_CANDIDATES`. With `check_images`, each image file's header is read once, so a
    missing or non-image file is skipped here rather than during training (a file that is corrupt
    beyond its header is skipped by the trainer when it fails to decode).

    Raises `InvalidInputError` when the source cannot be read, a column is missing, or no pair is
    left; otherwise bad rows are listed in `PairSet.skipped` with their reason.
    """
    source = Path(source).expanduser()
    if not source.exists():
        raise InvalidInputError(f"pairs source {source} does not exist")
    if source.is_dir():
        table = next((source / name for name in DATASET_TABLES if (source / name).is_file()), None)
        if table is not None:
            rows = _read_table(table, image_column, caption_column, split)
        else:
            if split is not None:
                raise InvalidInputError(
                    f"--split needs a captions table with a split; {source} is a folder of images "
                    "with .txt captions"
                )
            rows = _read_caption_folder(source)
    else:
        rows = _read_table(source, image_column, caption_column, split)
    pairs: list[Pair] = []
    skipped: list[SkippedRow] = []
    checked: dict[str, str | None] = {}
    for item in rows:
        if isinstance(item, SkippedRow):
            skipped.append(item)
            continue
        location, pair = item
        if check_images and isinstance(pair.image, Path):
            if pair.image_key not in checked:
                checked[pair.image_key] = _image_problem(pair.image)
            problem = checked[pair.image_key]
            if problem:
                skipped.append(SkippedRow(location, problem))
                continue
        pairs.append(pair)
    if not pairs:
        reasons = Counter(row.reason for row in skipped).most_common(3)
        detail = "; ".join(f"{count} x {reason}" for reason, count in reasons) or "it is empty"
        raise InvalidInputError(f"no usable image-caption pairs in {source}: {detail}")
    return PairSet(source=source, pairs=tuple(pairs), skipped=tuple(skipped))


_Row = tuple[str, Pair] | SkippedRow


def _read_table(
    path: Path, image_column: str | None, caption_column: str | None, split: str | None
) -> list[_Row]:
    """Rows of a CSV/TSV/Parquet table as (location, pair) or a SkippedRow."""
    suffix = path.suffix.lower()
    if suffix in TABLE_SUFFIXES:
        header, records = _csv_records(path, TABLE_SUFFIXES[suffix])
    elif suffix in PARQUET_SUFFIXES:
        header, records = _parquet_records(path)
    else:
        raise InvalidInputError(
            f"cannot read pairs from {path}: expected a .csv, .tsv, .parquet file or a folder "
            "(images with same-named .txt captions, or captions.csv with images/)"
        )
    image_col = _pick_column(path, header, image_column, IMAGE_COLUMN_CANDIDATES, "image")
    caption_col = _pick_column(path, header, caption_column, CAPTION_COLUMN_CANDIDATES, "caption")
    splits = _split_lookup(path, header, split)
    base = path.parent
    rows: list[_Row] = []
    for line, record in records:
        location = f"{path.name}:{line}"
        image_value = record.get(image_col)
        if split is not None and not _in_split(record, image_value, splits, split):
            continue
        caption = record.get(caption_col)
        caption = caption.strip() if isinstance(caption, str) else ""
        if not caption:
            rows.append(SkippedRow(location, "empty caption"))
            continue
        image, key = _image_reference(image_value, base)
        if image is None:
            rows.append(SkippedRow(location, "no image in the row"))
            continue
        rows.append((location, Pair(image=image, caption=caption, image_key=key)))
    return rows


def _csv_records(path: Path, delimiter: str) -> tuple[list[str], Iterator[tuple[int, dict]]]:
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
        reader = csv.DictReader(handle, delimiter=delimiter)
        header = list(reader.fieldnames or [])
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise InvalidInputError(f"cannot read {path}: {error}") from error

    def records() -> Iterator[tuple[int, dict]]:
        with handle:
            try:
                for record in reader:
                    yield reader.line_num, record
            except (UnicodeDecodeError, csv.Error) as error:
                message = f"cannot read {path} near line {reader.line_num}: {error}"
                raise InvalidInputError(message) from error

    return header, records()


def _parquet_records(path: Path) -> tuple[list[str], Iterator[tuple[int, dict]]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as error:
        raise InvalidInputError(f"cannot read Parquet file {path}: {error}") from error

    def records() -> Iterator[tuple[int, dict]]:
        for offset, record in enumerate(table.to_pylist()):
            yield offset + 1, record  # row number (1-based) stands in for the line

    return list(table.column_names), records()


def _pick_column(
    path: Path, header: list[str], wanted: str | None, candidates: tuple[str, ...], what: str
) -> str:
    if wanted is not None:
        if wanted not in header:
            raise InvalidInputError(
                f"{path} has no column {wanted!r} for the {what}; its columns: {', '.join(header)}"
            )
        return wanted
    lowered = {name.lower(): name for name in header}
    for candidate in candidates:
        if candidate in lowered:
            return lowered[candidate]
    raise InvalidInputError(
        f"{path} has no {what} column (looked for {', '.join(candidates)}); its columns: "
        f"{', '.join(header)}. Name it with --{what}-column"
    )


def _split_lookup(path: Path, header: list[str], split: str | None) -> dict[str, str] | None:
    """None when no split is asked or the table has a `split` column; else image -> split."""
    if split is None or "split" in header:
        return None
    split_file = path.parent / SPLIT_FILE
    if not split_file.is_file():
        raise InvalidInputError(
            f"split {split!r} asked for, but {path} has no `split` column and there is no "
            f"{split_file}"
        )
    header_, records = _csv_records(split_file, ",")
    image_col = _pick_column(split_file, header_, None, IMAGE_COLUMN_CANDIDATES, "image")
    if "split" not in header_:
        raise InvalidInputError(f"{split_file} has no `split` column; its columns: {header_}")
    lookup = {str(record[image_col]).strip(): str(record["split"]).strip() for _, record in records}
    if split not in set(lookup.values()):
        choices = ", ".join(sorted(set(lookup.values())))
        raise InvalidInputError(f"unknown split {split!r} in {split_file}; its splits: {choices}")
    return lookup


def _in_split(record: dict, image_value: object, splits: dict[str, str] | None, split: str) -> bool:
    """Whether a row belongs to `split`: by its own `split` cell, else by `split.csv`."""
    if splits is None:
        return str(record.get("split", "")).strip() == split
    return isinstance(image_value, str) and splits.get(image_value.strip()) == split


def _image_reference(value: object, base: Path) -> tuple[Path | bytes | None, str]:
    """(path or bytes, key) of an image cell: a path string, raw bytes or a {bytes, path} struct."""
    if isinstance(value, dict):  # Hugging Face `Image` feature
        data, name = value.get("bytes"), value.get("path")
        if data:
            return bytes(data), f"{name}#{_digest(data)}" if name else _digest(data)
        value = name
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        return (data, _digest(data)) if data else (None, "")
    if not isinstance(value, str) or not value.strip():
        return None, ""
    relative = Path(value.strip()).expanduser()
    path = relative if relative.is_absolute() else base / relative
    if not path.exists() and not relative.is_absolute() and (base / "images" / relative).exists():
        path = base / "images" / relative
    return path, str(path)


def _digest(data: bytes) -> str:
    return "sha1:" + hashlib.sha1(data).hexdigest()


def _read_caption_folder(folder: Path) -> list[_Row]:
    """Every image in `folder` (recursively) with a same-named .txt: one pair per non-blank line."""
    rows: list[_Row] = []
    images = sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    for image in images:
        location = str(image.relative_to(folder))
        text_file = image.with_suffix(".txt")
        if not text_file.is_file():
            rows.append(SkippedRow(location, "no caption file (.txt) beside the image"))
            continue
        try:
            lines = text_file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            rows.append(SkippedRow(location, f"unreadable caption file: {error}"))
            continue
        captions = [line.strip() for line in lines if line.strip()]
        if not captions:
            rows.append(SkippedRow(location, "empty caption"))
        for caption in captions:
            rows.append((location, Pair(image=image, caption=caption, image_key=str(image))))
    return rows


def _image_problem(path: Path) -> str | None:
    """None when `path` opens as an image (header only), else the reason it is unusable."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        return "missing image"
    try:
        with Image.open(path) as image:
            image.size  # noqa: B018 - the header is parsed on open; touching size proves it
    except UnidentifiedImageError:
        return "not an image (content not recognised)"
    except (OSError, SyntaxError, ValueError) as error:
        return f"unreadable image: {error}"
    return None
