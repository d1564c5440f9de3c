"""Ingestion through `Engine.index`: incremental runs, renames, bad files, metadata, EXIF,
interrupted runs, and the DataLoader worker path."""

from __future__ import annotations

import os
import shutil
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from blake3 import blake3
from conftest import TINY_MODEL, draw_image, fast_ingest, write_image
from float_noise import assert_same_stored_embeddings
from PIL import Image

from searchengine.encoder import Encoder
from searchengine.index.spaces import VectorSpace

pytestmark = pytest.mark.usefixtures("reuse_random_encoders")
ALL_PHOTOS = 9  # conftest.photo_folder: 8 JPEGs and a PNG


@pytest.fixture()
def encode_calls(monkeypatch) -> list[int]:
    """Batch sizes of every `Encoder.encode_images` call made during the test."""
    calls: list[int] = []
    original = Encoder.encode_images

    def spy(self, pixels):
        calls.append(len(pixels))
        return original(self, pixels)

    monkeypatch.setattr(Encoder, "encode_images", spy)
    return calls


@pytest.fixture()
def engine(open_engine, tmp_path):
    return open_engine(tmp_path / "home")


def index(engine, *folders: Path, **settings):
    return engine.index(list(folders), model=TINY_MODEL, settings=fast_ingest(**settings))


def stored(engine, path: Path) -> tuple[int, np.ndarray]:
    """(media id, (d,) stored vector) of a catalogued file."""
    row = engine.catalog.media_by_path(str(path))
    assert row is not None, f"{path} is not catalogued"
    ids, vectors = engine.vectors("image", model=TINY_MODEL, ids=[row.id])
    assert ids.tolist() == [row.id]
    return row.id, vectors[0]


def index_ids(engine) -> list[int]:
    """Ids in the image index file on disk, as a fresh open of the home sees it."""
    from searchengine.index.vectors import VectorIndex

    space = engine.space(TINY_MODEL, "image")
    return sorted(VectorIndex.load(space.path, space._expected()).ids().tolist())


