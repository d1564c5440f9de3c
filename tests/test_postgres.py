"""A catalog in PostgreSQL: URLs that are wrong or reach no server as errors that say what to
do (nothing stored is lost), a home that serves one catalog, and index files that are never
read against another catalog than the one they were built from."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import TINY_MODEL, fast_ingest, write_image
from float_noise import assert_top_k

from searchengine.errors import CatalogError
from tests.postgres import database_name

pytestmark = pytest.mark.usefixtures("reuse_random_encoders")
SECRET = "hunter2-not-this-one"  # a wrong password that must never be printed


def closed_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # nothing listens there once the probe is closed


BAD_URLS = {
    "refused": (lambda server: f"postgresql+psycopg://searchengine@127.0.0.1:{closed_port()}/x",
                "check that the PostgreSQL server runs and that the URL's host and port"),
    "wrong password": (lambda server: server.url("postgres", tcp=True, password=SECRET),
                       "check the user name and password"),
    "no password": (lambda server: server.url("postgres", tcp=True),
                    "check the user name and password"),
    "missing database": (lambda server: server.url("no_such_database"),
                         "create the database first"),
    "unknown user": (lambda server: server.url().replace("searchengine@", "nobody@"),
                     "the server has no such role"),
    "not a URL": (lambda server: f"postgresql+psycopg:/{SECRET}@host/db",
                  "is not a database URL; give sqlite:///PATH or postgresql+psycopg://"),
    "other database": (lambda server: "mysql://user@host/db",
                       "supports SQLite and PostgreSQL, not mysql"),
}


@pytest.mark.parametrize("command", ["status", "index"])
@pytest.mark.parametrize("case", list(BAD_URLS))
def test_a_bad_catalog_url_says_what_to_do(
    postgres_server, tmp_path, photo_folder, cli_run, case, command
):
    make_url, advice = BAD_URLS[case]
    home = tmp_path / "home"
    args = [photo_folder, "--model", TINY_MODEL] if command == "index" else []
    result = cli_run(command, *args, "--home", home, "--catalog", make_url(postgres_server),
                     expect=1)
    assert advice in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and SECRET not in result.stderr
    assert not home.exists()  # nothing made


def test_a_failed_connection_keeps_what_is_stored(
    postgres_server, postgres_url, tmp_path, photo_folder, cli_run, open_engine
):
    home = tmp_path / "home"
    cli_run("index", photo_folder, "--home", home, "--catalog", postgres_url, "--model",
            TINY_MODEL, "--workers", 0)
    before = sorted(p.name for p in home.rglob("*"))
    database = database_name(postgres_url)
    wrong = postgres_server.url(database, tcp=True, password=SECRET)
    result = cli_run("index", photo_folder, "--home", home, "--catalog", wrong, expect=1)
    assert "check the user name and password" in result.stderr
    assert sorted(p.name for p in home.rglob("*")) == before
    engine = open_engine(home, catalog_url=postgres_url)
    assert engine.check().ok and engine.status().images == 9


def test_without_psycopg_the_error_says_what_to_install(tmp_path):
    """psycopg cannot be uninstalled for one test: the child process hides it (an import of it
    then fails as it does where it is not installed)."""
    script = textwrap.dedent(f"""
        import sys
        sys.modules["psycopg"] = None  # `import psycopg` raises ModuleNotFoundError
        from searchengine.cli import cli
        cli.main(["status", "--home", {str(tmp_path / "home")!r}, "--catalog",
                  "postgresql+psycopg://user@localhost/db"], prog_name="searchengine")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=False, timeout=120)
    assert done.returncode == 1, done.stderr
    assert "pip install 'searchengine[postgres]'" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "home").exists()


def test_the_catalog_comes_from_the_environment(
    postgres_url, tmp_path, photo_folder, cli_run, monkeypatch
):
    home = tmp_path / "home"
    monkeypatch.setenv("SEARCHENGINE_CATALOG", postgres_url)
    cli_run("index", photo_folder, "--home", home, "--model", TINY_MODEL, "--workers", 0)
    assert not (home / "catalog.sqlite").exists()
    assert cli_run.json("status", "--home", home)["images"] == 9
    monkeypatch.delenv("SEARCHENGINE_CATALOG")
    # the home recorded where its catalog is (without a password) and says so
    result = cli_run("status", "--home", home, expect=1)
    assert "the catalog of the home" in result.stderr and "--catalog URL" in result.stderr
    assert "postgresql+psycopg://searchengine@" in result.stderr
    assert cli_run.json("status", "--home", home, "--catalog", postgres_url)["images"] == 9


