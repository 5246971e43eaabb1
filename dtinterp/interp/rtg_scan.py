"""RTG scan: how the action logits and each component's direct contribution depend on the return-to-go.

One window is copied ``N`` times, its RTG tokens set to a sweep of values, and the whole sweep runs as ONE
batched forward pass with a cache restricted to what the direct logit attribution reads
(:mod:`dtinterp.interp.attribution`). Two ways to set a window's RTGs to a swept value ``v``:

- ``shift`` (default): add ``v - rtg_last`` to every real RTG token. The last RTG becomes ``v`` and the
  earlier ones keep their offsets from it, i.e. the rewards collected inside the window are unchanged, so
  the window stays a consistent trajectory with a different promised return.
- ``constant``: set every real RTG token to ``v`` (the window claims no reward was collected inside it).

``rtg_scan`` reads one state token ``S_k`` and sweeps ``R_k`` (the window is cut after timestep k).
Padded timesteps are left untouched (the model never reads them). Values are in return units and divided
by ``rtg_scale`` like the model's inputs. :func:`correlation_clustering` clusters the components by how
alike their contributions move over the sweep (a clustergram's numbers).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from scipy.cluster.hierarchy import dendrogram, linkage
from scipy.spatial.distance import squareform
from torch import Tensor
from transformer_lens import ActivationCache

from dtinterp.interp.attribution import direct_logit_attribution, dla_hook_names
from dtinterp.model.hooked_dt import HookedDecisionTransformer
from dtinterp.model.inputs import DTInputs

RTG_MODES = ("shift", "constant")


def sweep_rtg(
    window: DTInputs, values: Float[Tensor, "N"], rtg_scale: float = 1.0, mode: str = "shift"
) -> DTInputs:
    """``N`` copies of the single ``window`` (batch 1) with RTGs set to ``values`` (see module docstring)."""
    if window.batch_size != 1:
        raise ValueError(f"sweep_rtg takes one window, got a batch of {window.batch_size}")
    if mode not in RTG_MODES:
        raise ValueError(f"mode must be one of {RTG_MODES}, got {mode!r}")
    N = values.shape[0]
    out = DTInputs(
        **{
            f.name: getattr(window, f.name).expand(N, *getattr(window, f.name).shape[1:]).clone()
            for f in fields(DTInputs)
        }
    )
    target = values.to(out.rtg)[:, None] / rtg_scale  # [N, 1] in model units
    swept = out.rtg + (target - out.rtg[:, -1:]) if mode == "shift" else target.expand_as(out.rtg)
    out.rtg = torch.where(out.pad_mask, swept, out.rtg)
    return out


@dataclass
class RTGScanResult:
    """Logits and direct logit attribution at one state token over an RTG sweep."""

    values: Float[Tensor, "N"]
    """Swept RTG values (return units): the last real RTG of each sweep window."""
    logits: Float[Tensor, "N A"]
    probs: Float[Tensor, "N A"]
    contributions: Float[Tensor, "C N A"]
    """Direct contribution of each component to each action logit; ``.sum(0) + b_U == logits``."""
    labels: list[str]
    b_U: Float[Tensor, "A"]


def rtg_scan(
    model: HookedDecisionTransformer,
    window: DTInputs,
    values: Float[Tensor, "N"],
    *,
    rtg_scale: float = 1.0,
    mode: str = "shift",
    position: int = -1,
    granularity: str = "head",
) -> RTGScanResult:
    """Sweep the RTG of ``window`` over ``values`` in one batched forward; read state ``position``.

    ``position`` indexes the window's timesteps (``-1``: the last state token ``SK``). The window is cut
    after that timestep first: later tokens cannot reach ``S_position`` through causal attention, so the
    logits are unchanged and the swept "last RTG" is ``R_position``, the return the read state is
    conditioned on.
    """
    K = window.context_len
    if not -K <= position < K:
        raise ValueError(f"position {position} is outside the window of {K} timesteps")
    k = position % K
    cut = DTInputs(**{f.name: getattr(window, f.name)[:, : k + 1] for f in fields(DTInputs)})
    batch = sweep_rtg(cut, values, rtg_scale, mode)
    with torch.inference_mode():
        logits, raw = model.run_with_cache(batch, names_filter=dla_hook_names(model, granularity))
        contrib, labels = direct_logit_attribution(
            model, ActivationCache(raw, model), granularity, [3 * k + 1]
        )
        logits = logits[:, k]  # [N, A]
        return RTGScanResult(
            values=values.detach().to(logits.dtype),
            logits=logits,
            probs=logits.softmax(-1),
            contributions=contrib[:, :, 0],  # [C, N, A]
            labels=labels,
            b_U=model.b_U.detach().clone(),
        )


@dataclass
class Clustering:
    """Components clustered by the correlation of their series (average linkage on ``1 - corr``)."""

    corr: np.ndarray
    """float64 [C, C] Pearson correlation; rows/columns of constant series are 0 with 1 on the diagonal."""
    constant: np.ndarray
    """bool [C]: series with (numerically) zero variance, for which a correlation is undefined."""
    order: np.ndarray
    """int64 [C]: leaf order of the dendrogram (a permutation of the components)."""
    linkage: np.ndarray
    """float64 [C-1, 4] scipy linkage matrix (empty when C < 2)."""
    dendrogram: dict[str, Any]
    """scipy ``dendrogram(no_plot=True)`` coordinates: ``icoord``, ``dcoord`` (lists of 4-lists), ``leaves``."""


def correlation_clustering(series: np.ndarray | Tensor, rel_tol: float = 1e-6) -> Clustering:
    """Correlation matrix of the rows of ``series`` [C, N] and their hierarchical clustering.

    A row whose standard deviation is below ``rel_tol`` times its largest magnitude (float round-off) is
    constant: its correlations are set to 0 (distance 1 to everything else), never NaN.
    """
    x = np.asarray(series.detach().cpu() if isinstance(series, Tensor) else series, dtype=np.float64)
    C = x.shape[0]
    centred = x - x.mean(1, keepdims=True)
    std = np.sqrt((centred**2).mean(1))
    constant = std <= rel_tol * np.abs(x).max(1, initial=0.0)
    unit = np.where(constant[:, None], 0.0, centred / np.where(constant, 1.0, std)[:, None])
    corr = np.clip(unit @ unit.T / max(x.shape[1], 1), -1.0, 1.0)
    corr = (corr + corr.T) / 2
    np.fill_diagonal(corr, 1.0)
    if C < 2:
        return Clustering(
            corr,
            constant,
            np.arange(C),
            np.zeros((0, 4)),
            {"icoord": [], "dcoord": [], "leaves": list(range(C))},
        )
    dist = 1.0 - corr
    np.fill_diagonal(dist, 0.0)
    Z = linkage(squareform(dist, checks=False), method="average")
    tree = dendrogram(Z, no_plot=True)
    dendro = {"icoord": tree["icoord"], "dcoord": tree["dcoord"], "leaves": [int(i) for i in tree["leaves"]]}
    return Clustering(corr, constant, np.asarray(tree["leaves"], dtype=np.int64), Z, dendro)
