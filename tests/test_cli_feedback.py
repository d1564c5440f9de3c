"""What the CLI tells a person: progress on a terminal, the project's own log under -v, warnings
where a command would otherwise succeed silently, and help that names real commands and defaults."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest
from conftest import CAPTIONS, PHOTO_COUNT, TINY_MODEL

from searchengine.cli import cli

pytestmark = pytest.mark.usefixtures("reuse_random_encoders")

ROOT = Path(__file__).resolve().parents[1]


def command_names(group: click.Group = cli, prefix: str = "") -> set[str]:
    names = set()
    for name, command in group.commands.items():
        names.add(f"{prefix}{name}")
        if isinstance(command, click.Group):
            names |= command_names(command, prefix=f"{prefix}{name} ")
    return names


def test_messages_name_only_commands_that_exist():
    """Every `searchengine CMD` a message or docstring tells a user to run is a real command."""
    known = command_names()
    named = {}
    for path in sorted((ROOT / "searchengine").rglob("*.py")):
        pattern = r"`searchengine ([a-z][a-z-]*)(?: ([a-z][a-z-]*))?"
        for match in re.finditer(pattern, path.read_text()):
            first, second = match.groups()
            name = f"{first} {second}" if f"{first} {second}" in known else first
            named.setdefault(name, path.relative_to(ROOT))
    unknown = {name: str(path) for name, path in named.items() if name not in known}
    assert not unknown, f"messages name commands that do not exist: {unknown}"


# -- progress and logging (defect 14) ---------------------------------------------------------


@pytest.fixture()
def restore_log_levels():
    """The CLI sets logger levels for -v; put them back so later tests see the defaults."""
    names = ["", "searchengine"]
    levels = {name: logging.getLogger(name).level for name in names}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def test_verbose_shows_the_engines_log_not_alembics_or_faisss(
    cli_run, tmp_path, photo_folder, caplog, restore_log_levels
):
    cli_run("-v", "index", photo_folder, "--home", tmp_path / "home", "--model", TINY_MODEL,
            "--workers", "0")
    loggers = {record.name for record in caplog.records if record.levelno == logging.INFO}
    assert "searchengine.engine" in loggers, loggers
    chatter = {name for name in loggers if name.startswith(("alembic", "faiss"))}
    assert not chatter, f"-v shows other libraries' INFO log: {chatter}"
    caplog.clear()
    cli_run("-vvv", "index", photo_folder, "--home", tmp_path / "fresh", "--model", TINY_MODEL,
            "--workers", "0")  # a new home: Alembic migrates it, and -vvv shows that
    assert any(r.name.startswith("alembic") for r in caplog.records)


@pytest.mark.parametrize("progress", [True, False])
def test_add_texts_draws_a_bar_with_rate_and_time_left_only_when_asked(
    progress, tmp_path, captions_csv, open_engine, capsys
):
    engine = open_engine(tmp_path / "home")
    capsys.readouterr()
    report = engine.add_texts(captions_csv, model=TINY_MODEL, batch_size=2, progress=progress)
    assert report.embedded == len(CAPTIONS)
    err = capsys.readouterr().err
    if progress:
        assert f"{len(CAPTIONS)}/{len(CAPTIONS)}" in err and "text/s" in err, err
    else:
        assert err == ""


def test_piped_and_json_runs_draw_no_bar(cli_run, tmp_path, photo_folder, captions_csv):
    """CliRunner's stderr is no terminal: the summary line alone, no bar."""
    home = tmp_path / "home"
    result = cli_run("index", photo_folder, "--home", home, "--model", TINY_MODEL, "--workers", 0)
    assert "img/s" not in result.stderr and "%|" not in result.stderr
    assert result.stdout.startswith(f"{PHOTO_COUNT + 1} files: ")
    result = cli_run("add-texts", captions_csv, "--home", home, "--model", TINY_MODEL, "--json")
    assert "text/s" not in result.stderr and json.loads(result.stdout)["embedded"] == 5


