"""Attention patterns read from activation caches: raw, value-weighted, clean vs counterfactual.

Value weighting (Kobayashi et al., 2020, "Attention is not only a weight") measures what actually
reaches the residual stream from each source: ``||pattern[q, k] * v[k] @ W_O[h]||`` with ``v`` the head's
value vector at the source (key) position and ``W_O[h]`` its output matrix (the same quantity as
:func:`dtinterp.interp.head_scores.value_weighted_attention`). ``||v||`` alone would ignore ``W_O``, which
can shrink or erase what a value vector carries. A head that attends strongly to a token whose output is
near zero moves little information, and this shows it. With ``renormalize`` each query row is divided by
its sum, so rows are again distributions over the source tokens (comparable across heads and inputs);
without it, entries keep the units of the residual stream and a row sums to the attention-weighted mean
output norm.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import ActivationCache


def output_norms(cache: ActivationCache, layer: int) -> Float[Tensor, "B H P"]:
    """``||v[k] @ W_O[h]||``: the norm of what each head writes from each source position (all on it)."""
    W_O = cache.model.blocks[layer].attn.W_O.detach()  # [H, dh, d]
    return torch.einsum("bphe,hed->bhpd", cache["v", layer], W_O.to(cache["v", layer])).norm(dim=-1)


def attention_pattern(
    cache: ActivationCache, layer: int, value_weighted: bool = False, renormalize: bool = True
) -> Float[Tensor, "B H Pq Pk"]:
    """The attention pattern of ``layer`` (optionally value-weighted; see the module docstring)."""
    pattern = cache["pattern", layer]  # [B, H, Pq, Pk]
    if not value_weighted:
        return pattern
    weighted = pattern * output_norms(cache, layer)[:, :, None, :]  # ||a v W_O|| = a ||v W_O||, a >= 0
    if renormalize:
        weighted = weighted / weighted.sum(-1, keepdim=True).clamp_min(torch.finfo(weighted.dtype).tiny)
    return weighted


def attention_patterns(
    cache: ActivationCache,
    layers: Sequence[int],
    value_weighted: bool = False,
    renormalize: bool = True,
) -> Float[Tensor, "L B H Pq Pk"]:
    """:func:`attention_pattern` of each of ``layers``, stacked."""
    return torch.stack([attention_pattern(cache, l, value_weighted, renormalize) for l in layers])


def compare_attention(
    clean: ActivationCache,
    counterfactual: ActivationCache,
    layers: Sequence[int],
    value_weighted: bool = False,
    renormalize: bool = True,
) -> tuple[Float[Tensor, "L B H P P"], Float[Tensor, "L B H P P"], Float[Tensor, "L B H P P"]]:
    """``(clean, counterfactual, counterfactual - clean)`` patterns of ``layers``."""
    a = attention_patterns(clean, layers, value_weighted, renormalize)
    b = attention_patterns(counterfactual, layers, value_weighted, renormalize)
    return a, b, b - a


def action_shift(
    clean_logits: Float[Tensor, "... A"], cf_logits: Float[Tensor, "... A"]
) -> tuple[Float[Tensor, "... A"], Float[Tensor, "... A"], Float[Tensor, "..."]]:
    """``(p_clean, p_counterfactual, KL(p_clean || p_counterfactual))`` of the action distributions."""
    log_p, log_q = clean_logits.log_softmax(-1), cf_logits.log_softmax(-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1).clamp_min(0.0)
    return log_p.exp(), log_q.exp(), kl
