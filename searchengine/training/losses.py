"""Contrastive losses: small pure functions of embeddings, temperature and (optional) image ids.

Both losses take L2-normalised embeddings, so `image_embeddings @ text_embeddings.T` is the cosine
similarity matrix of a batch whose row i and column i are a matching pair.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from searchengine.errors import InvalidInputError

if TYPE_CHECKING:
    import torch

MAX_LOGIT_SCALE = 100.0
"""The temperature (the multiplier exp(t) of the cosine) is clamped here, as CLIP does."""
LOSSES = ("clip", "siglip")


def same_image_mask(image_ids: torch.Tensor) -> torch.Tensor:
    """(N,) int64 image ids -> (N, N) bool, True where i != j but both rows show the same image.

    Those entries are other captions of the same picture: not negatives of each other.
    """
    import torch

    same = image_ids[:, None] == image_ids[None, :]
    return same & ~torch.eye(len(image_ids), dtype=torch.bool, device=image_ids.device)


def clip_loss(
    image_embeddings: torch.Tensor,
    text_embeddings: torch.Tensor,
    logit_scale: torch.Tensor,
    image_ids: torch.Tensor | None = None,
    *,
    extra_text_embeddings: torch.Tensor | None = None,
    extra_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """CLIP's symmetric cross-entropy over the N x N similarity matrix, the diagonal as target.

    image_embeddings, text_embeddings: (N, D) float, unit rows; logit_scale: scalar, the log of the
    temperature (exp(logit_scale) multiplies the cosines, clamped at `MAX_LOGIT_SCALE`);
    image_ids: optional (N,) int64; off-diagonal entries with the same id are left out of both
    softmaxes. Returns a scalar: (CE(S, arange N) + CE(S.T, arange N)) / 2.

    extra_text_embeddings: optional (M, D) unit rows, hard negative captions: extra columns of
    the image->text softmax of every image (S becomes N x (N + M); the text->image side is
    unchanged); extra_mask: optional (N, M) bool, True where extra caption j is true of image i
    (left out of that image's softmax).
    """
    import torch
    import torch.nn.functional as F

    _check_shapes(image_embeddings, text_embeddings, image_ids)
    scale = logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)
    logits = scale * image_embeddings @ text_embeddings.T  # (N, N): image rows, text columns
    if image_ids is not None:
        logits = logits.masked_fill(same_image_mask(image_ids), float("-inf"))
    targets = torch.arange(len(logits), device=logits.device)
    if extra_text_embeddings is None:
        return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
    extra = _extra_logits(image_embeddings, extra_text_embeddings, scale, extra_mask)  # (N, M)
    image_to_text = torch.cat([logits, extra], dim=1)  # (N, N + M)
    return (F.cross_entropy(image_to_text, targets) + F.cross_entropy(logits.T, targets)) / 2


def siglip_loss(
    image_embeddings: torch.Tensor,
    text_embeddings: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor,
    image_ids: torch.Tensor | None = None,
    *,
    extra_text_embeddings: torch.Tensor | None = None,
    extra_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """SigLIP's sigmoid loss: every (image, text) cell is a binary match / no-match decision.

    logits = exp(logit_scale) * cos + logit_bias, labels +1 on the diagonal and -1 elsewhere;
    loss = -sum(log sigmoid(labels * logits)) / N. With `image_ids`, other captions of the same
    image are positives (+1), never negatives. Shapes as in `clip_loss`; logit_bias is a scalar.
    `extra_text_embeddings` (M, D) are hard negative captions: N x M more cells labelled -1,
    except those `extra_mask` (N, M) bool marks true of the image, which are left out.
    """
    import torch
    import torch.nn.functional as F

    _check_shapes(image_embeddings, text_embeddings, image_ids)
    scale = logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)
    logits = scale * image_embeddings @ text_embeddings.T + logit_bias  # (N, N)
    n = len(logits)
    if image_ids is None:
        positive = torch.eye(n, dtype=torch.bool, device=logits.device)
    else:
        positive = image_ids[:, None] == image_ids[None, :]
    labels = positive.to(logits.dtype) * 2 - 1  # (N, N): +1 match, -1 no match
    loss = -F.logsigmoid(labels * logits).sum()
    if extra_text_embeddings is not None:
        extra = _extra_logits(image_embeddings, extra_text_embeddings, scale, extra_mask)
        extra = extra + logit_bias  # (N, M), -inf where masked: log sigmoid(-(-inf)) = 0
        loss = loss - F.logsigmoid(-extra).sum()
    return loss / n


def _extra_logits(
    image_embeddings: torch.Tensor, extra_text_embeddings: torch.Tensor, scale: torch.Tensor,
    extra_mask: torch.Tensor | None,
) -> torch.Tensor:
    """(N, M) scaled cosines of every image with every extra caption, -inf where masked."""
    dim = image_embeddings.shape[1]
    if extra_text_embeddings.ndim != 2 or extra_text_embeddings.shape[1] != dim:
        raise InvalidInputError(
            f"extra text embeddings must be (M, {image_embeddings.shape[1]}), got "
            f"{tuple(extra_text_embeddings.shape)}"
        )
    logits = scale * image_embeddings @ extra_text_embeddings.T  # (N, M)
    if extra_mask is None:
        return logits
    if extra_mask.shape != logits.shape:
        raise InvalidInputError(f"extra_mask must be {tuple(logits.shape)}, got "
                                f"{tuple(extra_mask.shape)}")
    return logits.masked_fill(extra_mask, float("-inf"))


def initial_logit_bias(loss: str) -> float:
    """Starting bias of the sigmoid loss (SigLIP's -10); 0 for losses without one."""
    check_loss_name(loss)
    return -10.0 if loss == "siglip" else 0.0


def check_loss_name(loss: str) -> None:
    if loss not in LOSSES:
        raise InvalidInputError(f"unknown loss {loss!r}; choices: {', '.join(LOSSES)}")


def temperature(logit_scale: float) -> float:
    """The multiplier the loss applies to cosines for a stored log-scale (clamped like the loss)."""
    return min(math.exp(logit_scale), MAX_LOGIT_SCALE)


def _check_shapes(
    image_embeddings: torch.Tensor, text_embeddings: torch.Tensor, image_ids: torch.Tensor | None
) -> None:
    if image_embeddings.ndim != 2 or image_embeddings.shape != text_embeddings.shape:
        raise InvalidInputError(
            "contrastive losses need two (N, D) batches of the same shape, got "
            f"{tuple(image_embeddings.shape)} and {tuple(text_embeddings.shape)}"
        )
    if image_ids is not None and image_ids.shape != (image_embeddings.shape[0],):
        raise InvalidInputError(f"image_ids must be ({image_embeddings.shape[0]},)")