def run_on_a_terminal(args: list[str], cwd: Path, timeout: float = 120) -> tuple[int, str, str]:
    """Run `searchengine ARGS` with stderr on a fresh pseudo-terminal (one that reports no size,
    as `script` or a CI runner gives) and stdout on a pipe: (exit code, stdout, terminal text)."""
    main, child = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-c", "from searchengine.cli import cli; cli()", *args], cwd=cwd,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=child,
        env={**os.environ, "COLUMNS": "", "TERM": "xterm"},
    )
    os.close(child)
    chunks = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([main], [], [], 1.0)
        if not ready:
            if process.poll() is not None:
                break
            continue
        try:
            chunk = os.read(main, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(main)
    stdout = process.communicate(timeout=timeout)[0]
    return process.returncode, stdout.decode(), b"".join(chunks).decode(errors="replace")


def test_index_draws_a_bar_on_a_terminal(tmp_path, photo_folder):
    """The bar (count, rate, time left) appears on a real terminal even when it reports a size of
    0x0 (a fresh pty, as `script` gives), where tqdm's own size probe used to hide it."""
    code, stdout, terminal = run_on_a_terminal(
        ["index", str(photo_folder), "--home", str(tmp_path / "home"), "--model", TINY_MODEL,
         "--workers", "0", "--batch-size", "2"],
        cwd=tmp_path,
    )
    assert code == 0, terminal
    done = f"{PHOTO_COUNT + 1}/{PHOTO_COUNT + 1} "
    rate = r"[\d.]+(img/s|s/img)"  # tqdm inverts the rate below one per second
    assert re.search(done + r"\[\d\d:\d\d<\d\d:\d\d, *" + rate, terminal), terminal
    assert stdout.startswith(f"{PHOTO_COUNT + 1} files: ")


# -- a word where a command used to succeed silently (defect 16) -------------------------------


def test_indexing_a_folder_without_images_says_what_counts_as_one(
    cli_run, tmp_path, caplog
):
    folder = tmp_path / "raw"
    (folder / ".thumbnails").mkdir(parents=True)
    (folder / "IMG_0001.CR2").write_bytes(b"raw")
    (folder / ".thumbnails" / "x.jpg").write_bytes(b"hidden")
    with caplog.at_level("WARNING", logger="searchengine.engine"):
        result = cli_run("index", folder, "--home", tmp_path / "home", "--model", TINY_MODEL,
                         "--json")  # a folder empty today is no error: exit 0, with a word
    assert json.loads(result.stdout)["scanned"] == 0
    warning = next(r.getMessage() for r in caplog.records if r.name == "searchengine.engine")
    assert f"no image files under {folder}" in warning
    assert "*.jpg" in warning and "*.heic" in warning and "hidden files and folders" in warning


def test_lookup_on_a_home_without_texts_names_add_texts(cli_run, tmp_path, photo_folder):
    home = tmp_path / "home"
    cli_run("index", photo_folder, "--home", home, "--model", TINY_MODEL, "--workers", 0)
    result = cli_run("lookup", photo_folder / "photo_0.jpg", "--home", home, expect=1)
    assert "holds no texts" in result.stderr and "`searchengine add-texts " in result.stderr


# -- defaults come from the settings dataclasses (issue item 17) -------------------------------


def settings_defaults(settings_class: type) -> dict:
    instance = settings_class()
    return {f.name: getattr(instance, f.name) for f in dataclasses.fields(settings_class)}


def option_defaults(command: click.Command) -> dict:
    context = click.Context(command)
    return {p.name: p.get_default(context) for p in command.params if isinstance(p, click.Option)}


@pytest.mark.parametrize(
    ("command", "settings_class"),
    [(("index",), "searchengine.settings:IngestSettings"),
     (("train",), "searchengine.training.settings:TrainSettings"),
     (("bench", "recall"), "searchengine.eval.benchmark:RecallSettings")],
)
def test_every_option_default_is_its_settings_field_default(command, settings_class):
    """An option named after a settings field has that field's default, or None (the settings
    decide); a default computed on the machine (workers = min(2, CPUs)) must be left to the
    settings, as it cannot be written down. `--no-draft` is the negation of `draft`."""
    import importlib

    module, name = settings_class.split(":")
    settings_type = getattr(importlib.import_module(module), name)
    fields = settings_defaults(settings_type)
    computed = {f.name for f in dataclasses.fields(settings_type)  # e.g. min(2, CPUs)
                if f.default_factory is not dataclasses.MISSING}
    target = cli
    for part in command:
        target = target.commands[part]
    options = option_defaults(target)
    if "no_draft" in options:
        assert options.pop("no_draft") is (not fields["draft"])
    if "ks" in options:  # given as text, e.g. "1,5,10"
        options["ks"] = tuple(int(k) for k in options["ks"].split(","))
    compared = {name: value for name, value in options.items() if name in fields}
    assert len(compared) >= 2, f"{command}: {sorted(options)} vs {sorted(fields)}"
    drifted = {name: (value, fields[name]) for name, value in compared.items()
               if value is not None and (value != fields[name] or name in computed)}
    assert not drifted, f"`searchengine {' '.join(command)}` options drifted: {drifted}"


def test_home_default_is_the_settings_one():
    from searchengine.settings import DEFAULT_HOME

    homes = {str(p.default) for name in command_names() for p in _command(name).params
             if p.name == "home" and p.default is not None}
    assert homes == {DEFAULT_HOME}


def _command(name: str) -> click.Command:
    target = cli
    for part in name.split():
        target = target.commands[part]
    return target


def test_log_lines_print_above_a_running_bar_not_through_it():
    import io

    from tqdm import tqdm

    from searchengine.progress import LogAboveBars

    screen = io.StringIO()
    bar = tqdm(total=10, file=screen, ncols=60, desc="index", mininterval=0)
    bar.update(3)
    handler = LogAboveBars(screen)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.emit(logging.LogRecord("searchengine.x", logging.WARNING, __file__, 1, "a file was "
                                   "skipped", None, None))
    bar.close()
    before, _, after = screen.getvalue().partition("WARNING searchengine.x: a file was skipped\n")
    assert after, screen.getvalue()  # the line ends where the bar was, on a line of its own
    assert re.search(r"\r +\r$", before), repr(before)  # the bar's line blanked first
    assert "3/10" in after  # the bar is drawn again below the line
