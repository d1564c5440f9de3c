"""Vector spaces against the catalog: every index kind through changes, searches that write
nothing, commands killed between the catalog commit and the index save, a server that follows
what other processes index, and indexes built from streamed batches."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_MODEL, fast_ingest, write_image
from float_noise import stored_score_noise

from searchengine.errors import InvalidInputError
from searchengine.index.spaces import VectorSpace
from searchengine.index.vectors import INDEX_KINDS, VectorIndex

pytestmark = pytest.mark.usefixtures("reuse_random_encoders")
ALL_PHOTOS = 9  # conftest.photo_folder: 8 JPEGs and a PNG


def index(engine, *folders: Path, **kwargs):
    return engine.index(list(folders), model=TINY_MODEL, settings=fast_ingest(), **kwargs)


def touch_later(path: Path) -> None:
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))


def assert_in_step(open_engine, home: Path) -> None:
    """The file on disk holds each catalogued id once, with the catalog's own vector, and a
    search over everything returns each image once."""
    engine = open_engine(home)
    report = engine.check()
    assert report.ok, [s.summary for s in report.spaces]
    space = engine.space(TINY_MODEL, "image")
    on_disk = VectorIndex.load(space.path, space._expected())
    ids, vectors = engine.vectors("image", model=TINY_MODEL)
    assert sorted(on_disk.ids().tolist()) == ids.tolist()
    for media_id, vector in zip(ids, vectors, strict=True):  # copies of the stored bytes
        np.testing.assert_array_equal(on_disk.reconstruct(int(media_id)), vector)
    hits = [h.id for h in engine.search("a photo", k=50, model=TINY_MODEL).hits]
    assert sorted(hits) == ids.tolist()  # no image twice, none missing


# -- defect 2: every index kind through change, rename, delete and re-add -------------------


@pytest.mark.parametrize("kind", list(INDEX_KINDS))
def test_every_index_kind_follows_change_rename_delete_and_readd(
    open_engine, tmp_path, copy_photos, photo_folder, kind
):
    home = tmp_path / "home"
    engine = open_engine(home)
    index(engine, copy_photos, index_kind=kind)
    assert_in_step(open_engine, home)
    changed = copy_photos / "photo_1.jpg"
    write_image(changed, seed=90)  # an edit: same path, same id, new content
    touch_later(changed)
    assert index(engine, copy_photos).embedded == 1
    assert_in_step(open_engine, home)
    (copy_photos / "photo_2.jpg").rename(copy_photos / "renamed.jpg")
    index(engine, copy_photos)
    assert_in_step(open_engine, home)
    (copy_photos / "photo_3.jpg").unlink()
    assert index(engine, copy_photos).removed == 1
    assert_in_step(open_engine, home)
    shutil.copy(photo_folder / "photo_3.jpg", copy_photos / "photo_3.jpg")
    index(engine, copy_photos)
    assert_in_step(open_engine, home)
    assert open_engine(home).catalog.count_media() == ALL_PHOTOS
    assert [s.kind for s in open_engine(home).status().spaces] == [kind]


def test_a_change_in_many_batches_rebuilds_an_approximate_index_once_per_save(
    open_engine, tmp_path, copy_photos, monkeypatch
):
    engine = open_engine(tmp_path / "home")
    index(engine, copy_photos, index_kind="hnsw")
    changed = sorted(copy_photos.glob("photo_*.jpg"))
    for number, path in enumerate(changed):
        write_image(path, seed=200 + number)
        touch_later(path)
    builds = []
    original = VectorIndex.build_from_batches.__func__
    monkeypatch.setattr(VectorIndex, "build_from_batches", classmethod(
        lambda cls, *args, **options: builds.append(args[2]) or original(cls, *args, **options)))
    settings = fast_ingest(batch_size=2, save_every=100)
    report = engine.index([copy_photos], model=TINY_MODEL, settings=settings)
    assert report.embedded == len(changed) > 4  # in several batches, one final save
    assert len(builds) == 1
    assert_in_step(open_engine, engine.home)


# -- defect 5: reading never writes ---------------------------------------------------------


def test_routine_rebuilds_are_not_reported_as_damage(open_engine, tmp_path, copy_photos, caplog):
    """Removing photos from an hnsw home and switching a home to another kind rebuild the index
    from the catalog as a matter of course: information, not a warning that reads like damage.
    A garbage index file still is a warning."""
    engine = open_engine(tmp_path / "home")
    index(engine, copy_photos, index_kind="hnsw")
    with caplog.at_level("INFO", logger="searchengine"):
        engine.remove([copy_photos / "photo_1.jpg"])
        index(engine, copy_photos, index_kind="flat")  # re-adds photo_1, in another kind
    routine = [r for r in caplog.records if r.name == "searchengine.index.spaces"]
    assert routine and all(r.levelname == "INFO" for r in routine), [r.message for r in routine]
    assert engine.check().ok
    caplog.clear()
    path = engine.space(TINY_MODEL, "image").path
    path.write_bytes(b"garbage")
    with caplog.at_level("INFO", logger="searchengine"):
        assert len(open_engine(engine.home).search("a photo", k=3, model=TINY_MODEL).hits) == 3
    assert any(r.levelname == "WARNING" and "instead" in r.message for r in caplog.records)


def test_an_index_file_of_an_older_catalog_is_rebuilt_and_said_until_a_writer_saves_it(
    open_engine, tmp_path, copy_photos, caplog
):
    """An index file written under an older catalog schema (an upgrade of searchengine) is
    rebuilt in memory by every reader: a warning says so and what saves a current file, and
    the next `index` does save it."""
    import json

    from searchengine.index.vectors import manifest_path

    engine = open_engine(tmp_path / "home")
    index(engine, copy_photos)
    manifest = manifest_path(engine.space(TINY_MODEL, "image").path)
    data = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**data, "catalog_revision": "0001"}))
    for _ in range(2):  # each reader, again
        caplog.clear()
        with caplog.at_level("INFO", logger="searchengine"):
            hits = open_engine(engine.home).search("a photo", k=3, model=TINY_MODEL).hits
        assert len(hits) == 3
        said = [r for r in caplog.records if r.levelname == "WARNING"]
        assert len(said) == 1 and "next `searchengine index` saves" in said[0].message
    index(open_engine(engine.home), copy_photos)
    assert json.loads(manifest.read_text())["catalog_revision"] == data["catalog_revision"]
    caplog.clear()
    with caplog.at_level("INFO", logger="searchengine"):
        open_engine(engine.home).search("a photo", k=3, model=TINY_MODEL)
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def snapshot(home: Path) -> dict[str, tuple[int, int, int]]:
    """Every file under `home`: (inode, size, mtime in ns)."""
    return {
        str(path.relative_to(home)): (path.stat().st_ino, path.stat().st_size,
                                      path.stat().st_mtime_ns)
        for path in sorted(home.rglob("*"))
        if path.is_file()
    }


@pytest.mark.parametrize("state", ["in step", "lagging", "missing", "garbage", "no kind setting"])
def test_a_search_writes_nothing_in_the_home(open_engine, tmp_path, copy_photos, state):
    from sqlalchemy import delete

    from searchengine.catalog.schema import Setting

    home = tmp_path / "home"
    writer = open_engine(home)
    index(writer, copy_photos, index_kind="hnsw")
    path = writer.space(TINY_MODEL, "image").path
    if state == "lagging":  # the state a writer killed before its index save leaves
        extra = write_image(tmp_path / "more" / "extra.jpg", seed=123)
        original = VectorSpace.save
        VectorSpace.save = lambda self, index=None: None
        try:
            writer.index([extra.parent], model=TINY_MODEL, settings=fast_ingest())
        finally:
            VectorSpace.save = original
    elif state == "missing":
        path.unlink()
    elif state == "garbage":
        path.write_bytes(b"garbage" * 100)
    elif state == "no kind setting":  # a home written before the kind was recorded
        with writer.catalog.session() as session, session.begin():
            session.execute(delete(Setting).where(Setting.key.like("index_kind:%")))
    writer.close()
    expected = writer.catalog.count_vectors("image", writer.catalog.find_model(TINY_MODEL).id)
    before = snapshot(home)
    reader = open_engine(home)
    hits = reader.search("a photo", k=50, model=TINY_MODEL).hits
    assert len({h.id for h in hits}) == len(hits) == expected
    reader.similar(hits[0].id, k=3, model=TINY_MODEL)
    reader.status()
    reader.check()
    reader.close()
    assert snapshot(home) == before


def read_only_mount_works() -> bool:
    probe = "mount --bind /tmp /tmp && mount -o remount,bind,ro /tmp && ! touch /tmp/.probe"
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-m", "sh", "-c", probe], capture_output=True).returncode == 0


@pytest.mark.skipif(not read_only_mount_works(), reason="needs `unshare -m` and bind mounts")
@pytest.mark.parametrize("state", ["lagging", "missing", "garbage"])
def test_a_search_works_on_index_files_on_a_read_only_file_system(
    open_engine, tmp_path, copy_photos, state
):
    """The home's vectors/ folder mounted read-only (root ignores file modes, not mounts)."""
    home = tmp_path / "home"
    writer = open_engine(home)
    index(writer, copy_photos, index_kind="hnsw")
    path = writer.space(TINY_MODEL, "image").path
    if state == "lagging":  # a file one folder behind the catalog
        (home / "saved").mkdir()
        for name in (path.name, path.name + ".manifest.json"):
            shutil.copy(path.with_name(name), home / "saved" / name)
        writer.index([write_image(tmp_path / "more" / "extra.jpg", seed=123).parent],
                     model=TINY_MODEL, settings=fast_ingest())
        for name in (path.name, path.name + ".manifest.json"):
            shutil.copy(home / "saved" / name, path.with_name(name))
    elif state == "missing":
        path.unlink()
    else:
        path.write_bytes(b"garbage" * 100)
    expected = writer.catalog.count_vectors("image", writer.catalog.find_model(TINY_MODEL).id)
    writer.close()
    script = textwrap.dedent(f"""
        from searchengine.engine import Engine
        with Engine.open({str(home)!r}) as engine:
            hits = engine.search("a photo", k=50, model={TINY_MODEL!r}).hits
            print(len({{h.id for h in hits}}), len(hits))
    """)
    vectors = home / "vectors"
    mount = f"mount --bind {vectors} {vectors} && mount -o remount,bind,ro {vectors}"
    child = subprocess.run(
        ["unshare", "-m", "sh", "-c", f'{mount} && exec "$0" -c "$1"', sys.executable, script],
        capture_output=True, text=True, timeout=300,
    )
    assert child.returncode == 0, child.stderr[-2000:]
    assert child.stdout.split() == [str(expected), str(expected)]


