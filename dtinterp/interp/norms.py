"""Residual stream norms and the size vs. direct effect of each component's output.

A component can write a large vector into the residual stream that the unembedding barely reads, or a
small one aimed straight at an action: putting each component's output norm beside its direct
contribution to the predicted action's logit separates the two. Padded timesteps are excluded
everywhere (their activations are arbitrary).
"""

from __future__ import annotations

from typing import Literal

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from transformer_lens import ActivationCache

from dtinterp.model.hooked_dt import HookedDecisionTransformer

#: Residual stream sites within a block, in order (``resid_mid`` only exists with an MLP).
RESID_SITES = ("resid_pre", "resid_mid", "resid_post")
STATE_SLICE = slice(1, None, 3)  # S1, S2, ... in the token sequence R1, S1, A1, ...


def token_mask(pad_mask: Bool[Tensor, "B K"]) -> Bool[Tensor, "B P"]:
    """The timestep pad mask expanded to the ``3K - 1`` tokens (True = real token)."""
    K = pad_mask.shape[1]
    return pad_mask.repeat_interleave(3, dim=1)[:, : 3 * K - 1]


def resid_sites(model: HookedDecisionTransformer) -> tuple[str, ...]:
    """The residual sites each block of ``model`` has."""
    return tuple(s for s in RESID_SITES if not (model.cfg.attn_only and s == "resid_mid"))


def masked_batch_stats(
    x: Float[Tensor, "... B P"], mask: Bool[Tensor, "B P"]
) -> tuple[Float[Tensor, "... P"], Float[Tensor, "... P"]]:
    """Mean and (population) standard deviation over the batch of the entries where ``mask`` is True.

    A position with no real entry gets NaN.
    """
    m = mask.to(x.dtype)
    count = m.sum(0)  # [P]
    total = (x * m).sum(-2)
    mean = total / count
    var = (((x - mean.unsqueeze(-2)) ** 2) * m).sum(-2) / count
    return mean, var.clamp_min(0).sqrt()


@torch.no_grad()
def residual_norms(
    model: HookedDecisionTransformer, cache: ActivationCache
) -> tuple[Float[Tensor, "L S B P"], list[str]]:
    """L2 norm of the residual stream at every block's sites, every batch row and every token.

    Returns the norms and the site names (``resid_pre`` .. ``resid_post``); padded tokens are not
    masked here (see :func:`masked_batch_stats`).
    """
    sites = resid_sites(model)
    norms = [
        torch.stack([torch.linalg.norm(cache[site, layer], dim=-1) for site in sites])  # [S, B, P]
        for layer in range(model.cfg.n_layers)
    ]
    return torch.stack(norms), list(sites)


def select_state_tokens(
    pad_mask: Bool[Tensor, "B K"], position: Literal["last", "all"]
) -> tuple[Int[Tensor, "N"], Int[Tensor, "N"]]:
    """Batch and timestep indices ``(b, k)`` of the state tokens to study: the last of each window, or
    every real one."""
    B, K = pad_mask.shape
    if position == "last":
        return torch.arange(B, device=pad_mask.device), torch.full((B,), K - 1, device=pad_mask.device)
    if position == "all":
        b, k = torch.nonzero(pad_mask, as_tuple=True)
        return b, k
    raise ValueError(f"position must be 'last' or 'all', got {position!r}")


@torch.no_grad()
def head_results(
    model: HookedDecisionTransformer, cache: ActivationCache, pos_slice: slice = STATE_SLICE
) -> tuple[Float[Tensor, "LH B p d"], list[str]]:
    """Each head's output ``z @ W_O`` (without ``b_O``) at the positions ``pos_slice``, labelled ``L{l}H{h}``.

    Equal to ``cache.stack_head_results`` on those positions, computed here so the shared cache is
    not written to and only the needed positions are multiplied.
    """
    out, labels = [], []
    for layer in range(model.cfg.n_layers):
        z = cache["z", layer][:, pos_slice]  # [B, p, H, dh]
        out.append(torch.einsum("bphe,hed->hbpd", z, model.blocks[layer].attn.W_O))
        labels += [f"L{layer}H{h}" for h in range(model.cfg.n_heads)]
    return torch.cat(out), labels


@torch.no_grad()
def component_effects(
    model: HookedDecisionTransformer,
    cache: ActivationCache,
    logits: Float[Tensor, "B K A"],
    pad_mask: Bool[Tensor, "B K"],
    position: Literal["last", "all"] = "last",
    heads: bool = True,
) -> dict[str, Tensor | list[str]]:
    """Output norm and direct contribution to the predicted action's logit of every component.

    Components are ``cache.decompose_resid`` of the final residual stream (``embed``, ``pos_embed``,
    ``{l}_attn_out``, ``{l}_mlp_out``) and, if ``heads``, each head's output. The direct contribution
    is the component through the final LayerNorm's cached scale dotted with ``W_U[:, a]`` for the
    predicted action ``a``; over the ``decompose_resid`` components it sums, with ``b_U[a]``, to the
    logit exactly. Returned per selected state token ``n`` (see :func:`select_state_tokens`):
    ``labels``, ``norm`` and ``dla`` ``[C, N]``, ``action``/``logit``/``bias`` ``[N]``, ``batch``/``step``
    ``[N]``, and with heads ``head_labels``, ``head_norm``, ``head_dla`` ``[L*H, N]``.
    """
    b, k = select_state_tokens(pad_mask, position)
    action = logits.argmax(-1)[b, k]  # [N]
    direction = model.W_U.T[action]  # [N, d]
    # Only the state tokens needed: the final token (S_K) alone for "last", every state token for "all".
    pos_slice, kk = (slice(-1, None), torch.zeros_like(k)) if position == "last" else (STATE_SLICE, k)

    def measure(stack: Tensor) -> tuple[Tensor, Tensor]:  # stack [C, B, p, d] at pos_slice
        scaled = cache.apply_ln_to_stack(stack, layer=-1, pos_slice=pos_slice)
        return torch.linalg.norm(stack[:, b, kk], dim=-1), (scaled[:, b, kk] * direction).sum(-1)

    comps, labels = cache.decompose_resid(layer=-1, pos_slice=pos_slice, return_labels=True)
    norm, dla = measure(comps)
    out: dict[str, Tensor | list[str]] = {
        "labels": labels,
        "norm": norm,
        "dla": dla,
        "action": action,
        "logit": logits[b, k, action],
        "bias": model.b_U[action],
        "batch": b,
        "step": k,
    }
    if heads:
        stack, head_labels = head_results(model, cache, pos_slice)
        out["head_labels"] = head_labels
        out["head_norm"], out["head_dla"] = measure(stack)
    return out
