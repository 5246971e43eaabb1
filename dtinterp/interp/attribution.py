"""Direct logit attribution: what each component writes straight into the action logits.

The final norm of the DT has no affine parameters (see :func:`dtinterp.model.components.make_norm`), so
given the cached final scale ``s`` (``ln_final.hook_scale``) the logits are *linear* in the residual
stream: ``logits = (centre(resid) / s) @ W_U + b_U``. Centering is itself linear and folds into the
unembedding (``centre(x) @ W_U == x @ (W_U - W_U.mean(0))``), so every residual component ``c`` writes
exactly ``(c @ W_U_centred) / s`` into the logits, and the contributions of a complete decomposition of
the residual stream sum to ``logits - b_U``. This equals TransformerLens'
``cache.apply_ln_to_stack(stack, layer=-1, pos_slice=...) @ W_U``, computed without materialising the
``[components, ..., d_model]`` stack (each component is projected onto ``[d_model, n_actions]`` first).

The decomposition of the residual stream at a position, by ``granularity``:

==========  ==============================================================================
all         ``rtg_embed`` / ``state_embed`` / ``action_embed`` (the token embedding, by the kind of
            the position: at an R position the embedding is the RTG embedding, etc.; only the kinds
            present among ``positions`` are listed), ``time_embed`` (``hook_pos_embed``) and
            ``bias`` (the accumulated attention ``b_O`` and MLP ``b_out`` of every layer)
``layer``   ``L{l}_attn`` (the sum of the heads of layer l, without ``b_O``) and ``L{l}_mlp``
            (the MLP output without ``b_out``)
``head``    ``L{l}H{h}`` per head (``z @ W_O[h]``, TL's ``stack_head_results``) and ``L{l}_mlp``
``neuron``  ``L{l}H{h}`` per head and ``L{l}N{n}`` per MLP neuron (``post[n] * W_out[n]``)
==========  ==============================================================================

Biases are kept out of the heads and layers so that the same ``bias`` row appears at every granularity
and a layer's row is exactly the sum of its heads' (or neurons') rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import ActivationCache

from dtinterp.model.hooked_dt import HookedDecisionTransformer
from dtinterp.model.inputs import TOKEN_KINDS, state_positions

GRANULARITIES = ("layer", "head", "neuron")
_EMBED_LABELS = {"R": "rtg_embed", "S": "state_embed", "A": "action_embed"}


def centred_unembed(model: HookedDecisionTransformer) -> Float[Tensor, "d A"]:
    """``W_U`` with the final norm's centering folded in (``W_U`` itself when the model has no LN)."""
    W_U = model.W_U
    if model.cfg.normalization_type in ("LN", "LNPre"):
        return W_U - W_U.mean(0, keepdim=True)
    return W_U


def dla_hook_names(model: HookedDecisionTransformer, granularity: str) -> list[str]:
    """Names of the activations :func:`direct_logit_attribution` reads (a ``names_filter`` for a run)."""
    _check_granularity(granularity)
    names = ["hook_embed", "hook_pos_embed"]
    if model.cfg.normalization_type is not None:
        names.append("ln_final.hook_scale")
    for l in range(model.cfg.n_layers):
        names.append(f"blocks.{l}.hook_attn_out" if granularity == "layer" else f"blocks.{l}.attn.hook_z")
        if not model.cfg.attn_only:
            names.append(
                f"blocks.{l}.mlp.hook_post" if granularity == "neuron" else f"blocks.{l}.hook_mlp_out"
            )
    return names


def direct_logit_attribution(
    model: HookedDecisionTransformer,
    cache: ActivationCache | dict[str, Tensor],
    granularity: str = "layer",
    positions: Sequence[int] | None = None,
) -> tuple[Float[Tensor, "C B Kp A"], list[str]]:
    """Direct contribution of every component to every action logit at ``positions``.

    ``positions`` are token positions (default: every state token S1..SK, where logits are read).
    Returns ``(contrib, labels)``: ``contrib[c, b, i, a]`` is component ``labels[c]``'s contribution to
    logit ``a`` at ``positions[i]`` of batch row ``b``; ``contrib.sum(0) + model.b_U`` are the logits.
    See the module docstring for the components of each granularity.
    """
    _check_granularity(granularity)
    cfg = model.cfg
    embed = cache["hook_embed"]  # [B, P, d]
    P = embed.shape[1]
    if positions is None:
        positions = state_positions((P + 1) // 3)
    pos = torch.as_tensor(list(positions), dtype=torch.long, device=embed.device)
    if pos.numel() == 0 or int(pos.min()) < 0 or int(pos.max()) >= P:
        raise ValueError(f"positions must be non-empty token positions in 0..{P - 1}, got {list(positions)}")

    W = centred_unembed(model)  # [d, A]
    if cfg.normalization_type is None:
        inv_scale = torch.ones(embed.shape[0], len(pos), 1, dtype=embed.dtype, device=embed.device)
    else:
        inv_scale = 1.0 / cache["ln_final.hook_scale"][:, pos]  # [B, Kp, 1]

    def project(x: Float[Tensor, "B Kp d"]) -> Float[Tensor, "B Kp A"]:
        return (x @ W) * inv_scale

    rows: list[Tensor] = []  # chunks [n, B, Kp, A]
    labels: list[str] = []
    # Token embeddings, split by the kind of token at each position, then the time embedding.
    embed_logits = project(embed[:, pos])
    kinds = pos % 3
    for i, kind in enumerate(TOKEN_KINDS):
        mask = kinds == i
        if bool(mask.any()):
            rows.append((embed_logits * mask[None, :, None].to(embed_logits.dtype))[None])
            labels.append(_EMBED_LABELS[kind])
    rows.append(project(cache["hook_pos_embed"][:, pos])[None])
    labels.append("time_embed")

    for l in range(cfg.n_layers):
        block = model.blocks[l]
        if granularity == "layer":
            rows.append(project(cache[f"blocks.{l}.hook_attn_out"][:, pos] - block.attn.b_O)[None])
            labels.append(f"L{l}_attn")
        else:
            z = cache[f"blocks.{l}.attn.hook_z"][:, pos]  # [B, Kp, H, dh]
            W_OU = block.attn.W_O @ W  # [H, dh, A]
            rows.append(torch.einsum("bkhe,hea->hbka", z, W_OU) * inv_scale[None])
            labels.extend(f"L{l}H{h}" for h in range(cfg.n_heads))
        if cfg.attn_only:
            continue
        if granularity == "neuron":
            post = cache[f"blocks.{l}.mlp.hook_post"][:, pos]  # [B, Kp, m]
            W_outU = block.mlp.W_out @ W  # [m, A]
            rows.append(torch.einsum("bkm,ma->mbka", post * inv_scale, W_outU))
            labels.extend(f"L{l}N{n}" for n in range(cfg.d_mlp))
        else:
            rows.append(project(cache[f"blocks.{l}.hook_mlp_out"][:, pos] - block.mlp.b_out)[None])
            labels.append(f"L{l}_mlp")

    bias = model.accumulated_bias(cfg.n_layers).to(embed.dtype)  # [d]
    rows.append(((bias @ W) * inv_scale)[None])
    labels.append("bias")
    return torch.cat(rows), labels


def _check_granularity(granularity: str) -> None:
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
