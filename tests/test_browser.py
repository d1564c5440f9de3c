"""The web page in a real browser: Debian's headless Chromium driven by Playwright.

A uvicorn server runs in a thread over the session's `indexed_home`. The test types a query and
sees thumbnails with scores appear (debounced: fewer requests than keystrokes), opens a result
and sees it large with its metadata and closest texts, asks for "more like this", and searches
by an image chosen in the file picker and by one dropped on the page. It saves a screenshot in
the test's tmp folder. With UPDATE_SCREENSHOT=1, one more test builds the demo home (the bundled
model over generated scenes) and refreshes docs/screenshot.png (shown by the README) with a query
that model answers well; ordinary runs leave the checkout clean.

Skips when /usr/bin/chromium or the playwright package is missing (`make test` installs both).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import pytest
from conftest import TINY_MODEL

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip("no /usr/bin/chromium (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
pytest.importorskip("uvicorn")

DOCS_SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "screenshot.png"
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
QUERY = "a dog on the beach"


@pytest.fixture(scope="module")
def server_url(indexed_home: Path) -> Iterator[str]:
    """The app over `indexed_home`, served by uvicorn on a free loopback port."""
    with serving(indexed_home) as url:
        yield url


@contextmanager
def serving(home: Path) -> Iterator[str]:
    """The app over `home`, served by uvicorn on a free loopback port: its URL."""
    import uvicorn

    from searchengine.engine import Engine
    from searchengine.server import create_app
    from searchengine.server.runner import settings_for

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    with Engine.open(home) as engine:
        app = create_app(engine, settings_for("127.0.0.1", token=None, model=None))
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{port}"
        server.should_exit = True
        thread.join(timeout=10)
    listener.close()


@pytest.fixture(scope="module")
def browser() -> Iterator:
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield launched
        launched.close()


@pytest.fixture()
def page(browser, server_url: str) -> Iterator:
    context = browser.new_context(viewport={"width": 1280, "height": 800}, color_scheme="light")
    opened = context.new_page()
    problems: list[str] = []
    opened.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    opened.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    opened.problems = problems
    opened.goto(server_url + "/")
    yield opened
    context.close()
    assert not problems, problems  # no script errors, no CSP violations, no failed loads


def all_thumbnails_loaded(page, minimum: int = 1) -> None:
    page.wait_for_function(
        """(minimum) => {
            const images = [...document.querySelectorAll('#results .card img')];
            return images.length >= minimum && images.every(i => i.complete && i.naturalWidth > 0);
        }""",
        arg=minimum,
    )


def test_type_a_query_open_a_result_and_ask_for_more_like_it(page, photo_folder, tmp_path):
    sync_api.expect(page.locator("#status")).to_contain_text("9 photos")
    searches: list[str] = []
    page.on("request", lambda r: searches.append(r.url) if "/api/search?" in r.url else None)

    page.locator("#query").press_sequentially(QUERY, delay=20)
    all_thumbnails_loaded(page, minimum=9)
    cards = page.locator("#results .card")
    assert cards.count() == 9
    assert len(searches) < len(QUERY) / 2, searches  # debounced, not one request per key
    assert "q=a%20dog%20on%20the%20beach" in searches[-1]
    sync_api.expect(cards.first.locator(".score")).to_have_text(_score_pattern())
    sync_api.expect(page.locator("#status")).to_contain_text("9 results")
    sync_api.expect(page.locator("#more")).to_be_hidden()  # 9 hits fill less than a page
    target = tmp_path / "page.png"
    page.screenshot(path=str(target))
    assert target.stat().st_size > 10_000  # a rendered page, not an empty canvas

    first_name = cards.first.locator("img").get_attribute("alt")
    cards.first.locator("button").click()
    detail = page.locator("#detail")
    sync_api.expect(detail).to_be_visible()
    sync_api.expect(page.locator("#detail-title")).to_have_text(first_name)
    sync_api.expect(page.locator("#detail-meta")).to_contain_text("64 × 48 px")
    sync_api.expect(page.locator("#detail-meta")).to_contain_text(first_name)
    page.wait_for_function("() => document.querySelector('#detail-image').naturalWidth > 0")
    texts = page.locator("#detail-texts li.text")
    sync_api.expect(texts.first).to_be_visible()
    assert texts.count() >= 1
    captions = {"a red square", "a blue circle", "a green field", "a dog on the beach",
                "a city at night"}
    assert texts.first.inner_text().rsplit(" ", 1)[0] in captions

    page.locator("#more-like-this").click()
    sync_api.expect(detail).to_be_hidden()
    sync_api.expect(page.locator("#query-label")).to_have_text(f"Photos like {first_name}")
    sync_api.expect(page.locator("#status")).to_contain_text(f"photos like {first_name}")
    all_thumbnails_loaded(page, minimum=9)
    assert cards.first.locator("img").get_attribute("alt") == first_name  # itself, first


def test_search_by_a_chosen_and_by_a_dropped_image(page, photo_folder):
    chosen = photo_folder / "photo_2.jpg"
    page.locator("#file").set_input_files(str(chosen))
    sync_api.expect(page.locator("#query-label")).to_have_text("Photos like photo_2.jpg")
    all_thumbnails_loaded(page, minimum=9)
    # auto-waits: the previous results stay on screen until the new ones replace them
    first_image = page.locator("#results .card img").first
    sync_api.expect(first_image).to_have_attribute("alt", "photo_2.jpg")
    sync_api.expect(page.locator("#results .card .score").first).to_have_text("1.000")

    dropped = photo_folder / "drawing.png"
    page.evaluate(
        """async ([bytes, name]) => {
            const file = new File([new Uint8Array(bytes)], name, {type: 'image/png'});
            const transfer = new DataTransfer();
            transfer.items.add(file);
            for (const type of ['dragenter', 'dragover', 'drop']) {
                document.body.dispatchEvent(
                    new DragEvent(type, {dataTransfer: transfer, bubbles: true, cancelable: true}));
            }
        }""",
        [list(dropped.read_bytes()), dropped.name],
    )
    sync_api.expect(page.locator("#query-label")).to_have_text("Photos like drawing.png")
    all_thumbnails_loaded(page, minimum=9)
    # auto-waits: the previous results stay on screen until the new ones replace them
    first_image = page.locator("#results .card img").first
    sync_api.expect(first_image).to_have_attribute("alt", "drawing.png")
    sync_api.expect(page.locator("#drop")).to_be_hidden()


def test_an_error_is_shown_not_thrown(page, tmp_path):
    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_text("plain text, whatever the name says")
    page.locator("#file").set_input_files(str(not_an_image))
    sync_api.expect(page.locator("#error")).to_contain_text("not an image")
    assert page.locator("#results .card").count() == 0
    page.problems.clear()  # the browser logs the 415 response itself; that is expected here


def test_the_search_lives_in_the_url(page, server_url):
    """A URL with a query runs it; a typed query, "more like this" and Back keep the URL and the
    page in step, so a search can be bookmarked and shared."""
    page.goto(server_url + "/?q=a%20dog%20on%20the%20beach")
    sync_api.expect(page.locator("#query")).to_have_value(QUERY)
    all_thumbnails_loaded(page, minimum=9)
    sync_api.expect(page.locator("#status")).to_contain_text(f"9 results for “{QUERY}”")

    page.locator("#query").fill("a red square")
    page.locator("#query").press("Enter")
    page.wait_for_url("**/?q=a+red+square")
    sync_api.expect(page.locator("#status")).to_contain_text("for “a red square”")

    first = page.locator("#results .card").first
    first_name = first.locator("img").get_attribute("alt")
    first_id = first.locator("button").get_attribute("data-id")
    first.locator("button").click()
    page.locator("#more-like-this").click()
    page.wait_for_url(f"**/?like={first_id}")
    sync_api.expect(page.locator("#query-label")).to_have_text(f"Photos like {first_name}")

    page.go_back()
    page.wait_for_url("**/?q=a+red+square")
    sync_api.expect(page.locator("#query")).to_have_value("a red square")
    sync_api.expect(page.locator("#query-image")).to_be_hidden()
    sync_api.expect(page.locator("#status")).to_contain_text("for “a red square”")

    page.goto(server_url + f"/?like={first_id}")  # a shared "more like this" link
    sync_api.expect(page.locator("#query-label")).to_have_text(f"Photos like {first_name}")
    all_thumbnails_loaded(page, minimum=9)
    sync_api.expect(page.locator("#results .card img").first).to_have_attribute("alt", first_name)


def test_a_typed_search_still_waiting_never_undoes_a_later_search(page):
    """Typing schedules a search for when the typing stops; pressing Enter, "more like this" or
    an image search must cancel it, or it fires later and takes the page (and its URL) back."""
    page.clock.install()
    page.clock.pause_at(datetime(2030, 1, 1))  # timers fire only when the test says so
    page.locator("#query").fill("a red square")  # schedules the typed search
    page.locator("#query").press("Enter")
    page.wait_for_url("**/?q=a+red+square")
    sync_api.expect(page.locator("#status")).to_contain_text("for “a red square”")
    first = page.locator("#results .card").first
    first_id = first.locator("button").get_attribute("data-id")
    first.locator("button").click()
    page.locator("#more-like-this").click()
    page.wait_for_url(f"**/?like={first_id}")
    searches = []
    page.on("request", lambda r: searches.append(r.url) if "/api/search" in r.url else None)
    page.clock.run_for(5_000)  # well past the typing pause
    page.wait_for_timeout(300)  # time for a wrong search, had one fired, to go out
    assert page.url.endswith(f"/?like={first_id}")
    sync_api.expect(page.locator("#query-label")).to_contain_text("Photos like")
    assert searches == []


def test_the_folder_picker_filters_inside_the_search_and_is_kept_in_the_url(
    page, server_url, photo_folder
):
    trip = str(photo_folder / "trip")
    picker = page.locator("#folder")
    sync_api.expect(picker.locator("option")).to_have_count(3)  # all, the root, trip
    sync_api.expect(picker.locator("option").nth(2)).to_have_text(f"{trip} (2)")
    page.locator("#query").fill(QUERY)
    page.locator("#query").press("Enter")
    all_thumbnails_loaded(page, minimum=9)

    picker.select_option(trip)
    sync_api.expect(page.locator("#status")).to_contain_text("2 results")
    sync_api.expect(page.locator("#status")).to_contain_text("(filtered: 2 photos pass)")
    names = page.locator("#results .card img").evaluate_all("(images) => images.map(i => i.alt)")
    assert sorted(names) == ["photo_6.jpg", "photo_7.jpg"]
    assert "folder=" in page.url and "q=a+dog" in page.url

    page.reload()  # the URL alone brings the same search back
    sync_api.expect(picker).to_have_value(trip)
    sync_api.expect(page.locator("#status")).to_contain_text("2 results")

    page.locator("#clear-filters").click()
    sync_api.expect(page.locator("#status")).to_contain_text("9 results")
    assert "folder=" not in page.url


def test_camera_and_date_controls_filter_and_say_how_many_photos_pass(browser, tmp_path):
    """A home of photos with EXIF (test_search_filters' album): the camera choice lists its
    cameras, and camera and date range narrow the search together, in the URL; a range that
    holds nothing says so instead of failing, and after > before is a readable error."""
    from test_search_filters import exif_photo

    from searchengine.engine import Engine

    album = tmp_path / "album"
    exif_photo(album / "a.jpg", 1, taken="2023:07:14 10:20:30", model="Pixel 7")
    exif_photo(album / "d.jpg", 4, taken="2022:05:01 12:00:00", model="iPhone 13")
    exif_photo(album / "e.jpg", 5, taken="2023:03:03 08:00:00", model="iPhone 13")
    exif_photo(album / "f.jpg", 6)
    with Engine.open(tmp_path / "home") as engine:
        engine.index([album], model=TINY_MODEL)
    with serving(tmp_path / "home") as url:
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        page = context.new_page()
        page.goto(url + "/?q=a%20photo")
        all_thumbnails_loaded(page, minimum=4)
        camera = page.locator("#camera option")
        sync_api.expect(camera).to_have_count(3)
        assert camera.all_inner_texts() == ["Any camera", "iPhone 13 (2)", "Pixel 7 (1)"]

        page.locator("#camera").select_option("iPhone 13")
        sync_api.expect(page.locator("#status")).to_contain_text("2 photos pass")
        page.locator("#after").fill("2023-01-01")
        sync_api.expect(page.locator("#status")).to_contain_text("1 photo pass")
        assert page.locator("#results .card img").get_attribute("alt") == "e.jpg"
        assert "camera=iPhone+13" in page.url and "after=2023-01-01" in page.url

        page.locator("#before").fill("2023-02-01")  # iPhone photos: none in January 2023
        sync_api.expect(page.locator("#status")).to_contain_text("0 results")
        sync_api.expect(page.locator("#status")).to_contain_text("0 photos pass")
        page.locator("#before").fill("2022-12-31")  # before the start: no photo can pass
        sync_api.expect(page.locator("#error")).to_contain_text("later than before")
        context.close()


def _score_pattern():
    import re

    return re.compile(r"^-?\d\.\d{3}$")


# Purple hexagons are a pair the demo model never saw in training. Over the 200 demo scenes its
# first 8 hits are the 8 scenes of exactly three purple hexagons (docs/screenshot.png, 2026-12-01).
SCREENSHOT_QUERY = "three purple hexagons"


@pytest.mark.skipif(not os.environ.get("UPDATE_SCREENSHOT"), reason="UPDATE_SCREENSHOT=1 only")
def test_docs_screenshot_shows_the_demo_home(browser, tmp_path):
    """docs/screenshot.png: the page over `searchengine demo`'s home, answering a query the
    bundled model knows (random weights would show noise with negative scores)."""
    from searchengine.demo.run import run_demo

    home = tmp_path / "home"
    run_demo(home, n=200)
    with serving(home) as url:
        context = browser.new_context(viewport={"width": 1280, "height": 800},
                                      color_scheme="light")
        page = context.new_page()
        page.goto(url + "/")
        page.locator("#query").press_sequentially(SCREENSHOT_QUERY, delay=20)
        all_thumbnails_loaded(page, minimum=12)
        sync_api.expect(page.locator("#status")).to_contain_text("results")
        scores = [float(s) for s in page.locator("#results .card .score").all_inner_texts()]
        assert min(scores) > 0, scores
        page.screenshot(path=str(DOCS_SCREENSHOT))
        context.close()
    assert DOCS_SCREENSHOT.stat().st_size > 10_000
