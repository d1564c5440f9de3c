"""The HTTP API, in-process through FastAPI's TestClient: every endpoint, every error case,
path-traversal and symlink attempts, oversize uploads, the token and the Host check.

State is built through the Python API (the session's `indexed_home`); answers are checked
against what the Engine (or the CLI's `--json`) says for the same question.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from conftest import TINY_MODEL, draw_image, fast_ingest  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from float_noise import MODEL_NOISE, stored_score_noise  # noqa: E402

from searchengine.errors import InvalidInputError  # noqa: E402
from searchengine.query.filters import PHOTO_FIELDS  # noqa: E402
from searchengine.server import ServerSettings, create_app  # noqa: E402
from searchengine.server.runner import settings_for  # noqa: E402
from searchengine.server.settings import LOOPBACK_NAMES  # noqa: E402

TOKEN = "correct-horse-battery-staple"


@pytest.fixture(scope="module")
def engine(indexed_home: Path):
    from searchengine.engine import Engine

    with Engine.open(indexed_home) as opened:
        yield opened


@pytest.fixture(scope="module")
def client(engine) -> Iterator[TestClient]:
    opened = TestClient(create_app(engine), raise_server_exceptions=False)
    yield opened
    opened.app.state.service.close()


_OPEN: list[TestClient] = []  # app_client's clients, their servers closed after their test


def app_client(engine, **settings) -> TestClient:
    """A client of a server over `engine`, closed after the test as `serve` closes it, so that
    the encoders it gated (shared by later tests through `reuse_random_encoders`) are given
    back ungated."""
    opened = TestClient(create_app(engine, ServerSettings(**settings)),
                        raise_server_exceptions=False)
    _OPEN.append(opened)
    return opened


@pytest.fixture(autouse=True)
def _close_app_clients() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().app.state.service.close()


def jpeg_bytes(seed: int, size: tuple[int, int] = (64, 48)) -> bytes:
    buffer = io.BytesIO()
    draw_image(seed, size).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def media_id(engine, path: Path) -> int:
    return engine.catalog.media_by_path(str(path)).id


def assert_error(response, status: int, *words: str) -> None:
    """A JSON error with a readable message, the expected status and no stack trace."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail
    assert "Traceback" not in response.text
    for word in words:
        assert word in detail, detail


# -- text search ---------------------------------------------------------------------------


def _without_scores(result: dict) -> dict:
    return {**result, "hits": [{k: v for k, v in hit.items() if k != "score"}
                               for hit in result["hits"]]}


def test_search_answers_the_same_json_as_the_cli(
    client, indexed_home, cli_run, reuse_random_encoders
):
    response = client.get("/api/search", params={"q": "a dog on the beach", "k": 3})
    assert response.status_code == 200
    expected = cli_run.json("search", "a dog on the beach", "-k", "3", "--home", indexed_home)
    got = response.json()
    # the same JSON; scores within the text tower's float noise (a batch of the server's, the
    # CLI's own forward pass: BLAS blocking and threads may differ), rankings as far apart
    assert _without_scores(got) == _without_scores(expected)
    np.testing.assert_allclose([hit["score"] for hit in got["hits"]],
                               [hit["score"] for hit in expected["hits"]], rtol=0,
                               atol=MODEL_NOISE + 1e-6)  # + the 6-decimal rounding
    assert [hit["rank"] for hit in expected["hits"]] == [1, 2, 3]
    assert list(expected["hits"][0]) == ["rank", "score", "id", "path", *PHOTO_FIELDS]


def test_search_pages_with_offset_and_limit(client):
    whole = client.get("/api/search", params={"q": "a red square", "k": 6}).json()["hits"]
    first = client.get("/api/search", params={"q": "a red square", "limit": 3})
    second = client.get("/api/search", params={"q": "a red square", "limit": 3, "offset": 3})
    assert first.json()["hits"] + second.json()["hits"] == whole
    assert [hit["rank"] for hit in second.json()["hits"]] == [4, 5, 6]
    assert 'rel="next"' in first.headers["link"] and "offset=3" in first.headers["link"]
    beyond = client.get("/api/search", params={"q": "a red square", "k": 5, "offset": 7})
    assert len(beyond.json()["hits"]) == 2  # 9 images in all
    assert "link" not in beyond.headers