def touch_later(path: Path) -> None:
    """Move the mtime forward so that a rewrite is seen even on coarse file systems."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))


def assert_agrees(engine) -> None:
    report = engine.check()
    assert report.ok, report.spaces
    assert index_ids(engine) == engine.catalog.vector_ids("image", 1).tolist()


def test_a_second_run_embeds_nothing(engine, copy_photos, encode_calls):
    first = index(engine, copy_photos)
    assert (first.scanned, first.embedded) == (ALL_PHOTOS, ALL_PHOTOS)
    assert (first.reused, first.skipped) == (0, 0)
    assert sum(encode_calls) == ALL_PHOTOS and max(encode_calls) <= 4  # batched
    encode_calls.clear()
    second = index(engine, copy_photos)
    assert (second.scanned, second.unchanged) == (ALL_PHOTOS, ALL_PHOTOS)
    assert (second.embedded, second.reused) == (0, 0)
    assert encode_calls == []
    assert_agrees(engine)


def test_a_changed_file_is_embedded_again_under_its_id(engine, copy_photos, encode_calls):
    index(engine, copy_photos)
    path = copy_photos / "photo_0.jpg"
    media_id, before = stored(engine, path)
    write_image(path, seed=50)
    touch_later(path)
    encode_calls.clear()
    report = index(engine, copy_photos)
    assert (report.embedded, report.unchanged, report.removed) == (1, ALL_PHOTOS - 1, 0)
    assert encode_calls == [1]
    same_id, after = stored(engine, path)
    assert same_id == media_id and not np.allclose(before, after)
    assert engine.catalog.media_by_path(str(path)).content_hash == blake(path)
    assert engine.similar(path, k=1, model=TINY_MODEL).hits[0].id == media_id
    assert_agrees(engine)


def blake(path: Path) -> str:
    return blake3(path.read_bytes()).hexdigest()


def test_a_deleted_file_leaves_the_catalog_and_the_index(engine, copy_photos):
    index(engine, copy_photos)
    path = copy_photos / "trip" / "photo_7.jpg"
    media_id, _ = stored(engine, path)
    path.unlink()
    report = index(engine, copy_photos)
    assert (report.removed, report.scanned) == (1, ALL_PHOTOS - 1)
    assert engine.catalog.media_by_path(str(path)) is None
    assert media_id not in index_ids(engine)
    hits = engine.search("anything", k=ALL_PHOTOS, model=TINY_MODEL).hits
    assert len(hits) == ALL_PHOTOS - 1 and all(hit.id != media_id for hit in hits)
    assert_agrees(engine)


@pytest.mark.parametrize("move", ["rename", "other folder"])
def test_a_renamed_or_moved_file_reuses_its_vector(engine, copy_photos, encode_calls, move):
    index(engine, copy_photos)
    old = copy_photos / "photo_2.jpg"
    _, vector = stored(engine, old)
    new = copy_photos / ("renamed.jpg" if move == "rename" else "trip/deeper/moved.jpg")
    new.parent.mkdir(parents=True, exist_ok=True)
    old.rename(new)
    encode_calls.clear()
    report = index(engine, copy_photos)
    assert encode_calls == [], "the model must not run for a moved file"
    assert (report.reused, report.embedded, report.removed) == (1, 0, 1)
    assert engine.catalog.media_by_path(str(old)) is None
    new_id, new_vector = stored(engine, new)
    np.testing.assert_array_equal(new_vector, vector)
    assert engine.similar(new, k=1, model=TINY_MODEL).hits[0].path == str(new)
    assert_agrees(engine)


def test_duplicates_are_embedded_once(engine, tmp_path, encode_calls):
    folder = tmp_path / "dups"
    write_image(folder / "a.jpg", seed=3)
    shutil.copy(folder / "a.jpg", folder / "b.jpg")  # same batch
    write_image(folder / "c.jpg", seed=4)
    report = index(engine, folder)
    assert (report.embedded, report.reused) == (2, 1) and encode_calls == [2]
    (folder / "later").mkdir()
    shutil.copy(folder / "a.jpg", folder / "later" / "a.jpg")  # later: reused from the catalog
    encode_calls.clear()
    again = index(engine, folder)
    assert (again.reused, again.embedded, again.unchanged) == (1, 0, 3) and encode_calls == []
    copies = [stored(engine, folder / name) for name in ("a.jpg", "b.jpg", "later/a.jpg")]
    np.testing.assert_array_equal(copies[0][1], copies[1][1])
    np.testing.assert_array_equal(copies[0][1], copies[2][1])
    assert len({media_id for media_id, _ in copies}) == 3  # three files, one vector
    assert_agrees(engine)


def make_bad_files(folder: Path) -> dict[str, str]:
    """Bad files with image extensions: file name -> a word its recorded reason must contain."""
    good = write_image(folder / "good.jpg", seed=1).read_bytes()
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 2])
    png = write_image(folder / "corrupt.png", seed=3).read_bytes()
    middle = len(png) // 2
    (folder / "corrupt.png").write_bytes(png[:middle] + bytes(range(256)) + png[middle + 256 :])
    (folder / "notes.jpg").write_text("shopping list: eggs, milk\n" * 10)
    write_image(folder / "bomb.png", seed=2, size=(400, 300))  # over max_pixels below
    return {"empty.jpg": "empty", "truncated.jpg": "truncated", "corrupt.png": "corrupt",
            "notes.jpg": "not an image", "bomb.png": "decompression bomb"}


def test_bad_files_are_skipped_with_their_reason(engine, tmp_path, encode_calls):
    folder = tmp_path / "mixed"
    bad = make_bad_files(folder)
    (folder / "readme.txt").write_text("not an image extension: never looked at")
    (folder / ".hidden.jpg").write_bytes(b"")
    report = index(engine, folder, max_pixels=50_000)
    assert (report.scanned, report.embedded, report.skipped) == (1 + len(bad), 1, len(bad))
    reasons = {Path(path).name: reason for path, reason in engine.status().skipped}
    assert set(reasons) == set(bad)
    for name, word in bad.items():
        assert word in reasons[name], (name, reasons[name])
    assert engine.catalog.count_media() == 1
    assert_agrees(engine)
    encode_calls.clear()
    again = index(engine, folder, max_pixels=50_000)  # known bad and unchanged: not retried
    assert (again.unchanged, again.skipped, again.embedded) == (1 + len(bad), 0, 0)
    assert encode_calls == []
    write_image(folder / "truncated.jpg", seed=9)  # repaired
    touch_later(folder / "truncated.jpg")
    (folder / "empty.jpg").unlink()
    fixed = index(engine, folder, max_pixels=50_000)
    assert fixed.embedded == 1 and fixed.removed == 0
    still_bad = {Path(p).name for p, _ in engine.status().skipped}
    assert still_bad == set(bad) - {"truncated.jpg", "empty.jpg"}
    assert_agrees(engine)


def test_an_unreadable_file_is_skipped(engine, tmp_path, monkeypatch):
    folder = tmp_path / "locked"
    write_image(folder / "ok.jpg", seed=1)
    locked = write_image(folder / "locked.jpg", seed=2)
    if os.geteuid() == 0:  # root reads through chmod 000: make the read fail instead
        original = Path.read_bytes

        def read_bytes(self):
            if self == locked:
                raise PermissionError(13, "Permission denied", str(self))
            return original(self)

        monkeypatch.setattr(Path, "read_bytes", read_bytes)
    else:
        locked.chmod(0)
    try:
        report = index(engine, folder)
    finally:
        locked.chmod(0o644)
    assert (report.embedded, report.skipped) == (1, 1)
    assert engine.status().skipped == [(str(locked), "unreadable: Permission denied")]


@pytest.mark.timeout(60)
def test_a_named_pipe_with_an_image_name_does_not_hang_the_run(engine, tmp_path):
    folder = tmp_path / "pipes"
    write_image(folder / "ok.jpg", seed=1)
    os.mkfifo(folder / "pipe.jpg")
    report = index(engine, folder)
    assert report.embedded == 1
    assert str(folder / "pipe.jpg") in dict(engine.status().skipped)


def test_a_file_that_becomes_corrupt_is_forgotten(engine, copy_photos):
    index(engine, copy_photos)
    path = copy_photos / "photo_4.jpg"
    media_id, _ = stored(engine, path)
    path.write_bytes(path.read_bytes()[:300])
    touch_later(path)
    report = index(engine, copy_photos)
    assert report.skipped == 1
    assert engine.catalog.media_by_path(str(path)) is None
    assert media_id not in index_ids(engine)
    assert [p for p, _ in engine.status().skipped] == [str(path)]
    assert engine.status().images == ALL_PHOTOS - 1
    assert_agrees(engine)


def test_a_file_vanishing_mid_run_is_handled(engine, copy_photos, monkeypatch):
    import searchengine.ingest.scan as ingest

    victim = copy_photos / "photo_5.jpg"
    original_scan = ingest.scan

    def scan_then_delete(roots, settings):
        found = original_scan(roots, settings)
        victim.unlink()  # gone after the walk, before the decoder reads it
        return found

    monkeypatch.setattr(ingest, "scan", scan_then_delete)
    report = index(engine, copy_photos)
    assert report.embedded == ALL_PHOTOS - 1
    assert engine.catalog.media_by_path(str(victim)) is None
    monkeypatch.setattr(ingest, "scan", original_scan)
    index(engine, copy_photos)
    assert engine.status().skipped == []  # the next run forgets it entirely
    assert_agrees(engine)


def test_formats_and_extensions(engine, tmp_path):
    folder = tmp_path / "formats"
    names = ["a.JPG", "b.jpeg", "c.png", "d.webp", "e.bmp", "f.tif", "g.tiff", "h.gif"]
    for seed, name in enumerate(names):
        write_image(folder / name, seed=seed)
    report = index(engine, folder)
    assert (report.embedded, report.skipped) == (len(names), 0)
    formats = {name: engine.catalog.media_by_path(str(folder / name)).format for name in names}
    assert formats == {"a.JPG": "JPEG", "b.jpeg": "JPEG", "c.png": "PNG", "d.webp": "WEBP",
                       "e.bmp": "BMP", "f.tif": "TIFF", "g.tiff": "TIFF", "h.gif": "GIF"}


def test_metadata_is_stored(engine, tmp_path):
    folder = tmp_path / "meta"
    exif = Image.Exif()
    exif[0x0110] = "Canon EOS 5D"
    exif.get_ifd(0x8769)[36867] = "2021:12:24 18:30:00"
    path = folder / "camera.jpg"
    folder.mkdir()
    draw_image(1, (80, 50)).save(path, quality=90, exif=exif.tobytes())
    plain = write_image(folder / "plain.png", seed=2, size=(30, 20))
    index(engine, folder)
    row = engine.catalog.media_by_path(str(path))
    stat = path.stat()
    assert (row.size, row.mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    assert row.content_hash == blake(path)
    assert (row.width, row.height, row.format) == (80, 50, "JPEG")
    assert (row.taken_at, row.camera) == (datetime(2021, 12, 24, 18, 30), "Canon EOS 5D")
    row = engine.catalog.media_by_path(str(plain))
    assert (row.width, row.height, row.format) == (30, 20, "PNG")
    assert (row.taken_at, row.camera) == (None, None)


def test_exif_orientation_is_applied_before_embedding(engine, tmp_path, tiny_encoder):
    folder = tmp_path / "exif"
    folder.mkdir()
    sensor = draw_image(6, (60, 40))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = folder / "rotated.jpg"
    sensor.save(path, quality=95, exif=exif.tobytes())
    index(engine, folder)
    row = engine.catalog.media_by_path(str(path))
    assert (row.width, row.height) == (40, 60)
    upright = Image.open(path).convert("RGB").transpose(Image.Transpose.ROTATE_270)
    expected = tiny_encoder.encode_images(tiny_encoder.preprocess(upright)[None])[0]
    assert_same_stored_embeddings(stored(engine, path)[1], expected)
    sideways = tiny_encoder.preprocess(Image.open(path).convert("RGB"))
    unrotated = tiny_encoder.encode_images(sideways[None])[0]
    assert not np.allclose(stored(engine, path)[1], unrotated, atol=1e-3)


def test_alpha_is_flattened_over_white_before_embedding(engine, tmp_path, tiny_encoder):
    folder = tmp_path / "alpha"
    folder.mkdir()
    rgba = np.zeros((40, 40, 4), dtype=np.uint8)
    rgba[:, 20:] = (0, 0, 200, 255)
    Image.fromarray(rgba, "RGBA").save(folder / "logo.png")
    index(engine, folder)
    flat = np.full((40, 40, 3), 255, dtype=np.uint8)
    flat[:, 20:] = (0, 0, 200)
    expected = tiny_encoder.encode_images(tiny_encoder.preprocess(Image.fromarray(flat))[None])[0]
    assert_same_stored_embeddings(stored(engine, folder / "logo.png")[1], expected)


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs (no `finally` saves, see the patched save)."""


