"""The encoder: unit vectors, the fast text path against open_clip's own, model specs offline."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from conftest import TINY_MODEL, draw_image
from float_noise import assert_same_embeddings, score_noise

from searchengine.encoder import Encoder, query_threads, resolve_device, threads_for_load
from searchengine.errors import InvalidInputError, ModelError, ModelUnavailableError
from searchengine.models import CHECKPOINT_FORMAT, parse_model_spec
from searchengine.settings import EncoderSettings

SENTENCES = [
    "a dog",
    "a dog on the beach at sunset, running after a red ball",
    "ÉLAN vital — naïve café",
    "!",
    "a very long caption " * 20,  # beyond the 32-token context: truncated like open_clip does
    "hi!there?? 1234 #tag",
]


def test_fast_text_path_equals_open_clip_encode_text(tiny_encoder):
    fast = tiny_encoder.encode_texts(SENTENCES)
    reference = tiny_encoder.encode_texts_reference(SENTENCES)
    assert_same_embeddings(fast, reference)
    # one at a time too: each batch is cut at its own longest sentence
    for sentence, row in zip(SENTENCES, reference, strict=True):
        tiny_encoder.clear_text_cache()
        assert_same_embeddings(tiny_encoder.encode_texts([sentence])[0], row)


def test_text_vectors_are_float32_unit_rows(tiny_encoder):
    vectors = tiny_encoder.encode_texts(SENTENCES[:3])
    assert vectors.shape == (3, tiny_encoder.dim) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0,
                               atol=score_noise(vectors.shape[1]))


def test_image_vectors_are_unit_rows_and_independent_of_the_batch(tiny_encoder):
    pixels = torch.stack([tiny_encoder.preprocess(draw_image(seed)) for seed in range(5)])
    assert pixels.shape == (5, 3, tiny_encoder.image_size, tiny_encoder.image_size)
    vectors = tiny_encoder.encode_images(pixels)
    assert vectors.shape == (5, tiny_encoder.dim) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0,
                               atol=score_noise(vectors.shape[1]))
    assert_same_embeddings(tiny_encoder.encode_images(pixels[2:3])[0], vectors[2])


@pytest.mark.parametrize("texts", [[], [""], ["a dog", "   "]])
def test_blank_texts_are_refused(tiny_encoder, texts):
    with pytest.raises(InvalidInputError, match="empty text"):
        tiny_encoder.encode_texts(texts)


def test_a_text_cut_to_the_context_is_a_warning(tiny_encoder, caplog):
    context = tiny_encoder.tokenizer.context_length  # 32 for se-tiny: sot + 30 words + eot
    fits, cut = "word " * (context - 2), "word " * (context - 1)
    with caplog.at_level("WARNING", logger="searchengine.encoder"):
        tiny_encoder.encode_texts([fits, "a red circle"])
        assert not caplog.records
        tiny_encoder.encode_texts([fits, cut, "a red circle"])
        tiny_encoder.encode_texts([cut])  # a query
    assert len(caplog.records) == 2
    message = caplog.records[0].getMessage()
    assert f"1 of 3 texts are longer than the model's context of {context} tokens" in message
    assert "the text is longer than the model's context" in caplog.records[1].getMessage()


def test_random_weights_are_seeded(tiny_encoder):
    again = Encoder.load(TINY_MODEL, EncoderSettings(device="cpu", seed=0))
    other = Encoder.load(TINY_MODEL, EncoderSettings(device="cpu", seed=1))
    weights = tiny_encoder.model.state_dict()  # the same draws: equal bit for bit
    assert all(torch.equal(tensor, weights[name])
               for name, tensor in again.model.state_dict().items())
    text = ["a red car"]  # vectors may differ in the last bits (threads): compare with a tolerance
    np.testing.assert_allclose(again.encode_texts(text), tiny_encoder.encode_texts(text),
                               rtol=1e-4, atol=1e-5)
    assert not np.allclose(other.encode_texts(text), tiny_encoder.encode_texts(text))


def test_device_auto_follows_torch():
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"


def test_checkpoint_spec_loads_its_weights(tiny_checkpoint):
    from searchengine.models import build_model

    encoder = Encoder.load(f"se-tiny/{tiny_checkpoint}", EncoderSettings(device="cpu"))
    assert encoder.spec.source == "checkpoint" and encoder.spec.id == f"se-tiny/{tiny_checkpoint}"
    seeded, _, _ = build_model(parse_model_spec(TINY_MODEL), seed=1)
    loaded = encoder.model.state_dict()
    for name, tensor in seeded.state_dict().items():
        torch.testing.assert_close(loaded[name], tensor, rtol=0, atol=0)


def test_checkpoint_for_another_arch_or_not_a_checkpoint(tmp_path, tiny_checkpoint):
    wrong = torch.load(tiny_checkpoint, weights_only=True)
    wrong["arch"] = "ViT-B-32"
    torch.save(wrong, tmp_path / "wrong.pt")
    with pytest.raises(ModelError, match="trained for architecture 'ViT-B-32'"):
        Encoder.load(f"se-tiny/{tmp_path / 'wrong.pt'}")
    torch.save({"format": CHECKPOINT_FORMAT, "arch": "se-tiny", "state_dict": {}},
               tmp_path / "empty.pt")
    with pytest.raises(ModelError, match="does not fit"):
        Encoder.load(f"se-tiny/{tmp_path / 'empty.pt'}")


def test_a_file_that_is_not_a_checkpoint_is_a_model_error(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="cannot read checkpoint"):
        Encoder.load(f"se-tiny/{tmp_path / 'junk.pt'}")


@pytest.mark.parametrize(
    "spec, message",
    [
        ("ViT-B-99/random", "unknown model architecture 'ViT-B-99'.*did you mean"),
        ("ViT-B-32/not_a_tag", "unknown pretrained tag 'not_a_tag'.*laion2b_s34b_b79k"),
        ("ViT-B-32/missing/file.pt", "does not exist"),
        ("ViT-B-32", "not of the form ARCH/PRETRAINED"),
        ("", "not of the form"),
    ],
)
def test_bad_model_specs_name_the_choices(spec, message):
    with pytest.raises(ModelError, match=message):
        parse_model_spec(spec)


def test_uncached_pretrained_weights_fail_at_once_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ModelUnavailableError, match="HF_HUB_OFFLINE.*random"):
        Encoder.load("ViT-B-32/laion2b_s34b_b79k")
    assert time.perf_counter() - start < 10


# -- the fast text path on a real architecture, and the query cache -------------------------------

# 1 word (sot, "a", eot: 3 tokens), a 5-15 token query, a sentence that fills the 77-token context
# exactly (75 words) and one cut to it (80 words)
VIT_TEXTS = ["a", "a dog on the beach at sunset", "word " * 75, "photo " * 80]


@pytest.fixture(scope="module")
def vit_b32():
    """ViT-B-32 (CLIP's 12-layer, 512-wide, 77-token text tower) with random weights."""
    return Encoder.load("ViT-B-32/random", EncoderSettings(device="cpu"))


def test_fast_text_path_equals_open_clip_on_vit_b_32(vit_b32):
    assert vit_b32.tokenizer.context_length == 77 and vit_b32.dim == 512
    lengths = (vit_b32.tokenizer(VIT_TEXTS) != 0).sum(dim=1).tolist()
    assert lengths == [3, 9, 77, 77]
    reference = vit_b32.encode_texts_reference(VIT_TEXTS)  # open_clip over all 77 tokens
    vit_b32.clear_text_cache()
    fast = vit_b32.encode_texts(VIT_TEXTS)
    assert fast.shape == (4, vit_b32.dim) and reference.shape == fast.shape
    assert_same_embeddings(fast, reference)  # one mixed batch
    for text, row in zip(VIT_TEXTS, reference, strict=True):
        vit_b32.clear_text_cache()
        assert_same_embeddings(vit_b32.encode_texts([text])[0], row)  # cut at its own length


FLOAT64_BOUND = 1e-9
"""Relative bound of the fast path against open_clip in float64. Causal attention gives the
padding after the end-of-text token weight exp(-inf) = 0 exactly, so the two computations agree
in exact arithmetic and differ only by the order of float64 sums (d * eps64 ~ 1e-13 per layer);
a real fault (a wrong pooling position, positions shifted) moves the vector by ~1e-1."""


@pytest.mark.parametrize("which", ["se-tiny", "ViT-B-32"])
def test_fast_text_path_is_exact_in_float64(which, tiny_encoder, vit_b32):
    import copy

    encoder = copy.copy(tiny_encoder if which == "se-tiny" else vit_b32)
    encoder.model = copy.deepcopy(encoder.model).double()
    texts = VIT_TEXTS + SENTENCES
    tokens = encoder.tokenizer(texts)
    with torch.inference_mode():
        reference = encoder.model.encode_text(tokens, normalize=True)  # (n, d) float64
        for batch in (list(range(len(texts))), [0], [1], [3], [0, 1]):
            fast = encoder._encode_tokens(tokens[batch])
            assert fast.dtype == torch.float64
            error = torch.linalg.vector_norm(fast - reference[batch], dim=1)
            assert float(error.max()) <= FLOAT64_BOUND, (which, batch, error)


def _forward_counter(encoder):
    calls = []
    handle = encoder.model.transformer.register_forward_hook(
        lambda module, args, output: calls.append(args[0].shape[0])
    )
    return calls, handle


def test_a_repeated_query_costs_no_forward_pass(tiny_encoder):
    from searchengine.encoder import QUERY_CACHE_BATCH, QUERY_CACHE_SIZE

    tiny_encoder.clear_text_cache()
    calls, handle = _forward_counter(tiny_encoder)
    try:
        first = tiny_encoder.encode_texts(["a red car"])
        again = tiny_encoder.encode_texts(["a red car"])
        assert calls == [1]
        np.testing.assert_array_equal(first, again)
        again[0, 0] += 1  # the caller's own copy: the cache is not changed through it
        mixed = tiny_encoder.encode_texts(["a blue bus", "a red car"])
        assert calls == [1, 1]  # only the new text is encoded
        np.testing.assert_array_equal(mixed[1], first[0])
        assert_same_embeddings(mixed, tiny_encoder.encode_texts_reference(["a blue bus",
                                                                            "a red car"]))
        # least recently used out: after QUERY_CACHE_SIZE other texts, "a red car" is encoded again
        others = [f"text {i}" for i in range(QUERY_CACHE_SIZE)]
        for start in range(0, len(others), QUERY_CACHE_BATCH):
            tiny_encoder.encode_texts(others[start : start + QUERY_CACHE_BATCH])
        calls.clear()
        tiny_encoder.encode_texts(["a red car"])
        assert calls == [1]
        # a bulk call (captions) neither reads nor fills the cache
        bulk = [f"caption {i}" for i in range(QUERY_CACHE_BATCH + 1)]
        tiny_encoder.encode_texts(bulk)
        tiny_encoder.encode_texts(bulk[:1])
        assert calls == [1, QUERY_CACHE_BATCH + 1, 1]
    finally:
        handle.remove()
        tiny_encoder.clear_text_cache()


def test_a_short_query_runs_on_the_query_threads_and_gives_the_same_vectors(tiny_encoder):
    """A query of a few sentences runs on `query_threads` torch threads (seen from inside the
    text tower), the process's setting is restored after, and the vectors equal those of the
    default threads within float noise; a long batch keeps every thread; the default follows
    the host's load (`threads_for_load`)."""
    seen: list[int] = []
    hook = tiny_encoder.model.transformer.register_forward_hook(
        lambda *_: seen.append(torch.get_num_threads())
    )
    before = torch.get_num_threads()

    def encoder(threads: int | None) -> Encoder:
        made = Encoder(tiny_encoder.spec, EncoderSettings(device="cpu", query_threads=threads))
        made.model = tiny_encoder.model
        return made

    try:
        torch.set_num_threads(2)
        texts = ["a red square", "two blue circles"]
        one = encoder(1).encode_texts(texts)
        assert seen == [1] and torch.get_num_threads() == 2
        both = encoder(0).encode_texts(texts)
        assert seen == [1, 2]
        assert_same_embeddings(one, both)
        by_load = encoder(None)
        expected = {query_threads(None)}  # the load may cross a step while the query runs
        by_load.encode_texts(["a green triangle"])
        expected.add(query_threads(None))
        assert seen[-1] in expected and 1 <= seen[-1] <= 2
        by_load.encode_texts([f"caption number {i}" for i in range(20)])
        assert seen[-1] == 2  # a batch of captions is not a query
    finally:
        hook.remove()
        torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("load", "cpus", "most", "threads"),
    [
        (0.1, 2, 2, 2),  # an idle 2-core host: both cores
        (0.9, 2, 2, 2),  # a core and a bit left: still both
        (1.5, 2, 2, 1),  # less than a whole idle core: one thread
        (6.0, 2, 2, 1),  # overloaded: one thread, never zero
        (2.0, 8, 8, 7),  # six cores idle: six plus the query's own
        (0.0, 8, 4, 4),  # never more than torch's own setting
    ],
)
def test_query_threads_follow_the_idle_cores(load, cpus, most, threads):
    assert threads_for_load(load, cpus, most) == threads