@pytest.mark.parametrize(
    ("params", "status", "word"),
    [
        ({"q": "   "}, 400, "empty query"),
        ({}, 422, "q"),
        ({"q": "dog", "k": 0}, 422, "k"),
        ({"q": "dog", "offset": -1}, 422, "offset"),
        ({"q": "dog", "k": "many"}, 422, "k"),
        ({"q": "dog", "k": 2, "limit": 3}, 400, "disagree"),
        ({"q": "dog", "k": 201}, 400, "at most 200"),
    ],
)
def test_search_refuses_bad_parameters(client, params, status, word):
    assert_error(client.get("/api/search", params=params), status, word)


# -- image -> image ------------------------------------------------------------------------


def test_similar_finds_the_image_itself_first(client, engine, photo_folder):
    target = media_id(engine, photo_folder / "photo_3.jpg")
    result = client.get(f"/api/similar/{target}", params={"k": 4}).json()
    assert result["hits"][0]["id"] == target
    assert result["hits"][0]["score"] == pytest.approx(1.0, abs=stored_score_noise(64))
    assert result == engine.similar(target, k=4).as_dict()


def test_similar_of_unknown_or_malformed_ids(client):
    assert_error(client.get("/api/similar/999999"), 404, "999999")
    assert_error(client.get("/api/similar/0"), 422)
    assert_error(client.get("/api/similar/abc"), 422)


ID_ROUTES = ["/api/similar/{}", "/api/lookup/{}", "/api/classify/{}?labels=a,b",
             "/api/match/{}?text=a", "/api/images/{}", "/api/images/{}/info",
             "/api/images/{}/thumbnail"]


@pytest.mark.parametrize("route", ID_ROUTES)
@pytest.mark.parametrize("media", [2**63 - 1, 2**63, 2**64 + 5, 10**30])
def test_ids_beyond_64_bits_are_refused_not_a_server_error(client, route, media):
    """SQLite INTEGER holds 64 bits: larger ids gave HTTP 500 (OverflowError)."""
    response = client.get(route.format(media))
    assert_error(response, 404 if media < 2**63 else 422)


def test_search_by_upload_trusts_the_content_not_the_name(client, engine, photo_folder):
    path = photo_folder / "photo_2.jpg"
    files = {"image": ("notes.txt", path.read_bytes(), "text/plain")}
    response = client.post("/api/search/image", files=files, params={"k": 3})
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["query"] == "notes.txt"
    assert result["hits"][0]["id"] == media_id(engine, path)
    assert result["hits"][0]["score"] == pytest.approx(1.0, abs=1e-3)


def test_upload_names_are_made_harmless(client, photo_folder):
    files = {"image": ("../../etc/<script>.jpg", (photo_folder / "photo_1.jpg").read_bytes())}
    result = client.post("/api/search/image", files=files).json()
    assert result["query"] == "_script_.jpg"


# -- uploads that are refused --------------------------------------------------------------


