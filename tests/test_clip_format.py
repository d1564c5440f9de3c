"""Embeddings in and out in clip-retrieval's format: `export`, `import`.

The layout clip-retrieval writes is rebuilt here with numpy and pandas exactly as its
`clip_inference/writer.py` (`OutputSink.__write_batch`) does; what our export writes is read back
with `embedding-reader`, the library autofaiss and clip-retrieval read with.
"""

from __future__ import annotations

import io
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_MODEL, fast_ingest, write_image

from searchengine.engine import Engine
from searchengine.errors import SearchEngineError
from searchengine.settings import EncoderSettings

pytestmark = pytest.mark.usefixtures("reuse_random_encoders")
CPU = EncoderSettings(device="cpu")
DIM = 64  # se-tiny's embedding width


@pytest.fixture()
def source_home(tmp_path: Path, copy_photos: Path, captions_csv: Path) -> Path:
    """A home with the 9 photos of `copy_photos` and the captions, indexed with TINY_MODEL."""
    home = tmp_path / "source"
    with Engine.open(home, encoder_settings=CPU) as engine:
        engine.index([copy_photos], model=TINY_MODEL, settings=fast_ingest())
        engine.add_texts(captions_csv, column="caption", text_set="captions", model=TINY_MODEL)
    return home


def stored(home: Path, modality: str = "image") -> dict:
    """path (or text) -> (id, (d,) float32 stored vector) of TINY_MODEL in `home`."""
    with Engine.open(home, create=False, encoder_settings=CPU) as engine:
        ids, vectors = engine.vectors(modality, model=TINY_MODEL)
        if modality == "image":
            rows = engine.catalog.media(ids.tolist())
            names = {i: rows[i].path for i in ids.tolist()}
        else:
            texts = engine.catalog.texts(ids.tolist())
            names = {i: texts[i].text for i in ids.tolist()}
    return {names[i]: (i, v) for i, v in zip(ids.tolist(), vectors, strict=True)}


def snapshot(home: Path) -> tuple:
    """Everything an import could change: files, vectors of every model, texts, index files."""
    with Engine.open(home, create=False, encoder_settings=CPU) as engine:
        models = [(m.spec, m.dim) for m in engine.models()]
        vectors = {
            (m.spec, modality): tuple(
                array.tobytes() for array in engine.catalog.vectors(modality, m.id)
            )
            for m in engine.models()
            for modality in ("image", "text")
        }
        files = sorted(engine.catalog.files_under(["/"]).values(), key=lambda f: f.id)
        state = (models, vectors, files, engine.catalog.count_media(), engine.catalog.text_sets())
        assert engine.check().ok
    index_files = sorted((p.name, p.read_bytes()) for p in (home / "vectors").glob("*.faiss"))
    return state, index_files


# -- export ---------------------------------------------------------------------------------


def test_export_lays_out_shards_as_clip_retrieval_names_them(source_home, tmp_path, cli_run):
    out = tmp_path / "out"
    report = cli_run.json("export", out, "--home", source_home, "--shard-size", 2)
    assert (report["rows"], report["shards"], report["dtype"]) == (9, 5, "float16")
    # clip-retrieval pads N to int(log10(partitions)) + 1 digits: 5 shards -> 1 digit
    assert sorted(p.name for p in (out / "img_emb").iterdir()) == [
        f"img_emb_{n}.npy" for n in range(5)
    ]
    assert sorted(p.name for p in (out / "metadata").iterdir()) == [
        f"metadata_{n}.parquet" for n in range(5)
    ]
    rows = [np.load(out / "img_emb" / f"img_emb_{n}.npy").shape[0] for n in range(5)]
    assert rows == [2, 2, 2, 2, 1]
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_shard_names_pad_as_clip_retrieval_does():
    from searchengine.clipformat.layout import shard_name

    for shards in (1, 9, 10, 11, 100, 1234):
        width = int(math.log10(shards)) + 1  # OutputSink.oom_partition_count
        assert shard_name("img_emb_", 7, shards, ".npy") == f"img_emb_{str(7).zfill(width)}.npy"


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_export_holds_the_stored_vectors_exactly(source_home, tmp_path, dtype):
    import pyarrow.parquet as pq

    out = tmp_path / "out"
    with Engine.open(source_home, create=False, encoder_settings=CPU) as engine:
        engine.export_embeddings(out, shard_size=4, dtype=dtype)
    vectors = np.concatenate([np.load(p) for p in sorted((out / "img_emb").glob("*.npy"))])
    metadata = pq.read_table(sorted((out / "metadata").glob("*.parquet"))).to_pydict()
    assert vectors.dtype == np.dtype(dtype)
    expected = stored(source_home)
    assert metadata["image_path"] == sorted(expected, key=lambda p: expected[p][0])
    assert metadata["id"] == [expected[p][0] for p in metadata["image_path"]]
    want = np.stack([expected[p][1] for p in metadata["image_path"]])  # float16 values
    np.testing.assert_array_equal(vectors, want.astype(dtype))
    with Engine.open(source_home, create=False) as engine:
        media = engine.catalog.media(metadata["id"])
    assert metadata["content_hash"] == [media[i].content_hash for i in metadata["id"]]
    assert metadata["width"] == [media[i].width for i in metadata["id"]]


