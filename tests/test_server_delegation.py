"""`searchengine search` answered by a real `searchengine serve` process on the same home.

The server is started as a user starts it (the console script, in its own process); it records
itself in HOME/serve.json, and the CLI's answer through it must print what a local search prints.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from conftest import TINY_MODEL  # noqa: E402
from float_noise import score_noise  # noqa: E402

from searchengine.serving import SERVE_FILE, ServeRecord, read_record, write_record  # noqa: E402

PATIENCE = 240.0  # seconds for the server to load its model on a busy machine (not a bound)
QUERIES = ["a photo of a dog", "red and blue shapes", "something green"]


@pytest.fixture(scope="module")
def serving(indexed_home: Path, tmp_path_factory: pytest.TempPathFactory):
    """(home, record, process): a copy of the indexed home with `searchengine serve` on it."""
    home = tmp_path_factory.mktemp("served") / "home"
    shutil.copytree(indexed_home, home)
    command = [str(Path(sys.executable).with_name("searchengine")), "serve", "--home", str(home),
               "--port", "0"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               env={**os.environ, "SEARCHENGINE_TOKEN": ""})
    deadline = time.monotonic() + PATIENCE
    record = read_record(home)
    while record is None:
        if process.poll() is not None:
            pytest.fail(f"serve exited: {process.stderr.read().decode()[-2000:]}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("serve did not write its serve.json")
        time.sleep(0.1)
        record = read_record(home)
    yield home, record, process
    if process.poll() is None:
        process.kill()
        process.wait()


def compare(through_serve: dict, local: dict) -> None:
    """Equal JSON; scores within float noise (two processes' float32 kernels)."""
    noise = 4 * score_noise(512)
    assert {k: v for k, v in through_serve.items() if k != "hits"} == \
        {k: v for k, v in local.items() if k != "hits"}
    assert [{k: v for k, v in h.items() if k != "score"} for h in through_serve["hits"]] == \
        [{k: v for k, v in h.items() if k != "score"} for h in local["hits"]]
    for hit, want in zip(through_serve["hits"], local["hits"], strict=True):
        assert abs(hit["score"] - want["score"]) <= noise


def test_the_record_names_the_running_server(serving):
    home, record, process = serving
    assert record.pid == process.pid and record.url.startswith("http://127.0.0.1:")
    assert record.model is None and record.token is False
    assert json.loads((home / SERVE_FILE).read_text())["instance"] == record.instance


@pytest.mark.parametrize("query", QUERIES)
def test_search_through_serve_prints_what_a_local_search_prints(serving, cli_run, query):
    home, record, _ = serving
    asked = cli_run("search", query, "--home", home, "-k", 4, "--offset", 1, "--json")
    local = cli_run("search", query, "--home", home, "-k", 4, "--offset", 1, "--json",
                    "--no-serve")
    assert f"answered by the serve at {record.url}" in asked.stderr
    assert "serve" not in local.stderr
    compare(json.loads(asked.stdout), json.loads(local.stdout))

    table = cli_run("search", query, "--home", home, "-k", 4)
    assert f"answered by the serve at {record.url}" in table.stderr
    local_table = cli_run("search", query, "--home", home, "-k", 4, "--no-serve").stdout
    assert [line.split()[2:] for line in table.stdout.splitlines()[3:]] == \
        [line.split()[2:] for line in local_table.splitlines()[3:]]  # ids and paths
    assert table.stdout.splitlines()[:3] == local_table.splitlines()[:3]


def test_similar_of_an_id_through_serve_prints_what_a_local_one_prints(serving, cli_run):
    home, record, _ = serving
    asked = cli_run("similar", "id:2", "--home", home, "-k", 3, "--json")
    local = cli_run("similar", "id:2", "--home", home, "-k", 3, "--json", "--no-serve")
    assert f"answered by the serve at {record.url}" in asked.stderr
    compare(json.loads(asked.stdout), json.loads(local.stdout))


def test_query_arithmetic_and_like_ids_through_serve(serving, cli_run):
    home, record, _ = serving
    args = ["search", "a photo of a dog +2:red shapes -something green", "--home", home,
            "-k", 4, "--like", "id:2", "--unlike", "id:3", "--json"]
    asked = cli_run(*args)
    local = cli_run(*args, "--no-serve")
    assert f"answered by the serve at {record.url}" in asked.stderr
    compare(json.loads(asked.stdout), json.loads(local.stdout))


def test_filters_travel_to_the_serve(serving, cli_run, photo_folder):
    """--folder, --format, --min-score and --sort reach the server as the API's parameters: its
    answer prints what a local search with the same options prints, `matched` included."""
    home, _, _ = serving
    options = ["--folder", photo_folder / "trip", "--format", "jpeg", "--min-score", "-0.99",
               "--sort", "date", "-k", 5, "--json"]
    for command in (["search", "a photo"], ["similar", "id:1"]):
        asked = cli_run(*command, "--home", home, *options)
        assert "answered by the serve" in asked.stderr
        local = cli_run(*command, "--home", home, *options, "--no-serve")
        compare(json.loads(asked.stdout), json.loads(local.stdout))
        assert json.loads(asked.stdout)["matched"] == 2
    empty = ["search", "a photo", "--home", home, "--after", "2030-01-01"]
    asked = cli_run(*empty)
    assert "answered by the serve" in asked.stderr
    assert asked.stdout == cli_run(*empty, "--no-serve").stdout
    assert "no photo passes the filters (0 left)" in asked.stdout


def test_a_like_file_is_searched_here(serving, cli_run, photo_folder):
    home, record, _ = serving
    result = cli_run("search", "a dog", "--home", home, "--like", photo_folder / "photo_0.jpg",
                     "--json")
    assert "the serve cannot read; searching here" in result.stderr
    assert "answered by" not in result.stderr
    assert json.loads(result.stdout)["hits"]


def test_another_model_is_searched_here(serving, cli_run):
    home, record, _ = serving
    result = cli_run("search", "a dog", "--home", home, "--model", TINY_MODEL, "--json")
    assert f"the serve at {record.url} uses the home's default model; searching here" \
        in result.stderr
    assert json.loads(result.stdout)["model"] == TINY_MODEL


def ended_pid() -> int:
    """The id of a process that has ended (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.fixture()
def private_home(indexed_home: Path, tmp_path: Path) -> Path:
    home = tmp_path / "home"
    shutil.copytree(indexed_home, home)
    return home


def test_a_stale_record_is_ignored(serving, private_home, cli_run):
    """A record of a process that ended, or of another catalog file, is ignored without a word;
    even when it names a live server's address."""
    _, live, _ = serving
    local = cli_run.json("search", "a dog", "--home", private_home, "--no-serve")
    for record in (replace(live, pid=ended_pid(), home=str(private_home),
                           catalog=_identity(private_home)),
                   replace(live, pid=os.getpid(), home=str(private_home))):  # another catalog
        write_record(private_home, record)
        assert read_record(private_home) is None
        result = cli_run("search", "a dog", "--home", private_home, "--json")
        assert "serve" not in result.stderr
        assert json.loads(result.stdout) == local


def test_a_live_record_that_does_not_answer_falls_back_with_a_note(private_home, cli_run):
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    record = ServeRecord(pid=os.getpid(), url=f"http://127.0.0.1:{port}", started="now",
                         instance="x", home=str(private_home), catalog=_identity(private_home),
                         model=None, token=False)
    write_record(private_home, record)
    local = cli_run.json("search", "a dog", "--home", private_home, "--no-serve")
    result = cli_run("search", "a dog", "--home", private_home, "--json")
    assert f"the serve at {record.url} did not answer" in result.stderr
    assert json.loads(result.stdout) == local


def test_another_program_on_the_recorded_port_is_not_believed(serving, private_home, cli_run):
    """The record's instance must be the one the server sends: a record that names a live
    server but another run of it (the port reused since) is not trusted."""
    _, live, _ = serving
    write_record(private_home, replace(live, pid=os.getpid(), home=str(private_home),
                                       catalog=_identity(private_home), instance="another run"))
    result = cli_run("search", "a dog", "--home", private_home, "--json")
    assert "is not the serve that HOME/serve.json names any more" in result.stderr
    assert json.loads(result.stdout) == cli_run.json("search", "a dog", "--home", private_home,
                                                     "--no-serve")


def test_a_clean_stop_removes_the_record(serving):
    home, _, process = serving  # the last test of this module: it stops the server
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=PATIENCE)
    assert not (home / SERVE_FILE).exists()
    assert read_record(home) is None