@pytest.mark.skipif(not read_only_mount_works(), reason="needs `unshare -m` and bind mounts")
def test_a_whole_home_on_a_read_only_file_system_answers_searches(open_engine, tmp_path,
                                                                  copy_photos, captions_csv):
    """A home mounted read-only as a whole (an archive, a replica): the catalog opens read-only,
    search, similar, lookup, status and check answer, and a write says why it cannot."""
    home = tmp_path / "home"
    writer = open_engine(home)
    index(writer, copy_photos)
    writer.add_texts(captions_csv, column="caption", text_set="captions", model=TINY_MODEL)
    expected = writer.catalog.count_vectors("image", writer.catalog.find_model(TINY_MODEL).id)
    photo = sorted(copy_photos.glob("*.jpg"))[0]
    writer.close()
    script = textwrap.dedent(f"""
        from searchengine.engine import Engine
        from searchengine.errors import SearchEngineError
        with Engine.open({str(home)!r}, create=False) as engine:
            hits = engine.search("a photo", k=50, model={TINY_MODEL!r}).hits
            print(len({{h.id for h in hits}}), len(hits))
            print(len(engine.similar({str(photo)!r}, k=3, model={TINY_MODEL!r}).hits))
            print(len(engine.lookup({str(photo)!r}, k=2, model={TINY_MODEL!r}).hits))
            print(engine.status().images, engine.check().ok)
            try:
                engine.remove([{str(photo)!r}])
            except SearchEngineError as error:
                print("refused:", type(error).__name__)
    """)
    mount = f"mount --bind {home} {home} && mount -o remount,bind,ro {home}"
    child = subprocess.run(
        ["unshare", "-m", "sh", "-c", f'{mount} && exec "$0" -c "$1"', sys.executable, script],
        capture_output=True, text=True, timeout=300,
    )
    assert child.returncode == 0, child.stderr[-2000:]
    lines = child.stdout.splitlines()
    assert lines[:4] == [f"{expected} {expected}", "3", "2", f"{expected} True"]
    assert lines[4].startswith("refused: ") and "Traceback" not in child.stderr


