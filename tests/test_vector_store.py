"""The durable vectors: stored as float16, migrated in batches (revision 0003 and back), read
through the `VectorStore` in batches, held by every index exactly as the catalog holds them, and
rebuilt into an index with a peak memory that follows the index, not the rows."""

from __future__ import annotations

import json
import logging
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_MODEL, fast_ingest

from searchengine.catalog import INDEX_REVISION, Catalog, as_stored, head_revision
from searchengine.catalog.vectors import BATCH_SIZE, decode, encode
from searchengine.errors import CatalogError, InvalidInputError


def unit_rows(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# -- the stored form ------------------------------------------------------------------------


def test_the_stored_form_is_float16_read_back_as_float32():
    x = unit_rows(50, 512)
    stored = as_stored(x)
    assert stored.dtype == np.float32 and stored.shape == x.shape
    np.testing.assert_array_equal(stored, x.astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(as_stored(stored), stored)  # idempotent
    np.testing.assert_array_equal(as_stored(x.astype(np.float64)), stored)  # via float32
    assert len(encode(x[0])) == 2 * 512
    np.testing.assert_array_equal(decode([encode(v) for v in x]), stored)
    # not re-normalised: a float16 keeps 11 bits, so each vector moves by at most 2^-11
    norms = np.linalg.norm(stored.astype(np.float64), axis=1)
    assert np.abs(norms - 1).max() <= 2.0**-11
    assert not np.array_equal(norms, np.ones(50))


def test_values_a_float16_cannot_hold_are_refused():
    with pytest.raises(InvalidInputError, match="float16"):
        as_stored(np.array([[1e6, 0.0]]))
    with pytest.raises(InvalidInputError, match="finite"):
        encode(np.array([np.nan, 0.0]))


def test_stored_vectors_of_one_model_with_other_lengths_are_an_error():
    with pytest.raises(CatalogError, match="byte lengths"):
        decode([encode(np.ones(4)), encode(np.ones(8))])


@pytest.fixture()
def catalog(tmp_path):
    catalog = Catalog(f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    yield catalog
    catalog.close()


def test_the_catalog_keeps_two_bytes_a_dimension(catalog, tmp_path):
    model = catalog.ensure_model("m/random", 24)
    catalog.add_texts("a", ["one", "two"])
    ids = sorted(catalog.text_ids("a").values())
    x = unit_rows(2, 24)
    catalog.write_text_vectors(model.id, ids, x)
    with sqlite3.connect(tmp_path / "catalog.sqlite") as raw:
        lengths = raw.execute("SELECT length(vector) FROM text_embeddings").fetchall()
    assert lengths == [(48,), (48,)]
    got_ids, got = catalog.vectors("text", model.id)
    np.testing.assert_array_equal(got, as_stored(x))
    streamed = list(catalog.vector_store.iter_batches("text", model.id, batch_size=1))
    assert [b[0].tolist() for b in streamed] == [[ids[0]], [ids[1]]]
    np.testing.assert_array_equal(np.vstack([b[1] for b in streamed]), as_stored(x))


def test_vectors_by_hash_gives_the_stored_float32_vectors(catalog):
    from searchengine.catalog import NewImage
    from searchengine.images import ImageInfo

    def image(path: str, content_hash: str) -> NewImage:
        return NewImage(path, 1, 1, content_hash, ImageInfo(4, 3, "JPEG", None, None))

    model = catalog.ensure_model("m/random", 8)
    x = unit_rows(1, 8)
    catalog.write_images(model.id, [image("/p/a.jpg", "hash-a")], x, [])
    found = catalog.vectors_by_hash(model.id, ["hash-a"])
    assert found["hash-a"].dtype == np.float32
    np.testing.assert_array_equal(found["hash-a"], as_stored(x)[0])
    # callers that read it as a buffer of float32 values (the form before) still get the values
    np.testing.assert_array_equal(np.frombuffer(found["hash-a"], np.float32), as_stored(x)[0])


# -- revision 0003 ------------------------------------------------------------------------


def _alembic(url: str, action: str, target: str) -> None:
    from alembic import command

    from searchengine.catalog.store import _alembic_config

    getattr(command, action)(_alembic_config(url), target)


def test_revision_0003_converts_float32_rows_in_batches_and_its_downgrade_goes_back(
    empty_database,
):
    """A catalog written before 0003 (float32 BLOBs, more rows than one migration batch, two
    models, images and texts) opens with every vector in the stored form, and a downgrade gives
    float32 BLOBs of the same values back. On SQLite and on PostgreSQL."""
    import importlib

    from sqlalchemy import create_engine, text

    url = empty_database
    _alembic(url, "upgrade", "0002")
    migration = importlib.import_module("searchengine.migrations.versions.0003_float16_vectors")
    n, d = migration.BATCH + 501, 8
    images, texts = unit_rows(n, d, seed=1), unit_rows(3, 16, seed=2)
    raw = create_engine(url)
    with raw.begin() as connection:
        connection.execute(text(
            "INSERT INTO models (id, spec, dim, created_at) VALUES "
            "(1, 'a/random', 8, '2026-01-01'), (2, 'b/random', 16, '2026-01-01')"))
        connection.execute(
            text("INSERT INTO media (id, path, size, mtime_ns, content_hash, width, height, "
                 "format, indexed_at) VALUES (:id, :path, 1, 1, 'h', 1, 1, 'JPEG', "
                 "'2026-01-01')"),
            [{"id": i + 1, "path": f"/p/{i}.jpg"} for i in range(n)],
        )
        connection.execute(
            text("INSERT INTO image_embeddings (media_id, model_id, vector) "
                 "VALUES (:id, 1, :vector)"),
            [{"id": i + 1, "vector": v.tobytes()} for i, v in enumerate(images)])
        connection.execute(
            text("INSERT INTO texts (id, text_set, text, created_at) "
                 "VALUES (:id, 's', :text, '2026-01-01')"),
            [{"id": i + 1, "text": f"t{i}"} for i in range(3)])
        connection.execute(
            text("INSERT INTO text_embeddings (text_id, model_id, vector) "
                 "VALUES (:id, 2, :vector)"),
            [{"id": i + 1, "vector": v.tobytes()} for i, v in enumerate(texts)])
    catalog = Catalog(url)  # upgrades to head
    assert catalog.revision() == head_revision()
    ids, got = catalog.vectors("image", 1)
    np.testing.assert_array_equal(ids, np.arange(1, n + 1))
    np.testing.assert_array_equal(got, as_stored(images))
    np.testing.assert_array_equal(catalog.vectors("text", 2)[1], as_stored(texts))
    catalog.close()
    with raw.connect() as connection:
        lengths = connection.execute(
            text("SELECT DISTINCT length(vector) FROM image_embeddings")).all()
    assert [tuple(row) for row in lengths] == [(16,)]

    _alembic(url, "downgrade", "0002")
    with raw.connect() as connection:
        query = text("SELECT vector FROM image_embeddings ORDER BY media_id")
        blobs = [bytes(row[0]) for row in connection.execute(query)]
        text_blobs = [bytes(row[0]) for row in
                      connection.execute(text("SELECT vector FROM text_embeddings"))]
    raw.dispose()
    back = np.vstack([np.frombuffer(blob, np.float32) for blob in blobs])
    np.testing.assert_array_equal(back, as_stored(images))  # float32 again, the rounded values
    assert {len(blob) for blob in text_blobs} == {16 * 4}


def test_a_vector_of_a_foreign_length_stops_the_upgrade_with_what_to_do(tmp_path):
    url = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    _alembic(url, "upgrade", "0002")
    with sqlite3.connect(tmp_path / "catalog.sqlite") as raw:
        raw.execute("INSERT INTO models (id, spec, dim, created_at) VALUES "
                    "(1, 'a/random', 8, '2026-01-01')")
        raw.execute("INSERT INTO texts (id, text_set, text, created_at) "
                        "VALUES (1, 's', 't', '2026-01-01')")
        raw.execute("INSERT INTO text_embeddings (text_id, model_id, vector) "
                        "VALUES (1, 1, ?)", (b"\0" * 5,))
    with pytest.raises(CatalogError, match="5 bytes.*new home"):
        Catalog(url)


# -- the index holds what the catalog holds --------------------------------------------------


@pytest.mark.usefixtures("reuse_random_encoders")
def test_every_index_holds_exactly_the_stored_vectors(open_engine, copy_photos, tmp_path):
    """Ingest (new files, and a copy reusing a stored vector by content hash) and add-texts add
    to the index what the catalog stores, bit for bit; so `check` finds nothing stale and a
    rebuild from the catalog equals the index built incrementally."""
    import shutil

    home = tmp_path / "home"
    engine = open_engine(home)
    engine.index([copy_photos], model=TINY_MODEL, settings=fast_ingest())
    shutil.copy(copy_photos / "photo_1.jpg", copy_photos / "again.jpg")  # reused vector
    engine.index([copy_photos], model=TINY_MODEL, settings=fast_ingest())
    engine.add_texts(["a dog", "a red car", "snow"], text_set="t", model=TINY_MODEL)
    for modality in ("image", "text"):
        space = engine.space(TINY_MODEL, modality)
        ids, stored = engine.catalog.vectors(modality, space.model.id)
        assert len(ids) and not np.array_equal(stored, as_stored(stored * (1 + 2.0**-9)))
        np.testing.assert_array_equal(space.index.reconstruct_batch(ids), stored)
        rebuilt = space.rebuild(reason=None)
        np.testing.assert_array_equal(rebuilt.reconstruct_batch(ids), stored)
    report = open_engine(home).check()
    assert report.ok and all(s.stale == 0 for s in report.spaces), report


@pytest.mark.usefixtures("reuse_random_encoders")
def test_index_files_of_an_older_catalog_revision_are_rebuilt_and_saved_by_the_next_writer(
    open_engine, copy_photos, tmp_path, caplog
):
    from searchengine.index.spaces import index_path
    from searchengine.index.vectors import manifest_path

    home = tmp_path / "home"
    open_engine(home).index([copy_photos], model=TINY_MODEL, settings=fast_ingest())
    manifest = manifest_path(index_path(home, TINY_MODEL, "image"))
    data = json.loads(manifest.read_text())
    manifest.write_text(json.dumps(data | {"catalog_revision": "0002"}))
    with caplog.at_level(logging.INFO, logger="searchengine.index.spaces"):
        engine = open_engine(home)
        assert engine.search("a dog", k=3).hits  # a reader rebuilds in memory
        engine.space(TINY_MODEL, "image").maintain()  # a writer saves the rebuilt index
    rebuilt = [r for r in caplog.records if "schema revision 0002" in r.getMessage()]
    # a warning that names the fix: every reader rebuilds it until a writer saves it
    # (tests/test_spaces.py follows several readers)
    assert rebuilt and all(r.levelno == logging.WARNING and "searchengine index" in r.getMessage()
                           for r in rebuilt)
    assert json.loads(manifest.read_text())["catalog_revision"] == INDEX_REVISION
    assert open_engine(home).check().ok


# -- memory ------------------------------------------------------------------------------

_REBUILD = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import numpy as np
    from searchengine.catalog import Catalog
    from searchengine.index.spaces import VectorSpace
    from searchengine.index.vectors import VectorIndex

    def status(field):  # VmRSS now; VmHWM, its peak in this process (ru_maxrss survives exec)
        line = next(x for x in open("/proc/self/status") if x.startswith(field + ":"))
        return int(line.split()[1]) * 1024

    path, what = Path(sys.argv[1]), sys.argv[2]
    catalog = Catalog(f"sqlite:///{path}")
    model = catalog.models()[0]
    VectorIndex.build("flat", 4, np.arange(2), np.eye(2, 4, dtype=np.float32))  # faiss loaded
    before = status("VmRSS")
    if what == "rebuild":
        index = VectorSpace(catalog, path.parent, model, "text", "flat").rebuild(reason=None)
        result = {"growth": status("VmHWM") - before, "count": index.count}
    elif what == "index":  # FAISS alone: the same index from batches made here, no catalog
        count = catalog.count_vectors("text", model.id)
        index = VectorIndex.empty("flat", model.dim, count)
        for start in range(0, count, 10_000):
            b = min(10_000, count - start)
            index.add(np.arange(start + 1, start + b + 1), np.ones((b, model.dim), np.float32))
        result = {"growth": status("VmHWM") - before, "count": index.count}
    else:  # every row as a Python object, as a whole read of the table holds them
        from sqlalchemy import select
        from searchengine.catalog.schema import TextEmbedding
        with catalog.session() as session:
            rows = session.execute(select(TextEmbedding.text_id, TextEmbedding.vector)).all()
            result = {"growth": status("VmRSS") - before, "count": len(rows)}
    print(json.dumps(result))
""")


def _fill_texts(path: Path, n: int, d: int) -> None:
    """A catalog of `n` texts with stored vectors of one model, written in bulk."""
    Catalog(f"sqlite:///{path}").close()
    vectors = unit_rows(n, d, seed=3)
    with sqlite3.connect(path) as raw:
        raw.execute("INSERT INTO models (id, spec, dim, created_at) VALUES "
                    "(1, 'm/random', ?, '2026-01-01')", (d,))
        raw.executemany("INSERT INTO texts (id, text_set, text, created_at) "
                        "VALUES (?, 's', ?, '2026-01-01')",
                        ((i + 1, f"text {i}") for i in range(n)))
        raw.executemany("INSERT INTO text_embeddings (text_id, model_id, vector) "
                        "VALUES (?, 1, ?)",
                        ((i + 1, encode(v)) for i, v in enumerate(vectors)))


def _measure(path: Path, what: str) -> dict:
    done = subprocess.run([sys.executable, "-c", _REBUILD, str(path), what], check=True,
                          capture_output=True, text=True, timeout=300)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_a_rebuild_streams_its_peak_memory_follows_the_index_not_the_rows(tmp_path):
    """The bound: a rebuild from the catalog needs what FAISS needs to build the index from
    batches (its arrays grow by doubling: ~2x the index's n * (4 d + 8) bytes, measured here
    in a process of its own) and about one batch more, never all rows at once: peak growth
    <= 3 x the index's bytes + 16 MB, and the growth beyond FAISS' own under a quarter of what
    all rows as Python objects take (a whole read of the table: ~290 bytes a row at d = 32,
    plus a float32 copy). n = 20 batches of small vectors, where row objects weigh most."""
    n, d = 20 * BATCH_SIZE, 32
    path = tmp_path / "catalog.sqlite"
    _fill_texts(path, n, d)
    faiss_only, rebuild, rows = (_measure(path, what) for what in ("index", "rebuild", "rows"))
    assert faiss_only["count"] == rebuild["count"] == rows["count"] == n
    index_bytes = n * (4 * d + 8)
    assert rebuild["growth"] <= 3 * index_bytes + 16 * 2**20, (rebuild, index_bytes)
    beyond = rebuild["growth"] - faiss_only["growth"]
    assert beyond < rows["growth"] / 4, (rebuild, faiss_only, rows)


def test_a_new_catalog_keeps_a_512_d_vector_in_little_more_than_its_1024_bytes(catalog, tmp_path):
    """float16 (2 bytes a value) in 16 KB pages: 15 rows a page, so about 1.1 KB a vector on
    disk; float32 rows in 4 KB pages took a page each (4.1 KB, `bench/storage.py`)."""
    model = catalog.ensure_model("m/random", 512)
    n = 3000
    catalog.add_texts("a", [f"t{i}" for i in range(n)])
    ids = sorted(catalog.text_ids("a").values())
    for start in range(0, n, 1000):
        catalog.write_text_vectors(model.id, ids[start:start + 1000],
                                   unit_rows(1000, 512, seed=start))
    with sqlite3.connect(tmp_path / "catalog.sqlite") as raw:
        try:
            used = raw.execute("SELECT SUM(pgsize) FROM dbstat WHERE name IN (SELECT name FROM "
                               "sqlite_master WHERE tbl_name = 'text_embeddings')").fetchone()[0]
        except sqlite3.OperationalError:
            pytest.skip("this SQLite has no dbstat table")
    assert used / n < 1.2 * 1024, used / n


def test_an_index_file_far_behind_the_catalog_catches_up_batch_by_batch(tmp_path):
    """Loading an index that lacks more vectors than a batch adds them all (read a batch of ids
    at a time), each with the catalog's own vector."""
    from searchengine.index.spaces import VectorSpace
    from searchengine.index.vectors import VectorIndex

    n, d = BATCH_SIZE + 7, 4
    path = tmp_path / "catalog.sqlite"
    _fill_texts(path, n, d)
    catalog = Catalog(f"sqlite:///{path}")
    [model] = catalog.models()
    ids, vectors = catalog.vectors("text", model.id)
    VectorSpace(catalog, tmp_path, model, "text", "flat").save(
        VectorIndex.build("flat", d, ids[:5], vectors[:5]))
    space = VectorSpace(catalog, tmp_path, model, "text", "flat")
    assert space.index.count == n
    np.testing.assert_array_equal(np.sort(space.index.ids()), ids)
    np.testing.assert_array_equal(space.index.reconstruct_batch(ids), vectors)
    catalog.close()
