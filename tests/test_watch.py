"""`watch`, `serve --watch` and `search --in`: real watchdog observers on real files.

Every wait is bounded (`wait_for`), so a watcher that misses a change fails its test in seconds.
The watchers run with short quiet and settle times (`FAST`); their rounds are collected from
`Watcher.run`'s `on_round`, the channel the CLI prints from.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_MODEL, draw_image, fast_ingest, write_image

from searchengine.catalog.lock import HomeLock
from searchengine.engine import Engine
from searchengine.errors import InvalidInputError
from searchengine.ingest.watch import Watcher, WatchRound, WatchSettings
from searchengine.settings import EncoderSettings

pytestmark = pytest.mark.timeout(180)
FAST = WatchSettings(quiet_seconds=0.3, settle_seconds=0.3, max_wait_seconds=10.0,
                     rescan_seconds=3600.0, poll_seconds=0.5, busy_retry_seconds=0.2)
WAIT_SECONDS = 30.0  # the longest any change may take to show (a busy host included)


def wait_for(condition: Callable[[], object], what: str, seconds: float = WAIT_SECONDS):
    """Poll `condition` until it is truthy (returned) or fail after `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"gave up after {seconds:.0f} s waiting for {what}")


class Running:
    """A watcher running in a thread: its rounds so far, and a look at the home it writes."""

    def __init__(self, watcher: Watcher, reader: Engine):
        self.watcher = watcher
        self.reader = reader  # an engine of its own on the same home, as another process
        self.rounds: list[WatchRound] = []
        self.error: BaseException | None = None

    def paths(self) -> dict[str, int]:
        """Catalogued path -> media id, under the watched roots."""
        stored = self.reader.catalog.files_under([str(r) for r in self.watcher.roots])
        return {path: row.id for path, row in stored.items()}

    def vector_of(self, path: Path) -> np.ndarray | None:
        media_id = self.paths().get(str(path))
        if media_id is None:
            return None
        ids, vectors = self.reader.vectors("image", model=TINY_MODEL, ids=[media_id])
        return vectors[0] if len(ids) else None

    def totals(self, since: int = 0) -> dict[str, int]:
        """Sums of the rounds' report fields from round `since` on."""
        sums = {"embedded": 0, "reused": 0, "skipped": 0, "removed": 0, "forgotten": 0}
        for done in self.rounds[since:]:
            if done.report is not None:
                for name in ("embedded", "reused", "skipped", "removed"):
                    sums[name] += getattr(done.report, name)
            sums["forgotten"] += done.forgotten
        return sums


@pytest.fixture()
def watching(tmp_path: Path, reuse_random_encoders) -> Iterator[Callable]:
    """`watching(roots, settings=FAST)`: a Watcher on a new home in a thread (stopped and
    checked after the test); returns its `Running` once the first round is done."""
    started: list[tuple[threading.Event, threading.Thread, Running, Engine]] = []

    def start(roots, settings: WatchSettings = FAST, home: Path | None = None) -> Running:
        home = home or tmp_path / "home"
        engine = Engine.open(home, encoder_settings=EncoderSettings(device="cpu"))
        watcher = Watcher(engine, roots, model=TINY_MODEL, settings=settings,
                          ingest=fast_ingest())
        reader = Engine.open(home, encoder_settings=EncoderSettings(device="cpu"))
        running = Running(watcher, reader)
        stop = threading.Event()

        def run() -> None:
            try:
                watcher.run(stop, on_round=running.rounds.append)
            except BaseException as error:  # noqa: BLE001 (reported by the test)
                running.error = error

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        started.append((stop, thread, running, engine))
        wait_for(lambda: running.rounds or running.error, "the first round")
        assert running.error is None, running.error
        return running

    yield start
    for stop, thread, running, engine in started:
        stop.set()
        thread.join(timeout=30)
        engine.close()
        running.reader.close()
        assert not thread.is_alive(), "the watcher did not stop"
        assert running.error is None, running.error


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def copy_in(source: Path, target: Path) -> Path:
    """A photo copied in from outside the watched folder (as `cp` does)."""
    shutil.copyfile(source, target)
    return target


# -- files copied in, renamed, moved, deleted -------------------------------------------------


def test_watch_follows_copies_renames_moves_and_deletions(watching, copy_photos, tmp_path):
    running = watching([copy_photos])
    first = running.rounds[0]
    assert first.cause == "start" and first.report.embedded == 9  # 8 JPEGs and a PNG
    paths = running.paths()
    assert len(paths) == 9

    outside = write_image(tmp_path / "outside" / "new.jpg", seed=500)
    new = copy_in(outside, copy_photos / "new.jpg")
    wait_for(lambda: running.totals(1)["embedded"] == 1, "the copied photo's round")
    assert running.vector_of(new) is not None
    since = len(running.rounds)

    # a rename in place and a move into a sub-folder: the stored vectors are reused
    old_vector = running.vector_of(copy_photos / "photo_0.jpg")
    renamed = copy_photos / "renamed.jpg"
    os.rename(copy_photos / "photo_0.jpg", renamed)
    moved = copy_photos / "trip" / "photo_1.jpg"
    os.rename(copy_photos / "photo_1.jpg", moved)
    wait_for(lambda: str(renamed) in running.paths() and str(moved) in running.paths()
             and str(copy_photos / "photo_0.jpg") not in running.paths(), "the renames")
    wait_for(lambda: running.totals(since)["forgotten"] == 2, "the rounds of the moves")
    totals = running.totals(since)
    assert totals["embedded"] == 0 and totals["reused"] == 2, running.rounds[since:]
    assert totals["forgotten"] == 2
    np.testing.assert_array_equal(running.vector_of(renamed), old_vector)  # the same bytes

    # a deletion is forgotten, in the catalog and in the index
    since = len(running.rounds)
    os.remove(copy_photos / "photo_2.jpg")
    wait_for(lambda: running.totals(since)["forgotten"] == 1, "the deletion's round")
    assert str(copy_photos / "photo_2.jpg") not in running.paths()
    assert len(running.paths()) == 9
    report = running.reader.check()
    assert report.ok, [s.summary for s in report.spaces]
    hits = running.reader.search("anything", k=20, model=TINY_MODEL).hits
    assert sorted(h.path for h in hits) == sorted(running.paths())


def test_watch_forgets_a_deleted_folder_and_walks_one_moved_in(watching, copy_photos, tmp_path):
    running = watching([copy_photos])
    trip = [p for p in running.paths() if "/trip/" in p]
    assert len(trip) == 2
    shutil.rmtree(copy_photos / "trip")
    wait_for(lambda: not any("/trip/" in p for p in running.paths()), "the deleted folder")

    outside = tmp_path / "outside" / "album"
    for seed in (700, 701, 702):
        write_image(outside / f"a{seed}.jpg", seed=seed)
    os.rename(outside, copy_photos / "album")  # one event for the folder, none for its files
    wait_for(lambda: sum("/album/" in p for p in running.paths()) == 3, "the moved-in folder")


def test_hidden_files_and_other_files_are_left_alone(watching, copy_photos):
    running = watching([copy_photos])
    rounds = len(running.rounds)
    write_image(copy_photos / ".hidden.jpg", seed=800)
    write_image(copy_photos / ".cache" / "thumb.jpg", seed=801)
    (copy_photos / "notes.txt").write_text("not a photo")
    time.sleep(2.0)  # several quiet periods: no round may come of these
    assert len(running.rounds) == rounds
    assert len(running.paths()) == 9


# -- half-written files -----------------------------------------------------------------------


def big_jpeg(path: Path) -> bytes:
    """The bytes of a ~1 MB JPEG (noise, so it compresses badly)."""
    rng = np.random.default_rng(3)
    pixels = np.asarray(draw_image(900, (1600, 1200)), dtype=np.int16)
    noisy = np.clip(pixels + rng.integers(-40, 40, pixels.shape), 0, 255).astype(np.uint8)
    from PIL import Image

    Image.fromarray(noisy).save(path, quality=95)
    data = path.read_bytes()
    path.unlink()
    return data


def write_slowly(path: Path, data: bytes, *, chunks: int, pause: float) -> None:
    """Write `data` to `path` in `chunks` parts through one open file, pausing between parts
    longer than the watcher's quiet and settle times together."""
    size = -(-len(data) // chunks)
    with open(path, "wb") as handle:
        for start in range(0, len(data), size):
            handle.write(data[start : start + size])
            handle.flush()  # visible to readers now (no fsync: the page cache is what they read)
            time.sleep(pause)


def test_a_half_written_file_is_read_once_complete(watching, copy_photos, tmp_path):
    """A copy that pauses longer than a burst's quiet time is not read until it is closed: its
    vector is the complete file's, and no round read it truncated (no skip, one embedding)."""
    running = watching([copy_photos])
    data = big_jpeg(tmp_path / "big.jpg")
    assert len(data) > 500_000
    since = len(running.rounds)
    target = copy_photos / "big.jpg"
    write_slowly(target, data, chunks=5, pause=FAST.quiet_seconds + FAST.settle_seconds + 0.5)
    wait_for(lambda: running.totals(since)["embedded"] >= 1, "the big photo's round")
    time.sleep(1.0)  # any round still to come would show below
    totals = running.totals(since)
    assert totals["embedded"] == 1 and totals["skipped"] == 0, running.rounds[since:]
    assert running.reader.catalog.skipped() == []

    reference_home = tmp_path / "reference"
    (tmp_path / "complete").mkdir()
    (tmp_path / "complete" / "big.jpg").write_bytes(data)
    with Engine.open(reference_home, encoder_settings=EncoderSettings(device="cpu")) as ref:
        ref.index([tmp_path / "complete"], model=TINY_MODEL, settings=fast_ingest())
        _, expected = ref.vectors("image", model=TINY_MODEL)
    np.testing.assert_allclose(running.vector_of(target), expected[0], rtol=0, atol=1e-3)


def test_a_growing_file_is_left_until_it_settles_without_close_events(watching, copy_photos,
                                                                      tmp_path):
    """Polling sees no close-write: a file still growing between two looks `settle_seconds`
    apart is left for a later round, so it is read once, complete."""
    settings = WatchSettings(**{**FAST.__dict__, "polling": True, "poll_seconds": 0.4,
                                "settle_seconds": 1.0})
    running = watching([copy_photos], settings)
    data = big_jpeg(tmp_path / "big.jpg")
    since = len(running.rounds)
    target = copy_photos / "growing.jpg"
    write_slowly(target, data, chunks=12, pause=0.2)  # quiet between polls, never settled
    wait_for(lambda: running.totals(since)["embedded"] == 1, "the grown photo's round")
    time.sleep(1.5)
    totals = running.totals(since)
    assert totals["embedded"] == 1 and totals["skipped"] == 0, running.rounds[since:]
    assert running.reader.catalog.skipped() == []


def test_a_file_that_fails_to_decode_is_retried_when_it_changes(watching, copy_photos,
                                                                 tmp_path):
    """A file whose writer stopped halfway is recorded as skipped; written in full later, it
    is indexed and the skip is gone."""
    running = watching([copy_photos])
    data = big_jpeg(tmp_path / "big.jpg")
    target = copy_photos / "stalled.jpg"
    target.write_bytes(data[: len(data) // 3])  # closed: the writer gave up
    wait_for(lambda: running.reader.catalog.skipped(), "the truncated file's skip")
    assert running.vector_of(target) is None
    target.write_bytes(data)
    wait_for(lambda: running.vector_of(target) is not None, "the completed file")
    assert running.reader.catalog.skipped() == []


# -- the fallbacks: polling, the watch limit, the rescan ------------------------------------


def test_polling_observer_finds_a_new_photo(watching, copy_photos, tmp_path):
    running = watching([copy_photos], WatchSettings(**{**FAST.__dict__, "polling": True}))
    assert running.watcher.method.startswith("polling")
    new = copy_in(write_image(tmp_path / "outside" / "p.jpg", seed=501), copy_photos / "p.jpg")
    wait_for(lambda: running.vector_of(new) is not None, "the photo, by polling")


def test_the_inotify_watch_limit_falls_back_to_polling(watching, copy_photos, tmp_path,
                                                       monkeypatch, caplog):
    """The limit cannot be reached here without changing the machine's settings: the emitter
    fails as watchdog fails there (OSError ENOSPC at start)."""
    from watchdog.observers.inotify import InotifyEmitter

    def limit_reached(self):
        raise OSError(errno.ENOSPC, "inotify watch limit reached")

    monkeypatch.setattr(InotifyEmitter, "on_thread_start", limit_reached)
    with caplog.at_level(logging.WARNING, logger="searchengine"):
        running = watching([copy_photos])
    assert running.watcher.method.startswith("polling")
    assert "inotify watch limit reached" in caplog.text
    assert "max_user_watches" in caplog.text
    new = copy_in(write_image(tmp_path / "outside" / "q.jpg", seed=502), copy_photos / "q.jpg")
    wait_for(lambda: running.vector_of(new) is not None, "the photo, by polling")


def test_the_periodic_rescan_finds_a_change_no_event_reported(watching, copy_photos, tmp_path):
    """A write through a memory map changes a file's content and mtime without an inotify
    event (inotify's documented blind spot); the rescan sees the new mtime and re-embeds it."""
    import mmap

    target = copy_photos / "mapped.bmp"
    write_image(target, seed=600)
    replacement = write_image(tmp_path / "outside" / "other.bmp", seed=601).read_bytes()
    assert len(replacement) == target.stat().st_size  # same size: only the content changes
    running = watching([copy_photos], WatchSettings(**{**FAST.__dict__, "rescan_seconds": 2.0}))
    before = running.vector_of(target)
    rounds = len(running.rounds)
    # the file stays open until the rescan: closing it would send a close-write event
    with open(target, "r+b") as handle, mmap.mmap(handle.fileno(), 0) as mapped:
        mapped[:] = replacement
        mapped.flush()
        wait_for(lambda: not np.array_equal(running.vector_of(target), before), "the rescan")
        wait_for(lambda: any(done.changed for done in running.rounds[rounds:]), "its round")
        causes = {done.cause for done in running.rounds[rounds:] if done.changed}
        assert causes == {"rescan"}, running.rounds[rounds:]


# -- another writer ----------------------------------------------------------------------------


def test_watch_waits_while_another_writer_holds_the_home(watching, copy_photos, tmp_path):
    home = tmp_path / "home"
    running = watching([copy_photos], home=home)
    lock = HomeLock(home, "index")
    lock.acquire()
    try:
        new = copy_in(write_image(tmp_path / "outside" / "w.jpg", seed=503),
                      copy_photos / "w.jpg")
        time.sleep(2.0)  # several rounds' worth: each finds the home busy
        assert running.vector_of(new) is None
        assert running.error is None
    finally:
        lock.release()
    wait_for(lambda: running.vector_of(new) is not None, "the photo after the lock")


# -- the command ------------------------------------------------------------------------------


def test_watch_command_indexes_and_stops_on_sigterm(copy_photos, tmp_path):
    """`searchengine watch --json` in its own process: a line per round, SIGTERM stops it
    cleanly (exit 0) after the round under way."""
    home = tmp_path / "home"
    command = [sys.executable, "-c", "from searchengine.cli import cli; cli()", "watch",
               str(copy_photos), "--home", str(home), "--model", TINY_MODEL, "--json",
               "--workers", "0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    lines: list[dict] = []
    reader = threading.Thread(
        target=lambda: lines.extend(json.loads(line) for line in process.stdout), daemon=True)
    reader.start()
    try:
        wait_for(lambda: lines, "the first round", seconds=120)
        assert lines[0]["cause"] == "start" and lines[0]["embedded"] == 9
        copy_in(write_image(tmp_path / "outside" / "c.jpg", seed=504), copy_photos / "c.jpg")
        wait_for(lambda: len(lines) > 1, "the round of the copy")
        assert lines[1]["cause"] == "events" and lines[1]["embedded"] == 1
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    assert process.returncode == 0, process.stderr.read()
    assert "stopped watching" in process.stderr.read()
    with Engine.open(home, create=False) as engine:
        assert engine.catalog.count_media() == 10
        assert engine.check().ok  # the index files saved and in step with the catalog


@pytest.mark.parametrize("arguments, message", [
    (["{missing}"], "does not exist"),
    (["{photo}"], "is a file"),
    (["{folder}", "--rescan", "0"], "--rescan must be a number of seconds above 0"),
    (["{folder}", "--rescan", "-5"], "--rescan must be a number of seconds above 0"),
])
def test_watch_refuses_bad_input(cli_run, copy_photos, tmp_path, arguments, message):
    values = {"missing": tmp_path / "nowhere", "photo": copy_photos / "photo_0.jpg",
              "folder": copy_photos}
    args = [a.format(**values) for a in arguments]
    result = cli_run("watch", *args, "--home", tmp_path / "home", "--model", TINY_MODEL,
                     expect=1)
    assert message in result.stderr
    assert not (tmp_path / "home").exists()  # nothing made for a refused command


def test_watch_settings_refuse_durations_not_above_zero():
    for name in ("quiet_seconds", "settle_seconds", "rescan_seconds", "poll_seconds"):
        with pytest.raises(InvalidInputError, match="above 0"):
            WatchSettings(**{name: 0}).check()


# -- serve --watch ----------------------------------------------------------------------------


def indexed_home_to_serve(home: Path, photos: Path, model: str | None):
    """(an engine on `home`, with `photos` indexed by TINY_MODEL; server settings watching
    `photos`, pinned to `model` or following the home's default)."""
    import dataclasses

    from searchengine.server.runner import settings_for

    with Engine.open(home, encoder_settings=EncoderSettings(device="cpu")) as engine:
        engine.index([photos], model=TINY_MODEL, settings=fast_ingest())
    served = Engine.open(home, create=False, encoder_settings=EncoderSettings(device="cpu"))
    settings = dataclasses.replace(settings_for("127.0.0.1", token=None, model=model),
                                   watch=(str(photos),), watch_settings=FAST)
    return served, settings


def test_serve_watch_shows_new_photos_and_keeps_answering(copy_photos, tmp_path,
                                                          reuse_random_encoders):
    """A live server with a watcher: a photo copied in appears in /api/search without a
    restart, and no search fails while the watcher indexes it."""

    import httpx
    import uvicorn

    from searchengine.server.app import create_app
    engine, settings = indexed_home_to_serve(tmp_path / "home", copy_photos, TINY_MODEL)
    app = create_app(engine, settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    failures: list[str] = []
    answered = [0]
    done = threading.Event()

    def hammer() -> None:
        with httpx.Client(base_url=base, timeout=30) as client:
            while not done.is_set():
                response = client.get("/api/search", params={"q": "a photo", "k": 3})
                answered[0] += 1
                if response.status_code != 200:
                    failures.append(f"{response.status_code} {response.text[:200]}")

    try:
        wait_for(lambda: server.started, "the server")
        watcher = app.state.service.watcher
        wait_for(lambda: watcher.rounds or not watcher.alive, "the watcher's first round")
        client = threading.Thread(target=hammer, daemon=True)
        client.start()
        new = copy_in(write_image(tmp_path / "outside" / "live.jpg", seed=505),
                      copy_photos / "live.jpg")

        def shown() -> bool:
            hits = httpx.get(f"{base}/api/search", params={"q": "x", "k": 50}).json()["hits"]
            return str(new) in {hit["path"] for hit in hits}

        wait_for(shown, "the new photo in /api/search")
        done.set()
        client.join(timeout=30)
        assert watcher.alive and watcher.error is None
    finally:
        done.set()
        server.should_exit = True
        thread.join(timeout=30)
        app.state.service.close()
        engine.close()
    assert not failures, failures[:5]
    assert answered[0] >= 5


def test_serve_watch_indexes_with_the_model_a_switch_made_the_default(
    copy_photos, tmp_path, tiny_checkpoint, reuse_random_encoders
):
    """After `tune`/`use-model` switches the home's default and the server serves it, photos
    copied in get the new model's vectors (the watcher once kept embedding with the model the
    server started with, so the new photos never showed in the new model's searches)."""

    from searchengine.server.service import SearchService

    home = tmp_path / "home"
    served, settings = indexed_home_to_serve(home, copy_photos, None)
    service = SearchService(served, settings)
    reader = Engine.open(home, create=False, encoder_settings=EncoderSettings(device="cpu"))

    def has_vector(path: Path, model: str) -> bool:
        media_id = reader.catalog.files_under([str(copy_photos)]).get(str(path))
        return media_id is not None and len(
            reader.vectors("image", model=model, ids=[media_id.id])[0]) == 1

    try:
        service.warm_up()
        service.start_watching()
        watcher = service.watcher
        assert watcher is not None
        wait_for(lambda: watcher.rounds or not watcher.alive, "the watcher's first round")
        with Engine.open(home, encoder_settings=EncoderSettings(device="cpu")) as switch:
            new = switch.switch_model(f"se-tiny/{tiny_checkpoint}",
                                      settings=fast_ingest()).collection.model
        wait_for(lambda: service.model == new, "the server to serve the new default")
        wait_for(lambda: watcher.model == new, "the watcher to follow it")
        photo = copy_in(write_image(tmp_path / "outside" / "after.jpg", seed=606),
                        copy_photos / "after.jpg")
        wait_for(lambda: has_vector(photo, new), "the new photo's vector in the new model")
        assert not has_vector(photo, TINY_MODEL)  # embedded once, with the model served
        hits = service.search("a photo", limit=50, offset=0)
        assert hits.model == new and str(photo) in {hit.path for hit in hits.hits}
        assert watcher.alive and watcher.error is None
    finally:
        service.close()
        served.close()
        reader.close()


def test_serve_refuses_bad_watch_options(cli_run, copy_photos, tmp_path):
    home = tmp_path / "home"
    result = cli_run("serve", "--home", home, "--watch", tmp_path / "nowhere", expect=1)
    assert "does not exist" in result.stderr
    result = cli_run("serve", "--home", home, "--watch", copy_photos / "photo_0.jpg", expect=1)
    assert "is a file" in result.stderr
    result = cli_run("serve", "--home", home, "--watch", copy_photos, "--rescan", "0", expect=1)
    assert "--rescan must be a number of seconds above 0" in result.stderr
    result = cli_run("serve", "--home", home, "--polling", expect=2)
    assert "only apply with --watch" in result.stderr
    assert not home.exists()


# -- search --in ------------------------------------------------------------------------------


def test_search_in_indexes_the_folder_then_searches_only_it(cli_run, copy_photos, tmp_path,
                                                           reuse_random_encoders):
    home = tmp_path / "home"
    cli_run("index", copy_photos, "--home", home, "--model", TINY_MODEL)
    trip = copy_photos / "trip"
    added = write_image(trip / "added.jpg", seed=506)  # not indexed yet

    result = cli_run("search", "a photo", "--in", trip, "-k", 10, "--home", home, "--model",
                     TINY_MODEL, "--json")
    payload = json.loads(result.stdout)
    paths = [hit["path"] for hit in payload["hits"]]
    assert sorted(paths) == sorted(str(p) for p in trip.iterdir())  # 3: k hits when k there
    assert str(added) in paths
    assert "1 embedded" in result.stderr

    # k hits whenever k photos are in the folder, ranked as brute force over the folder ranks
    with Engine.open(home, create=False, encoder_settings=EncoderSettings(device="cpu")) as e:
        stored = e.catalog.files_under([str(trip)])
        ids = sorted(row.id for row in stored.values())
        _, vectors = e.vectors("image", model=TINY_MODEL, ids=ids)
        query = e.query_vector("a photo", model=TINY_MODEL)
    scores = vectors.astype(np.float64) @ query[0].astype(np.float64)
    found = {}
    for k in (1, 2):
        found[k] = json.loads(cli_run("search", "a photo", "--in", trip, "-k", k, "--home", home,
                                      "--model", TINY_MODEL, "--json").stdout)["hits"]
        assert len(found[k]) == k
        assert {hit["path"] for hit in found[k]} <= {str(p) for p in trip.iterdir()}
    order = np.argsort(-scores)
    if scores[order[0]] - scores[order[1]] > 1e-4:  # a gap above float noise
        assert found[1][0]["id"] == ids[order[0]]

    # nothing new: only the search (no embedding reported)
    again = cli_run("search", "a photo", "--in", trip, "--home", home, "--model", TINY_MODEL)
    assert "embedded" not in again.stderr


def test_search_in_waits_for_a_writer_at_work(cli_run, copy_photos, tmp_path,
                                             reuse_random_encoders):
    """While a writer (a watcher's round) holds the home, `--in` waits for it, not fails."""
    home = tmp_path / "home"
    cli_run("index", copy_photos, "--home", home, "--model", TINY_MODEL)
    lock = HomeLock(home, "watch")
    lock.acquire()
    threading.Timer(1.5, lock.release).start()
    result = cli_run("search", "a photo", "--in", copy_photos / "trip", "--home", home,
                     "--model", TINY_MODEL, "--json")
    assert len(json.loads(result.stdout)["hits"]) == 2
    assert not lock.held


def test_search_in_refuses_a_missing_folder_or_a_file(cli_run, copy_photos, tmp_path):
    home = tmp_path / "home"
    missing = cli_run("search", "x", "--in", tmp_path / "nowhere", "--home", home, expect=1)
    assert "does not exist" in missing.stderr
    a_file = cli_run("search", "x", "--in", copy_photos / "photo_0.jpg", "--home", home,
                     expect=1)
    assert "is a file" in a_file.stderr
    assert not home.exists()


def test_engine_search_in_an_empty_folder_finds_nothing(open_engine, indexed_home, tmp_path):
    (tmp_path / "empty").mkdir()
    engine = open_engine(indexed_home, create=False)
    result = engine.search_in("a photo", tmp_path / "empty", k=5, model=TINY_MODEL)
    assert result.hits == []


def test_watch_is_listed_with_help_and_a_catalog_option():
    from searchengine.cli import cli

    command = cli.commands["watch"]
    assert "Example:" in (command.help or "")
    assert "--catalog" in {o for p in command.params for o in getattr(p, "opts", [])}
