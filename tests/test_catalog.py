"""The catalog: Alembic-only schema, WAL mode, upserts, skips, texts and durable vectors.

The tests of the catalog's operations run on both backends (the `catalog_url` fixture: the home's
SQLite file, then a PostgreSQL database of the test server)."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pytest
from sqlalchemy import create_engine, inspect, text

from searchengine.catalog import Catalog, NewImage, Skip, as_stored, head_revision
from searchengine.catalog.schema import Base
from searchengine.errors import CatalogError
from searchengine.images import ImageInfo

INFO = ImageInfo(width=40, height=30, format="JPEG", taken_at=datetime(2024, 5, 1, 12), camera="X1")


def vec(seed: int, dim: int = 4) -> np.ndarray:
    """A unit vector in the catalog's stored form (float16 values), so it reads back exactly."""
    x = np.random.default_rng(seed).normal(size=dim).astype(np.float32)
    return as_stored(x / np.linalg.norm(x))


def image(path: str, content_hash: str = "h", size: int = 10) -> NewImage:
    return NewImage(path, size, 1_000, content_hash, INFO)


@pytest.fixture()
def catalog(tmp_path, catalog_url):
    catalog = Catalog(catalog_url) if catalog_url else Catalog.in_home(tmp_path / "home")
    yield catalog
    catalog.close()


