"""Feature statistics for dashboards: how often a feature fires, how strongly, where, and what it pushes.

A *feature* is a scalar read off one hook's activation at every stored token: an SAE latent
(:class:`~dtinterp.interp.sae.TopKSAE`) or the projection onto a direction (a probe's, a saved one).
:func:`feature_stats` is the one generic pass over an
:class:`~dtinterp.interp.activation_store.ActivationStore` (one chunk in memory), given an ``encode``
function ``[n, d] -> [n, F]``; :func:`sae_feature_stats` and :func:`direction_stats` specialise it.

For every feature it reports:

- ``frequency``: the share of (real) tokens where it is *active*: an SAE latent when non-zero; a
  direction's projection is always "active" (frequency 1) and its histogram covers every value;
- ``mean`` over all tokens, ``max`` and the histogram of its active values (``n_bins`` equal bins from
  its smallest to its largest active value, computed in a second pass);
- the ``n_top`` top-activating tokens: store window, token position and dataset row, from which
  :meth:`FeatureStats.examples` reads the step's episode, action and return-to-go (what a dashboard
  renders as agent views);
- ``logit_effect``: the feature's *direct* effect on each action logit, i.e. its decoder row (an SAE) or
  its direction, written into the residual stream and read by the unembedding with the final norm's
  centring folded in (:func:`~dtinterp.interp.attribution.centred_unembed`), per unit of activation and
  up to the final LN's per-token scale. For an MLP's ``hook_post`` the vector goes through ``W_out``
  first. It is the direct path only: a feature in an early layer also acts through later layers.

**Invariant** (tested): the statistics equal those computed from the whole store loaded at once, and
each top token's activation, recomputed from the store, equals its reported value.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from dtinterp.data.dataset import TrajectoryDataset
from dtinterp.data.episode import dataset_targets
from dtinterp.data.windows import conditioned_rtg, returns_to_go
from dtinterp.interp.activation_store import ActivationStore
from dtinterp.interp.attribution import centred_unembed
from dtinterp.interp.sae import TopKSAE
from dtinterp.model.hooked_dt import HookedDecisionTransformer
from envs.encoding import ACTION_NAMES

SORT_KEYS = ("frequency", "max", "logit_effect")
_MLP_POST = re.compile(r"blocks\.(\d+)\.mlp\.hook_post")


@dataclass
class FeatureStats:
    """Per-feature statistics over a store's real tokens at one hook."""

    hook: str
    labels: list[str]
    """Name of each feature (``f17``, a direction's name)."""
    n_tokens: int
    """Real tokens the statistics cover."""
    frequency: Float[Tensor, "F"]
    """Share of tokens where the feature is active."""
    mean: Float[Tensor, "F"]
    """Mean value over all tokens (inactive ones count as 0 for an SAE latent)."""
    max: Float[Tensor, "F"]
    """Largest value (NaN for a feature never active)."""
    hist_edges: Float[Tensor, "F nb1"]
    """Bin edges of each feature's histogram of active values."""
    hist_counts: Int[Tensor, "F nb"]
    top_values: Float[Tensor, "F T"]
    """Values at the top-activating tokens, descending (-inf where fewer tokens were active)."""
    top_windows: Int[Tensor, "F T"]
    """Store window index of each top token (-1 where none)."""
    top_positions: Int[Tensor, "F T"]
    """Index into the store's positions of each top token (-1 where none)."""
    top_rows: Int[Tensor, "F T"]
    """Dataset row of each top token's step (-1 where none)."""
    position_labels: list[str]
    """The store's token labels (``S1 .. SK``), indexed by ``top_positions``."""
    logit_effect: Float[Tensor, "F A"] | None = None
    """Direct effect on each action logit per unit of activation (None where it is not defined)."""

    @property
    def n_features(self) -> int:
        return len(self.labels)

    def order(self, by: str = "frequency") -> list[int]:
        """Feature indices sorted (descending) by ``frequency``, ``max`` or ``logit_effect`` (largest
        absolute effect on any action)."""
        if by not in SORT_KEYS:
            raise ValueError(f"sort key must be one of {SORT_KEYS}, got {by!r}")
        if by == "logit_effect":
            if self.logit_effect is None:
                raise ValueError(f"no logit effect at {self.hook}: sort by frequency or max")
            key = self.logit_effect.abs().amax(-1)
        else:
            key = getattr(self, by)
        return torch.argsort(torch.nan_to_num(key, nan=-math.inf), descending=True, stable=True).tolist()

    def table(self, by: str = "frequency") -> list[dict[str, Any]]:
        """One row per feature, sorted ``by``: label, frequency, mean, max and the action it pushes most
        (a searchable list for the app)."""
        rows = []
        for f in self.order(by):
            row: dict[str, Any] = {
                "feature": f,
                "label": self.labels[f],
                "frequency": float(self.frequency[f]),
                "mean": float(self.mean[f]),
                "max": float(self.max[f]),
            }
            if self.logit_effect is not None:
                effect = self.logit_effect[f]
                a = int(effect.abs().argmax())
                row |= {"top_action": ACTION_NAMES[a], "top_logit_effect": float(effect[a])}
            rows.append(row)
        return rows

    def examples(self, feature: int, ds: TrajectoryDataset) -> list[dict[str, Any]]:
        """The top-activating tokens of ``feature`` as dataset steps: value, store window, token label,
        dataset row, episode, step in the episode, the action taken there and the (unscaled) return-to-go
        the model was conditioned on (``ds`` is the store's dataset)."""
        starts = ds.episode_starts
        targets = dataset_targets(ds)
        if all(t is None for t in targets):
            rtg = returns_to_go(ds.rewards, starts)
        else:
            rtg = conditioned_rtg(ds.rewards, starts, targets)
        out = []
        for value, window, pos, row in zip(
            self.top_values[feature].tolist(),
            self.top_windows[feature].tolist(),
            self.top_positions[feature].tolist(),
            self.top_rows[feature].tolist(),
        ):
            if row < 0:
                break
            episode = int(np.searchsorted(starts, row, side="right") - 1)
            out.append(
                {
                    "value": value,
                    "window": window,
                    "token": self.position_labels[pos],
                    "row": row,
                    "episode": episode,
                    "step": int(row - starts[episode]),
                    "action": ACTION_NAMES[int(ds.actions[row])],
                    "rtg": float(rtg[row]),
                }
            )
        return out