# -- defect 10: a command killed between its catalog commit and its index save -------------

KILL_AT_INDEX_SAVE = """
import os, signal
import searchengine.index.vectors as vectors
from searchengine.engine import Engine
from searchengine.settings import IngestSettings

original = vectors._fsync
def fsync(path):
    original(path)
    if path.name.endswith(".tmp") and ".manifest" not in path.name:
        os.kill(os.getpid(), signal.SIGKILL)  # the index written to its temporary file, no more
vectors._fsync = fsync
engine = Engine.open({home!r})
"""


def run_killed(home: Path, command: str) -> None:
    """Run `command` on an Engine in a child process that SIGKILLs itself while saving an index
    (after the catalog committed, before the rename): a crash at the worst moment."""
    script = textwrap.dedent(KILL_AT_INDEX_SAVE.format(home=str(home))) + command
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=300)
    assert child.returncode == -9, child.stderr.decode()[-2000:]


def temporary_files(home: Path) -> list[Path]:
    return sorted((home / "vectors").glob("*.tmp"))


@pytest.fixture(scope="module")
def killed_remove_template(tmp_path_factory, photo_folder) -> tuple[Path, Path]:
    """(home, photos): a home whose `remove` of photos/away was killed after its catalog commit;
    made once (a child process), copied for each test."""
    from searchengine.engine import Engine

    root = tmp_path_factory.mktemp("killed_remove")
    photos = root / "photos"
    shutil.copytree(photo_folder, photos)
    for number in range(3):
        write_image(photos / "away" / f"away_{number}.jpg", seed=300 + number)
    with Engine.open(root / "home") as engine:
        index(engine, photos)
    run_killed(root / "home", f"engine.remove([{str(photos / 'away')!r}])\n")
    return root / "home", photos


