"""Paths: one name per catalogued file (`..` and linked folders), names that are not UTF-8,
deep folders, and links that lead nowhere, to devices or in circles."""

from __future__ import annotations

import base64
import json
import os
import shutil
from contextlib import ExitStack
from pathlib import Path

import pytest
from conftest import TINY_MODEL, fast_ingest, write_image
from test_benchmark import make_captioned

from searchengine.eval import benchmark
from searchengine.eval.datasets import read_caption_dataset
from searchengine.paths import (
    catalog_path,
    display_path,
    from_stored,
    path_bytes,
    to_stored,
)

pytestmark = pytest.mark.usefixtures("reuse_random_encoders")


def odd_name(folder: Path, name: bytes) -> Path:
    """`folder/name` for a file name of raw bytes (0xE9 is Latin-1 é, not UTF-8)."""
    return Path(os.fsdecode(os.fsencode(folder) + b"/" + name))


def index(engine, *roots: Path, **settings):
    return engine.index(list(roots), model=TINY_MODEL, settings=fast_ingest(**settings))


# -- the rule ---------------------------------------------------------------------------------


def test_catalog_path_is_absolute_and_lexical(tmp_path, monkeypatch):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "a")
    monkeypatch.chdir(tmp_path / "a" / "b")
    assert catalog_path("../b/x.jpg") == str(tmp_path / "a" / "b" / "x.jpg")
    assert catalog_path(tmp_path / "link" / "." / "x.jpg") == str(tmp_path / "link" / "x.jpg")
    assert catalog_path(b"/p//q/../caf\xe9.jpg") == "/p/caf\udce9.jpg"
    assert catalog_path("~/x") == os.path.join(os.path.expanduser("~"), "x")


@pytest.mark.parametrize("name", [
    "plain/café.jpg", "/a/caf\udce9.jpg", "/\U0010fffd/\U0010fffd\udce9\U0010fffd\U0010fffd",
    "/\U000f04e9\ud800/x",
])
def test_stored_form_is_valid_text_and_round_trips(name):
    stored = to_stored(name)
    stored.encode("utf-8")  # valid Unicode: SQLite and PostgreSQL accept it
    assert from_stored(stored) == name
    # per character and prefix-free: a prefix query on stored text means the same
    for cut in range(len(name) + 1):
        assert stored.startswith(to_stored(name[:cut]))
    assert not to_stored("/a/caf\udce9.jpg").startswith(to_stored("/a/caf\U0010fffd"))


def test_display_and_bytes_of_a_name_that_is_not_utf8():
    name = os.fsdecode(b"/photos/caf\xe9.jpg")
    assert display_path(name) == "/photos/caf\\xe9.jpg"
    assert base64.b64decode(path_bytes(name)) == b"/photos/caf\xe9.jpg"
    assert display_path("/photos/café.jpg") == "/photos/café.jpg"
    assert path_bytes("/photos/café.jpg") is None


# -- 4: a dataset path with `..` or through a linked folder -----------------------------------


@pytest.mark.parametrize("dataset", ["../data/captioned", "../linked"])
def test_bench_recall_finds_every_image_through_dotdot_and_links(tmp_path, monkeypatch, dataset):
    make_captioned(tmp_path / "data" / "captioned", n_images=6)
    (tmp_path / "linked").symlink_to(tmp_path / "data" / "captioned")
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    data = read_caption_dataset(dataset)
    settings = benchmark.RecallSettings(ks=(1,), curve_max_k=5, ingest=fast_ingest())
    with ExitStack() as stack:
        engine = benchmark.open_bench_engine(stack, tmp_path / "home")
        report = benchmark.measure_recall(engine, data, model=TINY_MODEL, settings=settings)
        ids = engine.media_ids_by_path(list(data.images))
        assert len(ids) == 6 and set(ids) == {catalog_path(p) for p in data.images}
        assert engine.remove([Path(dataset) / "images"]) == 6
    assert report.dataset["images"] == 6 and report.dataset["unindexed_images"] == 0


def test_bench_recall_cli_with_a_relative_dotdot_dataset(tmp_path, monkeypatch, cli_run):
    make_captioned(tmp_path / "data" / "captioned", n_images=4)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    payload = cli_run.json("bench", "recall", "../data/captioned", "--model", TINY_MODEL,
                           "--home", tmp_path / "home")
    assert payload["dataset"]["images"] == 4
    assert payload["dataset"]["unindexed_images"] == 0


# -- 7: names that are not UTF-8 ----------------------------------------------------------------


