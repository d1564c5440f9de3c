"""One contrastive backward pass, optionally with gradient caching (GradCache, Gao et al. 2021).

The contrastive loss couples every pair of the batch, so plain gradient accumulation over
micro-batches changes the objective. Gradient caching keeps it exact: embed the whole batch
without a graph, take the loss gradient with respect to the (N, D) embeddings, then re-run each
micro-batch with a graph and push that slice of the cached gradient through it. Only M examples'
activations are alive at a time; the price is one extra forward pass.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from searchengine.text_tower import encode_text

if TYPE_CHECKING:
    import torch

LossFunction = Callable[["torch.Tensor", "torch.Tensor"], "torch.Tensor"]
"""(image_embeddings (N, D) float32 unit, text_embeddings (N, D) float32 unit) -> scalar loss."""


def contrastive_backward(
    model: Any,  # an open_clip CLIP model (a torch.nn.Module; open_clip ships no types)
    images: torch.Tensor,
    tokens: torch.Tensor,
    loss_function: LossFunction,
    *,
    micro_batch: int | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    scale_loss: Callable[[torch.Tensor], torch.Tensor] = lambda loss: loss,
) -> torch.Tensor:
    """Accumulate the gradients of `loss_function` over one batch into the model's `.grad`.

    images: (N, 3, H, W) float pixels; tokens: (N + E, L) int64, the N captions of the images
    followed by E >= 0 text-only rows (hard negative captions); `loss_function` then gets
    (N, D) image and (N + E, D) text embeddings. `micro_batch` M < N + E switches on gradient
    caching (same gradients, activations of M images and M captions at a time). `autocast` opens the
    mixed-precision context; `scale_loss` is the fp16 loss scaler's `scale`. Returns the detached
    scalar loss (float32).
    """
    n = max(images.shape[0], tokens.shape[0])
    if micro_batch is None or micro_batch >= n:
        with autocast():
            image_embeddings = _encode(model.encode_image, model.visual, images)
            text_embeddings = _encode(_text_encoder(model), _text_tower(model), tokens)
        loss = loss_function(
            _at_least_float32(image_embeddings), _at_least_float32(text_embeddings)
        )
        if loss.requires_grad:
            scale_loss(loss).backward()
        return loss.detach()
    return _cached_backward(model, images, tokens, loss_function, micro_batch, autocast, scale_loss)


def _cached_backward(model, images, tokens, loss_function, micro_batch, autocast, scale_loss):
    import torch

    # chunk i embeds images[chunk] and tokens[chunk]; past N only extra captions are left
    chunks = [slice(i, i + micro_batch)
              for i in range(0, max(images.shape[0], tokens.shape[0]), micro_batch)]
    states, image_parts, text_parts = [], [], []
    with torch.no_grad():  # pass 1: embeddings of the whole batch, no activations kept
        for chunk in chunks:
            states.append(_rng_state(images.device))
            with autocast():
                if chunk.start < images.shape[0]:
                    image_parts.append(
                        _at_least_float32(model.encode_image(images[chunk], normalize=True))
                    )
                if chunk.start < tokens.shape[0]:
                    text_parts.append(
                        _at_least_float32(encode_text(model, tokens[chunk]))
                    )
    image_embeddings = torch.cat(image_parts).requires_grad_()  # (N, D) leaf
    text_embeddings = torch.cat(text_parts).requires_grad_()  # (N + E, D) leaf
    loss = loss_function(image_embeddings, text_embeddings)
    scale_loss(loss).backward()  # pass 2: d loss / d embeddings (and the temperature's gradient)
    train_image = _trainable(model.visual)
    train_text = _trainable(_text_tower(model))
    # pass 3: push the cached gradients through the towers, one micro-batch at a time
    for chunk, state in zip(chunks, states, strict=True):
        _set_rng_state(state, images.device)  # same dropout masks as pass 1
        outputs, gradients = [], []
        with autocast():
            if train_image and chunk.start < images.shape[0]:
                assert image_embeddings.grad is not None  # pass 2 filled it: the loss uses it
                outputs.append(model.encode_image(images[chunk], normalize=True))
                gradients.append(image_embeddings.grad[chunk])
            if train_text and chunk.start < tokens.shape[0]:
                assert text_embeddings.grad is not None  # pass 2 filled it: the loss uses it
                outputs.append(encode_text(model, tokens[chunk]))
                gradients.append(text_embeddings.grad[chunk])
        if outputs:
            gradients = [g.to(o.dtype) for o, g in zip(outputs, gradients, strict=True)]
            torch.autograd.backward(outputs, gradients)
    return loss.detach()


def _at_least_float32(embeddings: torch.Tensor) -> torch.Tensor:
    """Autocast's fp16/bf16 embeddings up to float32 for the loss; a float64 model stays float64."""
    import torch

    return embeddings.to(torch.promote_types(embeddings.dtype, torch.float32))


def _encode(encode: Callable, tower: torch.nn.Module | None, inputs: torch.Tensor) -> torch.Tensor:
    """Embed with a graph only when the tower trains (a locked tower costs no activations)."""
    import torch

    context = contextlib.nullcontext() if _trainable(tower) else torch.no_grad()
    with context:
        return encode(inputs, normalize=True)


def _text_encoder(model: Any) -> Callable:
    """`model.encode_text`, over the positions up to the batch's last end token where that is
    exact (`text_tower.encode_text`)."""
    return lambda tokens, normalize: encode_text(model, tokens, normalize=normalize)


def _text_tower(model: Any) -> torch.nn.Module:
    """The module holding the text weights: `model.text` (custom-text CLIP) or the model itself."""
    return getattr(model, "text", None) or getattr(model, "transformer", model)


def _trainable(module: torch.nn.Module | None) -> bool:
    return module is not None and any(p.requires_grad for p in module.parameters())


def _rng_state(device: torch.device) -> tuple:
    import torch

    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple, device: torch.device) -> None:
    import torch

    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)