def test_embedding_reader_reads_our_export(source_home, tmp_path):
    from embedding_reader import EmbeddingReader

    out = tmp_path / "out"
    with Engine.open(source_home, create=False) as engine:
        engine.export_embeddings(out, shard_size=4)
    reader = EmbeddingReader(
        str(out / "img_emb"),
        file_format="parquet_npy",
        metadata_folder=str(out / "metadata"),
        meta_columns=["image_path", "id"],
    )
    assert (reader.count, reader.dimension) == (9, DIM)
    parts = list(reader(batch_size=5, show_progress=False))
    vectors = np.concatenate([batch for batch, _ in parts])
    paths = [p for _, meta in parts for p in meta["image_path"]]
    ids = [int(i) for _, meta in parts for i in meta["id"]]
    expected = stored(source_home)
    assert sorted(paths) == sorted(expected)
    assert ids == [expected[p][0] for p in paths]
    np.testing.assert_array_equal(vectors, np.stack([expected[p][1] for p in paths]))
    plain = EmbeddingReader(str(out / "img_emb"), file_format="npy")  # autofaiss's default
    np.testing.assert_array_equal(
        np.concatenate([b for b, _ in plain(batch_size=4, show_progress=False)]), vectors
    )


def test_export_refuses_a_non_empty_folder_unless_forced(source_home, tmp_path, cli_run):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = cli_run("export", out, "--home", source_home, expect=1)
    assert "not empty" in result.stderr and "--force" in result.stderr
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    cli_run("export", out, "--home", source_home, "--force")
    assert sorted(p.name for p in out.iterdir()) == ["img_emb", "metadata", "searchengine.json"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_an_interrupted_export_leaves_no_folder_named_out(source_home, tmp_path, monkeypatch):
    """Ctrl-C in the middle (a fault a test cannot cause for real in-process)."""
    import searchengine.clipformat.writer as writer

    real = writer._metadata
    calls = []

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(writer, "READ_BATCH", 3)
    monkeypatch.setattr(writer, "_metadata", interrupted)
    with Engine.open(source_home, create=False) as engine, pytest.raises(KeyboardInterrupt):
        engine.export_embeddings(tmp_path / "out", shard_size=2)
    assert len(calls) == 2  # it stopped in the middle
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos", "source"]


# -- round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_export_import_round_trips_ids_paths_and_vectors(source_home, tmp_path, cli_run, dtype):
    out = tmp_path / "out"
    cli_run("export", out, "--home", source_home, "--shard-size", 4, "--dtype", dtype)
    target = tmp_path / "target"
    report = cli_run.json("import", out, "--home", target, "--model", TINY_MODEL)
    assert (report["images"], report["missing"], report["changed"]) == (9, 0, 0)
    before, after = stored(source_home), stored(target)
    assert sorted(after) == sorted(before)
    for path, (media_id, vector) in before.items():
        assert after[path][0] == media_id
        np.testing.assert_array_equal(after[path][1], vector)
    assert cli_run.json("check", "--home", target)["ok"]
    # searchable at once, with the imported vectors: each photo finds itself first
    with Engine.open(target, create=False, encoder_settings=CPU) as engine:
        for media_id, vector in list(before.values())[:3]:
            assert engine.search_by_vector(vector[None, :], k=1).hits[0].id == media_id
        assert engine.default_model() == TINY_MODEL
    hits = cli_run.json("search", "a photo", "--home", target, "--no-serve")["hits"]
    assert len(hits) == 9


def test_importing_twice_adds_nothing(source_home, tmp_path, cli_run):
    out = tmp_path / "out"
    cli_run("export", out, "--home", source_home)
    target = tmp_path / "target"
    cli_run("import", out, "--home", target, "--model", TINY_MODEL)
    first = snapshot(target)
    again = cli_run.json("import", out, "--home", target, "--model", TINY_MODEL)
    assert (again["images"], again["present"]) == (0, 9)
    assert snapshot(target) == first
    # into the home the vectors came from: nothing new either
    home_before = snapshot(source_home)
    report = cli_run.json("import", out, "--home", source_home, "--model", TINY_MODEL)
    assert (report["images"], report["present"]) == (0, 9)
    assert snapshot(source_home) == home_before


def test_text_set_round_trips(source_home, tmp_path, cli_run):
    import pyarrow.parquet as pq

    out = tmp_path / "texts"
    report = cli_run.json("export", out, "--home", source_home, "--texts", "captions")
    assert (report["modality"], report["rows"]) == ("text", 5)
    assert sorted(p.name for p in out.iterdir()) == ["metadata", "searchengine.json", "text_emb"]
    captions = pq.read_table(out / "metadata" / "metadata_0.parquet").column("caption").to_pylist()
    assert sorted(captions) == sorted(stored(source_home, "text"))
    target = tmp_path / "target"
    result = cli_run.json("import", out, "--home", target, "--model", TINY_MODEL)
    assert (result["text_set"], result["texts"]) == ("captions", 5)
    before, after = stored(source_home, "text"), stored(target, "text")
    assert sorted(after) == sorted(before)
    for text, (_, vector) in before.items():
        np.testing.assert_array_equal(after[text][1], vector)
    again = cli_run.json("import", out, "--home", target, "--model", TINY_MODEL)
    assert (again["texts"], again["texts_present"]) == (0, 5)
    assert cli_run.json("check", "--home", target)["ok"]


def test_export_of_a_missing_text_set_names_the_sets(source_home, tmp_path, cli_run):
    result = cli_run("export", tmp_path / "out", "--home", source_home, "--texts", "nope",
                     expect=1)
    assert "no text set named 'nope'" in result.stderr and "captions" in result.stderr
    assert not (tmp_path / "out").exists()


# -- a folder as clip-retrieval writes it ----------------------------------------------------


def write_clip_retrieval_partition(
    output_folder: Path,
    partition_id: int,
    output_partition_count: int,
    image_embs: np.ndarray | None,
    image_names: list[str] | None,
    text_embs: np.ndarray | None = None,
    captions: list[str] | None = None,
) -> None:
    """clip-retrieval's `OutputSink.__write_batch` for one partition (its code, minus fsspec):
    np.save through a BytesIO, a pandas DataFrame of image_path (and caption) to_parquet."""
    import pandas as pd

    oom_partition_count = int(math.log10(output_partition_count)) + 1
    batch_num_str = str(partition_id).zfill(oom_partition_count)
    data_lists, data_columns = [], []
    (output_folder / "metadata").mkdir(parents=True, exist_ok=True)
    if image_embs is not None:
        (output_folder / "img_emb").mkdir(exist_ok=True)
        with open(output_folder / "img_emb" / f"img_emb_{batch_num_str}.npy", "wb") as f:
            npb = io.BytesIO()
            np.save(npb, image_embs)
            f.write(npb.getbuffer())
        data_lists.append(image_names)
        data_columns.append("image_path")
    if text_embs is not None:
        (output_folder / "text_emb").mkdir(exist_ok=True)
        with open(output_folder / "text_emb" / f"text_emb_{batch_num_str}.npy", "wb") as f:
            npb = io.BytesIO()
            np.save(npb, text_embs)
            f.write(npb.getbuffer())
        data_lists.append(captions)
        data_columns.append("caption")
    df = pd.DataFrame(data=list(zip(*data_lists, strict=True)), columns=data_columns)
    with open(output_folder / "metadata" / f"metadata_{batch_num_str}.parquet", "wb") as f:
        df.to_parquet(f)


def unit_rows(count: int, seed: int, dim: int = DIM) -> np.ndarray:
    """(count, dim) float16 unit vectors, as clip-retrieval's ClipMapper stores them."""
    rows = np.random.default_rng(seed).standard_normal((count, dim)).astype(np.float32)
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float16)


