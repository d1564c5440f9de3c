"""The `searchengine` command from the outside: JSON shapes, tables, errors that leave stored data
alone, help hygiene and start-up cost."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest
from conftest import CAPTIONS, PHOTO_COUNT, TINY_MODEL, write_image
from float_noise import stored_score_noise

from searchengine.cli import cli
from searchengine.query.filters import PHOTO_FIELDS

pytestmark = pytest.mark.usefixtures("reuse_random_encoders")
ALL_PHOTOS = PHOTO_COUNT + 1
HIT_KEYS = ["rank", "score", "id", "path", *PHOTO_FIELDS]  # the photo's metadata after its path
TEXT_HIT_KEYS = ["rank", "score", "id", "text"]


@pytest.fixture(scope="module")
def home(indexed_home, tmp_path_factory) -> Path:
    """A private copy of the indexed home (default model TINY_MODEL, text set "captions"): the
    error tests must find it unchanged, and a bug that changed it must not leak elsewhere."""
    target = tmp_path_factory.mktemp("cli") / "home"
    shutil.copytree(indexed_home, target)
    return target


def snapshot(home: Path) -> dict:
    """Everything stored in a home: the rows of every catalog table, the bytes of every index."""
    from sqlalchemy import create_engine, inspect, text

    engine = create_engine(f"sqlite:///{home / 'catalog.sqlite'}")
    tables = {}
    with engine.connect() as connection:
        for table in inspect(connection).get_table_names():
            rows = connection.execute(text(f"SELECT * FROM {table}")).all()
            tables[table] = sorted(map(repr, rows))
    engine.dispose()
    files = {
        str(p.relative_to(home)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted((home / "vectors").glob("*")) if p.is_file()
    }
    return {"tables": tables, "files": files}


# -- JSON shapes and values ---------------------------------------------------------------


def test_search_json_shape_and_values(cli_run, home, open_engine):
    payload = cli_run.json("search", "a dog on the beach", "-k", 3, "--home", home)
    assert list(payload) == ["query", "model", "hits"]
    assert payload["query"] == "a dog on the beach" and payload["model"] == TINY_MODEL
    assert [list(hit) for hit in payload["hits"]] == [HIT_KEYS] * 3
    assert [hit["rank"] for hit in payload["hits"]] == [1, 2, 3]
    expected = open_engine(home).search("a dog on the beach", k=3)
    got = [(h["id"], h["path"]) for h in payload["hits"]]
    assert got == [(h.id, h.path) for h in expected.hits]
    assert [h["score"] for h in payload["hits"]] == pytest.approx([h.score for h in expected.hits],
                                                                  abs=1e-6)
    assert all(isinstance(h["score"], float) and isinstance(h["id"], int) for h in payload["hits"])


def test_similar_json_puts_the_image_first(cli_run, home, photo_folder):
    path = photo_folder / "photo_5.jpg"
    payload = cli_run.json("similar", path, "-k", 4, "--home", home)
    assert list(payload) == ["query", "model", "hits"] and payload["query"] == str(path)
    assert [list(hit) for hit in payload["hits"]] == [HIT_KEYS] * 4
    top = payload["hits"][0]
    assert top["path"] == str(path) and top["score"] == pytest.approx(
        1.0, abs=stored_score_noise(64))  # the stored (float16-rounded) vector with itself
    by_id = cli_run.json("similar", f"id:{top['id']}", "-k", 4, "--home", home)
    assert [h["id"] for h in by_id["hits"]] == [h["id"] for h in payload["hits"]]


def test_lookup_json_has_texts(cli_run, home, photo_folder):
    payload = cli_run.json("lookup", photo_folder / "photo_1.jpg", "-k", 2, "--set", "captions",
                           "--home", home)
    assert list(payload) == ["query", "model", "hits"]
    assert [list(hit) for hit in payload["hits"]] == [TEXT_HIT_KEYS] * 2
    assert all(hit["text"] in CAPTIONS for hit in payload["hits"])


def test_classify_json(cli_run, home, photo_folder):
    payload = cli_run.json("classify", photo_folder / "photo_1.jpg", "--labels", "dog, cat,car",
                           "--home", home)
    labels = payload["labels"]
    assert [list(item) for item in labels] == [["label", "probability"]] * 3
    assert sorted(item["label"] for item in labels) == ["car", "cat", "dog"]
    assert sum(item["probability"] for item in labels) == pytest.approx(1.0, abs=1e-5)
    single = cli_run.json("classify", photo_folder / "photo_1.jpg", "--labels", "dog,cat",
                          "--templates", "single", "--home", home)
    assert len(single["labels"]) == 2


def test_match_json_and_plain(cli_run, home, photo_folder, open_engine):
    path = photo_folder / "photo_1.jpg"
    payload = cli_run.json("match", path, "a red car", "--home", home)
    expected = open_engine(home).match(path, "a red car")
    assert payload["score"] == pytest.approx(expected, abs=1e-6)
    assert -1 <= payload["score"] <= 1
    plain = cli_run("match", path, "a red car", "--home", home).stdout.strip()
    assert float(plain) == pytest.approx(expected, abs=1e-4)


def test_status_json(cli_run, home, photo_folder):
    payload = cli_run.json("status", "--home", home)
    assert payload["images"] == ALL_PHOTOS and payload["default_model"] == TINY_MODEL
    shown = ("model", "modality", "vectors", "kind", "recall", "params")
    assert [{key: space[key] for key in shown} for space in payload["spaces"]] == [
        {"model": TINY_MODEL, "modality": "image", "vectors": ALL_PHOTOS, "kind": "flat",
         "recall": 1.0, "params": {}},
        {"model": TINY_MODEL, "modality": "text", "vectors": len(CAPTIONS), "kind": "flat",
         "recall": 1.0, "params": {}},
    ]
    assert all(space["memory_bytes"] > 0 and space["chosen_by_auto"] for space in payload["spaces"])
    assert payload["text_sets"] == {"captions": len(CAPTIONS)}
    assert payload["skipped"] == []


def test_check_json(cli_run, home):
    payload = cli_run.json("check", "--home", home)
    assert payload["ok"] is True and payload["repaired"] is False
    spaces = {(s["modality"], s["catalog_count"], s["index_count"], s["ok"])
              for s in payload["spaces"]}
    assert spaces == {("image", ALL_PHOTOS, ALL_PHOTOS, True),
                      ("text", len(CAPTIONS), len(CAPTIONS), True)}


def test_search_table(cli_run, home):
    lines = cli_run("search", "a dog", "-k", 2, "--home", home).stdout.splitlines()
    assert lines[0] == f"a dog  [{TINY_MODEL}]"
    assert lines[1].split() == ["rank", "score", "id", "path"]
    assert [line.split()[0] for line in lines[3:]] == ["1", "2"]


def test_lookup_table_has_a_text_column(cli_run, home, photo_folder):
    lines = cli_run("lookup", photo_folder / "photo_1.jpg", "-k", 1, "--home", home).stdout
    assert lines.splitlines()[1].split() == ["rank", "score", "id", "text"]


def test_home_from_the_environment(home):
    from click.testing import CliRunner

    result = CliRunner().invoke(cli, ["status", "--json"], env={"SEARCHENGINE_HOME": str(home)})
    assert result.exit_code == 0 and f'"images": {ALL_PHOTOS}' in result.stdout


# -- a whole session through the CLI --------------------------------------------------------


def test_index_status_check_remove_through_the_cli(cli_run, tmp_path, copy_photos, captions_csv):
    home = tmp_path / "home"
    (copy_photos / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    report = cli_run.json("index", copy_photos, "--home", home, "--model", TINY_MODEL,
                          "--workers", 0, "--batch-size", 3)
    assert {k: report[k] for k in ("scanned", "embedded", "reused", "skipped", "removed")} == {
        "scanned": ALL_PHOTOS + 1, "embedded": ALL_PHOTOS, "reused": 0, "skipped": 1, "removed": 0}
    assert report["images_per_second"] > 0
    plain = cli_run("index", copy_photos, "--home", home, "--model", TINY_MODEL, "--workers", 0)
    assert f"{ALL_PHOTOS + 1} unchanged" in plain.stdout
    status = cli_run.json("status", "--home", home)
    assert [s["path"] for s in status["skipped"]] == [str(copy_photos / "broken.jpg")]
    reason = status["skipped"][0]["reason"]
    assert "not an image" in reason or "corrupt" in reason
    assert "broken.jpg" in cli_run("status", "--home", home).stdout
    cli_run("use-model", TINY_MODEL, "--home", home)
    added = cli_run.json("add-texts", captions_csv, "--column", "caption", "--set", "caps",
                         "--home", home)
    assert (added["read"], added["added"], added["embedded"]) == (len(CAPTIONS) + 1,
                                                                  len(CAPTIONS), len(CAPTIONS))
    removed = cli_run.json("remove", copy_photos / "trip", "--home", home)
    assert removed == {"removed": 2}
    assert cli_run.json("status", "--home", home)["images"] == ALL_PHOTOS - 2
    assert cli_run.json("check", "--home", home)["ok"] is True
    assert "ok" in cli_run("check", "--home", home).stdout


def test_check_exits_1_on_a_damaged_index_and_repair_fixes_it(cli_run, tmp_path, home):
    damaged = tmp_path / "damaged"
    shutil.copytree(home, damaged)
    for path in (damaged / "vectors").glob("*.image.faiss"):
        path.write_bytes(b"garbage")
    result = cli_run("check", "--home", damaged, expect=1)
    assert "cannot be read" in result.stdout or "size" in result.stdout
    repaired = cli_run.json("check", "--repair", "--home", damaged)
    assert repaired["ok"] is True and repaired["repaired"] is True
    assert len(repaired["rebuilt"]) == 1 and repaired["rebuilt"][0].endswith(".image.faiss")
    again = cli_run.json("check", "--repair", "--home", damaged)  # nothing left to rebuild
    assert again["ok"] is True and again["repaired"] is False and again["rebuilt"] == []
    cli_run("check", "--home", damaged)


# -- errors: clear, non-zero, nothing stored changes -----------------------------------------


def not_an_image(tmp_path: Path) -> Path:
    path = tmp_path / "fake.jpg"
    path.write_text("I am a text file with a picture's name\n")
    return path


ERRORS = [
    # (arguments, exit code, message pattern); {home}, {photo}, {fake}, {tmp} are filled in
    (["index", "{tmp}/missing", "--model", TINY_MODEL], 1, "does not exist"),
    (["search", "", "-k", "3"], 1, "empty query"),
    (["search", "   "], 1, "empty query"),
    (["search", "a dog", "--model", "NoSuchArch/random"], 1, "unknown model architecture"),
    (["search", "a dog", "--model", "ViT-B-32/not_a_tag"], 1, "unknown pretrained tag"),
    (["search", "a dog", "--model", "se-tiny/{tmp}/missing.pt"], 1, "does not exist"),
    (["search", "a dog", "--model", "ViT-B-32/laion2b_s34b_b79k"], 1, "no image index"),
    (["index", "{photo}", "--model", "ViT-B-32/laion2b_s34b_b79k"], 1, "HF_HUB_OFFLINE"),
    (["search", "a dog", "-k", "0"], 2, "Invalid value"),
    (["similar", "{tmp}/missing.jpg"], 1, "does not exist"),
    (["similar", "{fake}"], 1, "not an image"),
    (["similar", "id:999999"], 1, "no indexed image with id 999999"),
    (["similar", "999999"], 1, "999999 is not a file.*never taken as a catalog id.*id:999999"),
    (["lookup", "7"], 1, "never taken as a catalog id.*id:7"),
    (["similar", "id:x"], 2, "the id form is id:N"),
    (["similar", "id:0"], 2, "the id form is id:N"),
    (["match", "id:99999999999999999999", "a dog"], 2, "the id form is id:N"),
    (["lookup", "{fake}"], 1, "not an image"),
    (["lookup", "{photo}", "--set", "nope"], 1, "no text set named 'nope'; sets: captions"),
    (["classify", "{photo}", "--labels", "dog"], 1, "two distinct labels"),
    (["classify", "{fake}", "--labels", "dog,cat"], 1, "not an image"),
    (["match", "{photo}", ""], 1, "empty query"),
    (["match", "{tmp}/missing.jpg", "a dog"], 1, "does not exist"),
    (["index", "{photo}", "--model", TINY_MODEL, "--index-kind", "annoy"], 1,
     "unknown index kind 'annoy'"),
    (["add-texts", "{tmp}/missing.csv"], 1, "does not exist"),
    (["add-texts", "{captions}", "--column", "text"], 1, "has no column 'text'.*caption"),
    (["add-texts", "{captions}", "--set", " "], 1, "needs a name"),
    (["remove", "{tmp}/nothing-here"], 1, "nothing catalogued"),
    (["similar", "{tmp}"], 1, "is not a file"),
    (["classify", "{photo}", "--labels", " , ,"], 1, "two distinct labels"),
    (["lookup", "{photo}", "--model", "se-tiny/{checkpoint}"], 1, "no text index for model"),
    (["use-model", "se-tiny/random", "--force", "--home", "{home}/catalog.sqlite"], 2,
     "Invalid value"),
    (["index", "{photo}", "--model", TINY_MODEL, "--batch-size", "0"], 2, "Invalid value"),
]


@pytest.mark.parametrize("arguments, code, message", ERRORS,
                         ids=[" ".join(e[0])[:40] for e in ERRORS])
def test_bad_input_is_a_clear_error_that_changes_nothing(
    cli_run, home, photo_folder, captions_csv, tiny_checkpoint, tmp_path, arguments, code, message
):
    import re

    values = {"home": home, "photo": photo_folder / "photo_1.jpg", "fake": not_an_image(tmp_path),
              "tmp": tmp_path, "captions": captions_csv, "checkpoint": tiny_checkpoint}
    arguments = [a.format(**values) for a in arguments]
    if "--home" not in arguments:
        arguments += ["--home", str(home)]
    before = snapshot(home)
    start = time.perf_counter()
    result = cli_run(*arguments, expect=code)
    assert time.perf_counter() - start < 30  # fails fast: no network waits
    assert re.search(message, result.output), result.output
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)
    assert result.stdout.strip() == ""  # the message goes to stderr
    assert snapshot(home) == before


def test_index_errors_leave_a_fresh_home_empty(cli_run, tmp_path, photo_folder, tiny_checkpoint):
    """A failing first `index` must not register the model or leave a home behind."""
    home = tmp_path / "fresh"
    cli_run("index", photo_folder, "--home", home, "--model", f"se-tiny/{tiny_checkpoint}",
            "--index-kind", "annoy", expect=1)
    cli_run("index", photo_folder, "--home", home, "--model", "ViT-B-32/laion2b_s34b_b79k",
            expect=1)
    assert not home.exists()
    assert "no home at" in cli_run("status", "--home", home, expect=1).stderr


def test_interrupt_is_a_message_and_exit_130(cli_run, tmp_path, copy_photos, monkeypatch):
    import open_clip

    def interrupt(self, pixels, normalize=False):
        raise KeyboardInterrupt

    # the model's own method: an encoder shared between tests (`reuse_random_encoders`) may
    # have its `encode_images` wrapped by a server another test left running
    for model_class in (open_clip.CLIP, open_clip.CustomTextCLIP):
        monkeypatch.setattr(model_class, "encode_image", interrupt)
    result = cli_run("index", copy_photos, "--home", tmp_path / "home", "--model", TINY_MODEL,
                     "--workers", 0, expect=130)
    assert "interrupted" in result.output and "Traceback" not in result.output


# -- help and start-up ----------------------------------------------------------------------


def all_commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    found = []
    for name, command in sorted(group.commands.items()):
        found.append((f"{prefix}{name}", command))
        if isinstance(command, click.Group):
            found += all_commands(command, prefix=f"{prefix}{name} ")
    return found


def test_every_command_has_help_and_an_example(cli_run):
    commands = all_commands(cli)
    assert {"index", "search", "similar", "add-texts", "lookup", "classify", "match", "status",
            "check", "remove"} <= {name for name, _ in commands}
    for name, command in commands:
        assert command.help and command.get_short_help_str().strip(), f"{name} has no help"
        assert "Example:" in command.help, f"`searchengine {name}` has no Example: block"
        text = cli_run(*name.split(), "--help").stdout
        assert "Example:" in text and "searchengine" in text.split("Example:")[1]


@pytest.mark.parametrize("name", ["search", "similar", "lookup", "classify", "match", "index",
                                  "add-texts", "status", "check", "remove"])
def test_collection_commands_share_home_model_and_json_options(name):
    options = {o for p in cli.commands[name].params for o in getattr(p, "opts", [])}
    assert {"--home", "--json"} <= options
    if name not in ("status", "check", "remove"):
        assert "--model" in options


# Commands with --home that make a scratch home of their own rather than open the user's.
SCRATCH_HOMES = {"demo", "bench recall", "bench zero-shot"}


def test_every_command_that_opens_a_home_takes_a_catalog_url():
    """`--catalog URL` (or SEARCHENGINE_CATALOG) wherever `--home` opens a home."""
    for name, command in all_commands(cli):
        params = {o: p for p in command.params for o in getattr(p, "opts", [])}
        if "--home" not in params or name in SCRATCH_HOMES:
            continue
        assert "--catalog" in params, f"`searchengine {name}` has --home but no --catalog"
        assert params["--catalog"].envvar == "SEARCHENGINE_CATALOG"


def test_help_is_fast_and_imports_no_heavy_modules():
    probe = (
        "import sys, time; t = time.perf_counter(); import searchengine.cli; "
        "print(time.perf_counter() - t); "
        "print(','.join(m for m in ('torch', 'faiss', 'open_clip', 'pyarrow', 'matplotlib') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    seconds, heavy = out.stdout.splitlines()
    assert heavy == "", f"importing searchengine.cli loads {heavy}"
    runs = []
    for _ in range(3):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "from searchengine.cli import cli; cli()", "--help"],
                       capture_output=True, check=True, env={**os.environ, "COLUMNS": "100"})
        runs.append(time.perf_counter() - start)
    assert min(runs) < 1.0, runs


def test_version():
    from click.testing import CliRunner

    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and "version" in result.output


def test_search_by_an_image_path_that_is_digits(cli_run, tmp_path, home, monkeypatch):
    """A file literally named `1` in the working directory is an image, not catalog id 1."""
    write_image(tmp_path / "1", seed=60, format="PNG")
    monkeypatch.chdir(tmp_path)
    payload = cli_run.json("similar", "1", "-k", 1, "--home", home)
    assert payload["query"] == "1" and payload["hits"][0]["score"] < 0.99999


def test_image_queries_by_id_use_the_id_form(cli_run, home, photo_folder):
    by_path = cli_run.json("similar", photo_folder / "photo_3.jpg", "-k", 2, "--home", home)
    media = by_path["hits"][0]["id"]
    by_id = cli_run.json("similar", f"id:{media}", "-k", 2, "--home", home)
    assert [hit["id"] for hit in by_id["hits"]] == [hit["id"] for hit in by_path["hits"]]
    assert by_id["query"] == str(photo_folder / "photo_3.jpg")
    matched = cli_run.json("match", f"id:{media}", "a dog", "--home", home)
    assert matched["image"] == f"id:{media}"
    labels = cli_run.json("classify", f"id:{media}", "--labels", "dog,cat", "--home", home)
    assert {label["label"] for label in labels["labels"]} == {"dog", "cat"}
    assert cli_run.json("lookup", f"id:{media}", "-k", 1, "--home", home)["hits"]


def test_models_lists_random_specs_and_bundled_aliases(cli_run):
    names = cli_run.json("models")["models"]
    assert "se-tiny/random" in names and "ViT-B-32/random" in names and "demo" in names
    pretrained = cli_run.json("models", "--pretrained")["models"]
    assert "ViT-B-32/laion2b_s34b_b79k" in pretrained