def logit_effects(
    model: HookedDecisionTransformer, hook: str, vectors: Float[Tensor, "F dh"]
) -> Float[Tensor, "F A"] | None:
    """Direct effect on each action logit of writing each vector at ``hook`` (None where undefined)."""
    W = centred_unembed(model).detach().float()  # [d, A]
    m = _MLP_POST.fullmatch(hook)
    if m is not None and vectors.shape[-1] == model.cfg.d_mlp:
        return vectors.float() @ model.blocks[int(m.group(1))].mlp.W_out.detach().float() @ W
    residual = ".attn." not in hook and ".ln" not in hook and not hook.startswith("ln")
    if vectors.shape[-1] == model.cfg.d_model and residual:
        return vectors.float() @ W
    return None


@torch.inference_mode()
def feature_stats(
    store: ActivationStore,
    hook: str,
    encode: Callable[[Tensor], Tensor],
    labels: Sequence[str],
    *,
    active_only: bool = True,
    decoder: Float[Tensor, "F dh"] | None = None,
    model: HookedDecisionTransformer | None = None,
    n_bins: int = 40,
    n_top: int = 16,
    batch_size: int = 8192,
) -> FeatureStats:
    """Statistics of the features ``encode`` computes from ``hook``'s real tokens (two streaming passes).

    ``active_only``: a feature is active where its value is > 0 (SAE latents), else everywhere
    (projections). ``decoder`` (one vector per feature, in the hook's space) and ``model`` give the
    logit effects.
    """
    n_feat = len(labels)
    kp = len(store.positions)
    count = torch.zeros(n_feat, dtype=torch.long)
    total = torch.zeros(n_feat, dtype=torch.float64)
    vmax = torch.full((n_feat,), -math.inf)
    vmin = torch.full((n_feat,), math.inf)
    top_v = torch.full((n_feat, n_top), -math.inf)
    top_id = torch.full((n_feat, n_top), -1, dtype=torch.long)  # window * Kp + position
    n_tokens = 0

    def batches():
        offset = 0
        for chunk in store.chunks([hook]):
            acts, rows = chunk[hook].flatten(2).float(), chunk["rows"]
            real = rows >= 0
            ids = (torch.arange(acts.shape[0])[:, None] * kp + torch.arange(kp)[None] + offset * kp)[real]
            for x, i in zip(acts[real].split(batch_size), ids.split(batch_size)):
                yield encode(x).float(), i
            offset += acts.shape[0]

    for vals, ids in batches():  # pass 1: counts, sums, extremes, top tokens
        n_tokens += vals.shape[0]
        active = vals > 0 if active_only else torch.ones_like(vals, dtype=torch.bool)
        count += active.sum(0)
        total += vals.double().sum(0)
        vmax = torch.maximum(vmax, vals.masked_fill(~active, -math.inf).amax(0))
        vmin = torch.minimum(vmin, vals.masked_fill(~active, math.inf).amin(0))
        t = min(n_top, vals.shape[0])
        v, j = vals.masked_fill(~active, -math.inf).T.topk(t, dim=-1)  # [F, t]
        cat_v, cat_id = torch.cat([top_v, v], 1), torch.cat([top_id, ids[j]], 1)
        top_v, k = cat_v.topk(n_top, dim=-1)
        top_id = cat_id.gather(1, k)
    top_id = torch.where(torch.isfinite(top_v), top_id, -1)

    lo = torch.where(torch.isfinite(vmin), vmin, 0.0)
    hi = torch.where(torch.isfinite(vmax), vmax, 1.0)
    hi = torch.where(hi > lo, hi, lo + 1.0)
    counts = torch.zeros(n_feat * n_bins, dtype=torch.long)
    feat_idx = torch.arange(n_feat)
    for vals, _ in batches():  # pass 2: histograms of the active values
        active = vals > 0 if active_only else torch.ones_like(vals, dtype=torch.bool)
        b = ((vals - lo) / (hi - lo) * n_bins).floor().long().clamp(0, n_bins - 1)
        flat = (feat_idx[None] * n_bins + b)[active]
        counts += torch.bincount(flat, minlength=n_feat * n_bins)
    edges = lo[:, None] + (hi - lo)[:, None] * torch.linspace(0, 1, n_bins + 1)[None]

    windows = torch.where(top_id >= 0, top_id // kp, -1)
    positions = torch.where(top_id >= 0, top_id % kp, -1)
    rows = _rows_of(store, windows, positions)
    effect = None
    if decoder is not None and model is not None:
        effect = logit_effects(model, hook, decoder.detach())
    return FeatureStats(
        hook=hook,
        labels=list(labels),
        n_tokens=n_tokens,
        frequency=count.float() / max(n_tokens, 1),
        mean=(total / max(n_tokens, 1)).float(),
        max=torch.where(count > 0, vmax, float("nan")),
        hist_edges=edges,
        hist_counts=counts.view(n_feat, n_bins),
        top_values=top_v,
        top_windows=windows,
        top_positions=positions,
        top_rows=rows,
        position_labels=store.position_labels,
        logit_effect=effect,
    )


def _rows_of(store: ActivationStore, windows: Tensor, positions: Tensor) -> Tensor:
    """Dataset row of each (window, position) pair (-1 where the window is -1)."""
    all_rows = store.rows()
    ok = windows >= 0
    out = torch.full_like(windows, -1)
    out[ok] = all_rows[windows[ok], positions[ok]]
    return out


def sae_feature_stats(
    store: ActivationStore, sae: TopKSAE, model: HookedDecisionTransformer | None = None, **kwargs: Any
) -> FeatureStats:
    """:func:`feature_stats` of every latent of ``sae`` at its hook (logit effects of its decoder rows)."""
    return feature_stats(
        store,
        sae.cfg.hook,
        sae.latents,
        [f"f{i}" for i in range(sae.cfg.n_latents)],
        active_only=True,
        decoder=sae.W_dec,
        model=model,
        **kwargs,
    )


def direction_stats(
    store: ActivationStore,
    hook: str,
    directions: Float[Tensor, "F d"],
    labels: Sequence[str],
    model: HookedDecisionTransformer | None = None,
    **kwargs: Any,
) -> FeatureStats:
    """:func:`feature_stats` of the projections onto unit ``directions`` (probe or saved directions)."""
    units = directions.detach().float() / directions.detach().float().norm(dim=-1, keepdim=True)
    return feature_stats(
        store,
        hook,
        partial(torch.matmul, other=units.T),
        labels,
        active_only=False,
        decoder=units,
        model=model,
        **kwargs,
    )


__all__ = [
    "SORT_KEYS",
    "FeatureStats",
    "direction_stats",
    "feature_stats",
    "logit_effects",
    "sae_feature_stats",
]