@pytest.fixture()
def killed_remove(killed_remove_template, tmp_path) -> Path:
    home = tmp_path / "home"
    shutil.copytree(killed_remove_template[0], home)
    return home


def test_check_after_a_killed_remove_says_what_is_out_of_step(open_engine, killed_remove):
    engine = open_engine(killed_remove)
    assert engine.catalog.count_media() == ALL_PHOTOS  # the catalog committed the removal
    assert temporary_files(killed_remove)  # the crashed save's full copy
    report = engine.check()
    [image] = report.spaces
    assert (image.ok, image.extra, image.missing) == (False, 3, 0)
    assert "3 index entries for vectors the catalog no longer has" in image.summary
    assert "check --repair" in image.summary


@pytest.mark.parametrize("next_command", ["remove again", "index", "add-texts", "use-model",
                                          "check --repair"])
def test_the_next_writer_after_a_killed_remove_repairs_the_index(
    open_engine, killed_remove, killed_remove_template, captions_csv, next_command
):
    photos = killed_remove_template[1]
    engine = open_engine(killed_remove)
    if next_command == "remove again":
        with pytest.raises(InvalidInputError, match="nothing catalogued"):
            engine.remove([photos / "away"])
    elif next_command == "index":
        index(engine, photos / "photo_0.jpg")
    elif next_command == "add-texts":
        engine.add_texts(captions_csv, text_set="captions", model=TINY_MODEL)
    elif next_command == "use-model":
        engine.use_model(TINY_MODEL)
    else:
        assert engine.check(repair=True).ok
    assert_in_step(open_engine, killed_remove)
    assert temporary_files(killed_remove) == []