@pytest.fixture()
def clip_retrieval_folder(tmp_path: Path) -> tuple[Path, Path, list[str], np.ndarray]:
    """Two partitions of 10 (names padded to 2 digits) written as clip-retrieval's `files`
    input writes them: image_path as str(image_file), here 4 absolute paths, 1 relative to the
    folder inference ran in, 1 webdataset key with no file; captions paired row for row."""
    photos = tmp_path / "cr-photos"
    names = [str(write_image(photos / f"img_{i}.jpg", seed=200 + i)) for i in range(4)]
    write_image(photos / "sub" / "rel.png", seed=300)
    names += ["sub/rel.png", "000000017"]
    vectors = unit_rows(len(names), seed=5)
    captions = [f"caption {i}" for i in range(len(names))]
    folder = tmp_path / "cr-out"
    text_vectors = unit_rows(len(names), seed=6)
    for part, rows in ((0, slice(0, 4)), (1, slice(4, 6))):
        write_clip_retrieval_partition(folder, part, 10, vectors[rows], names[rows],
                                       text_vectors[rows], captions[rows])
    return folder, photos, names, vectors


def test_a_folder_clip_retrieval_wrote_imports(clip_retrieval_folder, tmp_path, cli_run):
    folder, photos, names, vectors = clip_retrieval_folder
    assert (folder / "img_emb" / "img_emb_01.npy").is_file()  # padded as clip-retrieval pads
    home = tmp_path / "home"
    report = cli_run.json("import", folder, "--home", home, "--model", TINY_MODEL,
                          "--base", photos, "--set", "laion")
    assert (report["images"], report["missing"]) == (5, 1)
    assert report["missing_examples"] == [str(photos / "000000017")]
    assert (report["text_set"], report["texts"]) == ("laion", 6)
    got = stored(home)
    expected_paths = [*names[:4], str(photos / "sub" / "rel.png")]
    assert sorted(got) == sorted(expected_paths)
    for path, vector in zip(expected_paths, vectors, strict=False):
        np.testing.assert_array_equal(got[path][1], vector.astype(np.float32))
    with Engine.open(home, create=False) as engine:
        media = engine.media_ids_by_path([photos / "sub" / "rel.png"])
        row = engine.catalog.media(media.values()).popitem()[1]
        assert (row.format, row.width, row.height) == ("PNG", 64, 48)
        hit = engine.search_by_vector(vectors[1:2].astype(np.float32), k=1).hits[0]
        assert hit.path == names[1]
    assert cli_run.json("check", "--home", home)["ok"]
    again = cli_run.json("import", folder, "--home", home, "--model", TINY_MODEL,
                         "--base", photos, "--set", "laion")
    assert (again["images"], again["present"], again["texts"]) == (0, 5, 0)


