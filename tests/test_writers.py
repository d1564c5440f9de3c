"""Writers to one home: the home lock, schema upgrades by two processes at once, idempotent
catalog writes, database errors as CatalogError, and homes that readers never create."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from searchengine.catalog import Catalog, NewImage, head_revision
from searchengine.catalog.lock import HomeLock
from searchengine.catalog.schema import TextEmbedding
from searchengine.errors import CatalogError, HomeBusyError, NotIndexedError
from searchengine.images import ImageInfo
from tests.conftest import TINY_MODEL, catalog_args, write_image

BUSY = "another `searchengine "
INFO = ImageInfo(width=40, height=30, format="JPEG", taken_at=None, camera=None)

# Runs `searchengine ARGS...` once every racer named in the folder has imported the library, so
# that the commands really run at the same time (imports take seconds, unevenly). With WAIT
# "URL:N" it starts only once the catalog at that database URL holds more than N files (another
# racer is midway).
RACER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from searchengine.settings import passive_openmp_waits
    passive_openmp_waits()
    import faiss, open_clip, searchengine.engine, torch  # warm: the commands then start in ms
    from sqlalchemy import create_engine, text
    from searchengine.cli import cli
    gate, name, count, wait = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
    (gate / name).touch()
    deadline = time.monotonic() + 300
    while len(list(gate.iterdir())) < count and time.monotonic() < deadline:
        time.sleep(0.005)
    if wait != "-":
        url, files = wait.rsplit(":", 1)
        database = create_engine(url)
        with database.connect() as db:
            while db.execute(text("SELECT count(*) FROM media")).scalar() <= int(files):
                db.rollback()  # a new snapshot each time
                time.sleep(0.005)
        database.dispose()
    cli.main(sys.argv[5:], prog_name="searchengine")
""")


