"""The ONNX export of a model's text tower (`searchengine.onnx_text`): a cold `search` answers
without importing torch, with the vectors open_clip gives and the tokens open_clip makes."""

from __future__ import annotations

import csv
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import fast_ingest
from float_noise import MODEL_NOISE, assert_same_embeddings

from searchengine import onnx_text
from searchengine.encoder import Encoder
from searchengine.engine import Engine
from searchengine.errors import InvalidInputError
from searchengine.models import parse_model_spec
from searchengine.onnx_text import OnnxTextEncoder, export_folder
from searchengine.settings import EncoderSettings

FLICKR_CAPTIONS = Path(__file__).resolve().parents[2] / "shared/data/flickr8k-1k/captions.csv"
TEXTS = [
    "a dog on the beach",
    "Two children play in the snow near a red house .",
    "ÜNÏCÖDÉ façade — naïve café, ﬁ ligature, 日本語のテキスト, emoji 🐶🏖️",
    "&amp;lt;b&amp;gt; tags &quot;quoted&quot;, tabs\tand\nnewlines  , don't it's WE'LL",
    "<start_of_text>written by hand<end_of_text>",
    "3.14159 and 1,000,000 and ٣٤٥",
    "zero\u200bwidth and a" + "\u0301" * 20,
    "word " * 120,  # longer than the context: cut to it
]


@pytest.fixture(scope="module")
def checkpoint_encoder(tiny_checkpoint: Path) -> Encoder:
    return Encoder.load(f"se-tiny/{tiny_checkpoint}", EncoderSettings(device="cpu"))


@pytest.fixture(scope="module")
def exported(checkpoint_encoder: Encoder, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = onnx_text.export(checkpoint_encoder, tmp_path_factory.mktemp("onnx") / "export")
    assert folder is not None and onnx_text.ready(folder)
    return folder


def test_the_export_encodes_texts_as_open_clip_does(checkpoint_encoder, exported):
    encoder = OnnxTextEncoder.open(exported, checkpoint_encoder.spec)
    assert encoder is not None and encoder.dim == checkpoint_encoder.dim
    vectors = encoder.encode_texts(TEXTS)
    assert vectors.dtype == np.float32 and vectors.shape == (len(TEXTS), encoder.dim)
    assert_same_embeddings(vectors, checkpoint_encoder.encode_texts_reference(TEXTS))
    one_by_one = np.concatenate([encoder.encode_texts([text]) for text in TEXTS])
    assert_same_embeddings(one_by_one, vectors)  # a batch changes no row


def test_its_tokens_are_open_clips_for_any_text(checkpoint_encoder, exported):
    """Random strings over many scripts, marks, emoji, control characters and HTML entities,
    plus flickr8k's human captions when ../shared is there."""
    rng = np.random.default_rng(0)
    blocks = [(0x20, 0x7F), (0xA0, 0x250), (0x370, 0x400), (0x300, 0x370), (0x4E00, 0x4F00),
              (0x1F300, 0x1F650), (0x0, 0x20), (0x600, 0x700), (0x2000, 0x2070)]
    texts = list(TEXTS)
    for _ in range(400):
        low, high = blocks[rng.integers(len(blocks))]
        codes = rng.integers(low, high, size=rng.integers(1, 40))
        text = "".join(map(chr, codes))
        texts.append(text + rng.choice(["", " &amp;", " &lt;x&gt;", "  A b", "'s"]))
    if FLICKR_CAPTIONS.is_file():
        with FLICKR_CAPTIONS.open() as handle:
            texts += [row["caption"] for row in csv.DictReader(handle)]
    encoder = OnnxTextEncoder.open(exported, checkpoint_encoder.spec)
    ours = encoder.tokens(texts)
    theirs = checkpoint_encoder.tokenizer(texts).numpy()
    wrong = [texts[i] for i in np.flatnonzero((ours != theirs).any(axis=1))]
    assert not wrong, wrong[:3]


def test_long_and_blank_texts_are_handled_as_the_encoder_does(
    checkpoint_encoder, exported, caplog
):
    encoder = OnnxTextEncoder.open(exported, checkpoint_encoder.spec)
    with caplog.at_level(logging.WARNING, logger="searchengine.onnx_text"):
        encoder.encode_texts(["word " * 120])
    assert "longer than the model's context" in caplog.text
    for blank in ([], [""], ["a dog", "   "]):
        with pytest.raises(InvalidInputError, match="empty text"):
            encoder.encode_texts(blank)


def test_only_real_weights_of_a_plain_clip_text_tower_are_exported(tiny_encoder, tmp_path):
    assert export_folder(parse_model_spec("se-tiny/random")) is None
    assert onnx_text.export(tiny_encoder) is None  # seeded noise: no cache of it
    spec = parse_model_spec("se-tiny/random")
    assert OnnxTextEncoder.open(tmp_path / "nothing", spec) is None


def test_a_damaged_or_foreign_export_is_ignored(checkpoint_encoder, exported, tmp_path, caplog,
                                                tiny_checkpoint):
    spec = checkpoint_encoder.spec

    def damaged(name: str, change) -> Path:
        copy = tmp_path / name
        shutil.copytree(exported, copy)
        change(copy)
        return copy

    def cut_data(folder: Path) -> None:
        data = folder / "text.onnx.data"
        data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])

    def other_model(folder: Path) -> None:
        meta = json.loads((folder / "meta.json").read_text())
        (folder / "meta.json").write_text(json.dumps({**meta, "model": "ViT-B-32/openai"}))

    cases = {
        "cut": cut_data,
        "tokenizer": lambda f: (f / "tokenizer.json").write_text("{not json"),
        "graph": lambda f: (f / "text.onnx").write_bytes(b"\x00garbage"),
        "partial": lambda f: (f / "meta.json").unlink(),
        "format": lambda f: (f / "meta.json").write_text('{"format": 999}'),
        "other": other_model,
    }
    with caplog.at_level(logging.WARNING, logger="searchengine.onnx_text"):
        for name, change in cases.items():
            assert OnnxTextEncoder.open(damaged(name, change), spec) is None, name
    assert "ignoring the damaged ONNX export" in caplog.text


