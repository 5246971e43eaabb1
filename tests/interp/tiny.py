"""A tiny hand-sized DT and random valid windows, shared by the causal-library tests (patching, ablation,
path patching, attribution patching, circuit discovery, scrubbing, steering)."""

from __future__ import annotations

import torch

from dtinterp.model import DTConfig, DTInputs, HookedDecisionTransformer


def make_model(**kw) -> HookedDecisionTransformer:
    """A 2-layer, 2-head DT with weights large enough for patches to matter, and non-zero biases."""
    base = dict(
        context_len=3, n_layers=2, n_heads=2, d_model=16, d_mlp=8, max_timestep=20, init_range=0.3, seed=0
    )
    model = HookedDecisionTransformer(DTConfig(**{**base, **kw})).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


def make_inputs(B: int = 3, K: int = 3, seed: int = 0) -> DTInputs:
    """Random valid windows; window 0 is left-padded by one timestep."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.stack(
        [torch.randint(0, 10, (B, K, 7, 7), generator=g), torch.randint(0, 6, (B, K, 7, 7), generator=g),
         torch.randint(0, 3, (B, K, 7, 7), generator=g)], -1,
    ).to(torch.uint8)  # fmt: skip
    pad = torch.ones(B, K, dtype=torch.bool)
    pad[0, 0] = False
    return DTInputs(
        obs=obs,
        directions=torch.randint(0, 4, (B, K), generator=g),
        rtg=torch.rand(B, K, generator=g),
        actions=torch.randint(0, 7, (B, K), generator=g),
        timesteps=torch.arange(K).expand(B, K).clone(),
        pad_mask=pad,
    )


def linearize(model: HookedDecisionTransformer) -> HookedDecisionTransformer:
    """Make ``model``'s logits affine in every activation a sweep patches (in place; it needs
    ``normalization_type=None``): W_Q = W_K = 0, so every attention pattern is uniform over the allowed keys
    whatever the residual stream, and small MLP input weights with large biases keep every ReLU on."""
    with torch.no_grad():
        for blk in model.blocks:
            blk.attn.W_Q.zero_()
            blk.attn.W_K.zero_()
            blk.mlp.W_in.mul_(0.02)
            blk.mlp.b_in.fill_(20.0)
    return model
