"""Shared fixtures: generated images, a tiny random model, an indexed home, a CLI runner.

Everything here is offline and small: the `se-tiny/random` architecture (32x32 input, 64-d
embeddings, see searchengine/model_configs/se-tiny.json) and images drawn by numpy.

Session-scoped fixtures (`photo_folder`, `indexed_home`, `tiny_encoder`) are shared by many test
modules: treat them as read-only. A test that changes files or a home works on its own copy
(`copy_photos`, `tmp_path`).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

# No test may reach a model hub: an uncached pretrained tag must fail at once.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.pop("SEARCHENGINE_HOME", None)
os.environ.pop("SEARCHENGINE_CATALOG", None)  # each test chooses its catalog
# the ONNX exports of text towers (searchengine.onnx_text) go to a cache of this run's own
os.environ["SEARCHENGINE_CACHE"] = tempfile.mkdtemp(prefix="searchengine-test-cache-")
atexit.register(shutil.rmtree, os.environ["SEARCHENGINE_CACHE"], ignore_errors=True)

TINY_MODEL = "se-tiny/random"
PHOTO_COUNT = 8  # JPEGs in `photo_folder`, plus one PNG
CAPTIONS = [
    "a red square", "a blue circle", "a green field", "a dog on the beach", "a city at night",
]


def draw_image(seed: int, size: tuple[int, int] = (64, 48), mode: str = "RGB") -> Image.Image:
    """A distinct, deterministic picture: coarse random blocks (so every seed embeds differently)
    over a smooth gradient. `size` is (width, height)."""
    rng = np.random.default_rng(seed)
    width, height = size
    blocks = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    image = Image.fromarray(blocks).resize((width, height), Image.Resampling.BICUBIC)
    gradient = np.linspace(0, 80, width, dtype=np.float32)[None, :, None]
    pixels = np.clip(np.asarray(image, dtype=np.float32) * 0.7 + gradient, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    return image.convert(mode) if mode != "RGB" else image


def write_image(path: Path, seed: int, size: tuple[int, int] = (64, 48), **save_options) -> Path:
    """Draw image `seed` and save it at `path` (format from the suffix). Returns `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = draw_image(seed, size)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        save_options.setdefault("quality", 92)
    image.save(path, **save_options)
    return path


SHAPE_COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220),
                "yellow": (230, 220, 30), "black": (10, 10, 10), "white": (245, 245, 245)}


def shape_photos(folder: Path, colors: int = 6) -> list[tuple[str, str, str]]:
    """The first `colors` of SHAPE_COLORS x (circle, square): a filled shape on grey, 40x40 PNGs
    named COLOR_SHAPE.png in `folder`, for training tests. Returns (file name, color, shape)."""
    made = []
    for color, rgb in list(SHAPE_COLORS.items())[:colors]:
        for shape in ("circle", "square"):
            image = Image.new("RGB", (40, 40), (128, 128, 128))
            draw = ImageDraw.Draw(image)
            (draw.ellipse if shape == "circle" else draw.rectangle)((6, 6, 34, 34), fill=rgb)
            image.save(folder / f"{color}_{shape}.png")
            made.append((f"{color}_{shape}.png", color, shape))
    return made


@pytest.fixture(scope="session")
def photo_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only folder: photo_0.jpg .. photo_7.jpg (one in a sub-folder) and a PNG."""
    root = tmp_path_factory.mktemp("photos")
    for i in range(PHOTO_COUNT):
        sub = root / "trip" if i >= 6 else root
        write_image(sub / f"photo_{i}.jpg", seed=i)
    write_image(root / "drawing.png", seed=100)
    return root


@pytest.fixture()
def copy_photos(photo_folder: Path, tmp_path: Path) -> Path:
    """A private, writable copy of `photo_folder` for tests that change files."""
    target = tmp_path / "photos"
    shutil.copytree(photo_folder, target)
    return target


@pytest.fixture(scope="session")
def captions_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CSV with columns image,caption holding CAPTIONS (one repeated, to test de-duplication)."""
    path = tmp_path_factory.mktemp("texts") / "captions.csv"
    rows = ["image,caption"] + [f"img{i}.jpg,{c}" for i, c in enumerate(CAPTIONS + CAPTIONS[:1])]
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="session")
def tiny_encoder():
    """The `se-tiny/random` encoder on the CPU (seed 0): what the engine loads for TINY_MODEL."""
    from searchengine.encoder import Encoder
    from searchengine.settings import EncoderSettings

    return Encoder.load(TINY_MODEL, EncoderSettings(device="cpu"))


@pytest.fixture(scope="session")
def _random_encoder_cache() -> dict:
    return {}


@pytest.fixture()
def reuse_random_encoders(monkeypatch: pytest.MonkeyPatch, _random_encoder_cache: dict) -> None:
    """Let every Engine (also those the CLI opens) share one loaded encoder per model and
    settings, for `ARCH/random` models and unchanged checkpoint files. Random weights are a pure
    function of (architecture, seed) and a checkpoint's of its file, so this only saves the load
    time; pretrained models are loaded as usual."""
    import searchengine.engine
    from searchengine.encoder import Encoder

    def cached(spec, settings=None):
        settings = settings if settings is not None else searchengine.engine.EncoderSettings()
        if spec.source == "random":
            key = (spec.id, settings)
        elif spec.source == "checkpoint" and spec.checkpoint and spec.checkpoint.is_file():
            stat = spec.checkpoint.stat()
            key = (spec.id, stat.st_size, stat.st_mtime_ns, settings)
        else:
            return Encoder(spec, settings)
        if key not in _random_encoder_cache:
            _random_encoder_cache[key] = Encoder(spec, settings)
        return _random_encoder_cache[key]

    monkeypatch.setattr(searchengine.engine, "Encoder", cached)


def fast_ingest(**overrides):
    """IngestSettings for tests: decode in the main process, small batches."""
    from searchengine.settings import IngestSettings

    return IngestSettings(**{"workers": 0, "batch_size": 4, **overrides})


@pytest.fixture()
def ingest_settings():
    """A factory for small in-process IngestSettings: `ingest_settings(batch_size=2)`."""
    return fast_ingest


@pytest.fixture(scope="session")
def indexed_home(
    tmp_path_factory: pytest.TempPathFactory, photo_folder: Path, captions_csv: Path
) -> Path:
    """A read-only home: `photo_folder` indexed with TINY_MODEL (the home's default model) and the
    captions of `captions_csv` added as text set "captions"."""
    from searchengine.engine import Engine
    from searchengine.settings import EncoderSettings

    home = tmp_path_factory.mktemp("home")
    with Engine.open(home, encoder_settings=EncoderSettings(device="cpu")) as engine:
        engine.index([photo_folder], model=TINY_MODEL, settings=fast_ingest())
        engine.use_model(TINY_MODEL)
        engine.add_texts(captions_csv, column="caption", text_set="captions")
    return home


@pytest.fixture()
def open_engine() -> Iterator[Callable]:
    """A factory `open_engine(home)` -> Engine; every engine it opened is closed after the test.
    A home once opened with `catalog_url=` is opened with the same catalog again."""
    from searchengine.engine import Engine

    opened = []
    catalogs: dict[Path, str | None] = {}

    def factory(home: Path, **kwargs):
        if "catalog_url" in kwargs:
            catalogs[Path(home)] = kwargs["catalog_url"]
        else:
            kwargs["catalog_url"] = catalogs.get(Path(home))
        engine = Engine.open(home, **kwargs)
        opened.append(engine)
        return engine

    yield factory
    for engine in opened:
        engine.close()


class CliRun:
    """Runs `searchengine` in-process through click's CliRunner.

    `cli_run("search", "dog", "--home", home)` returns the click Result after checking the exit
    code (`expect=0` by default); `cli_run.json(...)` appends `--json` and parses stdout.
    """

    def __call__(self, *args: object, expect: int | None = 0, input: str | None = None):
        from click.testing import CliRunner

        from searchengine.cli import cli

        result = CliRunner().invoke(cli, [str(a) for a in args], input=input)
        if expect is not None and result.exit_code != expect:
            raise AssertionError(
                f"searchengine {' '.join(map(str, args))} exited {result.exit_code}, expected "
                f"{expect}\nstdout: {result.stdout}\nstderr: {result.stderr}\n"
                f"exception: {result.exception!r}"
            )
        return result

    def json(self, *args: object, expect: int | None = 0) -> dict:
        return json.loads(self(*args, "--json", expect=expect).stdout)


@pytest.fixture()
def cli_run() -> CliRun:
    return CliRun()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second model for `se-tiny`: a checkpoint in this project's format holding other random
    weights (seed 1). `--model se-tiny/<this path>` names it."""
    return write_checkpoint(tmp_path_factory.mktemp("checkpoints") / "tiny-seed1.pt", seed=1)


def write_checkpoint(path: Path, seed: int) -> Path:
    """A `se-tiny` checkpoint in this project's format with the random weights of `seed`."""
    import torch

    from searchengine.models import CHECKPOINT_FORMAT, CONFIG_DIR, build_model, parse_model_spec

    model, _, _ = build_model(parse_model_spec(TINY_MODEL), seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
            "arch": "se-tiny",
            "model_config": json.loads((CONFIG_DIR / "se-tiny.json").read_text()),
            "state_dict": model.state_dict(),
        },
        path,
    )
    return path


# -- catalogs: the home's SQLite file and a PostgreSQL server the tests start ------------------


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL server of Debian's binaries for the session (tests/postgres.py); the tests
    that need it skip, saying why, where no server can run (no binaries, no psycopg)."""
    from tests.postgres import start_server, why_no_server

    reason = why_no_server()
    if reason is not None:
        pytest.skip(reason)
    server = start_server()
    yield server
    server.stop()


@pytest.fixture()
def postgres_url(postgres_server) -> Iterator[str]:
    """The URL of a new, empty PostgreSQL database, dropped after the test."""
    url = postgres_server.new_database()
    yield url
    postgres_server.drop_database(url)


CATALOG_BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(params=CATALOG_BACKENDS)
def catalog_url(request: pytest.FixtureRequest) -> str | None:
    """The catalog a test's home uses, once per backend: None (the home's own SQLite file), then
    a new PostgreSQL database's URL (`Engine.open(..., catalog_url=)`, `--catalog`)."""
    if request.param == "sqlite":
        return None
    return request.getfixturevalue("postgres_url")


@pytest.fixture(params=CATALOG_BACKENDS)
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty database of each backend (a new SQLite file, then PostgreSQL)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'empty.sqlite'}"
    return request.getfixturevalue("postgres_url")


def catalog_args(catalog_url: str | None) -> list[str]:
    """The CLI arguments that select `catalog_url` (none for the home's own file)."""
    return ["--catalog", catalog_url] if catalog_url else []
