"""open_clip's text tower over the tokens that matter, for search and for training alike.

CLIP's tokenizer pads every text to the model's context (77 tokens), but a caption is about 14
of them (flickr8k: median 14, the longest of a batch of 32 about 24). In open_clip's plain
CLIP text tower the padding after a text's end token changes nothing: the attention mask is
causal, so no position sees a later one, and the text's vector is read at its end token (the
highest token id, `argmax` pooling). Cutting the batch after its last end token therefore gives
the same vectors, and the same gradients, for a third of the work.

This is exact, not an approximation: `tests/test_text_tower.py` checks vectors and every
parameter's gradient against open_clip's own `encode_text` in float64. Other text towers
(a custom text model, another pooling, no causal mask) run open_clip's `encode_text` unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def can_trim(model: Any) -> bool:
    """True for open_clip's plain CLIP text tower: causal mask, argmax (end token) pooling."""
    return (
        getattr(model, "attn_mask", None) is not None
        and getattr(model, "text_pool_type", None) == "argmax"
        and hasattr(model, "positional_embedding")
        and hasattr(model, "token_embedding")
    )


def trimmed_length(tokens: torch.Tensor) -> int:
    """The positions of (n, context) int64 `tokens` up to the latest end token of any row.

    The end token is each row's largest id (what argmax pooling reads). Padding is id 0, but so
    is a lone "!" inside a text (`"!?."` tokenises to [sot, 0, ..., eot]): counting non-zero
    ids would cut such a row before its end token."""
    return int(tokens.argmax(dim=-1).max()) + 1 if tokens.shape[0] else tokens.shape[1]


def encode_text(model: Any, tokens: torch.Tensor, *, normalize: bool = True) -> torch.Tensor:
    """(n, context) int64 tokens -> (n, d) text features, as `model.encode_text(tokens,
    normalize=normalize)` computes them, over the positions up to the batch's last end token."""
    if not can_trim(model):
        return model.encode_text(tokens, normalize=normalize)
    import torch
    import torch.nn.functional as F
    from open_clip.transformer import text_global_pool

    length = trimmed_length(tokens)
    tokens = tokens[:, :length]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype)  # (n, length, width)
    x = x + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = text_global_pool(x, tokens, "argmax")  # (n, width) at each row's end token
    projection = model.text_projection
    if isinstance(projection, torch.nn.Linear):
        x = projection(x)
    elif projection is not None:
        x = x @ projection
    return F.normalize(x, dim=-1) if normalize else x