def fail_after(monkeypatch, batches: int, error: type[BaseException]) -> None:
    original = Encoder.encode_images
    calls = []

    def encode(self, pixels):
        calls.append(len(pixels))
        if len(calls) > batches:
            raise error()
        return original(self, pixels)

    monkeypatch.setattr(Encoder, "encode_images", encode)


def test_ctrl_c_keeps_finished_batches_and_the_next_run_resumes(
    open_engine, tmp_path, copy_photos, monkeypatch
):
    home = tmp_path / "home"
    engine = open_engine(home)
    with monkeypatch.context() as patch:
        fail_after(patch, batches=2, error=KeyboardInterrupt)
        with pytest.raises(KeyboardInterrupt):
            index(engine, copy_photos, batch_size=2)
    assert engine.catalog.count_media() == 4  # two finished batches of two
    assert engine.check().ok  # the index was saved on the way out
    resumed = open_engine(home)
    calls: list[int] = []
    original = Encoder.encode_images
    monkeypatch.setattr(Encoder, "encode_images",
                        lambda self, pixels: calls.append(len(pixels)) or original(self, pixels))
    report = index(resumed, copy_photos, batch_size=2)
    assert (report.unchanged, report.embedded) == (4, ALL_PHOTOS - 4)
    assert sum(calls) == ALL_PHOTOS - 4
    assert_agrees(resumed)


