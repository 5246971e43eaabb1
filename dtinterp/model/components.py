"""Transformer components with TransformerLens names, hooks and weight layouts.

Each class is one concept, a screen long. Shapes: B batch, P token positions, H heads, d d_model,
dh d_head, m d_mlp. Weight layouts are TL's (``W_Q [H, d, dh]``, ``W_O [H, dh, d]``, ``W_in [d, m]``),
so ``ActivationCache`` and ``FactoredMatrix`` read them unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from dtinterp.model.config import DTConfig


def _has_hooks(*points: HookPoint) -> bool:
    return any(p.fwd_hooks or p.bwd_hooks for p in points)


class LayerNorm(nn.Module):
    """LayerNorm exposing ``hook_scale`` and ``hook_normalized``; ``affine=False`` is TL's LNPre."""

    def __init__(self, d_model: int, affine: bool = True, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.affine = affine
        if affine:
            self.w = nn.Parameter(torch.ones(d_model))
            self.b = nn.Parameter(torch.zeros(d_model))
        self.hook_scale = HookPoint()  # [B, P, 1]
        self.hook_normalized = HookPoint()  # [B, P, d]

    def forward(self, x: Float[Tensor, "B P d"]) -> Float[Tensor, "B P d"]:
        if not _has_hooks(self.hook_scale, self.hook_normalized):  # same function, one fused kernel
            w, b = (self.w, self.b) if self.affine else (None, None)
            return F.layer_norm(x, x.shape[-1:], w, b, self.eps)
        x = x - x.mean(-1, keepdim=True)
        scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        x = self.hook_normalized(x / scale)
        return x * self.w + self.b if self.affine else x


def make_norm(cfg: DTConfig, final: bool = False) -> nn.Module:
    """The normalization a config asks for.

    The final norm never has learned affine parameters: ``w`` and ``b`` before the linear unembedding
    are redundant with ``W_U`` and ``b_U`` (same function class), and without them the cached scale alone
    turns any residual component into its exact logit contribution.
    """
    if cfg.normalization_type is None:
        return nn.Identity()
    return LayerNorm(cfg.d_model, affine=cfg.normalization_type == "LN" and not final)


class Attention(nn.Module):
    """Causal multi-head attention with a key padding mask.

    A query attends to every earlier real token and to itself, so a padded query still has a valid
    softmax while real queries never see padding.
    """

    def __init__(self, cfg: DTConfig):
        super().__init__()
        H, d, dh = cfg.n_heads, cfg.d_model, cfg.d_head
        self.cfg = cfg
        self.W_Q = nn.Parameter(torch.empty(H, d, dh))
        self.W_K = nn.Parameter(torch.empty(H, d, dh))
        self.W_V = nn.Parameter(torch.empty(H, d, dh))
        self.W_O = nn.Parameter(torch.empty(H, dh, d))
        self.b_Q = nn.Parameter(torch.zeros(H, dh))
        self.b_K = nn.Parameter(torch.zeros(H, dh))
        self.b_V = nn.Parameter(torch.zeros(H, dh))
        self.b_O = nn.Parameter(torch.zeros(d))
        self.attn_scale = math.sqrt(dh)
        self.hook_q = HookPoint()  # [B, P, H, dh]
        self.hook_k = HookPoint()  # [B, P, H, dh]
        self.hook_v = HookPoint()  # [B, P, H, dh]
        self.hook_attn_scores = HookPoint()  # [B, H, Pq, Pk]
        self.hook_pattern = HookPoint()  # [B, H, Pq, Pk]
        self.hook_z = HookPoint()  # [B, P, H, dh]
        self.hook_result = HookPoint()  # [B, P, H, d] (only when cfg.use_attn_result)

    def _hooked(self) -> bool:
        return self.cfg.use_attn_result or _has_hooks(
            self.hook_q, self.hook_k, self.hook_v, self.hook_attn_scores, self.hook_pattern, self.hook_z,
            self.hook_result,
        )  # fmt: skip

    def forward(self, x: Float[Tensor, "B P d"], allowed: Bool[Tensor, "B 1 P P"]) -> Float[Tensor, "B P d"]:
        if not self._hooked():
            return self._fast_forward(x, allowed)
        q = self.hook_q(torch.einsum("bpd,hde->bphe", x, self.W_Q) + self.b_Q)
        k = self.hook_k(torch.einsum("bpd,hde->bphe", x, self.W_K) + self.b_K)
        v = self.hook_v(torch.einsum("bpd,hde->bphe", x, self.W_V) + self.b_V)
        scores = torch.einsum("bqhe,bkhe->bhqk", q, k) / self.attn_scale
        scores = self.hook_attn_scores(scores.masked_fill(~allowed, float("-inf")))
        pattern = self.hook_pattern(scores.softmax(-1))
        z = self.hook_z(torch.einsum("bhqk,bkhe->bqhe", pattern, v))  # [B, P, H, dh]
        if self.cfg.use_attn_result:
            result = self.hook_result(torch.einsum("bphe,hed->bphd", z, self.W_O))  # [B, P, H, d]
            return result.sum(-2) + self.b_O
        return torch.einsum("bphe,hed->bpd", z, self.W_O) + self.b_O

    def _fast_forward(
        self, x: Float[Tensor, "B P d"], allowed: Bool[Tensor, "B 1 P P"]
    ) -> Float[Tensor, "B P d"]:
        """Same function through fused QKV and ``scaled_dot_product_attention``; no internals exposed."""
        B, P, _ = x.shape
        H, dh = self.cfg.n_heads, self.cfg.d_head
        W = torch.cat([self.W_Q, self.W_K, self.W_V], 0).permute(1, 0, 2).reshape(x.shape[-1], 3 * H * dh)
        b = torch.cat([self.b_Q, self.b_K, self.b_V], 0).reshape(3 * H * dh)
        qkv = torch.addmm(b, x.reshape(B * P, -1), W).view(B, P, 3, H, dh).permute(2, 0, 3, 1, 4)
        z = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=allowed)  # [B, H, P, dh]
        z = z.transpose(1, 2).reshape(B * P, H * dh)
        return torch.addmm(self.b_O, z, self.W_O.reshape(H * dh, -1)).view(B, P, -1)


