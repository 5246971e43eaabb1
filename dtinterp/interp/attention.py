"""Attention patterns read from activation caches: raw, value-weighted, clean vs counterfactual.

Value weighting (after Kobayashi et al., 2020, "Attention is not only a weight") scales each pattern entry
by the size of what the source token sends: ``pattern[q, k] * ||v[k]||`` with ``v`` the head's value
vector at the source (key) position. A head that attends strongly to a token whose value vector is near
zero moves little information, and this shows it. With ``renormalize`` each query row is divided by its
sum, so rows are again distributions over the source tokens (comparable across heads and inputs); without
it, entries keep the units of ``||v||`` and a row sums to the attention-weighted mean value norm.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import ActivationCache


def value_norms(cache: ActivationCache, layer: int) -> Float[Tensor, "B H P"]:
    """L2 norm of each head's value vector at every source position."""
    return cache["v", layer].norm(dim=-1).transpose(1, 2)  # [B, P, H, dh] -> [B, H, P]


def attention_pattern(
    cache: ActivationCache, layer: int, value_weighted: bool = False, renormalize: bool = True
) -> Float[Tensor, "B H Pq Pk"]:
    """The attention pattern of ``layer`` (optionally value-weighted; see the module docstring)."""
    pattern = cache["pattern", layer]  # [B, H, Pq, Pk]
    if not value_weighted:
        return pattern
    weighted = pattern * value_norms(cache, layer)[:, :, None, :]
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