def truncated_jpeg() -> bytes:
    data = jpeg_bytes(5, (200, 150))
    return data[: len(data) // 3]


@pytest.mark.parametrize(
    ("name", "data", "status", "word"),
    [
        ("photo.jpg", b"this is not an image at all", 415, "not an image"),
        ("photo.jpg", b"", 422, "empty"),
        ("photo.jpg", truncated_jpeg(), 422, "not a usable image"),
        ("photo.jpg", b"%PDF-1.4\n" + b"0" * 100, 415, "not an image"),
    ],
)
def test_uploads_that_are_not_usable_images(client, name, data, status, word):
    response = client.post("/api/search/image", files={"image": (name, data, "image/jpeg")})
    assert_error(response, status, word)


def test_upload_without_a_file_field(client):
    assert_error(client.post("/api/search/image", data={"other": "x"}), 422, "image")


def test_oversize_upload_is_refused_by_declared_length(engine, photo_folder):
    small = app_client(engine, max_upload_bytes=2_000)
    big = jpeg_bytes(3, (400, 300))
    assert len(big) > 2_000
    response = small.post("/api/search/image", files={"image": ("big.jpg", big)})
    assert_error(response, 413, "2000 bytes")
    fits = small.post("/api/search/image", files={"image": ("ok.jpg", jpeg_bytes(3, (16, 12)))})
    assert fits.status_code == 200


def test_oversize_upload_is_refused_while_streaming(engine):
    """No Content-Length (chunked): the body is counted as it arrives."""
    small = app_client(engine, max_upload_bytes=2_000)
    boundary = "xyzzy"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; "
            "filename=\"big.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n").encode()

    def body():
        yield head
        for _ in range(10):
            yield b"\xff" * 1_000
        yield f"\r\n--{boundary}--\r\n".encode()

    response = small.post(
        "/api/search/image", content=body(),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert_error(response, 413, "over the limit")


def test_upload_over_the_pixel_limit(engine):
    limited = app_client(engine, max_upload_pixels=100_000)
    buffer = io.BytesIO()
    Image.new("RGB", (500, 500), (10, 20, 30)).save(buffer, "PNG")  # tiny file, 250k pixels
    response = limited.post("/api/search/image", files={"image": ("flat.png", buffer.getvalue())})
    assert_error(response, 413, "500x500")


def test_upload_of_an_unaccepted_format(client):
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "PPM")
    response = client.post("/api/search/image", files={"image": ("x.png", buffer.getvalue())})
    assert_error(response, 415, "PPM")


# -- image -> text, classify, match ----------------------------------------------------------


@pytest.fixture(scope="module")
def outside_image(tmp_path_factory) -> Path:
    """An image that is not in the catalog (uploads are compared with the engine on this file)."""
    path = tmp_path_factory.mktemp("outside") / "outside.jpg"
    path.write_bytes(jpeg_bytes(42))
    return path


def test_lookup_of_an_indexed_image(client, engine, photo_folder):
    target = media_id(engine, photo_folder / "photo_0.jpg")
    response = client.get(f"/api/lookup/{target}", params={"k": 3, "set": "captions"})
    assert response.status_code == 200
    assert response.json() == engine.lookup(target, k=3, text_set="captions").as_dict()
    assert {"rank", "score", "id", "text"} == set(response.json()["hits"][0])


def test_lookup_of_an_upload(client, engine, outside_image):
    files = {"image": ("mine.jpg", outside_image.read_bytes())}
    response = client.post("/api/lookup", files=files, params={"k": 4})
    expected = engine.lookup(outside_image, k=4).as_dict()
    assert response.json() == {**expected, "query": "mine.jpg"}


def test_lookup_errors(client):
    assert_error(client.get("/api/lookup/1", params={"set": "nope"}), 400, "no text set named")
    assert_error(client.get("/api/lookup/999999"), 404)


def test_classify_an_upload_and_an_indexed_image(client, engine, outside_image, photo_folder):
    files = {"image": ("mine.jpg", outside_image.read_bytes())}
    response = client.post("/api/classify", files=files, data={"labels": "dog, cat,car"})
    assert response.status_code == 200, response.text
    expected = engine.classify(outside_image, ["dog", "cat", "car"]).as_dict()
    assert response.json() == {**expected, "image": "mine.jpg"}
    assert sum(s["probability"] for s in response.json()["labels"]) == pytest.approx(1, abs=1e-5)

    target = media_id(engine, photo_folder / "photo_4.jpg")
    params = {"labels": "dog,cat", "templates": "single"}
    by_id = client.get(f"/api/classify/{target}", params=params)
    assert by_id.json() == engine.classify(target, ["dog", "cat"], templates="single").as_dict()


def test_classify_errors(client, outside_image):
    files = {"image": ("mine.jpg", outside_image.read_bytes())}
    assert_error(client.post("/api/classify", files=files, data={"labels": "dog"}), 400, "two")
    assert_error(client.post("/api/classify", files=files), 422, "labels")
    assert_error(client.get("/api/classify/1", params={"labels": "a,b", "templates": "x"}), 422)


