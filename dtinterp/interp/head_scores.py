"""What kind of head is this? Attention-type scores, value-weighted attention and low-rank patterns.

**Padding.** Windows are left-padded; ``pad_mask [B, K]`` marks real timesteps and
:func:`token_pad_mask` expands it to tokens ``[B, P]`` exactly as the model does. A real query never
attends to padding, so its pattern row sums to 1 over the real tokens; a padded query attends only to
itself and is excluded from every score here.

**Head-type scores** (:func:`head_type_scores`): for each head, the share of attention that real queries
(of the chosen token kinds) put on RTG, state and action tokens (these three sum to 1), on themselves
(``self``), on the tokens of their own timestep (``same_timestep``, self included), of the previous
timestep (``previous_timestep``) and on the first real token of the window (``first``, an attention sink),
averaged over the queries of each window.

**Value-weighted attention** (:func:`value_weighted_attention`, Kobayashi et al. 2020, "Attention is not
only a weight"): ``||pattern[q, k] * v[k] @ W_O[h]||``, the norm of what head ``h`` writes into the
residual stream at ``q`` from source ``k``. Unlike ``pattern * ||v||`` (:mod:`dtinterp.interp.attention`)
it measures the vector that actually reaches the stream, after ``W_O``.

**Low rank** (:func:`low_rank_pattern`): the best rank-``k`` approximation of a pattern matrix (truncated
SVD, Eckart-Young) and its relative Frobenius error; a pattern that is well approximated by rank 1 is a
head whose queries all look at the same places.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from dtinterp.interp.circuits import head_labels
from dtinterp.interp.dla import BatchedResult, Cache, cache_get
from dtinterp.model.hooked_dt import HookedDecisionTransformer
from dtinterp.model.inputs import TOKEN_KINDS, token_labels

HEAD_TYPES = ("rtg", "state", "action", "self", "same_timestep", "previous_timestep", "first")


def token_pad_mask(pad_mask: Bool[Tensor, "B K"]) -> Bool[Tensor, "B P"]:
    """Per-timestep ``pad_mask`` -> per-token mask over ``R1, S1, A1, ..., RK, SK`` (True: real)."""
    P = 3 * pad_mask.shape[1] - 1
    return pad_mask.repeat_interleave(3, dim=1)[:, :P]


def token_kind_ids(context_len: int) -> Int[Tensor, "P"]:
    """Index into :data:`TOKEN_KINDS` (0 R, 1 S, 2 A) of each token."""
    return torch.arange(3 * context_len - 1) % 3


def token_timestep_ids(context_len: int) -> Int[Tensor, "P"]:
    """Timestep index (0..K-1) of each token."""
    return torch.arange(3 * context_len - 1) // 3


def stacked_patterns(model: HookedDecisionTransformer, cache: Cache) -> Float[Tensor, "B L H P P"]:
    """Every layer's ``hook_pattern``, stacked."""
    return torch.stack(
        [cache_get(cache, f"blocks.{l}.attn.hook_pattern") for l in range(model.cfg.n_layers)], 1
    )


@dataclass
class HeadTypeScores(BatchedResult):
    """Per window and head, where real queries attend (see the module docstring)."""

    scores: Float[Tensor, "B L H T"]
    """Mean over the window's real queries of each :data:`HEAD_TYPES` share."""
    types: tuple[str, ...]
    heads: list[str]
    """``L{l}H{h}`` labels of the ``[L, H]`` grid flattened."""
    query_kinds: str
    """Token kinds whose queries were averaged (a subset of ``"RSA"``)."""
    valid: Bool[Tensor, "B"]
    """The window has at least one real query of those kinds."""

    def score(self, name: str) -> Float[Tensor, "B L H"]:
        return self.scores[..., self.types.index(name)]


@torch.no_grad()
def head_type_scores(
    model: HookedDecisionTransformer, cache: Cache, pad_mask: Bool[Tensor, "B K"], query_kinds: str = "RSA"
) -> HeadTypeScores:
    """Head-type scores of every head from a cache holding the patterns (``hook_pattern``)."""
    if not query_kinds or set(query_kinds) - set(TOKEN_KINDS):
        raise ValueError(
            f"query_kinds must be a non-empty subset of {''.join(TOKEN_KINDS)!r}, got {query_kinds!r}"
        )
    pattern = stacked_patterns(model, cache)  # [B, L, H, Pq, Pk]
    B, K = pad_mask.shape
    dev = pattern.device
    real = token_pad_mask(pad_mask).to(dev)  # [B, P]
    kind, step = token_kind_ids(K).to(dev), token_timestep_ids(K).to(dev)
    first = real.float().argmax(1)  # first real token of each window
    P = kind.shape[0]
    key_sets = [kind == 0, kind == 1, kind == 2]  # [P] over keys
    eye = torch.eye(P, dtype=torch.bool, device=dev)
    same = step[:, None] == step[None, :]
    prev = step[None, :] == step[:, None] - 1
    first_key = torch.arange(P, device=dev)[None, :] == first[:, None]  # [B, Pk]
    shares = [(pattern * m.to(pattern)).sum(-1) for m in key_sets]
    shares += [(pattern * m.to(pattern)).sum(-1) for m in (eye, same, prev)]
    shares.append((pattern * first_key[:, None, None, None, :].to(pattern)).sum(-1))
    per_query = torch.stack(shares, -1)  # [B, L, H, Pq, T]
    qmask = (
        real & torch.isin(kind, torch.tensor([TOKEN_KINDS.index(c) for c in query_kinds], device=dev))[None]
    )
    n = qmask.sum(1)  # [B]
    w = qmask.to(pattern) / n.clamp_min(1)[:, None]
    return HeadTypeScores(
        scores=torch.einsum("blhqt,bq->blht", per_query, w),
        types=HEAD_TYPES,
        heads=head_labels(model.cfg),
        query_kinds=query_kinds,
        valid=n > 0,
    )