def race(
    tmp_path: Path, *commands: list[object], waits: tuple[str, ...] = ()
) -> list[subprocess.CompletedProcess]:
    """Run the CLI commands in parallel processes that start together (command n once the
    condition `waits[n]` holds, see RACER); their results."""
    waits = waits or ("-",) * len(commands)
    gate = tmp_path / f"gate-{time.monotonic_ns()}"
    gate.mkdir()
    racers = [  # noqa: S603 -- our own interpreter
        subprocess.Popen(
            [sys.executable, "-c", RACER, gate, str(n), str(len(commands)), waits[n],
             *map(str, command)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n, command in enumerate(commands)
    ]
    results = []
    for racer, command in zip(racers, commands, strict=True):
        stdout, stderr = racer.communicate(timeout=600)
        results.append(subprocess.CompletedProcess(command, racer.returncode, stdout, stderr))
    return results


def assert_finished_or_told(result: subprocess.CompletedProcess) -> bool:
    """A racer either finished, or was told that another writer holds the home; True if done."""
    assert "Traceback" not in result.stderr, result.stderr
    if result.returncode == 0:
        return True
    assert result.returncode == 1, result.stderr
    assert BUSY in result.stderr and "(pid " in result.stderr, result.stderr
    return False


def folder_of_photos(root: Path, name: str, count: int, first_seed: int) -> Path:
    folder = root / name
    for n in range(count):
        write_image(folder / f"{name}{n}.jpg", first_seed + n, size=(40, 30))
    return folder


def index_args(folder: Path, home: Path, catalog_url: str | None = None) -> list[object]:
    return ["index", folder, "--home", home, *catalog_args(catalog_url), "--model", TINY_MODEL,
            "--workers", 0, "--batch-size", 4]


def catalogued(engine) -> set[str]:
    return set(engine.catalog.files_under(["/"]))


def assert_home_agrees(engine, paths: set[str]) -> None:
    """`check` passes, and the catalog holds each of `paths` once (no row lost or doubled)."""
    report = engine.check()
    assert report.ok, report
    assert catalogued(engine) == paths
    assert engine.catalog.count_media() == len(paths)
    (space,) = report.spaces
    assert space.catalog_count == space.index_count == len(paths)


def database_url(home: Path, catalog_url: str | None) -> str:
    """The database URL of a home's catalog: `catalog_url`, else the home's own file."""
    return catalog_url or f"sqlite:///{home / 'catalog.sqlite'}"


@pytest.fixture()
def two_folders(tmp_path: Path) -> tuple[Path, Path]:
    return folder_of_photos(tmp_path, "a", 24, 100), folder_of_photos(tmp_path, "b", 24, 200)


def paths_in(*folders: Path) -> set[str]:
    return {str(p) for folder in folders for p in folder.iterdir()}


# -- two processes at once ---------------------------------------------------------------


@pytest.mark.parametrize("existing", [False, True], ids=["new-home", "existing-home"])
def test_two_index_processes_at_once_lose_nothing(
    tmp_path, two_folders, open_engine, cli_run, existing, catalog_url
):
    a, b = two_folders
    home = tmp_path / "home"
    if existing:
        seed = folder_of_photos(tmp_path, "seed", 1, 300)
        cli_run(*index_args(seed, home, catalog_url))
    results = race(tmp_path, index_args(a, home, catalog_url), index_args(b, home, catalog_url))
    done = [assert_finished_or_told(result) for result in results]
    assert any(done)
    for folder, finished in zip((a, b), done, strict=True):
        if not finished:  # told to wait: once the other is done it runs through
            cli_run(*index_args(folder, home, catalog_url))
    expected = paths_in(a, b) | (paths_in(tmp_path / "seed") if existing else set())
    assert_home_agrees(open_engine(home, catalog_url=catalog_url), expected)


@pytest.fixture()
def slow_folder(tmp_path: Path) -> Path:
    """Photos that take a while to decode: an `index` of them is still busy when another runs."""
    import shutil

    folder = tmp_path / "big"
    first = write_image(folder / "big0.png", 7, size=(640, 480))
    for n in range(1, 80):
        shutil.copyfile(first, folder / f"big{n}.png")
    return folder


def test_index_while_remove_keeps_catalog_and_index_in_step(
    tmp_path, two_folders, slow_folder, open_engine, cli_run, catalog_url
):
    a, _ = two_folders
    b = slow_folder
    home = tmp_path / "home"
    cli_run(*index_args(a, home, catalog_url))
    # remove starts once index has stored its first batch of b, before it has saved the index
    midway = f"{database_url(home, catalog_url)}:{len(list(a.iterdir()))}"
    remove = ["remove", a, "--home", home, *catalog_args(catalog_url)]
    results = race(tmp_path, index_args(b, home, catalog_url), remove, waits=("-", midway))
    indexed, removed = (assert_finished_or_told(result) for result in results)
    engine = open_engine(home, catalog_url=catalog_url)
    assert_home_agrees(engine, (paths_in(a) if not removed else set()) | (
        paths_in(b) if indexed else set()))
    if not indexed:
        cli_run(*index_args(b, home, catalog_url))
    if not removed:
        cli_run(*remove)
    assert_home_agrees(open_engine(home), paths_in(b))


@pytest.fixture(params=["sqlite", "postgresql"])
def shared_catalog(request, tmp_path) -> str:
    """A catalog URL that two homes share: a SQLite file outside both, or a PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shared.sqlite'}"
    return request.getfixturevalue("postgres_url")


def test_two_homes_write_one_catalog_at_once(
    tmp_path, two_folders, slow_folder, open_engine, cli_run, shared_catalog
):
    """Writers of two homes (two machines, say) on one catalog hold no common lock: the database
    alone keeps the rows whole. One indexes a and b while the other indexes a (the same rows at
    the same moment), then one indexes the slow folder while the other removes a. Nothing is
    lost or doubled, and each home's index follows the catalog: a reader sees the other home's
    work at once, and after a writer's re-sync `check` passes."""
    a, b = two_folders
    one, two = tmp_path / "one", tmp_path / "two"
    both = [*index_args(a, one, shared_catalog)]
    both[2:2] = [b]  # index a b --home one
    results = race(tmp_path, both, index_args(a, two, shared_catalog))
    assert all(assert_finished_or_told(result) for result in results)
    engine = open_engine(two, catalog_url=shared_catalog)
    assert catalogued(engine) == paths_in(a, b) and engine.catalog.count_media() == 48
    hits = engine.search("a dog", k=48, model=TINY_MODEL).hits  # b's photos, from the catalog
    assert {hit.path for hit in hits} == paths_in(a, b)
    midway = f"{shared_catalog}:48"
    remove = ["remove", a, "--home", two, "--catalog", shared_catalog]
    results = race(tmp_path, index_args(slow_folder, one, shared_catalog), remove,
                   waits=("-", midway))
    assert all(assert_finished_or_told(result) for result in results)
    for home in (one, two):
        cli_run(*index_args(b, home, shared_catalog))  # a writer: re-syncs its index first
        assert_home_agrees(open_engine(home, catalog_url=shared_catalog),
                           paths_in(b, slow_folder))


def _open_catalog(home: str, start: float) -> str:
    while time.time() < start:
        pass
    try:
        catalog = Catalog.in_home(Path(home))
    except CatalogError as error:
        return str(error)
    revision = catalog.revision()
    catalog.close()
    return revision


def test_two_processes_create_one_catalog_at_once(tmp_path):
    """Both run the Alembic upgrade of a brand-new catalog; it runs once, under SQLite's write
    lock, and neither sees "table alembic_version already exists" nor "database is locked"
    (SQLite refuses the second switch to WAL mode at once: a race lost about 1 trial in 3 on a
    quiet machine, so 12 trials)."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    with context.Pool(2) as pool:
        for trial in range(12):
            home = str(tmp_path / f"home{trial}")
            start = time.time() + 0.3
            revisions = pool.starmap(_open_catalog, [(home, start), (home, start)])
            assert revisions == [head_revision()] * 2


# -- the lock ------------------------------------------------------------------------------


def test_a_write_while_another_process_writes_names_it(indexed_copy, open_engine, photo_folder):
    engine = open_engine(indexed_copy)
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import time
            from pathlib import Path
            from searchengine.catalog.lock import HomeLock
            HomeLock(Path({str(indexed_copy)!r}), "index").acquire()
            print("held", flush=True)
            time.sleep(300)
        """)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "held\n"
        pattern = rf"another `searchengine index` \(pid {holder.pid}, since .*\) is running on "
        for write in (
            lambda: engine.index([photo_folder], model=TINY_MODEL),
            lambda: engine.remove([photo_folder]),
            lambda: engine.use_model(TINY_MODEL),
            lambda: engine.check(repair=True),
        ):
            with pytest.raises(HomeBusyError, match=pattern):
                write()
        # readers never take the lock
        assert engine.search("a red square", k=3).hits
        assert engine.status().images == len(catalogued(engine))
        assert engine.check().ok
    finally:
        holder.kill()  # SIGKILL: the kernel drops the lock with the process
        holder.wait()
    assert engine.use_model(TINY_MODEL) == TINY_MODEL


def test_a_writer_may_wait_a_bounded_time(indexed_copy, open_engine, caplog):
    other = HomeLock(indexed_copy, "add-texts")
    other.acquire()
    engine = open_engine(indexed_copy, lock_timeout=0.5)
    started = time.monotonic()
    with pytest.raises(HomeBusyError, match="`searchengine add-texts`"):
        engine.use_model(TINY_MODEL)
    assert time.monotonic() - started >= 0.5
    assert "waiting up to" in caplog.text
    threading.Timer(0.3, other.release).start()
    patient = open_engine(indexed_copy, lock_timeout=30)
    assert patient.use_model(TINY_MODEL) == TINY_MODEL


@pytest.fixture()
def indexed_copy(tmp_path, indexed_home) -> Path:
    import shutil

    home = tmp_path / "home"
    shutil.copytree(indexed_home, home)
    return home


# -- idempotent writes, database errors -----------------------------------------------------


def test_writing_a_batch_twice_keeps_one_row_each(tmp_path, catalog_url):
    catalog = Catalog(catalog_url) if catalog_url else Catalog.in_home(tmp_path / "home")
    model = catalog.ensure_model("m", 4)
    assert catalog.ensure_model("m", 4) == model
    images = [NewImage(f"/p/{n}.jpg", 10, 1, f"h{n}", INFO) for n in range(3)]
    vectors = np.eye(3, 4, dtype=np.float32)
    first = catalog.write_images(model.id, images, vectors, [])
    second = catalog.write_images(model.id, images, vectors[::-1].copy(), [])
    assert first.ids == second.ids and catalog.count_vectors("image", model.id) == 3
    assert catalog.add_texts("s", ["x", "y", "x"]) == 2
    assert catalog.add_texts("s", ["y", "z"]) == 1
    text_ids = sorted(catalog.text_ids("s").values())
    catalog.write_text_vectors(model.id, text_ids, np.eye(3, 4, dtype=np.float32))
    catalog.write_text_vectors(model.id, text_ids, np.eye(3, 4, dtype=np.float32))  # again
    with catalog.session() as session:
        assert session.scalar(select(func.count()).select_from(TextEmbedding)) == 3
    catalog.close()


def test_a_refused_write_is_a_catalog_error(tmp_path, catalog_url):
    catalog = Catalog(catalog_url) if catalog_url else Catalog.in_home(tmp_path / "home")
    model = catalog.ensure_model("m", 4)
    refused = "refused a write .*(FOREIGN KEY|foreign key).*run the command again"
    with pytest.raises(CatalogError, match=refused):
        catalog.write_text_vectors(model.id, [12345], np.eye(1, 4, dtype=np.float32))
    catalog.close()


def test_a_locked_catalog_is_a_catalog_error(tmp_path, monkeypatch):
    """SQLite answers "database is locked" once its busy timeout (30 s) passes; a test cannot
    wait that long, so the other holder keeps an exclusive lock and the timeout is shortened."""
    import sqlite3

    import searchengine.catalog.store as store

    catalog = Catalog.in_home(tmp_path / "home")
    catalog.close()
    monkeypatch.setattr(store, "_create_engine", _short_busy_timeout(store._create_engine))
    blocker = sqlite3.connect(tmp_path / "home" / "catalog.sqlite")
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        catalog = Catalog.in_home(tmp_path / "home")
        with pytest.raises(CatalogError, match="locked by another process.*run this one again"):
            catalog.set_setting("k", "v")
        catalog.close()
    finally:
        blocker.rollback()
        blocker.close()


def _short_busy_timeout(create_engine):
    from sqlalchemy import event

    def create(url, **options):
        engine = create_engine(url, **options)

        @event.listens_for(engine, "connect")
        def _short(dbapi_connection, _record) -> None:  # runs after the catalog's own pragmas
            dbapi_connection.execute("PRAGMA busy_timeout=50")

        engine.dispose()  # pooled connections were made without it
        return engine

    return create


# -- homes that readers never create, failed first writes that leave nothing ---------------


READERS = [
    ["status"],
    ["check"],
    ["check", "--repair"],
    ["search", "a dog"],
    ["similar", "{photo}"],
    ["lookup", "{photo}"],
    ["classify", "{photo}", "--labels", "dog,cat"],
    ["match", "{photo}", "a dog"],
    ["remove", "{photo}"],
    ["use-model", TINY_MODEL],
    ["serve", "--port", "0"],
]


@pytest.mark.parametrize("command", READERS, ids=lambda c: " ".join(c[:2]))
def test_commands_on_a_missing_home_create_nothing(tmp_path, photo_folder, cli_run, command):
    home = tmp_path / "typo"
    photo = next(photo_folder.glob("*.jpg"))
    args = [str(a).format(photo=photo) for a in command]
    result = cli_run(*args, "--home", home, expect=1)
    assert f"no home at {home}; run `searchengine index FOLDER --home {home}` first" in (
        result.stderr
    )
    assert not home.exists()


def test_a_reader_opening_an_empty_folder_says_no_home(tmp_path, open_engine):
    from searchengine.engine import Engine

    with pytest.raises(NotIndexedError, match="no home at"):
        open_engine(tmp_path, create=False)
    assert list(tmp_path.iterdir()) == []
    # the API's default may create a home, and takes it back when it stayed empty
    with Engine.open(tmp_path / "typo") as engine, pytest.raises(NotIndexedError, match="no image"):
        engine.search("a dog", model=TINY_MODEL)
    assert not (tmp_path / "typo").exists()


FAILING_FIRST_WRITES = [
    (["index", "{photos}", "--model", "ViT-B-32/laion2b_s34b_b79k"], "HF_HUB_OFFLINE"),
    (["index", "{photos}", "--model", "NoSuchArch/random"], "unknown model architecture"),
    (["index", "{tmp}/missing", "--model", TINY_MODEL], "does not exist"),
    (["add-texts", "{tmp}/missing.csv", "--model", TINY_MODEL], "does not exist"),
    (["add-texts", "{captions}", "--model", "ViT-B-32/laion2b_s34b_b79k"], "HF_HUB_OFFLINE"),
]


@pytest.mark.parametrize("folder_existed", [False, True], ids=["new-folder", "empty-folder"])
@pytest.mark.parametrize(("command", "message"), FAILING_FIRST_WRITES, ids=lambda c: str(c)[:40])
def test_a_first_write_that_fails_leaves_nothing(
    tmp_path, photo_folder, captions_csv, cli_run, command, message, folder_existed
):
    home = tmp_path / "home"
    if folder_existed:
        home.mkdir()
    args = [
        str(a).format(photos=photo_folder, tmp=tmp_path, captions=captions_csv) for a in command
    ]
    result = cli_run(*args, "--home", home, expect=1)
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    if folder_existed:
        assert list(home.iterdir()) == []
    else:
        assert not home.exists()


def test_a_failed_write_to_a_used_home_keeps_it(indexed_copy, cli_run, open_engine):
    before = sorted(p.name for p in indexed_copy.iterdir())
    cli_run("index", indexed_copy / "missing", "--home", indexed_copy, expect=1)
    assert sorted(p.name for p in indexed_copy.iterdir()) == before
    assert open_engine(indexed_copy).check().ok


def test_an_engine_opened_to_build_a_home_keeps_what_it_stored(tmp_path, photo_folder):
    from searchengine.engine import Engine
    from tests.conftest import fast_ingest

    home = tmp_path / "home"
    with Engine.open(home) as engine:
        engine.index([photo_folder], model=TINY_MODEL, settings=fast_ingest())
    with Engine.open(home, create=False) as engine:
        assert engine.status().images > 0
    assert os.path.exists(home / "catalog.sqlite")
