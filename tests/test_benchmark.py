"""Benchmark: prompts, reports, plot, and `bench recall` / `bench zero-shot` through the engine."""

from __future__ import annotations

import csv
import json
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from float_noise import assert_recall_close, recall_slack
from PIL import Image

from searchengine.cli import cli
from searchengine.errors import InvalidInputError
from searchengine.eval import benchmark
from searchengine.eval.datasets import read_caption_dataset, read_class_folder
from searchengine.eval.prompts import ENSEMBLE_TEMPLATES, SINGLE_TEMPLATE, label_embeddings
from searchengine.settings import IngestSettings

MODEL = "se-tiny/random"
FAST = IngestSettings(workers=0, batch_size=8)


class HashEncoder:
    """A deterministic fake: each sentence gets its own random unit vector."""

    def __init__(self):
        self.calls: list[list[str]] = []

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        rows = []
        for text in texts:
            seed = sum(ord(c) * (i + 1) for i, c in enumerate(text))
            x = np.random.default_rng(seed).normal(size=8)
            rows.append(x / np.linalg.norm(x))
        return np.asarray(rows, dtype=np.float32)


def test_single_template_label_embedding_is_the_sentence_vector():
    encoder = HashEncoder()
    got = label_embeddings(encoder, ["dog", "cat"], SINGLE_TEMPLATE)
    expected = encoder.encode_texts(["a photo of a dog.", "a photo of a cat."])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert got.dtype == np.float32


def test_ensemble_is_the_renormalised_mean_of_the_templates(monkeypatch):
    import searchengine.eval.prompts as prompts

    monkeypatch.setattr(prompts, "_BATCH", 3)  # several encoder calls, results stitched in order
    encoder = HashEncoder()
    got = label_embeddings(encoder, ["dog", " red car "], ENSEMBLE_TEMPLATES)
    assert len(encoder.calls) > 1
    for row, label in zip(got, ["dog", "red car"], strict=True):
        sentences = [template.format(label=label) for template in ENSEMBLE_TEMPLATES]
        mean = HashEncoder().encode_texts(sentences).mean(axis=0)
        np.testing.assert_allclose(row, mean / np.linalg.norm(mean), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)


def test_prompt_input_errors():
    with pytest.raises(InvalidInputError):
        label_embeddings(HashEncoder(), ["dog", " "])
    with pytest.raises(InvalidInputError, match="placeholder"):
        label_embeddings(HashEncoder(), ["dog"], ["a photo"])


def fake_report() -> benchmark.RecallReport:
    rng = np.random.default_rng(0)
    text_ranks, image_ranks = rng.integers(1, 60, 40), rng.integers(1, 30, 8)
    index_text = np.where(rng.random(40) < 0.2, 51, text_ranks)
    exact = benchmark.metrics_from_ranks(text_ranks, image_ranks, (1, 5, 10))
    return benchmark.RecallReport(
        model="m/random", index_kind="hnsw", dataset={"source": "/d", "split": "test"},
        exact=exact,
        index_text_to_image=benchmark.recall_at(index_text, (1, 5, 10)),
        index_image_to_text=benchmark.recall_at(image_ranks, (1, 5, 10)),
        exact_curve=benchmark.curve(text_ranks, image_ranks, 50),
        index_curve=benchmark.curve(index_text, image_ranks, 50),
    )


def test_report_json_table_and_plot(tmp_path):
    report = fake_report()
    payload = json.loads(json.dumps(report.as_dict()))
    assert set(payload) == {"model", "index_kind", "dataset", "exact", "index", "curves"}
    assert set(payload["exact"]["text_to_image"]) == {"R@1", "R@5", "R@10"}
    assert payload["curves"]["k"] == list(range(1, 51))
    assert len(payload["curves"]["index"]["image_to_text"]) == 50
    curve = payload["curves"]["exact"]["text_to_image"]
    assert curve == sorted(curve) and curve[9] == payload["exact"]["text_to_image"]["R@10"]
    headers, rows = report.table()
    assert headers[:2] == ["direction", "k"] and len(rows) == 6
    assert all(row[4] == pytest.approx(row[2] - row[3]) for row in rows)
    path = benchmark.plot_recall(report, tmp_path / "plots" / "recall.png")
    assert Image.open(path).size[0] > 300


# --- through the engine ------------------------------------------------------------------------