def test_classify_caps_the_labels(engine, outside_image):
    """3,000 labels held the engine for minutes while every other request waited."""
    client = app_client(engine, max_labels=5, max_label_chars=10)
    files = {"image": ("mine.jpg", outside_image.read_bytes())}
    many = ",".join(f"label{i}" for i in range(3000))
    assert_error(client.post("/api/classify", files=files, data={"labels": many}), 400,
                 "at most 5")
    assert_error(client.get("/api/classify/1", params={"labels": "a,b,c,d,e,f"}), 400,
                 "at most 5")
    assert_error(client.get("/api/classify/1", params={"labels": "a," + "b" * 11}), 400,
                 "the limit is 10")
    assert client.get("/api/classify/1", params={"labels": "a,b,c,d,e"}).status_code == 200
    default = app_client(engine)
    assert_error(default.get("/api/classify/1", params={"labels": many}), 400, "at most 50")


@pytest.mark.parametrize(
    ("url", "params", "word"),
    [
        ("/api/search", {"q": "x" * 1001}, "q is 1001 characters"),
        ("/api/match/1", {"text": "x" * 1001}, "text is 1001 characters"),
        ("/api/lookup/1", {"set": "s" * 201}, "set is 201 characters"),
        ("/api/search", {"q": "dog", "offset": 10_001}, "offset is at most 10000"),
        ("/api/search", {"q": "dog", "offset": 2**70}, "offset is at most"),
        ("/api/search", {"q": "dog", "k": 2**70}, "at most 200"),
        ("/api/images/1/thumbnail", {"size": 2**70}, "size must be one of"),
    ],
)
def test_every_input_is_capped(client, url, params, word):
    assert_error(client.get(url, params=params), 400, word)


def test_match_an_upload_and_an_indexed_image(client, engine, outside_image, photo_folder):
    files = {"image": ("mine.jpg", outside_image.read_bytes())}
    response = client.post("/api/match", files=files, data={"text": "a red car"})
    assert response.json() == {
        "image": "mine.jpg", "text": "a red car", "model": TINY_MODEL,
        "score": round(engine.match(outside_image, "a red car"), 6),
    }
    target = media_id(engine, photo_folder / "photo_5.jpg")
    by_id = client.get(f"/api/match/{target}", params={"text": "a dog"}).json()
    assert by_id["score"] == pytest.approx(engine.match(target, "a dog"), abs=1e-6)
    assert_error(client.get(f"/api/match/{target}", params={"text": " "}), 400, "empty")


def test_uploads_are_never_written_to_disk(client, engine, outside_image, tmp_path, monkeypatch):
    """The decoded upload goes to the engine as it is: no temporary file, no second decode
    (a server whose temporary folder is unusable still answers every upload route)."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-folder"))
    files = {"image": ("mine.jpg", outside_image.read_bytes())}
    routes = [("/api/search/image", {}), ("/api/lookup", {}), ("/api/classify", {"labels": "a,b"}),
              ("/api/match", {"text": "a dog"})]
    for url, data in routes:
        response = client.post(url, files=files, data=data)
        assert response.status_code == 200, (url, response.text)
    expected = engine.lookup(outside_image, k=4).as_dict()
    assert client.post("/api/lookup", files=files, params={"k": 4}).json()["hits"] == [
        {**hit, "score": pytest.approx(hit["score"], abs=1e-5)} for hit in expected["hits"]]


# -- status, originals, thumbnails ------------------------------------------------------------


def test_status(client, engine):
    response = client.get("/api/status")
    assert response.json() == {**engine.status().as_dict(), "serving_model": TINY_MODEL}
    assert response.json()["images"] == 9


def test_a_closed_server_gives_the_engines_encoder_back_ungated(indexed_home):
    """The server routes the encoder's calls through its gate while it runs; an engine that
    outlives it (the Python API) gets the encoder's own methods back on close."""
    from searchengine.encoder import Encoder
    from searchengine.engine import Engine

    with Engine.open(indexed_home) as engine:
        app = create_app(engine)
        encoder = engine.encoder(TINY_MODEL)
        assert "encode_images" in vars(encoder) and "encode_texts" in vars(encoder)  # gated
        app.state.service.close()
        assert "encode_images" not in vars(encoder) and "encode_texts" not in vars(encoder)
        assert encoder.encode_texts.__func__ is Encoder.encode_texts