def test_import_refuses_another_dimension(clip_retrieval_folder, source_home, cli_run):
    folder = clip_retrieval_folder[0]
    for part in (0, 1):
        wide = unit_rows(4 if part == 0 else 2, seed=part, dim=512)
        np.save(folder / "img_emb" / f"img_emb_{part:02d}.npy", wide)
        np.save(folder / "text_emb" / f"text_emb_{part:02d}.npy", wide)
    before = snapshot(source_home)
    result = cli_run("import", folder, "--home", source_home, "--model", TINY_MODEL, expect=1)
    assert "dimension 512" in result.stderr and "makes 64" in result.stderr
    assert "--model" in result.stderr
    assert snapshot(source_home) == before


# -- bad input: a clear error, nothing stored changes ----------------------------------------


def _misaligned(out: Path) -> str:
    np.save(out / "img_emb" / "img_emb_1.npy", unit_rows(3, seed=1))  # metadata_1 has 4 rows
    return "misaligned shard: img_emb/img_emb_1.npy holds 3 vectors but"


def _no_metadata(out: Path) -> str:
    shutil.rmtree(out / "metadata")
    return "has no metadata/ folder"


def _corrupt_npy(out: Path) -> str:
    (out / "img_emb" / "img_emb_0.npy").write_bytes(b"\x00not a numpy file at all" * 10)
    return "img_emb_0.npy is not a readable NumPy .npy file"


