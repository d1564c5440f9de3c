"""`index --ray`: the Ray Data backend on a local Ray instance started by these tests.

Vectors equal those of the local backend for the same files and model, the incremental
semantics are the local ones, a killed embed actor is restarted by Ray and the run finishes,
and the faults (no Ray, an unreachable address, a worker that cannot see a file) are clear.
Skipped only where Ray is not importable.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import PHOTO_COUNT, TINY_MODEL, fast_ingest, write_image

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

from searchengine.settings import RaySettings  # noqa: E402

pytestmark = pytest.mark.usefixtures("reuse_random_encoders")
ALL_PHOTOS = PHOTO_COUNT + 1  # conftest.photo_folder: 8 JPEGs and a PNG
COSINE = 0.9999


@pytest.fixture(scope="module")
def ray_session():
    """A small local Ray instance for this module (2 CPUs, a 150 MB object store)."""
    if ray.is_initialized():
        ray.shutdown()
    ray.init(
        num_cpus=2,
        object_store_memory=150 * 2**20,
        include_dashboard=False,
        logging_level="WARNING",
        log_to_driver=False,
    )
    yield
    ray.shutdown()


def index(engine, *folders: Path, ray_settings: RaySettings | None = None, **settings):
    return engine.index(
        list(folders), model=TINY_MODEL, settings=fast_ingest(**settings), ray=ray_settings
    )


def by_path(engine) -> dict[str, tuple[int, np.ndarray]]:
    """path -> (media id, (d,) float32 unit vector as stored) for every catalogued image."""
    ids, vectors = engine.vectors("image", model=TINY_MODEL)
    media = engine.catalog.media(ids.tolist())
    return {media[int(i)].path: (int(i), v) for i, v in zip(ids, vectors, strict=True)}


def assert_same_vectors(ray_engine, local_engine) -> None:
    """Same paths under the same ids, and each pair of vectors at cosine >= COSINE."""
    got, expected = by_path(ray_engine), by_path(local_engine)
    assert sorted(got) == sorted(expected)
    for path, (media_id, vector) in got.items():
        expected_id, expected_vector = expected[path]
        assert media_id == expected_id, path
        cosine = float(vector @ expected_vector) / float(
            np.linalg.norm(vector) * np.linalg.norm(expected_vector)
        )
        assert cosine >= COSINE, (path, cosine)


def counts(report) -> tuple[int, ...]:
    return report.scanned, report.unchanged, report.embedded, report.reused, report.skipped, (
        report.removed
    )


# -- without a session: these run first, before the module's instance starts ----------------


def test_cli_starts_a_local_instance_for_the_run_and_stops_it(cli_run, copy_photos, tmp_path):
    assert not ray.is_initialized()
    home = tmp_path / "home"
    report = cli_run.json("index", copy_photos, "--home", home, "--model", TINY_MODEL,
                          "--batch-size", "4", "--num-gpus", "0", "--concurrency", "1", "--ray")
    assert (report["scanned"], report["embedded"], report["skipped"]) == (ALL_PHOTOS,) * 2 + (0,)
    assert not ray.is_initialized()  # the instance started for the run is gone
    assert len(cli_run.json("status", "--home", home)["skipped"]) == 0


def test_an_unreachable_address_is_an_error_before_anything_is_written(
    cli_run, copy_photos, tmp_path, open_engine
):
    home = tmp_path / "home"
    result = cli_run("index", copy_photos, "--home", home, "--model", TINY_MODEL,
                     "--ray", "127.0.0.1:1", expect=1)
    assert "cannot reach the Ray cluster at '127.0.0.1:1'" in result.stderr
    assert "ray start --head" in result.stderr
    assert "Traceback" not in result.output
    assert open_engine(home).catalog.count_media() == 0
    assert not ray.is_initialized()


def test_a_folder_read_as_the_address_is_explained(cli_run, copy_photos, tmp_path):
    result = cli_run("index", "--ray", copy_photos, copy_photos, "--home", tmp_path / "home",
                     expect=1)
    assert "is not a Ray address" in result.stderr
    assert "--ray=local" in result.stderr


def test_ray_options_without_ray_are_refused(cli_run, copy_photos, tmp_path):
    result = cli_run("index", copy_photos, "--home", tmp_path / "home", "--num-gpus", "0",
                     expect=2)
    assert "--num-gpus only apply with --ray" in result.stderr


def test_without_ray_installed_the_error_says_how_to_install_it(
    cli_run, copy_photos, tmp_path, monkeypatch
):
    monkeypatch.setitem(sys.modules, "ray", None)  # what Python answers for a missing package
    result = cli_run("index", copy_photos, "--home", tmp_path / "home", "--model", TINY_MODEL,
                     "--ray", expect=1)
    assert "pip install 'searchengine[ray]'" in result.stderr
    assert not (tmp_path / "home" / "catalog.sqlite").exists()


def test_ray_is_imported_only_with_ray():
    probe = (
        "import sys; import searchengine.cli, searchengine.engine, searchengine.ingest.cluster; "
        "print('ray' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- on the module's instance ----------------------------------------------------------------


@pytest.mark.usefixtures("ray_session")
def test_vectors_equal_the_local_backend(open_engine, copy_photos, tmp_path):
    local = open_engine(tmp_path / "local")
    on_ray = open_engine(tmp_path / "ray")
    shipped = open_engine(tmp_path / "shipped")
    expected = index(local, copy_photos)
    assert counts(index(on_ray, copy_photos, ray_settings=RaySettings())) == counts(expected)
    assert_same_vectors(on_ray, local)
    assert counts(
        index(shipped, copy_photos, ray_settings=RaySettings(ship_bytes=True))
    ) == counts(expected)
    assert_same_vectors(shipped, local)
    assert on_ray.check().ok


@pytest.mark.usefixtures("ray_session")
def test_incremental_runs_match_the_local_backend(open_engine, copy_photos, tmp_path):
    """The same changes on two copies of a folder, one indexed locally, one on Ray."""
    import shutil

    twin = tmp_path / "twin"
    shutil.copytree(copy_photos, twin)
    local, on_ray = open_engine(tmp_path / "local"), open_engine(tmp_path / "ray")
    index(local, twin)
    first = index(on_ray, copy_photos, ray_settings=RaySettings())
    assert (first.embedded, first.unchanged) == (ALL_PHOTOS, 0)
    again = index(on_ray, copy_photos, ray_settings=RaySettings())
    assert (again.embedded, again.reused, again.unchanged) == (0, 0, ALL_PHOTOS)
    for folder in (copy_photos, twin):
        write_image(folder / "photo_0.jpg", seed=50)  # changed content
        stat = (folder / "photo_0.jpg").stat()
        os.utime(folder / "photo_0.jpg", ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))
        (folder / "photo_1.jpg").rename(folder / "renamed.jpg")  # reuses its vector
        (folder / "photo_2.jpg").unlink()
        (folder / "broken.jpg").write_bytes(b"not a jpeg")
    expected = index(local, twin)
    changed = index(on_ray, copy_photos, ray_settings=RaySettings())
    assert counts(changed)[:-1] == counts(expected)[:-1]
    assert (changed.embedded, changed.reused, changed.skipped, changed.removed) == (1, 1, 1, 2)
    assert changed.removed == expected.removed
    assert on_ray.check().ok
    ids = {Path(p).name: i for p, (i, _) in by_path(on_ray).items()}
    assert "photo_2.jpg" not in ids and "photo_1.jpg" not in ids and "renamed.jpg" in ids
    assert [s.path for s in on_ray.catalog.skipped()] == [str(copy_photos / "broken.jpg")]


def pids_titled(marker: bytes) -> set[int]:
    """Pids of the processes whose title holds `marker` (Ray titles a worker after the task or
    actor class it runs: `ray::MapBatches(decode_rows)`, `ray::MapWorker(...EmbedStage)`)."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker in command:
            pids.add(int(entry.name))
    return pids