def test_a_home_with_a_catalog_of_its_own_refuses_a_url(
    postgres_url, tmp_path, photo_folder, cli_run
):
    home = tmp_path / "home"
    cli_run("index", photo_folder, "--home", home, "--model", TINY_MODEL, "--workers", 0)
    result = cli_run("status", "--home", home, "--catalog", postgres_url, expect=1)
    assert "has a catalog of its own (catalog.sqlite)" in result.stderr
    assert cli_run.json("status", "--home", home)["images"] == 9


def test_an_index_is_never_read_against_another_catalog(
    postgres_server, tmp_path, photo_folder, open_engine, caplog
):
    """Two catalogs with the same ids, count and id sum (nine photos each, ids 1..9) but other
    photos: a home built from the first and opened with the second must not answer with the
    first's vectors. Its index files name their catalog; they are rebuilt from the second."""
    first, second = postgres_server.new_database(), postgres_server.new_database()
    others = tmp_path / "others"
    for n in range(9):
        write_image(others / f"other{n}.jpg", seed=500 + n)
    home = tmp_path / "home"
    open_engine(home, catalog_url=first).index([photo_folder], model=TINY_MODEL,
                                               settings=fast_ingest())
    open_engine(tmp_path / "elsewhere", catalog_url=second).index(
        [others], model=TINY_MODEL, settings=fast_ingest())
    engine = open_engine(home, catalog_url=second)
    ids, vectors = engine.vectors("image", model=TINY_MODEL)
    assert ids.tolist() == list(range(1, 10))  # the same ids as in the first catalog
    hits = engine.search("a dog", k=9, model=TINY_MODEL).hits
    assert {hit.path for hit in hits} == {str(p) for p in others.iterdir()}
    query = engine.encoder(TINY_MODEL).encode_texts(["a dog"])  # (1, d)
    assert_top_k(np.array([[hit.id for hit in hits]]), query, vectors, ids)
    assert "built from another catalog" in caplog.text
    [space] = engine.check().spaces
    assert not space.ok and "built from another catalog" in space.problem
    assert engine.check(repair=True).ok and engine.check().ok


def test_engine_open_takes_a_catalog_url(postgres_url, tmp_path):
    from searchengine.engine import Engine

    with Engine.open(tmp_path / "home", catalog_url=postgres_url) as engine:
        assert engine.catalog.engine.dialect.name == "postgresql"
        assert engine.status().images == 0
    with pytest.raises(CatalogError, match="not a database URL"):
        Engine.open(tmp_path / "home", catalog_url="postgresql:/nowhere")


def test_index_files_from_before_catalog_ids(catalog_url, tmp_path, photo_folder, open_engine):
    """A manifest without a catalog id (written before files named their catalog) is the home's
    own when the catalog is the home's SQLite file, which it was built from: it is kept. Against
    a catalog elsewhere nothing says where it came from: it is rebuilt."""
    import json

    from searchengine.index.spaces import index_path

    home = tmp_path / "home"
    open_engine(home, catalog_url=catalog_url).index([photo_folder], model=TINY_MODEL,
                                                     settings=fast_ingest())
    manifest = index_path(home, TINY_MODEL, "image").with_suffix(".faiss.manifest.json")
    fields = json.loads(manifest.read_text())
    assert fields.pop("catalog_id")
    manifest.write_text(json.dumps(fields))
    [space] = open_engine(home).check().spaces
    if catalog_url is None:
        assert space.ok
    else:
        assert not space.ok and "another catalog (id not recorded)" in space.problem