def test_a_killed_run_resumes_and_the_index_is_resynced(
    open_engine, tmp_path, copy_photos, monkeypatch
):
    home = tmp_path / "home"
    engine = open_engine(home)
    with monkeypatch.context() as patch:
        patch.setattr(VectorSpace, "save", lambda self, index=None: None)  # killed before any save
        fail_after(patch, batches=3, error=Killed)
        with pytest.raises(Killed):
            index(engine, copy_photos, batch_size=2)
    assert engine.catalog.count_media() == 6
    stale = open_engine(home).check()
    assert not stale.ok  # the index file never caught up with the catalog, and check says so
    resumed = open_engine(home)
    report = index(resumed, copy_photos, batch_size=2)
    assert (report.unchanged, report.embedded) == (6, ALL_PHOTOS - 6)
    assert_agrees(resumed)
    # searching a home whose index file lags the catalog re-syncs it on open
    lagging = open_engine(home)
    hits = lagging.search("a photo", k=ALL_PHOTOS, model=TINY_MODEL).hits
    assert len(hits) == ALL_PHOTOS


def test_decoding_in_worker_processes_gives_the_same_vectors(
    open_engine, tmp_path, copy_photos, indexed_home, photo_folder
):
    engine = open_engine(tmp_path / "home")
    (copy_photos / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    report = index(engine, copy_photos, workers=2, batch_size=2)
    assert (report.embedded, report.skipped) == (ALL_PHOTOS, 1)
    reference = open_engine(indexed_home)
    for path in sorted(photo_folder.rglob("*.*")):
        relative = path.relative_to(photo_folder)
        assert_same_stored_embeddings(stored(engine, copy_photos / relative)[1],
                               stored(reference, path)[1])
    assert_agrees(engine)


def _shape(image) -> tuple[int, ...]:
    """A stand-in preprocess (module level, so worker processes can pickle it)."""
    return np.asarray(image).shape


@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # 3 workers on 2 cores
@pytest.mark.parametrize(("workers", "batch_size"), [(0, 4), (2, 4), (2, 5), (3, 4)])
def test_workers_share_each_batch_and_keep_file_order(tmp_path, workers, batch_size):
    """Model batches are `batch_size` long (the last one shorter), in the order of the files,
    whether one process decodes or several decode a share of every batch."""
    from searchengine.ingest.decode import DecodeDataset
    from searchengine.ingest.local import decoded_batches
    from searchengine.ingest.scan import FileStat
    from searchengine.settings import IngestSettings

    files = []
    for i in range(11):
        path = write_image(tmp_path / f"{i:02d}.png", size=(24, 20), seed=i)
        files.append(FileStat(str(path), path.stat().st_size, path.stat().st_mtime_ns))
    settings = IngestSettings(workers=workers, batch_size=batch_size)
    dataset = DecodeDataset(files, _shape, 16, settings)
    batches = list(decoded_batches(dataset, settings))
    sizes = [len(batch) for batch in batches]
    full, rest = divmod(len(files), batch_size)
    assert sizes == [batch_size] * full + ([rest] if rest else [])
    assert [d.stat.path for batch in batches for d in batch] == [f.path for f in files]
    assert all(d.error is None and d.pixels == (20, 24, 3) for batch in batches for d in batch)


def test_a_workers_share_reaches_the_main_process_as_one_tensor(tmp_path):
    """Pixels of a share are stacked into one storage the files view (one shared-memory segment
    per share): same values, same order, skipped files untouched."""
    import torch

    from searchengine.ingest.decode import Decoded, shared_part
    from searchengine.ingest.scan import FileStat

    def decoded(i: int, error: str | None = None) -> Decoded:
        pixels = None if error else torch.full((3, 4, 4), float(i))
        return Decoded(FileStat(f"/p/{i}.jpg", 1, 1), f"h{i}", None, pixels, error)

    part = [decoded(0), decoded(1, "corrupt"), decoded(2), decoded(3)]
    shared = shared_part(part)
    assert [d.stat for d in shared] == [d.stat for d in part]
    assert shared[1] is part[1]
    for before, after in zip(part, shared, strict=True):
        if before.pixels is not None:
            assert torch.equal(before.pixels, after.pixels)
    storages = {d.pixels.untyped_storage().data_ptr() for d in shared if d.pixels is not None}
    assert len(storages) == 1
    single = part[:2]
    assert shared_part(single) is single  # a single image: nothing to gain


class SchedulingProbe:
    """A dataset whose items are (index, the scheduling policy of the process that made it).

    An idle-priority process asked for an item from `stall_from` on first sleeps `stall` seconds
    (once per process): an idle worker that something else keeps off the CPU.
    """

    def __init__(self, count: int, stall_from: int | None = None, stall: float = 0.0):
        self.count, self.stall_from, self.stall = count, stall_from, stall
        self.stalled_in: set[int] = set()

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> tuple[int, int]:
        policy = os.sched_getscheduler(0)
        starved = self.stall_from is not None and i >= self.stall_from and policy == os.SCHED_IDLE
        if starved and os.getpid() not in self.stalled_in:
            self.stalled_in.add(os.getpid())
            time.sleep(self.stall)
        return i, policy


needs_sched_idle = pytest.mark.skipif(
    not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux-only"
)


@needs_sched_idle
@pytest.mark.parametrize("priority", ["idle", "normal"])
def test_decode_workers_run_at_the_chosen_priority(priority):
    from searchengine.ingest.local import decoded_batches
    from searchengine.settings import IngestSettings

    settings = IngestSettings(workers=2, batch_size=4, decode_priority=priority)
    items = [item for batch in decoded_batches(SchedulingProbe(10), settings) for item in batch]
    expected = os.SCHED_IDLE if priority == "idle" else os.SCHED_OTHER
    assert items == [(i, expected) for i in range(10)]
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the model's process is left alone


@needs_sched_idle
def test_starved_idle_workers_restart_at_normal_priority_where_they_stopped(caplog):
    """Idle workers deliver files 0-3, then get no CPU: the rest comes from normal workers,
    every file once and in order. (On a host whose other processes keep both cores busy, the
    idle workers may be starved from the first file: the switch then comes earlier, never back.)"""
    from searchengine.ingest.local import decoded_batches
    from searchengine.settings import IngestSettings

    settings = IngestSettings(workers=2, batch_size=4, starved_after=1.0)
    dataset = SchedulingProbe(10, stall_from=4, stall=2.5)
    with caplog.at_level("WARNING", logger="searchengine.ingest"):
        batches = list(decoded_batches(dataset, settings))
    assert [len(batch) for batch in batches] == [4, 4, 2]
    items = [item for batch in batches for item in batch]
    assert [i for i, _ in items] == list(range(10))
    policies = [policy for _, policy in items]
    switch = policies.index(os.SCHED_OTHER)  # the first file a normal worker decoded
    assert switch <= 4 and set(policies[:switch]) <= {os.SCHED_IDLE}
    assert set(policies[switch:]) == {os.SCHED_OTHER}
    assert "restarting them at normal priority" in caplog.text


def test_an_unknown_decode_priority_is_refused_before_anything_is_stored(engine, copy_photos):
    from searchengine.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="unknown decode priority 'low'; use one of idle"):
        index(engine, copy_photos, decode_priority="low")
    assert engine.status().images == 0


