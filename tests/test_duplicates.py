"""Near-duplicates: planted near-copies are grouped and distinct photos are not; the groups of
every index kind are those of a float64 all-pairs reference; the CLI's JSON shape; bad input."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_MODEL, draw_image, fast_ingest, write_image

from searchengine.catalog import Catalog
from searchengine.catalog.records import NewImage
from searchengine.images import ImageInfo
from searchengine.index.components import FIRST_K, Components
from searchengine.index.kinds import IndexSettings
from searchengine.index.spaces import VectorSpace
from searchengine.query.duplicates import duplicate_groups

# Measured with se-tiny/random on the photos of `near_copies` (float64 cosines of the stored
# vectors): a photo and its resized, re-compressed (quality 40) or cropped copy are at 0.9996 or
# more; two distinct generated photos at 0.9963 at most (the random tiny model maps every
# generated photo to nearly the same direction, so 0.95 would group them all). 0.999 lies in
# the gap, about 0.6e-3 from the nearest planted pair and 2.7e-3 from the nearest distinct
# pair, each far beyond float noise; `test_planted_groups_...` checks that gap itself.
TINY_THRESHOLD = 0.999
PLANTED = 3  # photos with near-copies: seeds 0..2
DISTINCT = 12  # seeds 0..11 drawn at full size


@pytest.fixture(scope="module")
def near_copies(tmp_path_factory) -> tuple[Path, list[set[str]]]:
    """A folder of DISTINCT photos, three near-copies of each of the first PLANTED (resized to
    half, re-compressed at quality 40, cropped by a few pixels) and one byte-for-byte copy of
    photo 5; returns the folder and the planted groups as sets of file names."""
    root = tmp_path_factory.mktemp("near")
    for seed in range(DISTINCT):
        write_image(root / f"p{seed}.jpg", seed, size=(256, 192))
    groups = []
    for seed in range(PLANTED):
        image = draw_image(seed, (256, 192))
        image.resize((128, 96)).save(root / f"p{seed}_small.jpg", quality=92)
        image.save(root / f"p{seed}_q40.jpg", quality=40)
        image.crop((6, 5, 250, 187)).save(root / f"p{seed}_crop.jpg", quality=92)
        groups.append({f"p{seed}{tail}.jpg" for tail in ("", "_small", "_q40", "_crop")})
    shutil.copy(root / "p5.jpg", root / "p5_copy.jpg")
    groups.append({"p5.jpg", "p5_copy.jpg"})
    return root, groups


@pytest.fixture(scope="module")
def near_home(tmp_path_factory, near_copies) -> Path:
    from searchengine.engine import Engine
    from searchengine.settings import EncoderSettings

    home = tmp_path_factory.mktemp("near-home")
    with Engine.open(home, encoder_settings=EncoderSettings(device="cpu")) as engine:
        engine.index([near_copies[0]], model=TINY_MODEL, settings=fast_ingest())
    return home


def names(report) -> list[set[str]]:
    return [{Path(photo.path).name for photo in group.photos} for group in report.groups]


def test_planted_groups_are_found_and_no_distinct_photo_is_grouped(
    near_home, near_copies, open_engine
):
    engine = open_engine(near_home, create=False)
    ids, vectors = engine.vectors("image")
    rows = engine.catalog.media(ids.tolist())
    name = [Path(rows[int(i)].path).name for i in ids]
    units = vectors.astype(np.float64)
    units /= np.linalg.norm(units, axis=1, keepdims=True)
    cosines = units @ units.T
    planted = near_copies[1]
    same = np.array([[any({a, b} <= g for g in planted) for b in name] for a in name])
    np.fill_diagonal(same, False)
    apart = ~same & ~np.eye(len(name), dtype=bool)
    # the measured gap the threshold sits in (see TINY_THRESHOLD)
    assert cosines[same].min() > TINY_THRESHOLD + 2e-4
    assert cosines[apart].max() < TINY_THRESHOLD - 1e-3

    report = engine.duplicates(threshold=TINY_THRESHOLD)
    found = names(report)
    assert sorted(map(sorted, found)) == sorted(map(sorted, planted))
    assert report.photos == DISTINCT + PLANTED * 3 + 1 and report.model == TINY_MODEL
    for group in report.groups:
        best, *others = group.photos
        assert best.score == 1.0 and all(TINY_THRESHOLD <= p.score <= 1 + 1e-6 for p in others)
        # the best photo first: the most pixels (the half-size copy is never first)
        assert best.width * best.height == max(p.width * p.height for p in group.photos)
        assert [p.score for p in others] == sorted((p.score for p in others), reverse=True)
        assert all(p.size > 0 and p.width > 0 and p.height > 0 for p in group.photos)


def test_exact_copies_are_one_group_at_threshold_one(near_home, open_engine):
    """At threshold 1 only the two files with one content hash are a group (whether their
    shared vector's float64 cosine with itself rounds to 1 or just below), marked as one file."""
    report = open_engine(near_home, create=False).duplicates(threshold=1.0)
    assert names(report) == [{"p5.jpg", "p5_copy.jpg"}]
    assert [p.same_content for p in report.groups[0].photos] == [False, True]


def test_the_cli_prints_groups_as_a_table_and_in_the_documented_json(near_home, cli_run):
    before = snapshot(near_home)
    payload = cli_run.json("duplicates", "--threshold", TINY_THRESHOLD, "--home", near_home)
    assert len(payload["groups"]) == PLANTED + 1
    for group in payload["groups"]:
        assert set(group) >= {"photos"} and len(group["photos"]) >= 2
        for photo in group["photos"]:
            assert set(photo) >= {"id", "path", "size", "width", "height", "taken_at", "score"}
            assert isinstance(photo["id"], int) and Path(photo["path"]).is_file()
            assert photo["size"] == Path(photo["path"]).stat().st_size
            assert photo["taken_at"] is None  # generated photos carry no capture time
    text = cli_run("duplicates", "--threshold", TINY_THRESHOLD, "--home", near_home).stdout
    assert "group 1: 4 photos" in text and "same file" in text and "p0_small.jpg" in text
    assert "128x96" in text and "4 groups (14 photos) among 22 photos" in text
    none = cli_run("duplicates", "--threshold", 1, "--model", TINY_MODEL, "--home", near_home)
    assert "2 photos" in none.stdout  # the exact copies alone
    assert snapshot(near_home) == before  # read-only


def snapshot(home: Path) -> dict[str, str]:
    return {
        str(p.relative_to(home)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(home.rglob("*")) if p.is_file() and not p.name.endswith(("-wal", "-shm"))
    }


@pytest.mark.parametrize("threshold", ["1.5", "-1.01", "nan"])
def test_a_threshold_outside_minus_one_to_one_is_a_clear_error(near_home, cli_run, threshold):
    result = cli_run("duplicates", "--threshold", threshold, "--home", near_home, expect=1)
    assert "is not a cosine similarity: give a number from -1 to 1" in result.stderr


@pytest.mark.parametrize("case", ["missing home", "unknown model", "model not indexed"])
def test_other_bad_input_gets_the_errors_search_gives(near_home, cli_run, tmp_path, case):
    home, extra = {
        "missing home": (tmp_path / "nothing", []),
        "unknown model": (near_home, ["--model", "NoSuchArch/random"]),
        "model not indexed": (near_home, ["--model", "ViT-B-32/laion2b_s34b_b79k"]),
    }[case]
    result = cli_run("duplicates", "--home", home, *extra, expect=1)
    search = cli_run("search", "a dog", "--no-serve", "--home", home, *extra, expect=1)
    assert result.stderr == search.stderr and result.stderr.startswith("Error: ")
    assert not (tmp_path / "nothing").exists()


# -- every index kind against a float64 all-pairs reference ------------------------------------

DIM = 32
INFO = ImageInfo(width=4, height=3, format="JPEG", taken_at=None, camera=None)
KIND_THRESHOLD = 0.9


def planted_vectors(seed: int) -> np.ndarray:
    """(n, DIM) float32 unit vectors, shuffled: 180 lone directions; 60 with 0 to 4 near-copies
    each; and two tight clusters of 2 * FIRST_K vectors whose centres are at cosine 0.95, so
    every vector's first FIRST_K neighbours lie in its own cluster and only a wider search
    joins the two (one group at KIND_THRESHOLD)."""
    rng = np.random.default_rng(seed)

    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    rows = [unit(rng.normal(size=(180, DIM)))]
    for count in rng.integers(0, 5, size=60):
        base = unit(rng.normal(size=DIM))
        noise = rng.normal(size=(count, DIM)) * rng.uniform(0.02, 0.05, size=(count, 1))
        rows.append(np.vstack([base, base + noise]))
    first, other = unit(rng.normal(size=(2, DIM)))
    second = unit(0.95 * first + np.sqrt(1 - 0.95**2) * unit(other - (other @ first) * first))
    for centre in (first, second):
        rows.append(centre + rng.normal(size=(2 * FIRST_K, DIM)) * 0.004)
    x = unit(np.vstack(rows))
    return x[rng.permutation(len(x))].astype(np.float32)


def reference_groups(ids: np.ndarray, xb: np.ndarray, threshold: float) -> list[set[int]]:
    """Connected components of the all-pairs cosines >= threshold, in float64."""
    x = xb.astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return [{int(ids[i]) for i in group} for group in walk(x @ x.T >= threshold)]


def walk(near: np.ndarray) -> list[set[int]]:
    """The components of two or more nodes of an (n, n) bool adjacency, by a plain
    depth-first walk."""
    seen: set[int] = set()
    groups = []
    for start in range(len(near)):
        if start in seen:
            continue
        stack, group = [start], set()
        while stack:
            at = stack.pop()
            if at not in group:
                group.add(at)
                stack.extend(int(j) for j in np.flatnonzero(near[at]) if j not in group)
        seen |= group
        if len(group) > 1:
            groups.append(group)
    return groups


def test_exact_copies_are_one_group_whatever_their_vectors(tmp_path):
    """Two rows of one content hash are grouped even with orthogonal vectors (the catalog, not
    the vectors, says they are one file); rows of other hashes with such vectors are not."""
    catalog = Catalog(f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    try:
        model = catalog.ensure_model("test/model", DIM)
        hashes = ["same", "same", "other-1", "other-2", "same"]
        images = [NewImage(f"/p/{i}.jpg", 10 + i, 1, h, INFO) for i, h in enumerate(hashes)]
        xb = np.eye(DIM, dtype=np.float32)[: len(images)]
        ids = catalog.write_images(model.id, images, xb, []).ids
        space = VectorSpace(catalog, tmp_path, model, "image", "flat", IndexSettings())
        report = duplicate_groups(space, 0.5)
        assert [[p.id for p in g.photos] for g in report.groups] == [[ids[4], ids[0], ids[1]]]
        assert [p.same_content for p in report.groups[0].photos] == [False, True, True]
        assert [p.score for p in report.groups[0].photos] == [1.0, 0.0, 0.0]
    finally:
        catalog.close()


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf", "ivf-sq8", "ivf-pq"])
def test_every_kind_finds_the_groups_of_the_all_pairs_reference(tmp_path, kind):
    catalog = Catalog(f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    try:
        model = catalog.ensure_model("test/model", DIM)
        xb = planted_vectors(seed=5)
        paths = [f"/p/{i}.jpg" for i in range(len(xb))]
        images = [NewImage(p, 10, 1, f"hash-{p}", INFO) for p in paths]
        ids = np.array(catalog.write_images(model.id, images, xb, []).ids, dtype=np.int64)
        ids, xb = catalog.vectors("image", model.id)  # as stored (float16 values)
        units = xb.astype(np.float64) / np.linalg.norm(xb, axis=1, keepdims=True)
        # no pair within float noise of the threshold: a group is then the same on every CPU
        assert np.abs(units @ units.T - KIND_THRESHOLD).min() > 1e-4
        expected = reference_groups(ids, xb, KIND_THRESHOLD)
        assert max(map(len, expected)) == 4 * FIRST_K and len(expected) > 30

        space = VectorSpace(catalog, tmp_path, model, "image", kind, IndexSettings())
        assert space.index.kind == kind
        report = duplicate_groups(space, KIND_THRESHOLD)
        found = [{p.id for p in group.photos} for group in report.groups]
        assert sorted(map(sorted, found)) == sorted(map(sorted, expected))
    finally:
        catalog.close()


def test_components_merge_like_a_plain_walk():
    rng = np.random.default_rng(3)
    n = 500
    u, v = rng.integers(0, n, size=(2, 400))
    merged = Components(n)
    for part in range(0, 400, 37):  # in batches, as the search merges them
        merged.union(u[part : part + 37], v[part : part + 37])
    near = np.zeros((n, n), dtype=bool)
    near[u, v] = near[v, u] = True
    found = [g.tolist() for g in merged.groups()]
    assert sorted(found) == sorted(map(sorted, walk(near)))


@pytest.mark.parametrize("kind", ["flat", "ivf-pq"])
def test_rounds_that_widen_k_instead_of_filtering_find_the_same_groups(
    tmp_path, kind, monkeypatch
):
    """With many components pending, a round widens k for every row instead of one filtered
    search a component: forced here for every round, the groups are still the reference's."""
    from searchengine.index import components

    monkeypatch.setattr(components, "FILTERED_COMPONENTS", 0)
    test_every_kind_finds_the_groups_of_the_all_pairs_reference(tmp_path, kind)
