"""PAIRS readers: CSV/TSV, Parquet (paths and bytes), caption folders, the dataset-folder layout."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from searchengine.errors import InvalidInputError
from searchengine.training.pairs import read_pairs

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "flickr8k-1k"


def _png(path: Path, color: tuple[int, int, int]) -> Path:
    Image.new("RGB", (16, 12), color).save(path)
    return path


def _png_bytes(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 12), color).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    (tmp_path / "img").mkdir()
    _png(tmp_path / "img" / "red.png", (255, 0, 0))
    _png(tmp_path / "img" / "blue.png", (0, 0, 255))
    (tmp_path / "img" / "broken.png").write_bytes(b"not an image at all")
    return tmp_path


def test_csv_with_bad_rows_skips_them_with_reasons(folder: Path) -> None:
    (folder / "pairs.csv").write_text(
        "image,caption\n"
        "img/red.png,a red square\n"
        "img/red.png,something red\n"
        "img/blue.png,a blue square\n"
        "img/missing.png,never seen\n"
        "img/blue.png,   \n"
        "img/broken.png,broken file\n"
    )
    pairs = read_pairs(folder / "pairs.csv")
    assert [p.caption for p in pairs.pairs] == ["a red square", "something red", "a blue square"]
    assert pairs.pairs[0].image == folder / "img" / "red.png"
    assert pairs.image_keys == (str(folder / "img" / "red.png"), str(folder / "img" / "blue.png"))
    np.testing.assert_array_equal(pairs.text_to_image(), [0, 0, 1])
    assert [row.location for row in pairs.skipped] == ["pairs.csv:5", "pairs.csv:6", "pairs.csv:7"]
    assert pairs.skip_reasons() == {
        "missing image": 1,
        "empty caption": 1,
        "not an image (content not recognised)": 1,
    }


def test_tsv_with_named_columns(folder: Path) -> None:
    (folder / "pairs.tsv").write_text("file\tdescription\nimg/red.png\ta, red; square\n")
    with pytest.raises(InvalidInputError, match="no caption column"):
        read_pairs(folder / "pairs.tsv")
    pairs = read_pairs(folder / "pairs.tsv", caption_column="description")
    assert pairs.pairs[0].caption == "a, red; square"
    with pytest.raises(InvalidInputError, match="no column 'nope'"):
        read_pairs(folder / "pairs.tsv", image_column="nope")


def test_parquet_with_paths_bytes_and_structs(folder: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    red, blue = _png_bytes((255, 0, 0)), _png_bytes((0, 0, 255))
    pq.write_table(pa.table({"image": [red, red, blue, b""], "caption": ["r", "r2", "b", "x"]}),
                   folder / "bytes.parquet")
    pairs = read_pairs(folder / "bytes.parquet")
    assert [p.image for p in pairs.pairs] == [red, red, blue]
    assert len(pairs.image_keys) == 2 and pairs.skip_reasons() == {"no image in the row": 1}

    pq.write_table(pa.table({"image": ["img/red.png", "img/blue.png"], "text": ["r", "b"]}),
                   folder / "paths.parquet")
    assert read_pairs(folder / "paths.parquet").pairs[1].image == folder / "img" / "blue.png"

    structs = [{"bytes": red, "path": "red.png"}, {"bytes": None, "path": "img/blue.png"}]
    pq.write_table(pa.table({"image": structs, "caption": ["r", "b"]}), folder / "hf.parquet")
    images = [p.image for p in read_pairs(folder / "hf.parquet").pairs]
    assert images == [red, folder / "img" / "blue.png"]


def test_caption_folder_reads_one_caption_per_line(folder: Path) -> None:
    (folder / "img" / "red.txt").write_text("a red square\n\nsomething red\n")
    (folder / "img" / "blue.txt").write_text("  \n")
    pairs = read_pairs(folder / "img")
    assert [p.caption for p in pairs.pairs] == ["a red square", "something red"]
    reasons = {"empty caption": 1, "no caption file (.txt) beside the image": 1}
    assert pairs.skip_reasons() == reasons


def test_nothing_usable_is_an_error(folder: Path) -> None:
    (folder / "pairs.csv").write_text("image,caption\nimg/missing.png,x\n")
    with pytest.raises(InvalidInputError, match="1 x missing image"):
        read_pairs(folder / "pairs.csv")
    with pytest.raises(InvalidInputError, match="does not exist"):
        read_pairs(folder / "nothing.csv")
    with pytest.raises(InvalidInputError, match="expected a .csv"):
        read_pairs(folder / "img" / "red.png")


def test_dataset_folder_layout_with_split_file(folder: Path) -> None:
    (folder / "images").mkdir()
    for name, color in (("a.png", (1, 2, 3)), ("b.png", (4, 5, 6)), ("c.png", (7, 8, 9))):
        _png(folder / "images" / name, color)
    (folder / "captions.csv").write_text("image,caption\na.png,A\na.png,A2\nb.png,B\nc.png,C\n")
    (folder / "split.csv").write_text("image,split\na.png,train\nb.png,test\nc.png,train\n")
    assert [p.caption for p in read_pairs(folder, split="train").pairs] == ["A", "A2", "C"]
    assert [p.caption for p in read_pairs(folder, split="test").pairs] == ["B"]
    assert len(read_pairs(folder)) == 4
    with pytest.raises(InvalidInputError, match="its splits: test, train"):
        read_pairs(folder, split="val")


def test_split_by_image_keeps_captions_together(folder: Path) -> None:
    rows = "".join(f"img/{'red' if i % 2 else 'blue'}.png,c{i}\n" for i in range(6))
    (folder / "pairs.csv").write_text("image,caption\n" + rows)
    train, val = read_pairs(folder / "pairs.csv").split_by_image(0.5, seed=3)
    assert len(train) == len(val) == 3
    assert not set(train.image_keys) & set(val.image_keys)
    with pytest.raises(InvalidInputError, match="cannot hold out"):
        read_pairs(folder / "pairs.csv").split_by_image(0.1)


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data/flickr8k-1k is not present")
def test_flickr8k_1k_splits() -> None:
    train = read_pairs(SHARED, split="train")
    test = read_pairs(SHARED, split="test")
    assert (len(train), len(train.image_keys)) == (4000, 800)
    assert (len(test), len(test.image_keys)) == (1000, 200)
    assert not train.skipped and not test.skipped