def make_captioned(folder: Path, n_images: int = 10) -> Path:
    """images/ with distinct colour patterns, 3 captions each, one image without captions."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n_images + 1):
        pixels = rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)
        (folder / "images").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / "images" / f"{i}.png")
        if i < n_images:
            rows += [[f"{i}.png", f"photo {i} variant {j} {rng.integers(1000)}"] for j in range(3)]
    rows.append(["0.png", rows[0][1]])  # a repeated caption
    with (folder / "captions.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([["image", "caption"], *rows])
    return folder


@pytest.fixture(scope="module")
def captioned(tmp_path_factory) -> Path:
    return make_captioned(tmp_path_factory.mktemp("captioned"))


def stored_vectors(engine, data) -> tuple[np.ndarray, np.ndarray]:
    """The durable (image_vectors (n_images, d), text_vectors (n_captions, d)) of a dataset."""
    ids = engine.media_ids_by_path(list(data.images))
    _, image_vectors = engine.vectors("image", model=MODEL,
                                      ids=[ids[str(p.absolute())] for p in data.images])
    text_ids = engine.text_ids()
    got_ids, vectors = engine.vectors("text", model=MODEL)
    row = {int(i): r for r, i in enumerate(got_ids.tolist())}
    return image_vectors, vectors[[row[text_ids[c]] for c in data.captions]]


@pytest.fixture(scope="module")
def slack(captioned, tmp_path_factory) -> tuple[float, float]:
    """How far exact and flat-index recall may differ on `captioned` through float noise alone:
    (text->image, image->text) share of queries with a near-tie at their first hit (0 when
    none: then the figures must be equal)."""
    data = read_caption_dataset(captioned)
    with ExitStack() as stack:
        engine = benchmark.open_bench_engine(stack, tmp_path_factory.mktemp("slack"))
        benchmark.measure_recall(engine, data, model=MODEL,
                                 settings=benchmark.RecallSettings(ingest=FAST))
        image_vectors, text_vectors = stored_vectors(engine, data)
    return recall_slack(image_vectors, text_vectors, data.text_to_image)


def test_flat_index_recall_equals_exact_recall(captioned, tmp_path, slack):
    data = read_caption_dataset(captioned)
    settings = benchmark.RecallSettings(ks=(1, 3, 5, 40), curve_max_k=20, ingest=FAST)
    with ExitStack() as stack:
        engine = benchmark.open_bench_engine(stack, tmp_path / "home")
        report = benchmark.measure_recall(engine, data, model=MODEL, settings=settings)
        image_vectors, _ = stored_vectors(engine, data)
    assert report.index_kind == "flat"
    assert report.dataset["images"] == 10 and report.dataset["captions"] == 30
    assert report.dataset["duplicate_captions"] == 1
    assert report.dataset["images_without_captions"] == 1
    # FAISS and numpy compute the scores in other orders: equal up to near-ties of float noise
    assert_recall_close(report.index_text_to_image, report.exact.text_to_image, slack[0])
    assert_recall_close(report.index_image_to_text, report.exact.image_to_text, slack[1])
    ks = range(1, len(report.exact_curve.text_to_image) + 1)
    for direction, share in (("text_to_image", slack[0]), ("image_to_text", slack[1])):
        assert_recall_close(dict(zip(ks, getattr(report.index_curve, direction), strict=True)),
                            dict(zip(ks, getattr(report.exact_curve, direction), strict=True)),
                            share)
    assert report.exact.text_to_image[40] == 1.0  # k above the image count
    assert image_vectors.shape == (10, 64)


def test_hnsw_kind_is_measured_and_a_reused_home_gives_the_same_figures(captioned, tmp_path,
                                                                       slack):
    data = read_caption_dataset(captioned)
    home = tmp_path / "home"
    results = []
    for kind in ("hnsw", "hnsw", "flat"):
        with ExitStack() as stack:
            engine = benchmark.open_bench_engine(stack, home)
            settings = benchmark.RecallSettings(index_kind=kind, ingest=FAST)
            results.append(benchmark.measure_recall(engine, data, model=MODEL, settings=settings))
    assert [r.index_kind for r in results] == ["hnsw", "hnsw", "flat"]
    assert results[0].exact == results[1].exact == results[2].exact
    assert results[0].index_text_to_image == results[1].index_text_to_image
    # HNSW on 10 points is exhaustive in practice; the flat index must be exact in any case
    assert_recall_close(results[2].index_image_to_text, results[2].exact.image_to_text, slack[1])


def test_a_home_with_other_images_is_refused(captioned, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    Image.new("RGB", (20, 20), "red").save(other / "red.png")
    with ExitStack() as stack:
        engine = benchmark.open_bench_engine(stack, tmp_path / "home")
        engine.index([other], model=MODEL, settings=FAST)
        with pytest.raises(InvalidInputError, match="compete"):
            benchmark.measure_recall(engine, read_caption_dataset(captioned), model=MODEL,
                                     settings=benchmark.RecallSettings(ingest=FAST))


def test_bench_recall_cli_json_and_table(captioned, tmp_path, slack):
    runner = CliRunner()
    plot = tmp_path / "recall.png"
    result = runner.invoke(cli, ["bench", "recall", str(captioned), "--model", MODEL,
                                 "-k", "1,5", "--json", "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output[result.output.index("{"):])
    assert set(payload["exact"]["image_to_text"]) == {"R@1", "R@5"}
    assert_recall_close(payload["index"]["text_to_image"], payload["exact"]["text_to_image"],
                        slack[0])
    assert payload["plot"] == str(plot) and plot.is_file()
    result = runner.invoke(cli, ["bench", "recall", str(captioned), "--model", MODEL])
    assert result.exit_code == 0, result.output
    assert "text->image" in result.output and "index (flat)" in result.output
    assert "1 repeated captions dropped" in result.output


@pytest.mark.parametrize("arguments, message", [
    (["-k", "0"], "positive"),
    (["-k", "one"], "comma-separated"),
    (["--split", "test"], "split"),
    (["--index-kind", "magic"], "unknown index kind"),
])
def test_bench_recall_cli_errors(captioned, arguments, message):
    result = CliRunner().invoke(
        cli, ["bench", "recall", str(captioned), "--model", MODEL, *arguments]
    )
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output


def make_classes(folder: Path) -> Path:
    rng = np.random.default_rng(1)
    for label in ("red_car", "dog", "tree"):
        for i in range(3):
            (folder / label).mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / label / f"{i}.png")
    return folder


def test_zero_shot_equals_a_direct_computation(tmp_path):
    folder = read_class_folder(make_classes(tmp_path / "classes"))
    with ExitStack() as stack:
        engine = benchmark.open_bench_engine(stack, tmp_path / "home")
        report = benchmark.measure_zero_shot(engine, folder, model=MODEL, ingest=FAST)
        ids = engine.media_ids_by_path(list(folder.images))
        _, vectors = engine.vectors("image", model=MODEL,
                                    ids=[ids[str(p.absolute())] for p in folder.images])
        labels = label_embeddings(engine.encoder(MODEL), folder.labels,
                                  SINGLE_TEMPLATE)
    assert set(report.accuracy) == {"single", "ensemble"}
    best = np.argmax(vectors @ labels.T, axis=1)
    assert report.accuracy["single"][1] == pytest.approx(np.mean(best == folder.image_labels))
    assert report.accuracy["single"][5] == 1.0  # 3 classes: always within the top 5
    headers, rows = report.table()
    assert headers == ["templates", "top-1", "top-5"] and [r[0] for r in rows] == ["single",
                                                                                  "ensemble"]


def test_bench_zero_shot_cli(tmp_path):
    folder = make_classes(tmp_path / "classes")
    result = CliRunner().invoke(cli, ["bench", "zero-shot", str(folder), "--model", MODEL,
                                      "--templates", "single", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output[result.output.index("{"):])
    assert payload["classes"] == 3 and payload["images"] == 9
    assert set(payload["accuracy"]) == {"single"}
    assert set(payload["accuracy"]["single"]) == {"top1", "top5"}
    result = CliRunner().invoke(cli, ["bench", "zero-shot", str(folder / "dog"), "--model", MODEL])
    assert result.exit_code == 1 and "two sub-folders" in result.output


def test_bench_commands_have_help_and_examples():
    runner = CliRunner()
    for path in (["bench"], ["bench", "recall"], ["bench", "zero-shot"]):
        result = runner.invoke(cli, [*path, "--help"])
        assert result.exit_code == 0 and "Example:" in result.output