def _truncated_npy(out: Path) -> str:
    path = out / "img_emb" / "img_emb_2.npy"
    path.write_bytes(path.read_bytes()[:-10])
    return "was cut short"


def _corrupt_parquet(out: Path) -> str:
    (out / "metadata" / "metadata_1.parquet").write_bytes(b"PAR1 garbage")
    return "metadata_1.parquet is not a readable Parquet file"


def _missing_pair(out: Path) -> str:
    (out / "metadata" / "metadata_2.parquet").unlink()
    return "img_emb_2.npy has no metadata/metadata_2.parquet"


def _not_unit(out: Path) -> str:
    path = out / "img_emb" / "img_emb_0.npy"
    np.save(path, np.load(path) * 3)
    return "img_emb_0.npy row 0 is not a unit vector"


def _a_file(out: Path) -> str:
    shutil.rmtree(out)
    out.write_text("not a folder")
    return "is not a folder"


def _nothing_there(out: Path) -> str:
    shutil.rmtree(out)
    return "does not exist"


FAULTS = [_misaligned, _no_metadata, _corrupt_npy, _truncated_npy, _corrupt_parquet,
          _missing_pair, _not_unit, _a_file, _nothing_there]


@pytest.mark.parametrize("fault", FAULTS, ids=[f.__name__.strip("_") for f in FAULTS])
def test_bad_folders_are_refused_and_nothing_stored_changes(
    fault, source_home, tmp_path, cli_run
):
    out = tmp_path / "out"
    cli_run("export", out, "--home", source_home, "--shard-size", 4)
    # a second home that holds the same photos under another model's spaces would hide a loss:
    # import into the home the vectors came from, after removing two photos so there is work
    with Engine.open(source_home, create=False) as engine:
        paths = sorted(stored(source_home))[:2]
        engine.remove(paths)
    message = fault(out)
    before = snapshot(source_home)
    result = cli_run("import", out, "--home", source_home, "--model", TINY_MODEL, expect=1)
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert snapshot(source_home) == before


def test_import_errors_are_search_engine_errors(tmp_path):
    with Engine.open(tmp_path / "home") as engine, pytest.raises(SearchEngineError):
        engine.import_embeddings(tmp_path / "nowhere", model=TINY_MODEL)
    assert not (tmp_path / "home").exists()  # nothing made for a refused import


def test_sidecar_names_the_model(source_home, tmp_path):
    out = tmp_path / "out"
    with Engine.open(source_home, create=False) as engine:
        engine.export_embeddings(out)
    sidecar = json.loads((out / "searchengine.json").read_text())
    assert (sidecar["model"], sidecar["dim"], sidecar["rows"]) == (TINY_MODEL, DIM, 9)


# -- what the catalog keeps true -------------------------------------------------------------


def test_export_holds_the_writer_lock(source_home, tmp_path):
    """The folder is one state of the home: no writer may change it in the middle."""
    from searchengine.catalog.lock import HomeLock
    from searchengine.errors import HomeBusyError

    lock = HomeLock(source_home, "index")
    lock.acquire()
    try:
        with Engine.open(source_home, create=False) as engine, pytest.raises(
            HomeBusyError, match="index"
        ):
            engine.export_embeddings(tmp_path / "out")
    finally:
        lock.release()
    assert not (tmp_path / "out").exists()


def test_export_of_a_missing_home_creates_nothing(tmp_path, cli_run):
    result = cli_run("export", tmp_path / "out", "--home", tmp_path / "typo", expect=1)
    assert "no home at" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_photo_changed_since_its_export_is_not_imported(source_home, copy_photos, tmp_path,
                                                         cli_run):
    out = tmp_path / "out"
    cli_run("export", out, "--home", source_home)
    changed = copy_photos / "photo_3.jpg"
    write_image(changed, seed=999)  # new content: the exported vector is not its vector
    report = cli_run.json("import", out, "--home", tmp_path / "target", "--model", TINY_MODEL)
    assert (report["images"], report["changed"]) == (8, 1)
    assert str(changed) not in stored(tmp_path / "target")


