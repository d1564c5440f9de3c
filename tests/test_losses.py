"""Contrastive losses against hand-computed 3x3 cases and a naive loop."""

from __future__ import annotations

import math

import pytest
import torch

from searchengine.errors import InvalidInputError
from searchengine.training.losses import clip_loss, same_image_mask, siglip_loss

E = math.e


def _eye() -> torch.Tensor:
    return torch.eye(3)  # three orthogonal unit vectors: the similarity matrix is the identity


def test_clip_loss_hand_computed_3x3() -> None:
    # logits = 1 * I: every row's CE is -log(e / (e + 1 + 1)) = log(1 + 2/e), both directions.
    loss = clip_loss(_eye(), _eye(), torch.tensor(0.0))
    assert loss.item() == pytest.approx(math.log(1 + 2 / E), rel=1e-6)


def test_clip_loss_masks_other_captions_of_the_same_image() -> None:
    # Rows 0 and 1 are two captions of image 0: each drops the other from its softmax.
    loss = clip_loss(_eye(), _eye(), torch.tensor(0.0), torch.tensor([0, 0, 1]))
    expected = (2 * math.log(1 + 1 / E) + math.log(1 + 2 / E)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_clip_loss_matches_naive_loop() -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(5, 4, generator=generator), dim=1)
    texts = torch.nn.functional.normalize(torch.randn(5, 4, generator=generator), dim=1)
    scale = 3.0
    total = 0.0
    for i in range(5):
        row = [scale * float(images[i] @ texts[j]) for j in range(5)]
        col = [scale * float(images[j] @ texts[i]) for j in range(5)]
        total += -row[i] + math.log(sum(math.exp(v) for v in row))
        total += -col[i] + math.log(sum(math.exp(v) for v in col))
    loss = clip_loss(images, texts, torch.tensor(math.log(scale)))
    assert loss.item() == pytest.approx(total / 10, rel=1e-5)


def test_temperature_is_clamped_at_100() -> None:
    logit_scale = torch.tensor(math.log(1000.0), requires_grad=True)
    clamped = clip_loss(_eye(), _eye(), logit_scale)
    at_100 = clip_loss(_eye(), _eye(), torch.tensor(math.log(100.0)))
    assert clamped.item() == pytest.approx(at_100.item())
    clamped.backward()
    assert logit_scale.grad.item() == 0.0


def test_siglip_loss_hand_computed_3x3() -> None:
    # scale 1, bias 0: diagonal cells cost log(1 + 1/e), the six others log 2; divided by N = 3.
    loss = siglip_loss(_eye(), _eye(), torch.tensor(0.0), torch.tensor(0.0))
    assert loss.item() == pytest.approx(math.log(1 + 1 / E) + 2 * math.log(2), rel=1e-6)
    # scale 2, bias -1: logits are +1 on the diagonal and -1 off it, all cost log(1 + 1/e).
    loss = siglip_loss(_eye(), _eye(), torch.tensor(math.log(2.0)), torch.tensor(-1.0))
    assert loss.item() == pytest.approx(3 * math.log(1 + 1 / E), rel=1e-6)


def test_siglip_treats_same_image_captions_as_positives() -> None:
    # ids [0, 0, 1]: cells (0,1) and (1,0) become positives with logit 0: log 2 either way.
    ids = torch.tensor([0, 0, 1])
    loss = siglip_loss(_eye(), _eye(), torch.tensor(0.0), torch.tensor(0.0), ids)
    assert loss.item() == pytest.approx(math.log(1 + 1 / E) + 2 * math.log(2), rel=1e-6)
    loss = siglip_loss(_eye(), _eye(), torch.tensor(0.0), torch.tensor(-1.0), ids)
    # diagonal: log(1+e^0)=log 2; (0,1),(1,0): positives at -1: log(1+e); four negatives at -1.
    expected = (3 * math.log(2) + 2 * math.log(1 + E) + 4 * math.log(1 + 1 / E)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_same_image_mask_and_shape_errors() -> None:
    mask = same_image_mask(torch.tensor([3, 3, 5, 3]))
    assert mask.tolist() == [
        [False, True, False, True],
        [True, False, False, True],
        [False, False, False, False],
        [True, True, False, False],
    ]
    with pytest.raises(InvalidInputError, match="same shape"):
        clip_loss(torch.zeros(3, 4), torch.zeros(2, 4), torch.tensor(0.0))