FLICKR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "flickr8k-1k" / "images"


@pytest.mark.skipif(not FLICKR.is_dir(), reason="../shared/data/flickr8k-1k is not here")
def test_real_photos_are_their_own_top_hit_also_when_decoded_in_full(engine, tmp_path):
    """Indexed through the draft path, queried with a full decode of a copy: still first."""
    folder = tmp_path / "flickr"
    folder.mkdir()
    for path in sorted(FLICKR.glob("*.jpg"))[:16]:
        shutil.copy(path, folder / path.name)
    report = index(engine, folder)
    assert (report.embedded, report.skipped) == (16, 0)
    queries = tmp_path / "queries"
    queries.mkdir()
    for path in sorted(folder.iterdir()):
        assert engine.similar(path, k=1, model=TINY_MODEL).hits[0].path == str(path)
        copy = queries / path.name  # not catalogued: decoded in full and embedded now
        shutil.copy(path, copy)
        top = engine.similar(copy, k=1, model=TINY_MODEL).hits[0]
        assert top.path == str(path) and top.score > 0.999


def test_a_real_sigkill_mid_run(open_engine, tmp_path, copy_photos):
    """SIGKILL in the middle of the third batch (in a child process): nothing after it runs."""
    import subprocess
    import sys
    import textwrap

    home = tmp_path / "home"
    script = textwrap.dedent(f"""
        import os, signal
        from searchengine.encoder import Encoder
        from searchengine.engine import Engine
        from searchengine.settings import IngestSettings

        original, calls = Encoder.encode_images, []
        def encode(self, pixels):
            calls.append(1)
            if len(calls) == 3:
                os.kill(os.getpid(), signal.SIGKILL)
            return original(self, pixels)
        Encoder.encode_images = encode
        engine = Engine.open({str(home)!r})
        engine.index([{str(copy_photos)!r}], model={TINY_MODEL!r},
                     settings=IngestSettings(workers=0, batch_size=2, save_every=1))
    """)
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=300)
    assert child.returncode == -9, child.stderr.decode()[-2000:]
    engine = open_engine(home)
    assert engine.catalog.count_media() == 4  # two finished batches
    report = index(engine, copy_photos, batch_size=2)
    assert (report.unchanged, report.embedded) == (4, ALL_PHOTOS - 4)
    assert_agrees(engine)


@pytest.mark.parametrize(("preset", "expected"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_index_asks_openmp_for_passive_waits_only_before_torch_loads(preset, expected):
    import subprocess
    import sys

    script = (
        "import os, sys\n"
        "from searchengine.settings import passive_openmp_waits\n"
        "first = passive_openmp_waits()\n"
        "policy = os.environ.get('OMP_WAIT_POLICY')\n"
        "import torch\n"
        "os.environ.pop('OMP_WAIT_POLICY', None)\n"
        "print(first, policy, passive_openmp_waits(), os.environ.get('OMP_WAIT_POLICY'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if preset:
        env["OMP_WAIT_POLICY"] = preset
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["True", expected, "False", "None"]  # a user's choice wins; too late is a no-op