class MLP(nn.Module):
    """Two-layer MLP with ``hook_pre`` and ``hook_post`` on the neurons."""

    def __init__(self, cfg: DTConfig):
        super().__init__()
        self.W_in = nn.Parameter(torch.empty(cfg.d_model, cfg.d_mlp))
        self.b_in = nn.Parameter(torch.zeros(cfg.d_mlp))
        self.W_out = nn.Parameter(torch.empty(cfg.d_mlp, cfg.d_model))
        self.b_out = nn.Parameter(torch.zeros(cfg.d_model))
        self.act_fn = F.relu if cfg.act_fn == "relu" else F.gelu
        self.hook_pre = HookPoint()  # [B, P, m]
        self.hook_post = HookPoint()  # [B, P, m]

    def forward(self, x: Float[Tensor, "B P d"]) -> Float[Tensor, "B P d"]:
        pre = self.hook_pre(x @ self.W_in + self.b_in)
        post = self.hook_post(self.act_fn(pre))
        return post @ self.W_out + self.b_out


class TransformerBlock(nn.Module):
    """Pre-norm residual block: ``resid_mid = resid_pre + attn(ln1(.))``, ``resid_post = resid_mid + mlp(ln2(.))``."""

    def __init__(self, cfg: DTConfig):
        super().__init__()
        self.cfg = cfg
        self.ln1 = make_norm(cfg)
        self.attn = Attention(cfg)
        self.hook_resid_pre = HookPoint()
        self.hook_attn_out = HookPoint()
        self.hook_resid_post = HookPoint()
        if not cfg.attn_only:
            self.ln2 = make_norm(cfg)
            self.mlp = MLP(cfg)
            self.hook_resid_mid = HookPoint()
            self.hook_mlp_out = HookPoint()

    def forward(
        self, resid: Float[Tensor, "B P d"], allowed: Bool[Tensor, "B 1 P P"]
    ) -> Float[Tensor, "B P d"]:
        resid = self.hook_resid_pre(resid)
        resid = resid + self.hook_attn_out(self.attn(self.ln1(resid), allowed))
        if not self.cfg.attn_only:
            resid = self.hook_resid_mid(resid)
            resid = resid + self.hook_mlp_out(self.mlp(self.ln2(resid)))
        return self.hook_resid_post(resid)
