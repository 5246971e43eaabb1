"""Activation kurtosis in the model's basis vs a random rotation of it: the privileged-basis test.

If nothing in the model singles out the coordinate axes of a space (the residual stream has no
elementwise nonlinearity), the distribution of per-dimension kurtosis is the same in any rotated basis.
Heavy tails (kurtosis far above the Gaussian 3) that appear only in the model's own basis mean the basis
is privileged: some dimensions carry rare, large, basis-aligned features (outlier dimensions, sparse
neurons). The test needs many tokens, so it runs over a batch of trajectory windows.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor
from transformer_lens import ActivationCache

from dtinterp.interp.norms import token_mask
from dtinterp.model.hooked_dt import HookedDecisionTransformer

HEAVY_TAIL = 10.0
"""Kurtosis above which a dimension counts as heavy tailed in the summaries."""


def kurtosis(x: Float[Tensor, "N D"]) -> Float[Tensor, "D"]:
    """Pearson kurtosis ``E[(x - mu)^4] / Var[x]^2`` of each column (a Gaussian gives 3).

    Population moments, in the input's precision (at least float32; moments of centred values, so
    float32 is accurate to ~1e-5 relative). A constant column (e.g. a dead neuron) gets NaN.
    """
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    mean = x.mean(0)
    sq = (x - mean).square_()
    var = sq.mean(0)
    k = sq.square_().mean(0) / var.square()
    defined = var > 1e-10 * (var + mean.square())  # relative: rounding error of a constant column is below
    return torch.where(defined, k, torch.full_like(k, float("nan")))


def random_rotation(d: int, generator: torch.Generator) -> Float[Tensor, "d d"]:
    """A uniformly random (Haar) orthogonal ``d x d`` matrix: QR of a Gaussian matrix, signs fixed."""
    g = torch.randn(d, d, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(g)
    sign = torch.sign(torch.diagonal(r))
    sign[sign == 0] = 1.0
    return q * sign  # scales column j of q by sign(r_jj): makes the distribution Haar


def summarize(k: Float[Tensor, "D"]) -> dict[str, float | int]:
    """Mean, median, max and fraction above :data:`HEAVY_TAIL` of the defined (non-NaN) kurtoses."""
    ok = k[~torch.isnan(k)]
    if ok.numel() == 0:
        nan = float("nan")
        return {"mean": nan, "median": nan, "max": nan, "frac_heavy": nan, "n": 0, "n_undefined": k.numel()}
    return {
        "mean": ok.mean().item(),
        "median": ok.median().item(),
        "max": ok.max().item(),
        "frac_heavy": (ok > HEAVY_TAIL).double().mean().item(),
        "n": ok.numel(),
        "n_undefined": k.numel() - ok.numel(),
    }


def site_activations(
    model: HookedDecisionTransformer, cache: ActivationCache, pad_mask: Bool[Tensor, "B K"]
) -> dict[str, Float[Tensor, "N D"]]:
    """Activations of every real token at each studied site, keyed by hook name.

    Sites: ``blocks.{l}.hook_resid_post`` (d_model dimensions) and, unless the model is attention-only,
    ``blocks.{l}.mlp.hook_post`` (d_mlp neurons), layer by layer.
    """
    real = token_mask(pad_mask)  # [B, P]
    out: dict[str, Tensor] = {}
    for layer in range(model.cfg.n_layers):
        out[f"blocks.{layer}.hook_resid_post"] = cache["resid_post", layer][real]
        if not model.cfg.attn_only:
            out[f"blocks.{layer}.mlp.hook_post"] = cache["post", layer][real]
    return out


@functools.lru_cache(maxsize=16)
def seeded_rotation(d: int, seed: int) -> Float[Tensor, "d d"]:
    """The Haar-random rotation of width ``d`` for ``seed`` (float64, CPU), memoised: do not modify it.

    Each (d, seed) pair has its own generator stream, so a width's rotation does not depend on which
    other widths were drawn before it.
    """
    stream = int(np.random.SeedSequence([seed, d]).generate_state(1)[0])
    return random_rotation(d, torch.Generator().manual_seed(stream))


@torch.no_grad()
def basis_kurtosis(
    acts: dict[str, Float[Tensor, "N D"]], seed: int = 0
) -> dict[str, tuple[Float[Tensor, "D"], Float[Tensor, "D"]]]:
    """Per site: (kurtosis per dimension in the given basis, kurtosis after a random rotation).

    Sites of the same width share the rotation :func:`seeded_rotation` ``(width, seed)``.
    """
    out = {}
    for name, x in acts.items():
        x = x if x.dtype in (torch.float32, torch.float64) else x.float()
        rot = seeded_rotation(x.shape[-1], seed).to(device=x.device, dtype=x.dtype)
        out[name] = (kurtosis(x), kurtosis(x @ rot))
    return out