def test_the_next_writer_after_a_killed_index_repairs_the_index(
    open_engine, tmp_path, copy_photos
):
    home = tmp_path / "home"
    more = tmp_path / "more"
    for number in range(5):
        write_image(more / f"more_{number}.jpg", seed=400 + number)
    engine = open_engine(home)
    index(engine, copy_photos)
    engine.close()
    run_killed(home, f"""
engine.index([{str(more)!r}], model={TINY_MODEL!r},
             settings=IngestSettings(workers=0, batch_size=2, save_every=2))
""")
    assert open_engine(home).catalog.count_media() == ALL_PHOTOS + 4  # two batches committed
    [image] = open_engine(home).check().spaces
    assert (image.ok, image.missing, image.extra) == (False, 4, 0)
    assert "4 catalogued vectors missing from the index" in image.summary
    with pytest.raises(InvalidInputError, match="nothing catalogued"):
        open_engine(home).remove([tmp_path / "elsewhere"])
    assert_in_step(open_engine, home)
    assert temporary_files(home) == []


@pytest.mark.parametrize("next_command", ["search", "use-model", "index"])
def test_a_killed_index_of_a_changed_file_leaves_no_old_vector(
    open_engine, tmp_path, copy_photos, next_command
):
    """The catalog committed the file's new vector under its old id; the index file still holds
    the old one: the same ids, the same count, only the vector differs."""
    home = tmp_path / "home"
    engine = open_engine(home)
    index(engine, copy_photos)
    engine.close()
    changed = copy_photos / "photo_1.jpg"
    write_image(changed, seed=91)
    touch_later(changed)
    run_killed(home, f"""
engine.index([{str(copy_photos)!r}], model={TINY_MODEL!r}, settings=IngestSettings(workers=0))
""")
    [image] = open_engine(home).check().spaces
    assert (image.ok, image.stale, image.missing, image.extra) == (False, 1, 0, 0)
    assert "1 vectors older than the catalog's" in image.summary
    reader = open_engine(home)
    media_id = reader.catalog.media_by_path(str(changed)).id
    top = reader.similar(changed, k=1, model=TINY_MODEL).hits[0]
    assert top.id == media_id and top.score == pytest.approx(1.0, abs=stored_score_noise(64))
    if next_command == "use-model":
        open_engine(home).use_model(TINY_MODEL)
    elif next_command == "index":
        assert index(open_engine(home), copy_photos).embedded == 0
    if next_command != "search":
        assert_in_step(open_engine, home)
        assert not list((home / "vectors").glob("*.writing"))


def test_a_live_writers_temporary_file_is_kept(tmp_path):
    from searchengine.index.vectors import remove_stale_temps

    folder = tmp_path / "vectors"
    folder.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = folder / f"x.image.faiss.pid{sleeper.pid}.ab12cd34.tmp"
        live.write_bytes(b"being written")
        dead_child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                                    capture_output=True, text=True, check=True)
        dead = folder / f"x.image.faiss.pid{int(dead_child.stdout)}.ab12cd34.tmp"
        dead.write_bytes(b"left by a crash")
        assert remove_stale_temps(folder) == [dead]
        assert live.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


# -- seam: stored vectors stream ------------------------------------------------------------