def test_facets_list_folders_at_any_depth_and_follow_new_photos(tmp_path, photo_folder):
    """/api/facets: each folder with its photos at any depth, the cameras, the date span; a new
    photo indexed while the server runs changes the answer (the cache follows the catalog)."""
    import shutil

    from searchengine.engine import Engine

    folder = tmp_path / "photos"
    shutil.copytree(photo_folder, folder)
    with Engine.open(tmp_path / "home") as engine:
        engine.index([folder], model=TINY_MODEL)
        local = TestClient(create_app(engine), raise_server_exceptions=False)
        first = local.get("/api/facets")
        assert first.status_code == 200
        assert first.json()["folders"] == [
            {"folder": str(folder), "count": 9}, {"folder": str(folder / "trip"), "count": 2},
        ]
        assert first.json()["cameras"] == []  # generated photos carry no EXIF
        assert first.json()["first_taken"] is None
        (folder / "trip" / "deeper").mkdir()
        shutil.copy(photo_folder / "drawing.png", folder / "trip" / "deeper" / "again.png")
        engine.index([folder], model=TINY_MODEL)
        folders = {f["folder"]: f["count"] for f in local.get("/api/facets").json()["folders"]}
        assert folders == {str(folder): 10, str(folder / "trip"): 3,
                           str(folder / "trip" / "deeper"): 1}
        local.app.state.service.close()


def test_facets_keep_the_shallowest_folders_past_the_limit():
    from collections import Counter

    from searchengine.catalog.facets import _folders

    direct = Counter({"/p/a/x/y": 5, "/p/a/x": 1, "/p/b": 2, "/p/c/z": 1})
    assert _folders(direct, 100) == [("/p", 9), ("/p/a", 6), ("/p/a/x", 6), ("/p/a/x/y", 5),
                                     ("/p/b", 2), ("/p/c", 1), ("/p/c/z", 1)]
    assert _folders(direct, 3) == [("/p", 9), ("/p/a", 6), ("/p/b", 2)]
    assert _folders(Counter(), 3) == []


def test_original_is_the_catalogued_file_with_a_sniffed_type(client, engine, photo_folder):
    for name, media_type in (("photo_6.jpg", "image/jpeg"), ("drawing.png", "image/png")):
        path = next(photo_folder.rglob(name))
        response = client.get(f"/api/images/{media_id(engine, path)}")
        assert response.status_code == 200
        assert response.content == path.read_bytes()
        assert response.headers["content-type"] == media_type
        assert response.headers["x-content-type-options"] == "nosniff"
        again = client.get(f"/api/images/{media_id(engine, path)}",
                           headers={"If-None-Match": response.headers["etag"]})
        assert again.status_code == 304 and not again.content


def test_thumbnail(client, engine, photo_folder):
    target = media_id(engine, photo_folder / "photo_1.jpg")
    response = client.get(f"/api/images/{target}/thumbnail", params={"size": 128})
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    with Image.open(io.BytesIO(response.content)) as image:
        assert image.format == "JPEG" and image.size == (64, 48)  # never enlarged
    cached = client.get(f"/api/images/{target}/thumbnail", params={"size": 128})
    assert cached.content == response.content
    assert_error(client.get(f"/api/images/{target}/thumbnail", params={"size": 300}), 400, "128")
    assert_error(client.get("/api/images/999999/thumbnail"), 404)


def test_image_info(client, engine, photo_folder):
    path = photo_folder / "trip" / "photo_7.jpg"
    info = client.get(f"/api/images/{media_id(engine, path)}/info").json()
    assert info["path"] == str(path) and (info["width"], info["height"]) == (64, 48)
    assert info["format"] == "JPEG" and info["size"] == path.stat().st_size