@pytest.fixture()
def odd_folder(tmp_path) -> tuple[Path, Path, Path, Path]:
    """(folder named `dossier\\xe9`, its `caf\\xe9.jpg`, `ok.jpg`, and `bad\\xe9.jpg`: no image)."""
    folder = odd_name(tmp_path, b"dossier\xe9")
    cafe = write_image(odd_name(folder, b"caf\xe9.jpg"), seed=1)
    ok = write_image(folder / "ok.jpg", seed=2)
    bad = odd_name(folder, b"bad\xe9.jpg")
    bad.write_bytes(b"not an image at all")
    return folder, cafe, ok, bad


def test_a_name_that_is_not_utf8_is_indexed_searched_and_removed(odd_folder, open_engine,
                                                                 tmp_path):
    folder, cafe, ok, bad = odd_folder
    engine = open_engine(tmp_path / "home")
    report = index(engine, folder)
    assert (report.embedded, report.skipped) == (2, 1)
    again = index(engine, folder)
    assert (again.unchanged, again.embedded, again.skipped, again.removed) == (3, 0, 0, 0)
    hits = engine.search("a photo", k=5, model=TINY_MODEL).hits
    assert sorted(h.path for h in hits) == sorted([str(cafe), str(ok)])
    similar = engine.similar(cafe, k=1, model=TINY_MODEL)
    assert similar.query == str(cafe) and similar.hits[0].path == str(cafe)
    assert [path for path, _ in engine.status().skipped] == [str(bad)]
    assert engine.media_ids_by_path([cafe]).keys() == {str(cafe)}
    assert engine.remove([cafe]) == 1
    assert engine.remove([folder]) == 1  # ok.jpg; the skipped bad file is forgotten too
    assert engine.status().skipped == [] and engine.catalog.count_media() == 0


def test_the_cli_shows_names_that_are_not_utf8_escaped_and_exact_in_json(odd_folder, cli_run,
                                                                         tmp_path):
    folder, cafe, _, bad = odd_folder
    home = tmp_path / "home"
    cli_run("index", folder, "--model", TINY_MODEL, "--home", home)
    assert "0 embedded" in cli_run("index", folder, "--home", home).stdout
    table = cli_run("search", "a photo", "--home", home).stdout
    assert "dossier\\xe9/caf\\xe9.jpg" in table
    payload = json.loads(cli_run("search", "a photo", "--home", home, "--json").stdout_bytes)
    odd = [hit for hit in payload["hits"] if hit["path"] == display_path(str(cafe))]
    assert len(odd) == 1 and len(payload["hits"]) == 2
    assert base64.b64decode(odd[0]["path_bytes"]) == os.fsencode(cafe)
    similar = cli_run.json("similar", cafe, "--home", home, "-k", "1")
    assert base64.b64decode(similar["query_bytes"]) == os.fsencode(cafe)
    assert similar["hits"][0]["id"] == odd[0]["id"]
    assert "bad\\xe9.jpg" in cli_run("status", "--home", home).stdout
    skipped = cli_run.json("status", "--home", home)["skipped"]
    assert [base64.b64decode(s["path_bytes"]) for s in skipped] == [os.fsencode(bad)]
    missing = cli_run("similar", odd_name(folder, b"gone\xe9.jpg"), "--home", home, expect=1)
    assert "gone\\xe9.jpg does not exist" in missing.stderr
    assert "forgot 2 files" in cli_run("remove", folder, "--home", home).stdout


