"""The text tower over the positions up to the batch's last end token (`searchengine.text_tower`)
equals open_clip's `encode_text` over the whole context: vectors and gradients, in float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from float_noise import assert_same_embeddings

from searchengine.models import build_model, parse_model_spec
from searchengine.text_tower import can_trim, encode_text, trimmed_length
from searchengine.training.gradcache import contrastive_backward
from searchengine.training.losses import clip_loss

# A lone "!" inside a text is token id 0, the padding id too; a text longer than the context is
# cut (its end token is the context's last position); "" is start and end tokens only.
TEXTS = ["a red circle", "!?.", "wow !!! a dog", "", "a photo " * 40, "two blue squares"]

# Trimming is exact algebra: in float64 only the kernels' summation order differs (~1e-16
# relative), against ~1e-2 and more for reading a wrong position or a wrong mask.
EXACT = 1e-10


def _model(dtype: torch.dtype = torch.float64):
    model, _, tokenizer = build_model(parse_model_spec("se-tiny/random"), seed=3)
    return model.to(dtype).train(), tokenizer


def _relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got - expected).norm() / expected.norm().clamp_min(1e-300))


def test_the_trimmed_length_reaches_every_rows_end_token() -> None:
    _, tokenizer = _model()
    tokens = tokenizer(TEXTS)
    length = trimmed_length(tokens)
    ends = tokens.argmax(dim=-1)
    assert length == tokens.shape[1]  # the cut text fills the context
    short = tokens[[0, 1, 2, 3, 5]]
    assert trimmed_length(short) == int(short.argmax(dim=-1).max()) + 1 < tokens.shape[1]
    # "!?." has a 0 inside: counting non-zero ids (the old rule) stops before its end token
    assert trimmed_length(tokens[[1]]) == int(ends[1]) + 1 > int((tokens[1] != 0).sum())


@pytest.mark.parametrize("normalize", [True, False])
def test_vectors_equal_open_clips_over_the_whole_context(normalize: bool) -> None:
    model, tokenizer = _model()
    assert can_trim(model)
    for rows in ([0, 1, 2, 3, 5], [1], [0, 3], list(range(len(TEXTS)))):
        tokens = tokenizer([TEXTS[i] for i in rows])
        with torch.no_grad():
            got = encode_text(model, tokens, normalize=normalize)
            expected = model.encode_text(tokens, normalize=normalize)
        assert got.dtype == torch.float64
        assert _relative_error(got, expected) < EXACT


def test_gradients_equal_open_clips_over_the_whole_context() -> None:
    model, tokenizer = _model()
    tokens = tokenizer([TEXTS[i] for i in (0, 1, 2, 3, 5)])
    weights = torch.randn(len(tokens), model.text_projection.shape[1], dtype=torch.float64,
                          generator=torch.Generator().manual_seed(0))
    gradients = []
    for encode in (lambda t: model.encode_text(t, normalize=True),
                   lambda t: encode_text(model, t)):
        model.zero_grad(set_to_none=True)
        (encode(tokens) * weights).sum().backward()
        gradients.append({n: p.grad.clone() for n, p in model.named_parameters()
                          if p.grad is not None})
    expected, got = gradients
    assert got.keys() == expected.keys() and "positional_embedding" in got
    errors = {name: _relative_error(got[name], tensor) for name, tensor in expected.items()}
    assert max(errors.values()) < EXACT, {n: e for n, e in errors.items() if e >= EXACT}


@pytest.mark.parametrize("micro_batch", [None, 2])
def test_a_training_step_has_the_gradients_of_the_whole_context(micro_batch: int | None) -> None:
    """`contrastive_backward` (the trainer's step, with and without gradient caching) against
    open_clip's towers over the whole context, in float64."""
    model, tokenizer = _model()
    texts = [TEXTS[i] for i in (0, 1, 2, 5)]
    tokens = tokenizer(texts)
    pixels = torch.randn(len(texts), 3, 32, 32, dtype=torch.float64,
                         generator=torch.Generator().manual_seed(1))

    def loss_function(images, texts):
        return clip_loss(images, texts, model.logit_scale)

    loss_function(model.encode_image(pixels, normalize=True),
                  model.encode_text(tokens, normalize=True)).backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    contrastive_backward(model, pixels, tokens, loss_function, micro_batch=micro_batch)
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert got.keys() == expected.keys()
    errors = {name: _relative_error(got[name], tensor) for name, tensor in expected.items()}
    assert max(errors.values()) < EXACT, {n: e for n, e in errors.items() if e >= EXACT}


def test_a_tower_that_reads_another_position_runs_open_clips_encode_text() -> None:
    """With `last` pooling the padding is read, so cutting it would change the vector: such a
    tower is not trimmed."""
    model, tokenizer = _model()
    model.text_pool_type = "last"
    assert not can_trim(model)
    tokens = tokenizer(TEXTS[:3])
    with torch.no_grad():
        got = encode_text(model, tokens)
        expected = model.encode_text(tokens, normalize=True)
    assert torch.equal(got, expected)


def test_the_encoder_reads_a_text_with_a_lone_exclamation_mark_at_its_end_token(
    tiny_encoder,
) -> None:
    """A search for "!?." (token 0 inside) once lost its end token to the padding count."""
    for texts in (["!?."], ["!?.", "wow !!! a dog", "a red circle"]):
        tiny_encoder.clear_text_cache()
        got = tiny_encoder.encode_texts(texts)
        assert np.isfinite(got).all()
        assert_same_embeddings(got, tiny_encoder.encode_texts_reference(texts))
