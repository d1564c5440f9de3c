"""`tune` (train, compare, re-embed, switch), the regression guard, `remove-model`, and a live
`serve` that follows the switch without failing a request."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_MODEL, fast_ingest, shape_photos
from PIL import Image

from searchengine.engine import Engine
from searchengine.eval.metrics import RetrievalMetrics
from searchengine.settings import EncoderSettings
from searchengine.training.tune import TuneSettings, decide

# a short run that takes se-tiny from random weights to a clear recall gain on its own 12 pairs
# (seed 0: R@5 0.25 -> 1.0 both ways; 8 steps at 1e-2 gained only 0.17)
LEARNS = ["--steps", 16, "--lr", "3e-3", "--batch-size", 12, "--workers", 0, "--eval-every", 1000,
          "--device", "cpu"]

NO_LEARNING = ["--steps", 1, "--lr", "1e-12"]  # a candidate that keeps its base's weights


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 photos (6 colours x 2 shapes) and pairs.csv: one caption each ("a red circle")."""
    folder = tmp_path_factory.mktemp("shapes")
    lines = ["image,caption"]
    for name, color, shape in shape_photos(folder):
        lines.append(f"{name},a {color} {shape}")
    (folder / "pairs.csv").write_text("\n".join(lines) + "\n")
    return folder


def _home(path: Path, photos: Path, model: str = TINY_MODEL, *, also: str | None = None) -> Path:
    """A home of `photos` indexed with `model` (its default), and with `also` when given."""
    with Engine.open(path, encoder_settings=EncoderSettings(device="cpu")) as engine:
        engine.index([photos], model=model, settings=fast_ingest())
        if also is not None:
            engine.index([photos], model=also, settings=fast_ingest())
        engine.add_texts(["a red circle", "a blue square"], text_set="captions", model=model)
    return path


def _tune(cli_run, shapes: Path, home: Path, *extra) -> dict:
    pairs = shapes / "pairs.csv"
    return cli_run.json("tune", pairs, "--home", home, "--val", pairs, *LEARNS, *extra)