def committed(home: Path) -> int:
    try:
        with sqlite3.connect(f"file:{home / 'catalog.sqlite'}?mode=ro", uri=True) as db:
            return int(db.execute("SELECT count(*) FROM media").fetchone()[0])
    except sqlite3.Error:  # not created yet
        return 0


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc to find pids")
@pytest.mark.usefixtures("ray_session")
def test_a_killed_embed_actor_is_restarted_and_every_file_is_indexed(open_engine, tmp_path):
    """Kill the embed actor's process (SIGKILL) after the first batches were committed: Ray
    restarts it and sends its batches again, and the run ends with every file indexed. On the
    way, decoding is seen in processes of its own (CPU tasks), never in the embed actor."""
    photos = tmp_path / "photos"
    total = 64
    for i in range(total):  # large enough PNGs that decoding paces the run
        write_image(photos / f"p{i:03d}.png", seed=1000 + i, size=(640, 480))
    home = tmp_path / "home"
    engine = open_engine(home)
    killed: list[int] = []
    seen: set[int] = set()
    decoders: set[int] = set()
    done = threading.Event()

    def killer() -> None:
        while not done.is_set() and not killed:
            live = pids_titled(b"EmbedStage")
            seen.update(live)
            decoders.update(pids_titled(b"decode_rows"))
            if live and committed(home) >= 8:
                victim = min(live)
                try:
                    os.kill(victim, signal.SIGKILL)
                except ProcessLookupError:  # it ended between the listing and the kill
                    continue
                killed.append(victim)
            time.sleep(0.02)
        while not done.is_set():  # watch for the restarted actor
            seen.update(pids_titled(b"EmbedStage"))
            decoders.update(pids_titled(b"decode_rows"))
            time.sleep(0.05)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        report = index(engine, photos, ray_settings=RaySettings())
    finally:
        done.set()
        thread.join()
    assert killed, "the embed actor was never seen running"
    assert len(seen - set(killed)) >= 1, "no new embed actor after the kill"
    assert decoders and not decoders & seen, "decoding ran inside the embed actor"
    assert (report.embedded, report.skipped) == (total, 0)
    assert engine.catalog.count_media() == total
    assert engine.check().ok
    local = open_engine(tmp_path / "local")
    index(local, photos)
    assert_same_vectors(engine, local)