def test_index_prepares_it_and_a_fresh_search_then_runs_without_torch(
    tmp_path, photo_folder, tiny_checkpoint, cli_run
):
    home, model = tmp_path / "home", f"se-tiny/{tiny_checkpoint}"
    folder = export_folder(parse_model_spec(model))
    shutil.rmtree(folder, ignore_errors=True)  # another test of this run may have made it
    done = cli_run("index", photo_folder, "--home", home, "--model", model, "--batch-size", 4,
                   "--workers", 0, "--json")
    json.loads(done.stdout)  # the note went to stderr
    assert "preparing faster searches" in done.stderr and onnx_text.ready(folder)

    code = (
        "import json, sys\n"
        "from searchengine.cli import cli\n"
        "try:\n"
        "    cli(sys.argv[1:], standalone_mode=False)\n"
        "finally:\n"
        "    print('torch loaded' if 'torch' in sys.modules else 'no torch', file=sys.stderr)\n"
    )
    args = ["search", "a red square", "--home", str(home), "--model", model, "-k", "12",
            "--json", "--no-serve"]
    fresh = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                           check=True, timeout=300)
    assert fresh.stderr.strip().endswith("no torch"), fresh.stderr
    cold = json.loads(fresh.stdout)["hits"]

    assert_same_hits(cold, home, model)


def assert_same_hits(cold: list[dict], home: Path, model: str) -> None:
    """`cold` (a search's JSON hits) are the hits of the model itself, through torch, in the same
    order except among scores within model noise of each other."""
    with Engine.open(home, create=False) as engine:
        warm = {hit.id: hit.score for hit in engine.search("a red square", k=12,
                                                           model=model).hits}
    assert sorted(hit["id"] for hit in cold) == sorted(warm)
    assert all(abs(hit["score"] - warm[hit["id"]]) <= 2 * MODEL_NOISE for hit in cold)
    ranked = [warm[hit["id"]] for hit in cold]
    assert all(b <= a + 2 * MODEL_NOISE for a, b in zip(ranked, ranked[1:], strict=False))


def test_a_search_that_had_to_load_the_model_prepares_it(
    tmp_path, photo_folder, tiny_checkpoint, cli_run
):
    home, model = tmp_path / "home", f"se-tiny/{tiny_checkpoint}"
    with Engine.open(home) as engine:  # the API makes no export by itself
        engine.index([photo_folder], model=model, settings=fast_ingest())
    folder = export_folder(parse_model_spec(model))
    shutil.rmtree(folder, ignore_errors=True)
    args = ["search", "a red square", "--home", home, "--model", model, "-k", 12]
    first = cli_run(*args, "--json")
    assert "preparing faster searches" in first.stderr and onnx_text.ready(folder)
    again = cli_run(*args, "--json")
    assert "preparing" not in again.stderr
    (folder / "tokenizer.json").write_text("{damaged")  # still looks whole: the files are there
    mended = cli_run(*args, "--json")  # the model loads, and a whole export replaces it
    assert "preparing faster searches" in mended.stderr
    assert OnnxTextEncoder.open(folder, parse_model_spec(model)) is not None
    for result in (first, again, mended):
        assert_same_hits(json.loads(result.stdout)["hits"], home, model)