def test_the_api_answers_for_names_that_are_not_utf8(odd_folder, open_engine, tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from searchengine.server import create_app

    folder, cafe, _, bad = odd_folder
    engine = open_engine(tmp_path / "home")
    index(engine, folder)
    engine.use_model(TINY_MODEL)
    media_id = engine.media_ids_by_path([cafe])[str(cafe)]
    client = TestClient(create_app(engine), raise_server_exceptions=False)
    hits = client.get("/api/search", params={"q": "a photo", "k": 5}).json()["hits"]
    odd = [hit for hit in hits if hit["id"] == media_id]
    assert base64.b64decode(odd[0]["path_bytes"]) == os.fsencode(cafe)
    similar = client.get(f"/api/similar/{media_id}", params={"k": 1})
    assert similar.status_code == 200, similar.text
    assert similar.json()["query"] == display_path(str(cafe))
    info = client.get(f"/api/images/{media_id}/info")
    assert info.status_code == 200 and info.json()["path"] == display_path(str(cafe))
    for route in (f"/api/images/{media_id}", f"/api/images/{media_id}/thumbnail"):
        response = client.get(route)
        assert response.status_code == 200, (route, response.text)
    status = client.get("/api/status").json()
    assert [base64.b64decode(s["path_bytes"]) for s in status["skipped"]] == [os.fsencode(bad)]
    match = client.get(f"/api/match/{media_id}", params={"text": "a photo"})
    assert match.status_code == 200 and match.json()["image"] == display_path(str(cafe))
    cafe.unlink()
    gone = client.get(f"/api/images/{media_id}")
    assert gone.status_code == 404 and "caf\\xe9.jpg is no longer on disk" in gone.json()["detail"]


# -- 13: deep folders; 17: links that lead nowhere, to devices or in circles --------------------


def test_a_thousand_nested_folders_are_walked(open_engine, tmp_path):
    deep = tmp_path / "deep"
    folder = deep
    for _ in range(1100):  # os.makedirs and shutil.rmtree recurse too: one level at a time
        folder = folder / "d"
        folder.mkdir(parents=True)
    write_image(deep / "top.jpg", seed=1)
    bottom = write_image(folder / "bottom.jpg", seed=2)
    try:
        engine = open_engine(tmp_path / "home")
        report = index(engine, deep)
        assert (report.scanned, report.embedded, report.skipped) == (2, 2, 0)
        assert engine.media_ids_by_path([bottom]).keys() == {str(bottom)}
    finally:
        while folder != deep:
            shutil.rmtree(folder)
            folder = folder.parent


@pytest.mark.timeout(60)
def test_broken_looping_and_device_links_are_skipped_with_a_reason(open_engine, tmp_path):
    folder = tmp_path / "links"
    ok = write_image(folder / "ok.jpg", seed=1)
    (folder / "dangling.jpg").symlink_to(folder / "missing.jpg")
    (folder / "zero.jpg").symlink_to("/dev/zero")
    (folder / "y.jpg").symlink_to(folder / "z.jpg")
    (folder / "z.jpg").symlink_to(folder / "y.jpg")
    (folder / "good_link.jpg").symlink_to(ok)
    engine = open_engine(tmp_path / "home")
    report = index(engine, folder)
    assert (report.embedded, report.reused, report.skipped) == (1, 1, 4)
    reasons = {Path(path).name: reason for path, reason in engine.status().skipped}
    assert reasons == {
        "dangling.jpg": f"broken symbolic link to {folder / 'missing.jpg'}",
        "zero.jpg": "not a regular file (symbolic link to /dev/zero, a character device)",
        "y.jpg": f"symbolic link loop (through {folder / 'z.jpg'})",
        "z.jpg": f"symbolic link loop (through {folder / 'y.jpg'})",
    }
    again = index(engine, folder)
    assert (again.embedded, again.skipped) == (0, 4)
    assert len(engine.status().skipped) == 4
    (folder / "missing.jpg").symlink_to(ok)  # the link leads somewhere now
    fixed = index(engine, folder)
    assert fixed.reused == 2 and "dangling.jpg" not in dict(engine.status().skipped)


@pytest.mark.timeout(60)  # the old os.walk went round the cycle 2^40 ways
def test_linked_folders_are_followed_once_without_cycles(open_engine, tmp_path):
    folder = tmp_path / "root"
    write_image(folder / "a" / "photo.jpg", seed=1)
    (folder / "a" / "back").symlink_to(folder)  # a cycle
    (folder / "b").symlink_to(folder / "a")  # a second name of a folder walked already
    engine = open_engine(tmp_path / "home")
    report = index(engine, folder, follow_symlinks=True)
    assert (report.scanned, report.embedded, report.skipped) == (1, 1, 0)
    not_followed = index(engine, tmp_path / "root" / "b")  # a root is walked, even as a link
    assert not_followed.scanned == 1


def test_folders_whose_names_differ_in_case_stay_apart(open_engine, tmp_path):
    lower = write_image(tmp_path / "photos" / "a.jpg", seed=1).parent
    upper = write_image(tmp_path / "Photos" / "b.jpg", seed=2).parent
    engine = open_engine(tmp_path / "home")
    index(engine, lower)
    report = index(engine, upper)  # SQLite's LIKE ignores case: /Photos/% matched /photos/a.jpg
    assert report.removed == 0 and engine.catalog.count_media() == 2
    assert engine.remove([upper]) == 1
    assert engine.media_ids_by_path([lower / "a.jpg"]).keys() == {str(lower / "a.jpg")}