def test_a_connection_lost_midway_loses_no_committed_batch(
    postgres_server, postgres_url, tmp_path, cli_run, open_engine
):
    """The server drops the `index` run's connections again and again once its first batch is
    committed. The run either carries on over new connections (the pool tests a connection
    before use) or stops with the lost connection's message, no traceback; then a second run
    completes and the catalog and the index agree, each photo once."""
    import shutil
    import time

    import psycopg

    folder = tmp_path / "big"
    first = write_image(folder / "big0.png", 7, size=(640, 480))
    for n in range(1, 40):
        shutil.copyfile(first, folder / f"big{n}.png")
    home = tmp_path / "home"
    args = ["index", folder, "--home", home, "--catalog", postgres_url, "--model", TINY_MODEL,
            "--workers", 0, "--batch-size", 4]
    main = "import sys; from searchengine.cli import cli; cli.main(sys.argv[1:], 'searchengine')"
    run = subprocess.Popen([sys.executable, "-c", main, *map(str, args)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    database = database_name(postgres_url)
    terminated = 0
    with psycopg.connect(host=str(postgres_server.folder), port=postgres_server.port,
                         user="searchengine", dbname=database, autocommit=True) as watcher:
        deadline = time.monotonic() + 300
        while run.poll() is None and time.monotonic() < deadline:
            stored = watcher.execute("SELECT to_regclass('media') IS NOT NULL").fetchone()[0] and (
                watcher.execute("SELECT count(*) FROM media").fetchone()[0])
            if stored:
                terminated += watcher.execute(
                    "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM "
                    "pg_stat_activity WHERE datname = current_database() AND pid <> "
                    "pg_backend_pid()) AS ended").fetchone()[0]
            time.sleep(0.02)
    _, stderr = run.communicate(timeout=300)
    assert terminated and "Traceback" not in stderr, stderr
    assert run.returncode == 0 or "run the command again once the server is back" in stderr, (
        stderr)
    cli_run(*args)
    engine = open_engine(home, catalog_url=postgres_url)
    assert engine.check().ok and engine.catalog.count_media() == 40


def test_serve_follows_index_and_remove_of_other_processes(
    catalog_url, tmp_path, photo_folder, open_engine
):
    """`serve` answers from a home while other writers index and remove (it takes no lock):
    each answer holds what the catalog held when the writer saved, on both backends."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from searchengine.server import create_app

    home = tmp_path / "home"
    writer = open_engine(home, catalog_url=catalog_url)
    writer.index([photo_folder], model=TINY_MODEL, settings=fast_ingest())
    client = TestClient(create_app(open_engine(home)), raise_server_exceptions=False)

    def served() -> set[str]:
        response = client.get("/api/search", params={"q": "a dog", "k": 50})
        assert response.status_code == 200, response.text
        return {hit["path"] for hit in response.json()["hits"]}

    assert served() == {str(p) for p in photo_folder.rglob("*") if p.is_file()}
    more = tmp_path / "more"
    for n in range(3):
        write_image(more / f"more{n}.jpg", seed=700 + n)
    open_engine(home).index([more], model=TINY_MODEL, settings=fast_ingest())
    assert {str(p) for p in more.iterdir()} <= served()
    open_engine(home).remove([photo_folder])
    assert served() == {str(p) for p in more.iterdir()}


@pytest.mark.parametrize("folder_existed", [False, True], ids=["new-folder", "empty-folder"])
def test_a_first_write_that_fails_leaves_no_folder_behind(
    postgres_url, tmp_path, cli_run, folder_existed
):
    home = tmp_path / "home"
    if folder_existed:
        home.mkdir()
    result = cli_run("index", tmp_path / "missing", "--home", home, "--catalog", postgres_url,
                     "--model", TINY_MODEL, expect=1)
    assert "does not exist" in result.stderr and "Traceback" not in result.stderr
    assert (list(home.iterdir()) == []) if folder_existed else not home.exists()


def test_a_batch_that_meets_another_writer_in_a_deadlock_runs_again(postgres_server, postgres_url):
    """Another writer holds photo b and then asks for photo a, which this batch (a, b) took
    first: PostgreSQL ends the batch's transaction (deadlock detected, after its 1 s
    deadlock_timeout). The batch runs again once the other writer is done, and stores both."""
    import threading
    import time
    from datetime import datetime

    import psycopg

    from searchengine.catalog import Catalog, NewImage
    from searchengine.images import ImageInfo

    catalog = Catalog(postgres_url)
    model = catalog.ensure_model("m", 4)
    info = ImageInfo(width=4, height=3, format="JPEG", taken_at=None, camera=None)
    insert = ("INSERT INTO media (path, size, mtime_ns, content_hash, width, height, format, "
              "indexed_at) VALUES (%s, 1, 1, 'other', 1, 1, 'JPEG', %s)")
    result: dict = {}

    def batch() -> None:
        images = [NewImage(p, 1, 1, "h", info) for p in ("/p/a.jpg", "/p/b.jpg")]
        try:
            result["ids"] = catalog.write_images(model.id, images, np.eye(2, 4), []).ids
        except CatalogError as error:
            result["error"] = error

    other = psycopg.connect(host=str(postgres_server.folder), port=postgres_server.port,
                            user="searchengine", dbname=database_name(postgres_url))
    try:
        other.execute(insert, ("/p/b.jpg", datetime.now()))  # holds b, uncommitted
        writer = threading.Thread(target=batch)
        writer.start()  # takes a, then waits for b
        waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        with psycopg.connect(host=str(postgres_server.folder), port=postgres_server.port,
                             user="searchengine", dbname="postgres", autocommit=True) as probe:
            deadline = time.monotonic() + 60
            while not probe.execute(waiting).fetchone()[0] and time.monotonic() < deadline:
                time.sleep(0.01)
        other.execute(insert, ("/p/a.jpg", datetime.now()))  # waits for a: a deadlock
        other.rollback()  # the batch's transaction was the one ended; the other gives up
        writer.join(timeout=60)
    finally:
        other.close()
    assert "error" not in result, result.get("error")
    assert sorted(catalog.files_under(["/p"])) == ["/p/a.jpg", "/p/b.jpg"]
    assert catalog.vector_ids("image", model.id).tolist() == sorted(result["ids"])
    catalog.close()