@pytest.fixture(scope="module")
def trained(shapes: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """se-tiny trained on the shapes (as LEARNS does): a model better than random weights."""
    from searchengine.training.loop import train
    from searchengine.training.settings import TrainSettings

    out = tmp_path_factory.mktemp("trained") / "run"
    settings = TrainSettings(model=TINY_MODEL, steps=16, lr=3e-3, batch_size=12, workers=0,
                             eval_every=1000, device="cpu", progress=False)
    summary = train(out, settings, pairs=shapes / "pairs.csv", val=shapes / "pairs.csv")
    return f"se-tiny/{summary.best_checkpoint}"


def _recall(t2i: float, i2t: float) -> RetrievalMetrics:
    return RetrievalMetrics({1: t2i, 5: t2i, 10: t2i}, {1: i2t, 5: i2t, 10: i2t}, 1, 1, 1, 1)


# -- the regression guard ---------------------------------------------------------------------


def test_the_guard_asks_for_the_gain_in_both_directions():
    current = _recall(0.50, 0.50)
    both = decide(current, _recall(0.52, 0.53), TuneSettings(min_gain=0.01))
    assert both.switch and both.passed
    assert both.gains == pytest.approx({"text_to_image": 0.02, "image_to_text": 0.03})
    one_way = decide(current, _recall(0.70, 0.495), TuneSettings(min_gain=0.01))
    assert not one_way.switch
    assert one_way.shortfall == pytest.approx({"text_to_image": 0.0, "image_to_text": 0.015})
    assert "image->text by 0.0150" in one_way.reason and "text->image by" not in one_way.reason
    exactly = decide(_recall(0.02, 0.02), _recall(0.03, 0.03), TuneSettings(min_gain=0.01))
    assert exactly.switch  # 0.03 - 0.02 is 0.00999...98 in floating point: a gain of 0.01
    assert decide(current, _recall(0.1, 0.1), TuneSettings(switch="always")).switch
    assert not decide(current, _recall(0.9, 0.9), TuneSettings(switch="never")).switch
    with pytest.raises(Exception, match="choices: R@1, R@5, R@10"):
        TuneSettings(metric="R@3")


def test_a_better_candidate_is_switched_to_and_json_has_both_models_and_timings(
    cli_run, shapes: Path, tmp_path: Path, reuse_random_encoders
):
    home = _home(tmp_path / "home", shapes)
    report = _tune(cli_run, shapes, home)
    assert set(report) >= {"current", "candidate", "decision", "train", "re_embed", "timings"}
    for side in ("current", "candidate"):
        for direction in ("text_to_image", "image_to_text"):
            assert set(report[side][direction]) == {"R@1", "R@5", "R@10"}
    decision = report["decision"]
    assert decision["switched"] and decision["mode"] == "auto" and decision["metric"] == "R@5"
    assert min(decision["gains"].values()) >= 0.25  # several of the 12 pairs more, each way
    assert set(report["timings"]) == {"train", "compare", "re_embed", "switch", "total"}
    assert all(isinstance(seconds, float) for seconds in report["timings"].values())
    candidate = report["candidate"]["model"]
    assert Path(report["candidate"]["checkpoint"]).parent == (home / "models").resolve()
    assert report["re_embed"]["embedded"] == 12 and report["re_embed"]["complete"]
    with Engine.open(home, create=False) as engine:
        assert engine.default_model() == candidate
        rows = {row.spec: row for row in engine.models()}
        assert set(rows) == {TINY_MODEL, candidate}  # the old space stays
        assert engine.catalog.count_vectors("image", rows[candidate].id) == 12
        assert engine.catalog.count_vectors("text", rows[candidate].id) == 2  # texts follow
        assert engine.search("a red circle", k=3).model == candidate
    # remove-model of the default (--force) takes the checkpoint tune kept; random is back
    removed = cli_run.json("remove-model", candidate, "--home", home, "--force")
    assert report["candidate"]["checkpoint"] in removed["files"]
    assert not Path(report["candidate"]["checkpoint"]).exists()
    assert removed["default_model"] == TINY_MODEL


def test_a_worse_candidate_is_kept_and_the_report_says_by_how_much(
    cli_run, shapes: Path, trained: str, tmp_path: Path, reuse_random_encoders
):
    home = _home(tmp_path / "home", shapes, model=trained)
    report = _tune(cli_run, shapes, home, *NO_LEARNING, "--model", TINY_MODEL)  # random weights
    decision = report["decision"]
    assert not decision["switched"] and report["re_embed"] is None
    for direction, gain in decision["gains"].items():
        assert gain < 0
        assert decision["shortfall"][direction] == pytest.approx(0.01 - gain)
    assert "fell short" in decision["reason"]
    assert report["timings"]["re_embed"] is None and report["timings"]["switch"] is None
    with Engine.open(home, create=False) as engine:
        assert engine.default_model() == engine.model_id_of(trained)
        assert report["candidate"]["model"] not in {row.spec for row in engine.models()}
    text = cli_run("tune", shapes / "pairs.csv", "--home", home, "--val", shapes / "pairs.csv",
                   *LEARNS, *NO_LEARNING, "--model", TINY_MODEL, "--switch", "always").stdout
    assert "--switch always: switched" in text and "text->image  R@5" in text
    with Engine.open(home, create=False) as engine:
        assert engine.default_model().startswith("se-tiny/") and "models/se-tiny-" in (
            engine.default_model())


def test_switch_never_reports_a_better_candidate_without_switching(
    cli_run, shapes: Path, trained: str, tmp_path: Path, reuse_random_encoders
):
    home = _home(tmp_path / "home", shapes)
    report = _tune(cli_run, shapes, home, *NO_LEARNING, "--model", trained, "--switch", "never")
    assert min(report["decision"]["gains"].values()) >= 0.01
    assert not report["decision"]["switched"]
    assert report["decision"]["reason"].startswith("--switch never")
    with Engine.open(home, create=False) as engine:
        assert engine.default_model() == TINY_MODEL
        assert len(engine.models()) == 1


def test_tune_needs_a_home_with_photos(
    cli_run, shapes: Path, tmp_path: Path, reuse_random_encoders
):
    missing = cli_run("tune", shapes / "pairs.csv", "--home", tmp_path / "new", *LEARNS, expect=1)
    assert "no home at" in missing.stderr
    with Engine.open(tmp_path / "texts", encoder_settings=EncoderSettings(device="cpu")) as engine:
        engine.add_texts(["a red circle"], model=TINY_MODEL)
    texts_only = cli_run("tune", shapes / "pairs.csv", "--home", tmp_path / "texts", *LEARNS,
                         expect=1)
    assert "no indexed photos to tune for; run `searchengine index" in texts_only.stderr


# -- re-embedding and the switch --------------------------------------------------------------


def test_the_switch_embeds_every_photo_as_the_model_itself_does(
    shapes: Path, tiny_checkpoint: Path, tmp_path: Path, open_engine, reuse_random_encoders
):
    import torch

    from searchengine.models import build_model, parse_model_spec

    home = _home(tmp_path / "home", shapes)
    spec = f"se-tiny/{tiny_checkpoint}"
    engine = open_engine(home, encoder_settings=EncoderSettings(device="cpu"))
    result = engine.switch_model(spec, settings=fast_ingest())
    assert result.switched and result.collection.complete
    assert engine.default_model() == engine.model_id_of(spec)
    row = engine.catalog.find_model(engine.model_id_of(spec))
    ids, stored = engine.catalog.vectors("image", row.id)  # (12, 64) float16 values
    paths = {m.id: m.path for m in engine.catalog.media(ids.tolist()).values()}
    assert len(ids) == engine.catalog.count_media() == 12
    model, preprocess, _ = build_model(parse_model_spec(spec))  # open_clip's own output
    with torch.no_grad():
        pixels = torch.stack([preprocess(Image.open(paths[i]).convert("RGB")) for i in ids])
        reference = model.eval().encode_image(pixels, normalize=True).double().numpy()
    # stored as float16: each row within its rounding (2^-11 relative) of the model's own
    assert (np.linalg.norm(stored - reference, axis=1) <= 2.0 ** -10).all()
    hits = engine.search_vectors("image", stored[:3], k=1, model=spec)[1]
    np.testing.assert_array_equal(hits[:, 0], ids[:3])  # the index holds them too


def test_an_interrupted_switch_keeps_the_old_default_and_a_second_run_finishes(
    shapes: Path, tiny_checkpoint: Path, tmp_path: Path, open_engine, reuse_random_encoders,
    monkeypatch: pytest.MonkeyPatch,
):
    import searchengine.ingest.collection as collection

    home = _home(tmp_path / "home", shapes)
    spec = f"se-tiny/{tiny_checkpoint}"
    real, calls = collection.embed_batch, []

    def ctrl_c_in_the_second_batch(*args, **kwargs):  # Ctrl-C cannot be timed for real
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(collection, "embed_batch", ctrl_c_in_the_second_batch)
    engine = open_engine(home, encoder_settings=EncoderSettings(device="cpu"))
    with pytest.raises(KeyboardInterrupt):
        engine.switch_model(spec, settings=fast_ingest(batch_size=4))
    monkeypatch.setattr(collection, "embed_batch", real)
    reader = open_engine(home, create=False)
    assert reader.default_model() == TINY_MODEL
    assert reader.search("a red circle", k=12).model == TINY_MODEL
    assert len(reader.search("a red circle", k=12).hits) == 12
    row = reader.catalog.find_model(reader.model_id_of(spec))
    assert reader.catalog.count_vectors("image", row.id) == 4  # the first batch was kept
    result = engine.switch_model(spec, settings=fast_ingest(batch_size=4))
    assert result.switched and result.collection.had == 4 and result.collection.embedded == 8
    assert reader.default_model() == reader.model_id_of(spec)


def test_a_photo_gone_since_indexing_blocks_the_switch_and_is_not_forgotten(
    shapes: Path, tiny_checkpoint: Path, tmp_path: Path, open_engine, reuse_random_encoders
):
    photos = tmp_path / "photos"
    shutil.copytree(shapes, photos)
    home = _home(tmp_path / "home", photos)
    (photos / "red_circle.png").unlink()
    engine = open_engine(home, encoder_settings=EncoderSettings(device="cpu"))
    result = engine.switch_model(f"se-tiny/{tiny_checkpoint}", settings=fast_ingest())
    assert not result.switched
    assert [path for path, _ in result.collection.missing] == [str(photos / "red_circle.png")]
    assert engine.default_model() == TINY_MODEL
    assert engine.catalog.count_media() == 12  # `index` forgets it, for every model at once


# -- remove-model ------------------------------------------------------------------------------


def test_remove_model_deletes_its_vectors_and_files_and_keeps_the_other(
    cli_run, shapes: Path, tiny_checkpoint: Path, tmp_path: Path, reuse_random_encoders
):
    spec = f"se-tiny/{tiny_checkpoint}"
    home = _home(tmp_path / "home", shapes, also=spec)
    with Engine.open(home, create=False) as engine:
        engine.embed_texts(spec)
        row = engine.catalog.find_model(engine.model_id_of(spec))
        files = sorted((home / "vectors").glob("*"))
    removed = cli_run.json("remove-model", spec, "--home", home)
    assert removed["vectors"] == {"image": 12, "text": 2}
    assert removed["default_model"] == TINY_MODEL
    left = sorted((home / "vectors").glob("*"))
    assert set(files) - set(left) == {Path(f) for f in removed["files"]}
    assert len(removed["files"]) == 4  # image and text index, each with its manifest
    assert tiny_checkpoint.is_file()  # a checkpoint outside the home is the user's
    with Engine.open(home, create=False) as engine:
        assert [r.spec for r in engine.models()] == [TINY_MODEL]
        assert engine.catalog.count_vectors("image", row.id) == 0
        assert not [k for k in ("index_kind:image:", "index_settings:text:")
                    if engine.catalog.get_setting(k + row.spec)]
        assert len(engine.search("a red circle", k=12).hits) == 12
        assert engine.check().ok


def test_remove_model_refuses_the_default_and_unknown_models(
    cli_run, shapes: Path, tiny_checkpoint: Path, tmp_path: Path, reuse_random_encoders
):
    spec = f"se-tiny/{tiny_checkpoint}"
    home = _home(tmp_path / "home", shapes, also=spec)
    refused = cli_run("remove-model", TINY_MODEL, "--home", home, expect=1)
    assert "is the default model" in refused.stderr and "use-model" in refused.stderr
    unknown = cli_run("remove-model", "se-tiny/nothing-here.pt", "--home", home, expect=1)
    assert "its models:" in unknown.stderr and TINY_MODEL in unknown.stderr
    forced = cli_run.json("remove-model", TINY_MODEL, "--home", home, "--force")
    with Engine.open(home, create=False) as engine:
        assert forced["default_model"] == engine.model_id_of(spec) == engine.default_model()
        assert len(engine.search("a red circle", k=12).hits) == 12


# -- serve follows the switch -----------------------------------------------------------------


def test_serve_loads_a_new_default_before_using_it(
    shapes: Path, tiny_checkpoint: Path, tmp_path: Path, open_engine
):
    pytest.importorskip("fastapi")
    from searchengine.server.runner import settings_for
    from searchengine.server.service import SearchService

    spec = f"se-tiny/{tiny_checkpoint}"
    home = _home(tmp_path / "home", shapes, also=spec)
    served = open_engine(home, encoder_settings=EncoderSettings(device="cpu"))
    service = SearchService(served, settings_for("127.0.0.1", token=None, model=None))
    try:
        service.warm_up()
        new = open_engine(home).use_model(spec)
        assert service.model == TINY_MODEL  # the new one loads in the background meanwhile
        deadline = time.monotonic() + 60
        while service.model != new:
            assert time.monotonic() < deadline, "the new default was never served"
            time.sleep(0.02)
        assert service.search("a red circle", limit=3, offset=0).model == new
    finally:
        service.close()


def test_a_live_server_switches_models_without_failing_a_request(
    shapes: Path, tiny_checkpoint: Path, tmp_path: Path, open_engine
):
    httpx = pytest.importorskip("httpx")
    uvicorn = pytest.importorskip("uvicorn")
    pytest.importorskip("fastapi")
    from searchengine.server.app import create_app
    from searchengine.server.runner import settings_for

    spec = f"se-tiny/{tiny_checkpoint}"
    home = _home(tmp_path / "home", shapes)
    engine = open_engine(home, encoder_settings=EncoderSettings(device="cpu"))
    app = create_app(engine, settings_for("127.0.0.1", token=None, model=None))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive()
        time.sleep(0.05)
    seen: list[list[str]] = [[] for _ in range(3)]
    errors: list[str] = []
    stop = threading.Event()

    def ask(log: list[str]) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            while not stop.is_set():
                response = client.get("/api/search", params={"q": "a red circle", "limit": 3})
                if response.status_code != 200:
                    errors.append(f"{response.status_code} {response.text}")
                else:
                    log.append(response.json()["model"])

    askers = [threading.Thread(target=ask, args=(log,)) for log in seen]
    try:
        for asker in askers:
            asker.start()
        while min(map(len, seen)) < 3:
            time.sleep(0.02)
        switch = open_engine(home, encoder_settings=EncoderSettings(device="cpu"))
        new = switch.switch_model(spec, settings=fast_ingest()).collection.model
        deadline = time.monotonic() + 60
        while not all(log and log[-1] == new for log in seen) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        for asker in askers:
            asker.join(timeout=60)
        server.should_exit = True
        thread.join(timeout=10)
    assert errors == []
    for log in seen:  # the old model before, the new one after, never back
        first_new = log.index(new)
        assert set(log[:first_new]) == {TINY_MODEL} and set(log[first_new:]) == {new}


def test_a_server_pinned_to_a_removed_model_answers_409_and_keeps_running(
    shapes: Path, tiny_checkpoint: Path, tmp_path: Path, open_engine, reuse_random_encoders
):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from searchengine.server.app import create_app
    from searchengine.server.runner import settings_for

    spec = f"se-tiny/{tiny_checkpoint}"
    home = _home(tmp_path / "home", shapes, also=spec)
    served = open_engine(home, encoder_settings=EncoderSettings(device="cpu"))
    client = TestClient(create_app(served, settings_for("127.0.0.1", token=None, model=spec)),
                        base_url="http://127.0.0.1", raise_server_exceptions=False)
    assert client.get("/api/search", params={"q": "a red circle"}).status_code == 200
    open_engine(home).remove_model(spec)
    gone = client.get("/api/search", params={"q": "a red circle"})
    assert gone.status_code == 409 and "no image index" in gone.json()["detail"]  # not indexed
    assert client.get("/api/status").status_code == 200


def test_a_new_default_that_cannot_load_leaves_the_old_one_serving(
    shapes: Path, tmp_path: Path, open_engine, reuse_random_encoders,
    caplog: pytest.LogCaptureFixture,
):
    pytest.importorskip("fastapi")
    from searchengine.server.runner import settings_for
    from searchengine.server.service import SearchService

    home = _home(tmp_path / "home", shapes)
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")  # a real fault: weights that cannot be read
    served = open_engine(home, encoder_settings=EncoderSettings(device="cpu"))
    service = SearchService(served, settings_for("127.0.0.1", token=None, model=None))
    try:
        service.warm_up()
        open_engine(home).use_model(f"se-tiny/{broken}", force=True)
        assert service.model == TINY_MODEL
        deadline = time.monotonic() + 60
        while "cannot switch to the new default model" not in caplog.text:
            assert time.monotonic() < deadline, "the failed load was never reported"
            time.sleep(0.05)
        assert service.model == TINY_MODEL  # not tried again at once (every 30 s)
        assert service.search("a red circle", limit=3, offset=0).model == TINY_MODEL
    finally:
        service.close()


def test_tune_trains_with_random_crops_and_train_without_unless_told():
    """Issue 17: `--augment` is off in `train` (reproducible runs) and on in `tune` (the library's
    `tune` without TrainSettings too); `tune --no-augment` turns it off."""
    from click.testing import CliRunner

    from searchengine.cli.train import train_command
    from searchengine.cli.tune import tune_command
    from searchengine.training.tune import TUNE_TRAINING

    assert {p.name: p.default for p in train_command.params}["augment"] is False
    assert {p.name: p.default for p in tune_command.params}["augment"] is True
    assert TUNE_TRAINING.augment
    context = tune_command.make_context("tune", ["pairs.csv", "--no-augment"],
                                        resilient_parsing=True)
    assert context.params["augment"] is False
    assert CliRunner().invoke(tune_command, ["--help"]).output.count("--augment / --no-augment")