@pytest.mark.parametrize(
    "url",
    [
        "/api/images/..%2F..%2F..%2Fetc%2Fpasswd",
        "/api/images/../../../etc/passwd",
        "/api/images/1%2F..%2F..%2Fcatalog.sqlite",
        "/api/images/%2Fetc%2Fpasswd",
        "/api/images/-1",
        "/api/images/1.5",
        "/api/images/0x1",
        "/api/images/1;/etc/passwd",
        "/api/images/1/thumbnail/..%2F..%2Fetc%2Fpasswd",
        "/static/../../../etc/passwd",
        "/static/..%2F..%2F..%2Fetc%2Fpasswd",
        "/static/%2e%2e/%2e%2e/app.py",
        "/static/..%5C..%5Capp.py",
    ],
)
def test_path_traversal_attempts_reach_nothing(client, url):
    response = client.get(url)
    assert response.status_code in (404, 422), (url, response.status_code)
    assert b"root:" not in response.content and b"SQLite format" not in response.content
    assert b"create_app" not in response.content
    assert response.headers["content-type"].startswith("application/json")


# -- files that changed after indexing (a private home) ------------------------------------


@pytest.fixture()
def private_home(copy_photos: Path, tmp_path: Path, reuse_random_encoders):
    from searchengine.engine import Engine

    with Engine.open(tmp_path / "home") as engine:
        engine.index([copy_photos], model=TINY_MODEL, settings=fast_ingest())
        engine.use_model(TINY_MODEL)
        yield engine, copy_photos


def test_files_swapped_after_indexing_are_not_served(private_home, tmp_path):
    engine, photos = private_home
    client = app_client(engine)
    ids = {name: media_id(engine, photos / name) for name in ("photo_0.jpg", "photo_1.jpg",
                                                              "photo_2.jpg", "photo_3.jpg")}
    for media in ids.values():
        assert client.get(f"/api/images/{media}/thumbnail").status_code == 200
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:the secret")
    (photos / "photo_0.jpg").unlink()
    (photos / "photo_0.jpg").symlink_to(secret)  # a link out of the collection
    (photos / "photo_1.jpg").unlink()
    (photos / "photo_1.jpg").symlink_to(photos / "photo_4.jpg")  # a link to another image
    (photos / "photo_2.jpg").write_bytes(jpeg_bytes(77))  # edited in place
    (photos / "photo_3.jpg").unlink()  # gone
    for name in ("photo_0.jpg", "photo_1.jpg", "photo_2.jpg"):
        for suffix in ("", "/thumbnail"):
            response = client.get(f"/api/images/{ids[name]}{suffix}")
            assert_error(response, 409, "changed on disk")
            assert b"secret" not in response.content
    assert_error(client.get(f"/api/images/{ids['photo_3.jpg']}"), 404, "no longer on disk")


def test_a_symlinked_folder_holding_the_catalogued_file_is_served(private_home, tmp_path):
    """A link in the path is fine while the bytes are still the ones indexed."""
    engine, photos = private_home
    moved = tmp_path / "moved"
    (photos / "trip").rename(moved)
    (photos / "trip").symlink_to(moved, target_is_directory=True)
    target = media_id(engine, photos / "trip" / "photo_6.jpg")
    response = app_client(engine).get(f"/api/images/{target}")
    assert response.status_code == 200
    assert response.content == (moved / "photo_6.jpg").read_bytes()


# -- a home without indexes, unexpected failures ------------------------------------------------


def test_a_home_with_nothing_indexed_says_what_to_run(tmp_path, reuse_random_encoders):
    from searchengine.engine import Engine

    with Engine.open(tmp_path / "empty") as empty:
        client = app_client(empty, model=TINY_MODEL)
        assert_error(client.get("/api/search", params={"q": "dog"}), 409, "searchengine index")
        assert_error(client.get("/api/lookup/1"), 409, "add-texts")
        assert client.get("/api/status").json()["images"] == 0


def test_unexpected_failures_are_json_without_a_trace(engine, monkeypatch):
    from searchengine.errors import CatalogError
    from searchengine.server.service import SearchService

    client = app_client(engine)

    def boom(*args, **kwargs):
        raise RuntimeError("/private/internal/detail")

    monkeypatch.setattr(SearchService, "search", boom)
    response = client.get("/api/search", params={"q": "dog"})
    assert_error(response, 500, "internal error")
    assert "/private/internal/detail" not in response.text

    def broken(*args, **kwargs):
        raise CatalogError("cannot open the catalog at x: disk I/O error")

    monkeypatch.setattr(SearchService, "status", broken)
    assert_error(client.get("/api/status"), 500, "disk I/O error")