@pytest.mark.usefixtures("ray_session")
def test_a_file_the_workers_cannot_see_is_skipped_with_its_reason(
    open_engine, copy_photos, tmp_path, monkeypatch
):
    """A file planned by the driver that is gone where the workers read (a node without the
    mount): the file is recorded as skipped with the reason, the others are indexed."""
    import searchengine.engine

    hidden = copy_photos / "photo_3.jpg"
    planned = searchengine.engine.plan

    def plan_then_hide(*args, **kwargs):
        result = planned(*args, **kwargs)
        hidden.unlink()  # after the plan, before any worker reads it
        return result

    monkeypatch.setattr(searchengine.engine, "plan", plan_then_hide)
    engine = open_engine(tmp_path / "home")
    report = index(engine, copy_photos, ray_settings=RaySettings())
    assert (report.embedded, report.skipped) == (ALL_PHOTOS - 1, 1)
    [skip] = engine.catalog.skipped()
    assert skip.path == str(hidden)
    assert "not found on Ray worker" in skip.reason and "--ray-ship-bytes" in skip.reason


@pytest.mark.usefixtures("ray_session")
def test_a_model_the_workers_cannot_load_ends_the_run_with_a_message(
    cli_run, copy_photos, tmp_path, monkeypatch
):
    """The embed actors load the checkpoint from the path the driver names: where they cannot
    (gone after the driver loaded it), Ray gives up and the command says what happened."""
    from conftest import write_checkpoint

    import searchengine.engine

    checkpoint = write_checkpoint(tmp_path / "weights" / "tiny.pt", seed=1)
    on_ray = searchengine.engine.embed_files_on_ray

    def hide_then_embed(*args, **kwargs):
        checkpoint.unlink()  # the driver has loaded it; the actors will not find it
        return on_ray(*args, **kwargs)

    monkeypatch.setattr(searchengine.engine, "embed_files_on_ray", hide_then_embed)
    home = tmp_path / "home"
    result = cli_run("index", copy_photos, "--home", home, "--model", f"se-tiny/{checkpoint}",
                     "--ray", expect=1)
    # one line of ours (stderr also carries what Ray's own log prints from the workers)
    [message] = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert "the Ray pipeline failed" in message
    assert "ModelError: checkpoint" in message and "does not exist" in message
    assert "run the command again to continue" in message
    assert isinstance(result.exception, SystemExit)  # handled: no traceback of the command
