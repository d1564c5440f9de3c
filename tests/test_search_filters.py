"""Search filters (dates, camera, folder, place, formats), the relevance threshold and the date
order, in the library, the CLI and the HTTP API; the capture metadata they select on, read from
real EXIF written by Pillow; revision 0004 on a home of revision 0003; bad input.

Filtered searches are checked against brute force in float64 over the photos that pass the
filter (computed here from the metadata the test wrote, in plain Python), on every index kind."""

# faiss' short names (D scores, I ids) are the house style in vector code.
# ruff: noqa: E741

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_MODEL, draw_image, fast_ingest
from float_noise import assert_top_k
from PIL import Image
from PIL.TiffImagePlugin import IFDRational

from searchengine.catalog import Catalog
from searchengine.catalog.records import NewImage
from searchengine.errors import InvalidInputError
from searchengine.exif import read_capture
from searchengine.images import ImageInfo, read_info
from searchengine.index.kinds import COMPRESSED_KINDS, INDEX_KINDS, IndexSettings
from searchengine.index.spaces import VectorSpace
from searchengine.index.tuning import apply_params
from searchengine.query.filters import (
    PHOTO_FIELDS,
    SearchFilter,
    bounding_box,
    haversine_km,
    parse_near,
    parse_time,
)
from searchengine.query.hits import image_result

pytestmark = pytest.mark.usefixtures("reuse_random_encoders")


# -- photos with real EXIF ------------------------------------------------------------------


def dms(value: float) -> tuple[float, float, float]:
    """Degrees, minutes, seconds of |value| (EXIF keeps the sign in the reference letter)."""
    value = abs(value)
    degrees = int(value)
    minutes = int((value - degrees) * 60)
    return float(degrees), float(minutes), round((value - degrees - minutes / 60) * 3600, 4)


def exif_photo(path: Path, seed: int, *, taken: str | None = None, offset: str | None = None,
               make: str | None = None, model: str | None = None, lens: str | None = None,
               gps: tuple[float, float] | None = None, size=(64, 48), fmt: str = "JPEG") -> Path:
    """A generated photo with the EXIF tags a camera writes, through Pillow's own writer."""
    exif = Image.Exif()
    if make:
        exif[0x010F] = make
    if model:
        exif[0x0110] = model
    sub = exif.get_ifd(0x8769)
    if taken:
        sub[0x9003] = taken
    if offset:
        sub[0x9011] = offset
    if lens:
        sub[0xA434] = lens
    if gps:
        ifd = exif.get_ifd(0x8825)
        ifd[1], ifd[2] = ("N" if gps[0] >= 0 else "S"), dms(gps[0])
        ifd[3], ifd[4] = ("E" if gps[1] >= 0 else "W"), dms(gps[1])
    path.parent.mkdir(parents=True, exist_ok=True)
    draw_image(seed, size).save(path, fmt, exif=exif.tobytes(), **({"quality": 92} if fmt ==
                                                                    "JPEG" else {}))
    return path


PARIS, NEW_YORK, SYDNEY = (48.8566, 2.3522), (40.7128, -74.0060), (-33.8688, 151.2093)


@pytest.fixture()
def album(tmp_path) -> Path:
    """Eight photos of known metadata in three folders (one a prefix of another's name)."""
    root = tmp_path / "album"
    exif_photo(root / "paris" / "a.jpg", 1, taken="2023:07:14 10:20:30", offset="+02:00",
               make="Google", model="Pixel 7", lens="Pixel 7 back camera", gps=PARIS)
    exif_photo(root / "paris" / "b.jpg", 2, taken="2023:12:31 23:59:59", make="Google",
               model="Pixel 7", gps=(48.80, 2.30))
    exif_photo(root / "paris" / "sub" / "c.jpg", 3, taken="2024:01:01 00:00:00", make="Canon",
               model="Canon EOS R5", lens="RF24-105mm F4 L IS USM", gps=PARIS)
    exif_photo(root / "nyc" / "d.jpg", 4, taken="2022:05:01 12:00:00", offset="-04:00",
               make="Apple", model="iPhone 13", gps=NEW_YORK)
    exif_photo(root / "nyc" / "e.jpg", 5, taken="2023:03:03 08:00:00", make="Apple",
               model="iPhone 13")
    exif_photo(root / "paris-old" / "f.jpg", 6, make="Nikon", model="D750", gps=SYDNEY)
    exif_photo(root / "paris-old" / "g.png", 7, taken="2023:06:01 09:00:00", fmt="PNG")
    exif_photo(root / "h.webp", 8, fmt="WEBP")
    return root