@pytest.fixture()
def stored_texts(tmp_path):
    """A catalog holding 230 text vectors (d=16, unit rows) of one model, ids not contiguous."""
    from searchengine.catalog import Catalog

    catalog = Catalog(f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    model = catalog.ensure_model("test/model", 16)
    catalog.add_texts("a", [f"text {i}" for i in range(300)])
    ids = np.array(sorted(catalog.text_ids("a").values()), dtype=np.int64)
    keep = ids[np.random.default_rng(0).permutation(len(ids))[:230]]
    vectors = np.random.default_rng(1).standard_normal((len(keep), 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    catalog.write_text_vectors(model.id, keep, vectors)
    yield catalog, model
    catalog.close()


def test_iter_vectors_streams_every_stored_vector_in_id_order(stored_texts):
    catalog, model = stored_texts
    all_ids, all_vectors = catalog.vectors("text", model.id)
    batches = list(catalog.iter_vectors("text", model.id, batch_size=50))
    assert [len(ids) for ids, _ in batches] == [50, 50, 50, 50, 30]
    assert all(ids.dtype == np.int64 and v.dtype == np.float32 for ids, v in batches)
    np.testing.assert_array_equal(np.concatenate([ids for ids, _ in batches]), all_ids)
    np.testing.assert_array_equal(np.vstack([v for _, v in batches]), all_vectors)
    assert catalog.vector_stats("text", model.id) == (230, int(all_ids.sum()))
    with pytest.raises(InvalidInputError):
        next(catalog.iter_vectors("text", model.id, batch_size=0))


@pytest.mark.parametrize("kind", list(INDEX_KINDS))
def test_an_index_built_from_batches_equals_one_built_from_all_rows(stored_texts, kind):
    catalog, model = stored_texts
    ids, vectors = catalog.vectors("text", model.id)
    whole = VectorIndex.build(kind, 16, ids, vectors)
    streamed = VectorIndex.build_from_batches(
        kind, 16, len(ids), lambda: catalog.iter_vectors("text", model.id, batch_size=17)
    )
    assert streamed.count == whole.count == len(ids)
    np.testing.assert_array_equal(streamed.ids(), whole.ids())
    for vector_id in ids:
        np.testing.assert_array_equal(
            streamed.reconstruct(int(vector_id)), whole.reconstruct(int(vector_id))
        )
    for vector_id, vector in zip(ids, vectors, strict=True):
        np.testing.assert_array_equal(streamed.reconstruct(int(vector_id)), vector)


def test_the_ivf_training_sample_is_spread_over_all_batches():
    from searchengine.index.vectors import _training_sample

    vectors = np.arange(103 * 2, dtype=np.float32).reshape(103, 2)
    batches = [(np.arange(s, min(s + 10, 103)), vectors[s : s + 10]) for s in range(0, 103, 10)]
    sample = _training_sample(batches, 103, 20)
    np.testing.assert_array_equal(sample, vectors[::6])  # every ceil(103 / 20) = 6th row


# -- defect 11: a running server follows what other engines write --------------------------


def test_a_running_server_follows_index_remove_and_use_model(
    open_engine, tmp_path, copy_photos, tiny_checkpoint
):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from searchengine.server import create_app

    home = tmp_path / "home"
    writer = open_engine(home)
    index(writer, copy_photos)
    writer.use_model(TINY_MODEL)
    client = TestClient(create_app(open_engine(home)), raise_server_exceptions=False)

    def served() -> tuple[str, set[int]]:
        response = client.get("/api/search", params={"q": "a photo", "k": 50})
        assert response.status_code == 200, response.text
        body = response.json()
        return body["model"], {hit["id"] for hit in body["hits"]}

    assert served() == (TINY_MODEL, set(writer.vectors("image")[0].tolist()))
    more = tmp_path / "more"
    for number in range(3):
        write_image(more / f"more_{number}.jpg", seed=500 + number)
    other = open_engine(home)  # another engine, as another process would be
    index(other, more)
    new_ids = set(other.media_ids_by_path(sorted(more.iterdir())).values())
    assert len(new_ids) == 3
    model, hits = served()
    assert new_ids <= hits and len(hits) == ALL_PHOTOS + 3
    assert client.get("/api/status").json()["images"] == ALL_PHOTOS + 3
    other.remove([more])
    model, hits = served()
    assert not new_ids & hits and len(hits) == ALL_PHOTOS
    second = f"se-tiny/{tiny_checkpoint}"
    other.index([copy_photos], model=second, settings=fast_ingest())
    other.use_model(second)
    deadline = time.monotonic() + 60  # the old model answers while the new one loads
    while (answer := served())[0] != second and time.monotonic() < deadline:
        time.sleep(0.05)
    model, hits = answer
    assert model == second and len(hits) == ALL_PHOTOS
    assert client.get("/api/status").json()["serving_model"] == second
