"""Data set readers of `bench recall` and `bench zero-shot`, on small files written here."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from searchengine.errors import InvalidInputError
from searchengine.eval.datasets import read_caption_dataset, read_class_folder

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "flickr8k-1k"


def write_image(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (12, 16, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture
def flickr_like(tmp_path: Path) -> Path:
    """images/a..e.png; e has no caption; d.png is named by captions but missing; a repeats one."""
    for seed, name in enumerate("abce"):
        write_image(tmp_path / "images" / f"{name}.png", seed)
    write_csv(tmp_path / "captions.csv", ["image", "caption"], [
        ["a.png", "a red square"], ["a.png", "a red square"], ["a.png", "a crimson block"],
        ["b.png", "a blue sky"], ["b.png", "a dog"],
        ["c.png", "a dog"], ["c.png", "a green field"],
        ["d.png", "a missing picture"],
    ])
    write_csv(tmp_path / "split.csv", ["image", "split"], [
        ["a.png", "test"], ["b.png", "test"], ["c.png", "train"], ["d.png", "test"],
        ["e.png", "test"],
    ])
    return tmp_path


def test_flickr_layout_counts_duplicates_missing_and_uncaptioned_images(flickr_like):
    data = read_caption_dataset(flickr_like)
    assert [p.name for p in data.images] == ["a.png", "b.png", "c.png"]
    assert data.captions == (
        "a red square", "a crimson block", "a blue sky", "a dog", "a dog", "a green field"
    )
    np.testing.assert_array_equal(data.text_to_image, [0, 0, 1, 1, 2, 2])
    assert data.text_to_image.dtype == np.int64
    assert data.duplicate_captions == 1
    assert data.skipped == {"missing image": 1}
    assert data.images_without_captions == 1  # e.png
    assert data.shared_captions == 1  # "a dog" describes b and c
    assert data.summary()["images"] == 3


def test_split_keeps_one_split_and_unknown_split_names_the_choices(flickr_like):
    data = read_caption_dataset(flickr_like, split="test")
    assert [p.name for p in data.images] == ["a.png", "b.png"]
    assert len(data.captions) == 4
    assert data.images_without_captions == 1
    assert read_caption_dataset(flickr_like, split="train").captions == ("a dog", "a green field")
    with pytest.raises(InvalidInputError, match="train"):
        read_caption_dataset(flickr_like, split="validation")


def test_captions_csv_file_with_empty_caption(tmp_path):
    write_image(tmp_path / "x.png", 1)
    write_image(tmp_path / "y.png", 2)
    table = write_csv(tmp_path / "pairs.csv", ["image", "caption"], [
        ["x.png", "one"], ["y.png", ""], ["x.png", "two"], ["y.png", "three"], ["z.png", "four"],
    ])
    data = read_caption_dataset(table)
    assert data.format == "csv"
    assert data.captions == ("one", "two", "three")
    np.testing.assert_array_equal(data.text_to_image, [0, 0, 1])
    assert data.skipped == {"empty caption": 1, "missing image": 1}
    with pytest.raises(InvalidInputError, match="split"):
        read_caption_dataset(table, split="test")


def test_parquet_with_paths_and_with_image_bytes(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    a = write_image(tmp_path / "a.png", 1)
    pq.write_table(pa.table({"image": ["a.png", "a.png", "gone.png"],
                             "caption": ["p", "q", "r"]}), tmp_path / "paths.parquet")
    data = read_caption_dataset(tmp_path / "paths.parquet")
    assert data.captions == ("p", "q") and data.skipped == {"missing image": 1}
    buffer = io.BytesIO()
    Image.open(a).save(buffer, format="PNG")
    blob = buffer.getvalue()
    pq.write_table(pa.table({"image": [blob, blob], "caption": ["s", "t"],
                             "split": ["test", "train"]}), tmp_path / "bytes.parquet")
    with pytest.raises(InvalidInputError, match="bytes"):
        read_caption_dataset(tmp_path / "bytes.parquet")
    data = read_caption_dataset(tmp_path / "bytes.parquet", split="test",
                                image_folder=tmp_path / "out")
    assert data.captions == ("s",)
    assert data.images[0].parent == tmp_path / "out" and data.images[0].suffix == ".png"
    assert data.images[0].read_bytes() == blob


def test_coco_captions_json(tmp_path):
    write_image(tmp_path / "images" / "1.png", 1)
    write_image(tmp_path / "images" / "2.png", 2)
    write_image(tmp_path / "images" / "3.png", 3)
    document = {
        "images": [{"id": 1, "file_name": "1.png"}, {"id": 2, "file_name": "2.png"},
                   {"id": 3, "file_name": "3.png"}, {"id": 4, "file_name": "4.png"}],
        "annotations": [
            {"image_id": 2, "caption": "two"}, {"image_id": 1, "caption": "one"},
            {"image_id": 2, "caption": "two"}, {"image_id": 4, "caption": "four"},
            {"image_id": 9, "caption": "nobody"},
        ],
    }
    (tmp_path / "captions_val.json").write_text(json.dumps(document))
    data = read_caption_dataset(tmp_path / "captions_val.json")
    assert data.format == "coco-json"
    assert [p.name for p in data.images] == ["2.png", "1.png"]
    assert data.captions == ("two", "one")
    assert data.duplicate_captions == 1
    assert data.skipped == {"missing image": 1, "no image in the row": 1}
    assert data.images_without_captions == 1  # 3.png
    with pytest.raises(InvalidInputError, match="one split"):
        read_caption_dataset(tmp_path / "captions_val.json", split="test")


def test_karpathy_json_with_splits(tmp_path):
    write_image(tmp_path / "val2014" / "a.jpg", 1)
    write_image(tmp_path / "val2014" / "b.jpg", 2)
    write_image(tmp_path / "val2014" / "c.jpg", 3)
    document = {"dataset": "coco", "images": [
        {"filepath": "val2014", "filename": "a.jpg", "split": "test",
         "sentences": [{"raw": "an apple"}, {"raw": "a fruit"}]},
        {"filepath": "val2014", "filename": "b.jpg", "split": "train",
         "sentences": [{"raw": "a banana"}]},
        {"filepath": "val2014", "filename": "c.jpg", "split": "test", "sentences": []},
    ]}
    (tmp_path / "dataset_coco.json").write_text(json.dumps(document))
    data = read_caption_dataset(tmp_path / "dataset_coco.json", split="test")
    assert data.format == "karpathy-json"
    assert data.captions == ("an apple", "a fruit")
    assert data.images_without_captions == 1
    assert len(read_caption_dataset(tmp_path / "dataset_coco.json").images) == 2
    with pytest.raises(InvalidInputError, match="restval|test, train"):
        read_caption_dataset(tmp_path / "dataset_coco.json", split="restval")


def test_unreadable_sources_are_clear_errors(tmp_path):
    with pytest.raises(InvalidInputError, match="does not exist"):
        read_caption_dataset(tmp_path / "nope.csv")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InvalidInputError, match="JSON"):
        read_caption_dataset(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text('{"rows": []}')
    with pytest.raises(InvalidInputError, match="images"):
        read_caption_dataset(tmp_path / "other.json")


def test_class_folder(tmp_path):
    write_image(tmp_path / "golden_retriever" / "1.png", 1)
    write_image(tmp_path / "golden_retriever" / "deep" / "2.png", 2)
    write_image(tmp_path / "cat" / "3.jpg", 3)
    (tmp_path / "empty").mkdir()
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    folder = read_class_folder(tmp_path)
    assert folder.labels == ("cat", "golden retriever")
    assert [p.name for p in folder.images] == ["3.jpg", "1.png", "2.png"]
    np.testing.assert_array_equal(folder.image_labels, [0, 1, 1])
    assert folder.empty_classes == ("empty",)
    with pytest.raises(InvalidInputError, match="two sub-folders"):
        read_class_folder(tmp_path / "cat")


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data/flickr8k-1k is absent")
def test_shared_flickr_test_split():
    data = read_caption_dataset(SHARED, split="test")
    assert (len(data.images), len(data.captions)) == (200, 1000)
    assert np.bincount(data.text_to_image).tolist() == [5] * 200