def _identity(home: Path) -> tuple[int, int]:
    stat = (home / "catalog.sqlite").stat()
    return (stat.st_dev, stat.st_ino)


@pytest.mark.parametrize("as_json", [False, True])
def test_an_answer_prints_as_the_local_result_prints(capsys, as_json):
    """Formatting alone, exactly: scores that round differently when rounded twice (6 decimals,
    then 4), a file name that is not UTF-8, and no hits."""
    from searchengine.cli.collection import _print_result
    from searchengine.cli.via_serve import _print
    from searchengine.engine import SearchHit, SearchResult

    hits = [SearchHit(1, 0.12344999611377716, 7, path="/p/caf\udce9.jpg"),
            SearchHit(2, -0.0000496, 3, path="/p/b c.png"),
            SearchHit(3, 0.5, 9, path="/p/x.jpg")]
    for result in (SearchResult("a caf\udce9", "se-tiny/random", hits),
                   SearchResult("nothing", "m", [])):
        _print_result(result, as_json)
        local = capsys.readouterr().out
        answer = result.as_dict()  # the API's JSON with exact_scores=true
        for shown, hit in zip(answer["hits"], result.hits, strict=True):
            shown["score"] = hit.score
        _print(json.loads(json.dumps(answer)), as_json)
        assert capsys.readouterr().out == local


def test_a_serve_that_ignores_the_filters_is_not_believed(private_home, cli_run):
    """A serve of a version from before the filters ignores their parameters and would answer
    an unfiltered search: without `matched` in its answer the CLI searches here. (The older
    server is a stand-in: that version cannot be started from this checkout.)"""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from searchengine.serving import INSTANCE_HEADER

    class Older(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the handler's name is http.server's)
            body = json.dumps({"query": "a dog", "model": TINY_MODEL, "hits": []}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header(INSTANCE_HEADER, "older")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Older)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        write_record(private_home, ServeRecord(
            pid=os.getpid(), url=f"http://127.0.0.1:{server.server_port}", started="now",
            instance="older", home=str(private_home), catalog=_identity(private_home),
            model=None, token=False))
        result = cli_run("search", "a dog", "--home", private_home, "--json", "--format", "png")
        assert "does not know the search filters" in result.stderr
        local = cli_run.json("search", "a dog", "--home", private_home, "--no-serve",
                             "--format", "png")
        assert json.loads(result.stdout) == local and local["matched"] == 1
    finally:
        server.shutdown()
        server.server_close()