@pytest.fixture()
def album_engine(album, tmp_path, open_engine):
    engine = open_engine(tmp_path / "home")
    engine.index([album], model=TINY_MODEL, settings=fast_ingest())
    engine.use_model(TINY_MODEL)
    return engine


def names(result) -> set[str]:
    return {Path(hit.path).name for hit in result.hits}


def test_capture_metadata_is_read_from_exif_end_to_end(album, album_engine):
    row = album_engine.catalog.media_by_path(str(album / "paris" / "a.jpg"))
    assert row.taken_at == datetime(2023, 7, 14, 10, 20, 30) and row.taken_offset == "+02:00"
    assert (row.camera_make, row.camera, row.lens) == ("Google", "Pixel 7",
                                                      "Pixel 7 back camera")
    assert row.gps_lat == pytest.approx(PARIS[0], abs=1e-6)
    assert row.gps_lon == pytest.approx(PARIS[1], abs=1e-6)
    assert row.folder == str(album / "paris") and (row.width, row.height) == (64, 48)
    west = album_engine.catalog.media_by_path(str(album / "nyc" / "d.jpg"))
    assert west.gps_lon == pytest.approx(NEW_YORK[1], abs=1e-6)  # W is negative
    assert west.taken_offset == "-04:00"
    south = album_engine.catalog.media_by_path(str(album / "paris-old" / "f.jpg"))
    assert south.gps_lat == pytest.approx(SYDNEY[0], abs=1e-6) and south.taken_at is None
    bare = album_engine.catalog.media_by_path(str(album / "h.webp"))
    assert (bare.taken_at, bare.camera, bare.gps_lat, bare.format) == (None, None, None, "WEBP")
    # the hits carry it, in JSON after the fields they always had
    result = album_engine.search("a photo", k=8)
    hit = next(h for h in result.hits if h.path.endswith("a.jpg")).as_dict()
    assert list(hit) == ["rank", "score", "id", "path", *PHOTO_FIELDS]
    assert hit["taken_at"] == "2023-07-14T10:20:30" and hit["taken_offset"] == "+02:00"
    assert hit["camera"] == "Pixel 7" and hit["folder"] == str(album / "paris")
    assert hit["gps"] == {"lat": pytest.approx(PARIS[0]), "lon": pytest.approx(PARIS[1])}
    assert (hit["width"], hit["height"]) == (64, 48)


def test_gps_references_and_malformed_rationals():
    exif = Image.Exif()
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2], gps[3], gps[4] = "S", (33.0, 52.0, 7.68), "W", (70.0, 30.0, 0.0)
    capture = read_capture(exif)
    assert capture.latitude == pytest.approx(-(33 + 52 / 60 + 7.68 / 3600))
    assert capture.longitude == pytest.approx(-70.5)
    for latitude, ref in [((IFDRational(1, 0), 0.0, 0.0), "N"),  # zero denominator
                          ((1e30, 0.0, 0.0), "N"),  # beyond the pole
                          (("48", "51", "24"), "N"),  # text, not numbers
                          ((48.0, 51.0, 24.0), "X"),  # no such reference
                          ((-48.0, 0.0, 0.0), "N")]:  # the sign belongs in the reference
        gps[1], gps[2] = ref, latitude
        assert (read_capture(exif).latitude, read_capture(exif).longitude) == (None, None)