@dataclass
class ValueWeightedAttention(BatchedResult):
    """Norm of what each head writes at each query from each source token."""

    norms: Float[Tensor, "B L H P P"]
    """``||pattern[q, k] * v[k] @ W_O[h]||`` (zero on padding for real queries)."""
    normalized: Float[Tensor, "B L H P P"]
    """``norms`` divided by their row sum: a distribution over sources per query, comparable across heads."""
    write_norms: Float[Tensor, "B L H P"]
    """``||v[k] @ W_O[h]||``: what the head would write from source ``k`` with all attention on it."""
    token_labels: list[str]
    heads: list[str]
    real: Bool[Tensor, "B P"]
    """Real (not padded) tokens."""
    valid: Bool[Tensor, "B"]
    """Every window is valid (kept for :meth:`stats`)."""


@torch.no_grad()
def value_weighted_attention(
    model: HookedDecisionTransformer, cache: Cache, pad_mask: Bool[Tensor, "B K"]
) -> ValueWeightedAttention:
    """Value-weighted attention of every head (Kobayashi et al. 2020) from ``hook_v`` and ``hook_pattern``."""
    pattern = stacked_patterns(model, cache)
    v = torch.stack(
        [cache_get(cache, f"blocks.{l}.attn.hook_v") for l in range(model.cfg.n_layers)], 1
    )  # [B, L, P, H, dh]
    write = torch.einsum("blphe,lhed->blhpd", v, model.W_O.detach()).norm(dim=-1)  # [B, L, H, P]
    norms = pattern * write[..., None, :]
    normalized = norms / norms.sum(-1, keepdim=True).clamp_min(torch.finfo(norms.dtype).tiny)
    return ValueWeightedAttention(
        norms=norms,
        normalized=normalized,
        write_norms=write,
        token_labels=token_labels(pad_mask.shape[1]),
        heads=head_labels(model.cfg),
        real=token_pad_mask(pad_mask),
        valid=torch.ones(pad_mask.shape[0], dtype=torch.bool),
    )


@dataclass
class LowRankPattern:
    """Best rank-k approximations of pattern matrices."""

    approx: Float[Tensor, "... P P"]
    """``U[:, :k] diag(S[:k]) V[:, :k].T``."""
    singular_values: Float[Tensor, "... P"]
    error: Float[Tensor, "..."]
    """``||pattern - approx||_F / ||pattern||_F``."""
    error_by_rank: Float[Tensor, "... R"]
    """The relative error of every rank ``0..P`` (a curve; ``error_by_rank[..., k] == error``)."""
    k: int


@torch.no_grad()
def low_rank_pattern(
    pattern: Float[Tensor, "... P P"], k: int, real: Bool[Tensor, "... P"] | None = None
) -> LowRankPattern:
    """Rank-``k`` SVD approximation of ``pattern`` (padded rows and columns zeroed first, given ``real``)."""
    if real is not None:
        m = real.to(pattern)
        pattern = pattern * m[..., :, None] * m[..., None, :]
    # numpy's LAPACK SVD: torch's batched CPU SVD can crawl when its thread pool shares a busy machine.
    U, S, Vh = (
        torch.from_numpy(a).to(pattern.device)
        for a in np.linalg.svd(pattern.detach().double().cpu().numpy(), full_matrices=False)
    )
    k = max(0, min(int(k), S.shape[-1]))
    approx = (U[..., :k] * S[..., None, :k]) @ Vh[..., :k, :]
    total = S.pow(2).sum(-1, keepdim=True).clamp_min(1e-300)
    tail = S.pow(2).flip(-1).cumsum(-1).flip(-1)  # tail[i] = sum_{j >= i} S_j^2
    curve = torch.cat([tail, torch.zeros_like(tail[..., :1])], -1) / total
    norm = pattern.double().norm(dim=(-2, -1)).clamp_min(1e-300)
    return LowRankPattern(
        approx=approx.to(pattern.dtype),
        singular_values=S.to(pattern.dtype),
        error=((pattern.double() - approx).norm(dim=(-2, -1)) / norm).to(pattern.dtype),
        error_by_rank=curve.sqrt().to(pattern.dtype),
        k=k,
    )