# -- token, Host check, binding rules -----------------------------------------------------------


def test_token_is_required_when_set(engine):
    client = app_client(engine, token=TOKEN)
    assert_error(client.get("/api/status"), 401, "token")
    assert client.get("/api/status").headers["www-authenticate"] == "Bearer"
    assert_error(client.get("/api/status", headers={"Authorization": "Bearer nope"}), 401)
    signed = {"Authorization": f"Bearer {TOKEN}"}
    assert client.get("/api/status", headers=signed).status_code == 200
    assert_error(client.get("/api/images/1"), 401)
    assert client.get("/").status_code == 200  # the page itself holds no data
    assert client.get("/static/app.js").status_code == 200


def test_the_web_page_signs_in_with_a_cookie(engine):
    client = app_client(engine, token=TOKEN)
    assert_error(client.post("/api/session", json={"token": "wrong"}), 401, "wrong token")
    response = client.post("/api/session", json={"token": TOKEN})
    assert response.status_code == 204
    cookie = response.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert client.get("/api/status").status_code == 200


def test_loopback_servers_answer_only_to_loopback_host_names(engine):
    app = create_app(engine, ServerSettings(allowed_hosts=LOOPBACK_NAMES))
    local = TestClient(app, base_url="http://127.0.0.1:8000")
    assert local.get("/api/status").status_code == 200
    assert TestClient(app, base_url="http://localhost:8000").get("/").status_code == 200
    rebound = TestClient(app, base_url="http://attacker.example:8000")
    assert_error(rebound.get("/api/status"), 400, "host")
    assert_error(rebound.get("/"), 400, "host")
    assert "default-src 'self'" in rebound.get("/").headers["content-security-policy"]
    assert TestClient(app, base_url="http://[::1]:8000").get("/api/status").status_code == 200
    assert_error(local.get("/api/status", headers={"Host": "127.0.0.1.attacker.example"}), 400)
    assert_error(local.get("/api/status", headers={"Host": "www.localhost"}), 400)
    app.state.service.close()


def test_binding_rules():
    assert settings_for("127.0.0.1", token=None, model=None).allowed_hosts == LOOPBACK_NAMES
    assert settings_for("::1", token=None, model=None).token is None
    assert settings_for("localhost", token=None, model=None).allowed_hosts == LOOPBACK_NAMES
    with pytest.raises(InvalidInputError, match="token"):
        settings_for("0.0.0.0", token=None, model=None)
    with pytest.raises(InvalidInputError, match="16 characters"):
        settings_for("0.0.0.0", token="short", model=None)
    remote = settings_for("0.0.0.0", token=TOKEN, model="x/random")
    assert remote.token == TOKEN and remote.allowed_hosts is None and remote.model == "x/random"


def test_serve_refuses_an_open_bind_without_a_token(cli_run, tmp_path, monkeypatch):
    monkeypatch.delenv("SEARCHENGINE_TOKEN", raising=False)
    result = cli_run("serve", "--host", "0.0.0.0", "--home", tmp_path / "home", expect=1)
    assert "token" in result.output and "Traceback" not in result.output
    monkeypatch.setenv("SEARCHENGINE_TOKEN", "short")
    result = cli_run("serve", "--host", "192.168.1.5", "--home", tmp_path / "home", expect=1)
    assert "16 characters" in result.output


# -- the spec and the page --------------------------------------------------------------------


def test_openapi_spec_lists_every_endpoint(client):
    spec = client.get("/openapi.json").json()
    assert {
        "/api/search", "/api/search/image", "/api/similar/{media_id}", "/api/lookup/{media_id}",
        "/api/lookup", "/api/classify/{media_id}", "/api/classify", "/api/match/{media_id}",
        "/api/match", "/api/status", "/api/images/{media_id}", "/api/images/{media_id}/thumbnail",
        "/api/images/{media_id}/info", "/api/session",
    } <= set(spec["paths"])
    assert client.get("/docs").status_code == 404  # Swagger UI would load from a CDN