def hostile_files(folder: Path) -> list[Path]:
    """JPEGs whose EXIF is garbage: wrong types, huge values, zero denominators, junk bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = b"\xff\xfe\x00junk", 12345
    sub = exif.get_ifd(0x8769)
    sub[0x9003], sub[0x9011], sub[0xA434] = 99999, "+99:99", (1, 2, 3)
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2] = "Q", (IFDRational(1, 0), IFDRational(5, 0), IFDRational(0, 0))
    gps[3], gps[4] = b"E", (IFDRational(10**12, 1), 0, 0)
    blocks = {
        "types.jpg": exif.tobytes(),
        "junk.jpg": b"Exif\x00\x00" + bytes(range(256)) * 4,
        "cut.jpg": b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\xff",
        "loop.jpg": b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x01\x00\x69\x87\x04\x00\x01\x00\x00"
                    b"\x00\x08\x00\x00\x00\x00\x00\x00\x00",  # the EXIF IFD points at IFD0
    }
    paths = []
    for seed, (name, block) in enumerate(blocks.items()):
        paths.append(folder / name)
        draw_image(seed).save(paths[-1], "JPEG", exif=block)
    return paths


def test_hostile_exif_never_fails_an_index(tmp_path, open_engine):
    paths = hostile_files(tmp_path / "hostile")
    engine = open_engine(tmp_path / "home")
    report = engine.index([tmp_path / "hostile"], model=TINY_MODEL, settings=fast_ingest())
    assert (report.embedded, report.skipped) == (len(paths), 0)
    for path in paths:
        row = engine.catalog.media_by_path(str(path))
        assert (row.taken_at, row.taken_offset, row.gps_lat, row.gps_lon) == (None,) * 4
        assert row.metadata_version == 1 and row.folder == str(tmp_path / "hostile")
        info = read_info(path)  # the header reader says the same
        assert (info.taken_at, info.latitude) == (None, None)


# -- filters through the engine ---------------------------------------------------------------


@pytest.mark.parametrize("filters, expected", [
    (SearchFilter(after="2023-01-01", before="2023-12-31"), {"a.jpg", "b.jpg", "e.jpg", "g.png"}),
    (SearchFilter(before="2023-12-31"), {"a.jpg", "b.jpg", "d.jpg", "e.jpg", "g.png"}),
    (SearchFilter(after="2023-12-31T23:59:59"), {"b.jpg", "c.jpg"}),
    (SearchFilter(camera="PIXEL"), {"a.jpg", "b.jpg"}),
    (SearchFilter(camera="canon"), {"c.jpg"}),  # make or model
    (SearchFilter(camera="apple iphone"), {"d.jpg", "e.jpg"}),  # "make model"
    (SearchFilter(near=(48.85, 2.35, 20)), {"a.jpg", "b.jpg", "c.jpg"}),
    (SearchFilter(near="48.8566,2.3522,500m"), {"a.jpg", "c.jpg"}),
    (SearchFilter(near=(-33.9, 151.2, 50)), {"f.jpg"}),
    (SearchFilter(formats="png,webp"), {"g.png", "h.webp"}),
    (SearchFilter(formats=("jpg",), camera="apple", after="2023-01-01"), {"e.jpg"}),
])
def test_each_filter_selects_exactly_its_photos(album_engine, filters, expected):
    result = album_engine.search("a photo", k=8, filters=filters)
    assert names(result) == expected and result.matched == len(expected)
    again = album_engine.similar(result.hits[0].id, k=8, filters=filters)
    assert names(again) == expected and again.hits[0].id == result.hits[0].id


def test_the_folder_filter_takes_a_folder_and_everything_below_it(album, album_engine,
                                                                  monkeypatch):
    def found(folder) -> set[str]:
        return names(album_engine.search("a photo", k=8, filters=SearchFilter(folder=folder)))

    assert found(album / "paris") == {"a.jpg", "b.jpg", "c.jpg"}  # not paris-old
    assert found(album / "paris" / "sub") == {"c.jpg"}
    assert found(str(album).upper()) == set()  # case counts, also on SQLite
    assert found(album / "nowhere") == set()  # no row at all
    assert found(album / "paris" / "a.jpg") == set()  # a file is no folder
    assert names(album_engine.search("a", k=8, filters=SearchFilter(camera="ÄÖÜ"))) == set()
    monkeypatch.chdir(album)
    assert found("nyc") == {"d.jpg", "e.jpg"}  # relative to the working folder


def test_k_hits_whenever_k_photos_pass_and_how_many_passed(album_engine):
    jpegs = SearchFilter(formats="jpeg")
    assert [len(album_engine.search("a", k=k, filters=jpegs).hits) for k in (1, 3, 6, 9)] == [
        1, 3, 6, 6]
    page = album_engine.search("a", k=2, offset=4, filters=jpegs)
    assert [hit.rank for hit in page.hits] == [5, 6] and page.matched == 6
    nothing = album_engine.search("a", k=5, filters=SearchFilter(camera="hasselblad"))
    assert (nothing.hits, nothing.matched) == ([], 0)
    assert nothing.as_dict()["matched"] == 0
    assert "matched" not in album_engine.search("a", k=2).as_dict()  # no filter: as before


def test_min_score_drops_the_hits_below_it(album_engine):
    every = album_engine.search("a photo", k=8)
    scores = [hit.score for hit in every.hits]
    threshold = (scores[2] + scores[3]) / 2
    kept = album_engine.search("a photo", k=8, min_score=threshold)
    assert [hit.id for hit in kept.hits] == [hit.id for hit in every.hits[:3]]
    assert album_engine.search("a photo", k=8, min_score=1.0).hits == []
    assert len(album_engine.search("a photo", k=8, min_score=-1.0).hits) == 8


def test_sort_date_orders_the_k_best_hits_newest_first(album_engine):
    best = album_engine.search("a photo", k=5)
    by_date = album_engine.search("a photo", k=5, sort="date")
    assert {h.id for h in by_date.hits} == {h.id for h in best.hits}  # the same k best
    assert [h.rank for h in by_date.hits] == [1, 2, 3, 4, 5]
    dated = [h.photo.taken_at for h in by_date.hits if h.photo.taken_at is not None]
    assert dated == sorted(dated, reverse=True)
    undated = [i for i, h in enumerate(by_date.hits) if h.photo.taken_at is None]
    assert undated == list(range(len(dated), 5))  # photos without a date come last
    in_score_order = [h.id for h in best.hits if h.photo.taken_at is None]
    assert [by_date.hits[i].id for i in undated] == in_score_order


@pytest.mark.parametrize("call, words", [
    (lambda: SearchFilter(after="2023-13-01"), "not a date"),
    (lambda: SearchFilter(after="yesterday"), "not a date"),
    (lambda: SearchFilter(before="2023-01-01T10:00+02:00"), "time zone"),
    (lambda: SearchFilter(after="2024-01-01", before="2023-12-31"), "later than before"),
    (lambda: SearchFilter(near=(91, 0, 10)), "outside the globe"),
    (lambda: SearchFilter(near="10,181,5km"), "outside the globe"),
    (lambda: SearchFilter(near="10,20,0km"), "radius"),
    (lambda: SearchFilter(near="10,20,5miles"), "km or m"),
    (lambda: SearchFilter(near="10,20"), "LAT,LON,RADIUS"),
    (lambda: SearchFilter(near=(10, float("nan"), 5)), "finite"),
    (lambda: SearchFilter(formats="jpeg,raw"), "known formats: jpeg"),
])
def test_bad_filters_are_refused_with_what_to_give(call, words):
    with pytest.raises(InvalidInputError, match=words):
        call()


@pytest.mark.parametrize("options, words", [
    ({"min_score": 1.5}, "between -1 and 1"),
    ({"min_score": -2}, "between -1 and 1"),
    ({"sort": "name"}, "score, date"),
    ({"filters": {"after": "2023"}}, "SearchFilter"),
])
def test_bad_search_options_are_refused_before_any_work(album_engine, options, words):
    with pytest.raises(InvalidInputError, match=words):
        album_engine.search("a photo", **options)
    with pytest.raises(InvalidInputError, match=words):
        album_engine.similar(1, **options)


def test_parsers():
    assert parse_time("2023-12-31", end=True) == datetime(2023, 12, 31, 23, 59, 59, 999999)
    assert parse_time("2023-12-31 18:30") == datetime(2023, 12, 31, 18, 30)
    assert parse_near("48.85, 2.35, 500m").radius_km == pytest.approx(0.5)
    assert SearchFilter(formats="JPEG,heic").formats == ("HEIF", "JPEG", "MPO")
    assert not SearchFilter().active and SearchFilter(camera="x").active


@pytest.mark.parametrize("centre, radius", [
    ((48.85, 2.35), 20.0), ((0.0, 179.99), 300.0), ((0.0, -179.99), 300.0),
    ((89.9, 10.0), 50.0), ((-89.0, 0.0), 500.0), ((60.0, 30.0), 5000.0),
])
def test_the_bounding_box_holds_the_whole_circle(centre, radius):
    """Every point of a dense random sample within the radius lies in the prefilter's box."""
    rng = np.random.default_rng(0)
    lat = rng.uniform(-90, 90, 200_000)
    lon = rng.uniform(-180, 180, 200_000)
    inside = haversine_km(*centre, lat, lon) <= radius
    low, high, ranges = bounding_box(parse_near((*centre, radius)))
    boxed = (lat >= low) & (lat <= high) & np.any(
        [(lon >= west) & (lon <= east) for west, east in ranges], axis=0)
    assert inside.sum() > 0 and not (inside & ~boxed).any()