def test_migrations_create_exactly_the_models(empty_database):
    """Upgrade an empty database to head; autogenerate must find nothing to change."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    catalog = Catalog(empty_database)
    assert catalog.revision() == head_revision() != "base"
    with catalog.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
        tables = set(inspect(connection).get_table_names())
    catalog.close()
    assert set(Base.metadata.tables) <= tables and "alembic_version" in tables


def test_the_head_revision_constant_is_alembics_head(tmp_path):
    """Opening a catalog at HEAD_REVISION skips Alembic, so the constant must name the newest
    migration (a catalog at an older one is upgraded: tests/test_search_filters.py, 0003)."""
    from sqlalchemy import create_engine

    from searchengine.catalog.store import HEAD_REVISION, recorded_revision

    assert head_revision() == HEAD_REVISION
    catalog = Catalog.in_home(tmp_path)
    assert recorded_revision(catalog.engine) == HEAD_REVISION
    catalog.close()
    empty = create_engine(f"sqlite:///{tmp_path / 'empty.sqlite'}")  # what a new file reads as
    assert recorded_revision(empty) is None
    empty.dispose()


def test_reopening_keeps_the_data_and_the_revision(tmp_path):
    catalog = Catalog.in_home(tmp_path)
    model = catalog.ensure_model("m/random", 4)
    catalog.write_images(model.id, [image("/p/a.jpg")], vec(0)[None], [])
    catalog.close()
    again = Catalog.in_home(tmp_path)
    assert again.count_media() == 1 and again.revision() == head_revision()
    assert again.find_model("m/random") == model
    again.close()


def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path):
    catalog = Catalog.in_home(tmp_path)
    with catalog.engine.connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1
    catalog.close()


def test_a_file_that_is_not_a_database_is_a_catalog_error(tmp_path):
    (tmp_path / "catalog.sqlite").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(CatalogError, match="cannot open the catalog"):
        Catalog.in_home(tmp_path)


def test_model_dimension_change_is_refused(catalog):
    first = catalog.ensure_model("m/random", 4)
    assert catalog.ensure_model("m/random", 4) == first
    with pytest.raises(CatalogError, match="dimension 4"):
        catalog.ensure_model("m/random", 8)


def test_write_images_upserts_and_keeps_ids(catalog):
    model = catalog.ensure_model("m/random", 4)
    first = catalog.write_images(model.id, [image("/p/a.jpg"), image("/p/b.jpg", "hb")],
                                 np.stack([vec(0), vec(1)]), [])
    again = catalog.write_images(model.id, [image("/p/a.jpg", "h2", size=11)], vec(2)[None], [])
    assert again.ids == first.ids[:1] and again.removed == []
    row = catalog.media_by_path("/p/a.jpg")
    assert (row.size, row.content_hash, row.camera, row.taken_at) == (11, "h2", "X1", INFO.taken_at)
    ids, vectors = catalog.vectors("image", model.id)
    assert ids.tolist() == sorted(first.ids)
    np.testing.assert_array_equal(vectors[0], vec(2))
    assert vectors.dtype == np.float32


def test_a_batch_mixing_new_and_known_files_keeps_order_and_vectors(catalog):
    """Bulk insert returns ids in the order given; each vector lands on its own file."""
    one, two = catalog.ensure_model("a/random", 4), catalog.ensure_model("b/random", 4)
    first = catalog.write_images(one.id, [image("/p/b.jpg", "hb"), image("/p/d.jpg", "hd")],
                                 np.stack([vec(0), vec(1)]), [])
    catalog.add_image_vectors(two.id, first.ids, np.stack([vec(8), vec(9)]))
    batch = [image("/p/e.jpg", "he"), image("/p/b.jpg", "hb", size=12), image("/p/a.jpg", "ha"),
             image("/p/d.jpg", "hd-changed"), image("/p/c.jpg", "hc")]
    written = catalog.write_images(one.id, batch, np.stack([vec(i) for i in range(10, 15)]), [])
    assert written.ids[1] == first.ids[0] and written.ids[3] == first.ids[1]
    assert len(set(written.ids)) == 5
    by_path = {p: catalog.media_by_path(p).id for p in ("/p/a.jpg", "/p/c.jpg", "/p/e.jpg")}
    assert [written.ids[i] for i in (2, 4, 0)] == [by_path[p] for p in ("/p/a.jpg", "/p/c.jpg",
                                                                       "/p/e.jpg")]
    ids, vectors = catalog.vectors("image", one.id)
    stored = dict(zip(ids.tolist(), vectors, strict=True))
    for i, media_id in enumerate(written.ids):
        np.testing.assert_array_equal(stored[media_id], vec(10 + i))
    # the other model keeps the vector of the unchanged file and loses the changed one's
    two_ids, two_vectors = catalog.vectors("image", two.id)
    assert two_ids.tolist() == [first.ids[0]]
    np.testing.assert_array_equal(two_vectors[0], vec(8))


def test_changed_content_drops_the_vectors_of_other_models(catalog):
    one, two = catalog.ensure_model("a/random", 4), catalog.ensure_model("b/random", 4)
    [media_id] = catalog.write_images(one.id, [image("/p/a.jpg")], vec(0)[None], []).ids
    catalog.add_image_vectors(two.id, [media_id], vec(1)[None])
    assert catalog.count_vectors("image", two.id) == 1
    catalog.write_images(one.id, [image("/p/a.jpg", "changed")], vec(2)[None], [])
    assert catalog.count_vectors("image", two.id) == 0
    assert catalog.count_vectors("image", one.id) == 1


def test_a_file_that_becomes_bad_is_forgotten_and_recorded(catalog):
    model = catalog.ensure_model("m/random", 4)
    [media_id] = catalog.write_images(model.id, [image("/p/a.jpg")], vec(0)[None], []).ids
    bad = Skip("/p/a.jpg", 3, 5, "corrupt")
    written = catalog.write_images(model.id, [], np.zeros((0, 4)), [bad])
    assert written.removed == [media_id]
    assert catalog.count_media() == 0 and catalog.count_vectors("image", model.id) == 0
    assert catalog.skipped() == [Skip("/p/a.jpg", 3, 5, "corrupt")]
    catalog.write_images(model.id, [image("/p/a.jpg")], vec(0)[None], [])  # repaired
    assert catalog.skipped() == [] and catalog.count_media() == 1


def test_files_under_matches_folders_not_prefixes(catalog):
    model = catalog.ensure_model("m/random", 4)
    paths = ["/p/a.jpg", "/p/sub/b.jpg", "/p2/c.jpg", "/p_x/d%.jpg"]
    vectors = np.stack([vec(i) for i in range(4)])
    catalog.write_images(model.id, [image(p, p) for p in paths], vectors, [])
    assert sorted(catalog.files_under(["/p"])) == ["/p/a.jpg", "/p/sub/b.jpg"]
    assert sorted(catalog.files_under(["/p/sub/b.jpg", "/p2/"])) == ["/p/sub/b.jpg", "/p2/c.jpg"]
    assert list(catalog.files_under(["/p_"])) == []  # LIKE wildcards are escaped


def test_remove_files_takes_vectors_and_skips(catalog):
    model = catalog.ensure_model("m/random", 4)
    ids = catalog.write_images(model.id, [image("/p/a.jpg"), image("/p/b.jpg", "x")],
                               np.stack([vec(0), vec(1)]), [Skip("/p/bad.jpg", 0, 0, "empty")]).ids
    assert sorted(catalog.remove_files(["/p/a.jpg", "/p/bad.jpg"])) == [ids[0]]
    assert catalog.vector_ids("image", model.id).tolist() == [ids[1]]
    assert catalog.skipped() == []


def test_vectors_by_hash_finds_reusable_vectors(catalog):
    model = catalog.ensure_model("m/random", 4)
    catalog.write_images(model.id, [image("/p/a.jpg", "hash-a")], vec(0)[None], [])
    found = catalog.vectors_by_hash(model.id, ["hash-a", "hash-b"])
    assert list(found) == ["hash-a"]
    np.testing.assert_array_equal(np.frombuffer(found["hash-a"], np.float32), vec(0))
    other = catalog.ensure_model("n/random", 4)
    assert catalog.vectors_by_hash(other.id, ["hash-a"]) == {}


def test_texts_are_deduplicated_per_set(catalog):
    assert catalog.add_texts("a", ["x", "y", "x"]) == 2
    assert catalog.add_texts("a", ["y", "z"]) == 1
    assert catalog.add_texts("b", ["x"]) == 1
    assert catalog.text_sets() == {"a": 3, "b": 1}
    assert set(catalog.text_ids("a")) == {"x", "y", "z"}
    model = catalog.ensure_model("m/random", 4)
    pending = catalog.texts_without_vector(model.id)
    assert len(pending) == 4
    catalog.write_text_vectors(model.id, [pending[0][0]], vec(0)[None])
    assert len(catalog.texts_without_vector(model.id)) == 3
    assert catalog.vector_ids("text", model.id).tolist() == [pending[0][0]]


def test_settings_round_trip(catalog):
    assert catalog.get_setting("k") is None
    catalog.set_setting("k", "v1")
    catalog.set_setting("k", "v2")
    assert catalog.get_setting("k") == "v2"


def test_catalog_url_other_than_the_home(tmp_path):
    url = f"sqlite:///{tmp_path / 'elsewhere.sqlite'}"
    Catalog(url).close()
    engine = create_engine(url)
    with engine.connect() as connection:
        stored = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    assert stored == head_revision()
    engine.dispose()


def test_a_catalog_names_itself_once(catalog, catalog_url, tmp_path):
    """The id index files record (`Catalog.identity`): made by the first writer that asks, the
    same for every later reader."""
    assert catalog.identity() is None
    made = catalog.identity(create=True)
    assert made and catalog.identity(create=True) == made
    again = Catalog(catalog_url) if catalog_url else Catalog.in_home(tmp_path / "home")
    assert again.identity() == again.identity(create=True) == made
    again.close()