def test_a_name_that_is_not_utf8_round_trips(source_home, copy_photos, tmp_path, cli_run):
    import os

    import pyarrow.parquet as pq

    name = copy_photos / os.fsdecode(b"caf\xe9.jpg")  # a Latin-1 name: not UTF-8
    write_image(name, seed=42)
    with Engine.open(source_home, create=False, encoder_settings=CPU) as engine:
        engine.index([copy_photos], model=TINY_MODEL, settings=fast_ingest())
    out = tmp_path / "out"
    cli_run("export", out, "--home", source_home)
    table = pq.read_table(out / "metadata" / "metadata_0.parquet").to_pydict()
    row = table["image_path_bytes"].index(next(v for v in table["image_path_bytes"] if v))
    assert table["image_path"][row].endswith("caf\\xe9.jpg")  # readable, valid UTF-8
    cli_run("import", out, "--home", tmp_path / "target", "--model", TINY_MODEL)
    before, after = stored(source_home), stored(tmp_path / "target")
    assert str(name) in after
    np.testing.assert_array_equal(after[str(name)][1], before[str(name)][1])


def test_import_builds_the_index_kind_asked_for(source_home, tmp_path, cli_run):
    out = tmp_path / "out"
    cli_run("export", out, "--home", source_home)
    target = tmp_path / "target"
    bad = cli_run("import", out, "--home", target, "--model", TINY_MODEL, "--index-kind", "nope",
                  expect=1)
    assert "nope" in bad.stderr and not target.exists()
    cli_run("import", out, "--home", target, "--model", TINY_MODEL, "--index-kind", "hnsw")
    spaces = cli_run.json("status", "--home", target)["spaces"]
    assert [(s["modality"], s["kind"]) for s in spaces] == [("image", "hnsw")]
    assert cli_run.json("check", "--home", target)["ok"]


def test_export_never_overlaps_the_home(source_home, cli_run):
    for out in (source_home / "export", source_home, source_home.parent):
        result = cli_run("export", out, "--home", source_home, "--force", expect=1)
        assert "would overlap the home" in result.stderr
    assert cli_run.json("check", "--home", source_home)["ok"]


def test_a_path_twice_in_one_folder_is_stored_once(clip_retrieval_folder, tmp_path, cli_run):
    folder, photos, names, _ = clip_retrieval_folder
    shutil.rmtree(folder)
    twice = [names[0], names[0], names[1]]
    write_clip_retrieval_partition(folder, 0, 1, unit_rows(3, seed=9), twice)
    report = cli_run.json("import", folder, "--home", tmp_path / "home", "--model", TINY_MODEL)
    assert report["images"] == 2
    got = stored(tmp_path / "home")
    np.testing.assert_array_equal(got[names[0]][1], unit_rows(3, seed=9)[0].astype(np.float32))


def test_read_info_is_what_a_full_decode_records(photo_folder, tmp_path):
    """import reads headers only; `index` decodes: the catalog must hold the same either way."""
    from PIL import Image

    from searchengine.images import load_image, read_info

    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: upright it is 48 wide, 64 high
    exif[0x0110] = "Camera X"
    write_image(rotated, seed=3, exif=exif)
    files = [*sorted(photo_folder.rglob("*.*")), rotated]
    for path in files:
        data = path.read_bytes()
        assert read_info(data) == load_image(data)[1], path
    assert (read_info(rotated.read_bytes()).width, read_info(rotated.read_bytes()).height) == (
        48, 64
    )
    with pytest.raises(SearchEngineError, match="not an image"):
        read_info(b"plain text, no picture")


def test_import_under_a_checkpoint_model_reads_its_width(source_home, tmp_path, tiny_checkpoint,
                                                          cli_run):
    out = tmp_path / "out"
    cli_run("export", out, "--home", source_home)
    spec = f"se-tiny/{tiny_checkpoint}"
    report = cli_run.json("import", out, "--home", tmp_path / "target", "--model", spec)
    assert (report["model"], report["images"]) == (spec, 9)
    models = cli_run.json("status", "--home", tmp_path / "target")["spaces"]
    assert [(s["model"], s["vectors"]) for s in models] == [(spec, 9)]


def test_cli_defaults_are_the_library_defaults():
    import inspect

    from searchengine.cli import cli
    from searchengine.clipformat.writer import DEFAULT_SHARD_SIZE

    options = {p.name: p.default for p in cli.commands["export"].params}
    signature = inspect.signature(Engine.export_embeddings).parameters
    assert options["shard_size"] == DEFAULT_SHARD_SIZE == signature["shard_size"].default
    assert options["dtype"] == signature["dtype"].default