# -- every index kind against brute force -------------------------------------------------------

DIM = 32
N = 1200


def clustered(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(24, DIM))
    x = centres[rng.integers(24, size=n)] + 0.15 * rng.normal(size=(n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def metadata(i: int) -> tuple[str, ImageInfo]:
    """Photo i's path and metadata: a date for 9 in 10, cameras, places, formats."""
    rng = np.random.default_rng(1000 + i)
    taken = None if i % 10 == 0 else datetime(2015 + i % 10, 1 + i % 12, 1 + i % 28, i % 24)
    camera = ("Pixel 7", "iPhone 13", "EOS R5", None)[i % 4]
    located = i % 3 != 0
    return f"/photos/{('home', 'trip', 'work')[i % 3]}/{i % 7}/{i}.jpg", ImageInfo(
        width=10, height=10, format=("JPEG", "PNG", "HEIF")[i % 5 % 3], taken_at=taken,
        camera=camera, latitude=float(rng.uniform(45, 50)) if located else None,
        longitude=float(rng.uniform(0, 5)) if located else None, extended=True)


def passes(path: str, info: ImageInfo, filters: SearchFilter) -> bool:
    """The filter in plain Python: the reference `matching_ids` must agree with."""
    if filters.after and (info.taken_at is None or info.taken_at < filters.after):
        return False
    if filters.before and (info.taken_at is None or info.taken_at > filters.before):
        return False
    if filters.camera and filters.camera.lower() not in f" {info.camera or ''}".lower():
        return False
    if filters.folder and not path.startswith(filters.folder + "/"):
        return False
    if filters.formats and info.format not in filters.formats:
        return False
    if filters.near:
        near = filters.near
        if info.latitude is None or haversine_km(near.latitude, near.longitude,
                                                 np.array([info.latitude]),
                                                 np.array([info.longitude]))[0] > near.radius_km:
            return False
    return True


FILTERS = {  # a selective filter (a few dozen photos) and a broad one (most of them)
    "selective": SearchFilter(after="2019-01-01", before="2019-12-31", camera="pixel",
                              near=(47.5, 2.5, 150)),
    "broad": SearchFilter(formats="jpeg,png", after="2015-06-01"),
    "folder": SearchFilter(folder="/photos/trip"),
}


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    folder = tmp_path_factory.mktemp("kinds")
    catalog = Catalog(f"sqlite:///{folder / 'catalog.sqlite'}")
    model = catalog.ensure_model("test/model", DIM)
    described = [metadata(i) for i in range(N)]
    images = [NewImage(path, 1, 1, f"hash{i}", info) for i, (path, info) in enumerate(described)]
    ids = np.array(catalog.write_images(model.id, images, clustered(N, 1), []).ids)
    stored_ids, stored = catalog.vectors("image", model.id)
    assert stored_ids.tolist() == ids.tolist()
    rng = np.random.default_rng(2)
    xq = stored[rng.choice(N, 6, replace=False)] + 0.05 * rng.normal(size=(6, DIM))
    xq = (xq / np.linalg.norm(xq, axis=1, keepdims=True)).astype(np.float32)
    yield folder, catalog, model, described, ids, stored, xq
    catalog.close()


@pytest.mark.parametrize("which", list(FILTERS))
@pytest.mark.parametrize("kind", [*INDEX_KINDS, *COMPRESSED_KINDS])
def test_filtered_search_equals_brute_force_over_the_filtered_photos(collection, kind, which):
    folder, catalog, model, described, ids, stored, xq = collection
    filters = FILTERS[which]
    allowed = np.array([passes(path, info, filters) for path, info in described])
    assert 0 < allowed.sum() < N
    if which == "selective":
        assert allowed.sum() < 80
    else:
        assert allowed.sum() > N / 4
    space = VectorSpace(catalog, folder / kind, model, "image", kind,
                        IndexSettings(target_recall=0.9))
    index = space.index
    # parameters that visit every vector (as tests/test_index_kinds.py does): a difference from
    # brute force is then a wrong id set, not the approximation, which the selector road's
    # widening bounds as tests/test_filtered_search.py checks
    if index.kind == "hnsw":
        apply_params(index.index, {"efSearch": N})
    elif index.kind != "flat":
        apply_params(index.index, {"nprobe": index.plan.nlist})
    k = 10
    for q in range(len(xq)):
        result = image_result(catalog, space, xq[q : q + 1], "q", k=k, offset=0,
                              filters=filters)
        assert result.matched == allowed.sum()
        got = np.array([[hit.id for hit in result.hits]])
        assert got.shape[1] == min(k, allowed.sum())  # k hits whenever k photos pass
        assert_top_k(got, xq[q : q + 1], stored[allowed], ids[allowed])


# -- revision 0004 on a home of revision 0003 ---------------------------------------------------


def _alembic(url: str, action: str, target: str) -> None:
    from alembic import command

    from searchengine.catalog.store import _alembic_config

    getattr(command, action)(_alembic_config(url), target)


def test_a_home_of_revision_0003_fills_the_metadata_on_the_next_index_without_embedding(
    album, tmp_path, open_engine, catalog_url, caplog, monkeypatch
):
    """A home indexed and then taken back to revision 0003 (the schema and rows a 0003 build
    wrote: no metadata columns) opens (the upgrade runs), its folders are filled by the
    migration, and the next `index` reads the capture metadata of every unchanged photo while
    the model embeds nothing: the vectors and the index file stay as they were."""
    from sqlalchemy import create_engine, inspect

    from searchengine.encoder import Encoder
    from searchengine.index.vectors import manifest_path

    home = tmp_path / "home"
    engine = open_engine(home, catalog_url=catalog_url)
    engine.index([album], model=TINY_MODEL, settings=fast_ingest())
    space = engine.space(TINY_MODEL, "image")
    ids, vectors = engine.catalog.vectors("image", space.model.id)
    url = engine.catalog.url
    engine.close()
    _alembic(url, "downgrade", "0003")
    manifest = manifest_path(space.path)  # as a build at revision 0003 wrote it
    manifest.write_text(json.dumps(json.loads(manifest.read_text()) | {"catalog_revision": "0003"}))
    index_file = space.path.read_bytes(), manifest.read_text()
    raw = create_engine(url)
    with raw.connect() as connection:
        columns = {column["name"] for column in inspect(connection).get_columns("media")}
    raw.dispose()
    assert "gps_lat" not in columns and "taken_at" in columns

    calls: list[int] = []
    original = Encoder.encode_images
    monkeypatch.setattr(Encoder, "encode_images",
                        lambda self, pixels: calls.append(len(pixels)) or original(self, pixels))
    with caplog.at_level(logging.WARNING, logger="searchengine"):
        reader = open_engine(home, catalog_url=catalog_url)  # the upgrade runs on opening
        row = reader.catalog.media_by_path(str(album / "paris" / "a.jpg"))
        assert row.folder == str(album / "paris") and row.metadata_version is None
        assert row.gps_lat is None and row.taken_at is not None  # kept from before
        by_folder = reader.search("a", k=8, filters=SearchFilter(folder=album / "nyc"))
        assert names(by_folder) == {"d.jpg", "e.jpg"}  # the migration filled the folders
        report = reader.index([album], model=TINY_MODEL, settings=fast_ingest())
    assert (report.embedded, report.reused, report.refreshed, report.unchanged) == (0, 0, 8, 8)
    assert calls == []  # the model never ran
    assert not [r for r in caplog.records if "revision" in r.getMessage()]  # no index rebuild
    row = reader.catalog.media_by_path(str(album / "paris" / "a.jpg"))
    assert (row.gps_lat, row.camera_make, row.metadata_version) == (
        pytest.approx(PARIS[0], abs=1e-6), "Google", 1)
    after_ids, after = reader.catalog.vectors("image", space.model.id)
    np.testing.assert_array_equal(after_ids, ids)
    np.testing.assert_array_equal(after, vectors)
    assert (space.path.read_bytes(), manifest_path(space.path).read_text()) == index_file
    near = reader.search("a", k=8, filters=SearchFilter(near=(48.85, 2.35, 20)))
    assert names(near) == {"a.jpg", "b.jpg", "c.jpg"}
    again = reader.index([album], model=TINY_MODEL, settings=fast_ingest())
    assert (again.refreshed, again.embedded) == (0, 0)  # read once


# -- the CLI -------------------------------------------------------------------------------------


def stored_state(home: Path) -> tuple[bytes, dict[str, bytes]]:
    """The catalog file's bytes and every index file's: what a refused command must not touch."""
    files = {str(p): p.read_bytes() for p in sorted(home.rglob("*")) if p.is_file()
             and p.suffix not in (".lock", ".json") and "catalog.sqlite" not in p.name}
    return (home / "catalog.sqlite").read_bytes(), files


def test_cli_filters_min_score_and_sort(album, album_engine, cli_run):
    home = album_engine.home
    payload = cli_run.json("search", "a photo", "--home", home, "--camera", "pixel",
                           "--after", "2023-01-01", "--before", "2023-12-31")
    assert {Path(hit["path"]).name for hit in payload["hits"]} == {"a.jpg", "b.jpg"}
    assert payload["matched"] == 2 and list(payload) == ["query", "model", "hits", "matched"]
    assert all(list(hit) == ["rank", "score", "id", "path", *PHOTO_FIELDS]
               for hit in payload["hits"])
    by_date = cli_run.json("search", "a photo", "--home", home, "--near", "48.85,2.35,20km",
                           "--sort", "date")
    assert [Path(hit["path"]).name for hit in by_date["hits"]] == ["c.jpg", "b.jpg", "a.jpg"]
    assert by_date["hits"][0]["gps"]["lat"] == pytest.approx(PARIS[0], abs=1e-6)
    folder = cli_run.json("similar", f"id:{payload['hits'][0]['id']}", "--home", home,
                          "--folder", album / "paris-old", "--format", "png")
    assert [Path(hit["path"]).name for hit in folder["hits"]] == ["g.png"]
    table = cli_run("search", "a photo", "--home", home, "--format", "webp").stdout
    assert "1 photo pass the filters" in table and "h.webp" in table


def test_cli_says_how_many_photos_the_filters_left_when_nothing_is_found(album_engine, cli_run):
    home = album_engine.home
    out = cli_run("search", "a photo", "--home", home, "--camera", "hasselblad").stdout
    assert "no photo passes the filters (0 left)" in out
    out = cli_run("search", "a photo", "--home", home, "--camera", "pixel",
                  "--min-score", "1").stdout
    assert "2 photos pass the filters, none scores 1 or more" in out
    assert cli_run.json("search", "a", "--home", home, "--camera", "zzz")["matched"] == 0


@pytest.mark.parametrize("option, words", [
    (["--after", "2023-02-30"], "not a date"),
    (["--before", "12/31/2023"], "not a date"),
    (["--after", "2024-01-01", "--before", "2023-12-31"], "later than before"),
    (["--near", "95,2.35,20km"], "outside the globe"),
    (["--near", "48.85,2.35,-3km"], "km or m"),
    (["--near", "48.85,2.35,0m"], "radius"),
    (["--near", "paris"], "LAT,LON,RADIUS"),
    (["--format", "jpeg,raw"], "known formats"),
    (["--min-score", "1.5"], "-1"),
    (["--sort", "name"], "score"),
])
def test_cli_bad_filters_exit_2_and_store_nothing(album_engine, cli_run, option, words):
    home = album_engine.home
    before = stored_state(home)
    for command in (["search", "a photo"], ["similar", "id:1"]):
        result = cli_run(*command, "--home", home, *option, expect=2)
        assert words in result.stderr, result.stderr
    assert stored_state(home) == before


# -- the HTTP API --------------------------------------------------------------------------------


@pytest.fixture()
def api(album_engine):
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from searchengine.server import create_app

    app = create_app(album_engine)
    yield TestClient(app, raise_server_exceptions=False)
    app.state.service.close()  # gives the (shared, cached) encoder back ungated


def test_api_filters_as_query_parameters(api, album, album_engine, cli_run):
    answer = api.get("/api/search", params={"q": "a photo", "camera": "pixel",
                                            "after": "2023-01-01", "before": "2023-12-31"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert {Path(hit["path"]).name for hit in body["hits"]} == {"a.jpg", "b.jpg"}
    assert body["matched"] == 2
    local = cli_run.json("search", "a photo", "--home", album_engine.home, "--no-serve",
                         "--camera", "pixel", "--after", "2023-01-01", "--before", "2023-12-31")
    assert body == local  # the same JSON, null metadata fields included
    first = body["hits"][0]["id"]
    near = api.get(f"/api/similar/{first}", params={"near": "48.85,2.35,20km", "sort": "date",
                                                   "format": "jpeg"}).json()
    assert [Path(hit["path"]).name for hit in near["hits"]] == ["c.jpg", "b.jpg", "a.jpg"]
    assert near["hits"][0]["gps"]["lat"] == pytest.approx(PARIS[0], abs=1e-6)
    folder = api.get("/api/search", params={"q": "a", "folder": str(album / "nyc"),
                                            "min_score": -1}).json()
    assert {Path(hit["path"]).name for hit in folder["hits"]} == {"d.jpg", "e.jpg"}
    none = api.get("/api/search", params={"q": "a", "camera": "hasselblad"}).json()
    assert (none["hits"], none["matched"]) == ([], 0)
    assert "matched" not in api.get("/api/search", params={"q": "a"}).json()


@pytest.mark.parametrize("params, words", [
    ({"after": "2023-13-01"}, "not a date"),
    ({"after": "2024-01-01", "before": "2023-01-01"}, "later than before"),
    ({"before": "2023-01-01T00:00:00Z"}, "time zone"),
    ({"near": "91,0,1km"}, "outside the globe"),
    ({"near": "1,2,3 parsecs"}, "km or m"),
    ({"format": "raw"}, "known formats: jpeg"),
    ({"min_score": 2}, "min_score"),
    ({"sort": "name"}, "sort"),
    ({"folder": "Pictures/family"}, "absolute"),
])
def test_api_bad_filters_are_422_with_a_message(api, params, words):
    for path, query in (("/api/search", {"q": "a"}), ("/api/similar/1", {})):
        answer = api.get(path, params=query | params)
        assert answer.status_code == 422, answer.text
        assert words in answer.json()["detail"]


def test_the_openapi_schema_documents_the_filters(api):
    spec = api.get("/openapi.json").json()
    for path in ("/api/search", "/api/similar/{media_id}"):
        parameters = {p["name"]: p for p in spec["paths"][path]["get"]["parameters"]}
        for name in ("after", "before", "camera", "folder", "near", "format", "min_score",
                     "sort"):
            assert parameters[name]["description"], (path, name)
        assert "48.85,2.35,20km" in str(parameters["near"])
        assert parameters["min_score"]["schema"]["anyOf"][0]["maximum"] == 1.0
    schemas = spec["components"]["schemas"]
    assert {"taken_at", "camera", "gps", "width", "height", "folder"} <= set(
        schemas["Hit"]["properties"])
    assert "matched" in schemas["SearchResult"]["properties"]


def test_matching_ids_agree_with_plain_python_on_both_backends(tmp_path, catalog_url):
    """The SQL of every condition (and what Python finishes) on SQLite and PostgreSQL, against
    `passes`; cameras beyond ASCII and folders that differ only in case included."""
    from searchengine.catalog.filtering import matching_ids

    catalog = Catalog(catalog_url or f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    try:
        model = catalog.ensure_model("test/model", DIM)
        described = [metadata(i) for i in range(300)]
        described[5] = ("/photos/Trip/5.jpg", described[5][1])  # not under /photos/trip
        described[7] = (described[7][0], ImageInfo(10, 10, "JPEG", None, "Ärger ÉLAN 100%_x",
                                                   extended=True))
        images = [NewImage(p, 1, 1, f"h{i}", info) for i, (p, info) in enumerate(described)]
        ids = np.array(catalog.write_images(model.id, images, clustered(300, 3), []).ids)
        for filters in [*FILTERS.values(), SearchFilter(camera="ärger é"),
                        SearchFilter(camera="100%_"), SearchFilter(camera="%"),
                        SearchFilter(folder="/photos/trip", camera="iphone"),
                        SearchFilter(near=(47.5, 2.5, 40), formats="heic")]:
            expected = ids[[passes(path, info, filters) for path, info in described]]
            assert matching_ids(catalog, filters).tolist() == expected.tolist()
    finally:
        catalog.close()