def test_the_spec_declares_the_bodies_the_server_sends(client, engine, photo_folder):
    """422 bodies carry `detail` as a string; `indexed_at` is a date-time with a time zone."""
    from datetime import datetime

    spec = client.get("/openapi.json").json()
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            declared = operation["responses"]["422"]["content"]["application/json"]["schema"]
            assert declared == {"$ref": "#/components/schemas/Unprocessable"}, (method, path)
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    detail = spec["components"]["schemas"]["Unprocessable"]["properties"]["detail"]
    assert detail["type"] == "string"
    sent = client.get("/api/search", params={"q": "dog", "k": "many"}).json()
    assert isinstance(sent["detail"], str) and sent["errors"][0]["loc"] == ["query", "k"]

    info = client.get(f"/api/images/{media_id(engine, photo_folder / 'photo_1.jpg')}/info").json()
    indexed_at = datetime.fromisoformat(info["indexed_at"].replace("Z", "+00:00"))
    assert indexed_at.utcoffset() is not None
    row = engine.catalog.media_by_path(str(photo_folder / "photo_1.jpg"))
    assert indexed_at == row.indexed_at.astimezone()  # the same moment


def test_a_body_that_is_not_json_is_a_declared_400(client):
    response = client.post("/api/session", content=b"\x04\xff",
                           headers={"Content-Type": "application/json"})
    assert response.status_code in (400, 422)
    spec = client.get("/openapi.json").json()
    assert {"400", "422"} <= set(spec["paths"]["/api/session"]["post"]["responses"])


def test_page_and_assets_are_served_by_the_package_without_a_cdn(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    static = Path(__file__).resolve().parents[1] / "searchengine" / "server" / "static"
    for name in ("index.html", "app.js", "style.css"):
        text = client.get(f"/static/{name}").text
        assert text == (static / name).read_text()
        assert "http://" not in text and "https://" not in text and "//cdn" not in text


def test_security_headers_on_api_answers(client):
    response = client.get("/api/status")
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["referrer-policy"] == "no-referrer"


@pytest.mark.skipif(not hasattr(os, "O_NOFOLLOW"), reason="needs O_NOFOLLOW")
def test_the_final_link_is_not_followed_between_resolve_and_open(private_home, monkeypatch):
    """If the file becomes a link after the path was resolved, opening it fails (ELOOP)."""
    from searchengine.server import media as media_module

    engine, photos = private_home
    target = photos / "photo_5.jpg"
    resolved = target.resolve()
    original_resolve = Path.resolve

    def resolve_then_swap(self, strict=False):
        result = original_resolve(self, strict=strict)
        if result == resolved and not target.is_symlink():
            target.rename(target.with_suffix(".bak"))
            target.symlink_to(target.with_suffix(".bak"))
        return result

    monkeypatch.setattr(media_module.Path, "resolve", resolve_then_swap)
    response = app_client(engine).get(f"/api/images/{media_id(engine, target)}")
    assert_error(response, 409, "cannot be opened")


def test_the_model_loads_once_at_start(indexed_home, monkeypatch, outside_image):
    """create_app loads the model; no request loads it again."""
    import searchengine.engine
    from searchengine.engine import Engine

    loads = []
    real = searchengine.engine.Encoder

    def counting(spec, settings=None):
        loads.append(spec.id)
        return real(spec, settings) if settings is not None else real(spec)

    monkeypatch.setattr(searchengine.engine, "Encoder", counting)
    with Engine.open(indexed_home) as fresh:
        client = app_client(fresh)
        assert loads == [TINY_MODEL]
        files = {"image": ("mine.jpg", outside_image.read_bytes())}
        assert client.get("/api/search", params={"q": "a dog"}).status_code == 200
        assert client.post("/api/search/image", files=files).status_code == 200
        assert client.post("/api/classify", files=files, data={"labels": "a,b"}).status_code == 200
        assert loads == [TINY_MODEL]
