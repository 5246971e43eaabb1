"""Attention patterns of every head, value-weighted attention, low-rank patterns and head-type scores.

- **Patterns** of every layer x head as small multiples with token-labelled axes (``R3, S3, A3, ...``);
  padded timesteps are left out (a padded query attends only to itself, which is not attention worth a
  bright diagonal). Over many windows, each entry is the mean over the windows where its query is real
  (a real query never attends to padding, so mean rows still sum to 1).
- **Value-weighted** (``weighting = value``): ``||pattern[q, k] * v[k] @ W_O||`` (Kobayashi et al. 2020,
  :func:`dtinterp.interp.head_scores.value_weighted_attention`), what actually reaches the residual stream
  from each source, not ``||v||`` alone; ``value-normalised`` divides each row by its sum.
- **One head enlarged** (``layer`` and ``head``), with its best rank-``rank`` approximation
  (:func:`dtinterp.interp.head_scores.low_rank_pattern`, Eckart-Young) and the relative error of every rank.
- **Head-type scores** (:func:`dtinterp.interp.head_scores.head_type_scores`): the share of attention
  on RTG, state and action tokens, on the previous timestep, on the same timestep, on itself and on the
  first real token (a sink), averaged over real queries.

**Invariants** (tested): every real query's row sums to 1 over the real tokens; the full-rank
approximation is exact.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from dtinterp.interp.head_scores import (
    head_type_scores,
    low_rank_pattern,
    stacked_patterns,
    token_pad_mask,
    value_weighted_attention,
)
from dtinterp.plugins.api import Analysis, AnalysisContext, AnalysisResult, Param, ParameterError
from dtinterp.plugins.builtin._common import WINDOW_PARAM, check_head, check_layer, masked_mean, mean_std

WEIGHTINGS = ("attention", "value", "value-normalised")


class Attention(Analysis):
    id = "attention"
    title = "Attention patterns and head types"
    category = "dynamic"
    description = (
        "Where each head attends: every layer x head as small multiples over the real tokens (padding left "
        "out), optionally value-weighted (||a·v·W_O||); one head enlarged with its rank-k approximation; "
        "head-type scores (share on RTG/state/action tokens, previous timestep, self, first token)."
    )
    parameters = (
        Param(
            "weighting",
            "choice",
            "attention",
            "attention: the pattern; value: ||pattern·v·W_O|| (Kobayashi et al. 2020); value-normalised: "
            "the same divided by its row sum.",
            choices=WEIGHTINGS,
        ),
        Param("layer", "int", -1, "Layer of the head to enlarge (-1: none; with head).", min=-1),
        Param("head", "int", -1, "Head to enlarge (-1: none; with layer).", min=-1),
        Param("rank", "int", 1, "Rank of the enlarged head's low-rank approximation.", min=1, max=64),
        WINDOW_PARAM,
    )

    @torch.no_grad()
    def compute(self, ctx: AnalysisContext, params: dict[str, Any]) -> AnalysisResult:
        model, pad = ctx.model, ctx.inputs.pad_mask
        layer, head = params["layer"], params["head"]
        if (layer < 0) != (head < 0):
            raise ParameterError(
                f"plugin {self.id!r}: give both layer and head to enlarge a head, or neither"
            )
        if layer >= 0:
            check_layer(ctx, layer, self.id)
            check_head(ctx, head, self.id)
        b = params["window"]
        B = ctx.inputs.batch_size
        if b >= B:
            raise ParameterError(
                f"plugin {self.id!r} parameter 'window': {b} is outside the batch of {B} windows"
            )
        rows = torch.arange(B) if b < 0 else torch.tensor([b])
        pattern = stacked_patterns(model, ctx.cache)  # [B, L, H, P, P]
        if params["weighting"] != "attention":
            vw = value_weighted_attention(model, ctx.cache, pad)
            pattern = vw.norms if params["weighting"] == "value" else vw.normalized
        real = token_pad_mask(pad)  # [B, P]
        sel = rows.to(pattern.device)
        q_real = real[sel][:, None, None, :, None].expand(-1, *pattern.shape[1:4], pattern.shape[-1])
        mean, std, count = masked_mean(pattern[sel], q_real)  # [L, H, P, P]
        shown = real[sel].any(0).cpu().numpy()  # tokens real in at least one shown window
        row_sums = (pattern[sel] * real[sel][:, None, None, None, :]).sum(-1)  # over real keys
        types = head_type_scores(model, ctx.cache, pad)
        t_mean, t_std = mean_std(types.scores, sel[types.valid[sel]])
        n = len(rows)
        data: dict[str, Any] = {
            "weighting": params["weighting"],
            "token_labels": ctx.token_labels,
            "real": shown,
            "heads": types.heads,
            "mean": mean,
            "std": std,
            "count": count[0, 0, :, 0],  # windows averaged per query token
            "windows": n,
            "row_sum_error": float((row_sums - 1).abs().masked_fill(~real[sel][:, None, None, :], 0).max())
            if params["weighting"] != "value"
            else None,
            "head_types": {"types": list(types.types), "mean": t_mean, "std": t_std},
        }
        if layer >= 0:
            m = torch.as_tensor(mean[layer, head][np.ix_(shown, shown)])
            lr = low_rank_pattern(m, params["rank"])
            data["enlarged"] = {
                "label": f"L{layer}H{head}",
                "pattern": m.numpy(),
                "approx": lr.approx.numpy(),
                "error": float(lr.error),
                "error_by_rank": lr.error_by_rank.numpy(),
                "rank": lr.k,
            }
        tm = np.asarray(t_mean)  # [L, H, T]
        flat = tm.reshape(-1, tm.shape[-1])
        best = {t: types.heads[int(flat[:, i].argmax())] for i, t in enumerate(types.types)}
        which = f"window {b}" if b >= 0 else f"mean over {n} window{'s' * (n != 1)}"
        summary = (
            f"Attention ({params['weighting']}, {which}): most state-focused head {best['state']} "
            f"({flat[:, 1].max():.0%} on states), most RTG-focused {best['rtg']} ({flat[:, 0].max():.0%}), "
            f"most action-focused {best['action']} ({flat[:, 2].max():.0%}); strongest previous-timestep head "
            f"{best['previous_timestep']} ({flat[:, types.types.index('previous_timestep')].max():.0%})."
        )
        if "enlarged" in data:
            e = data["enlarged"]
            summary += f" {e['label']}: rank-{e['rank']} approximation error {e['error']:.1%}."
        return AnalysisResult(self.id, params, data, summary)

    def figures(self, result: AnalysisResult) -> list[Any]:
        from dtinterp.viz import heatmap, line_plot
        from dtinterp.viz.heatmap import heatmap_grid
        from dtinterp.viz.style import MAX_HEIGHT, robust_limit

        d = result.data
        real = np.asarray(d["real"], dtype=bool)
        labels = [lab for lab, r in zip(d["token_labels"], real) if r]
        mean = np.asarray(d["mean"], dtype=float)  # [L, H, P, P]
        L, H = mean.shape[:2]
        keep = np.ix_(real, real)
        mats = [mean[l, h][keep] for l in range(L) for h in range(H)]
        weighting = d["weighting"]
        what = {"attention": "Attention", "value": "Value-weighted attention ||a·v·W_O||"}.get(
            weighting, "Value-weighted attention (row-normalised)"
        )
        n = int(d["windows"])
        where = "one window" if n == 1 else f"mean over {n} windows"
        limit = 1.0 if weighting != "value" else robust_limit(np.concatenate([m.ravel() for m in mats]))
        figs = [
            heatmap_grid(
                mats,
                d["heads"],
                x_labels=labels,
                y_labels=labels,
                title=f"{what} of every head ({where}; padding left out)",
                x_title="key token",
                y_title="query token",
                colorbar_title="attention" if weighting != "value" else "||a·v·W_O||",
                zmax=limit,
                cols=H,
                panel_px=max(150, min(260, (MAX_HEIGHT - 130) // L)),
                hover="query %{y}<br>key %{x}<br>%{z:.3f}",
            )
        ]
        ht = d["head_types"]
        figs.append(
            heatmap(
                np.asarray(ht["mean"], dtype=float).reshape(L * H, -1),
                x_labels=[t.replace("_", " ") for t in ht["types"]],
                y_labels=d["heads"],
                title=f"Head types: share of each head's attention by key ({where}; real queries)",
                x_title="attention on",
                y_title="head",
                colorbar_title="share",
                zmax=1.0,
                hover_extra=np.asarray(ht["std"], dtype=float).reshape(L * H, -1),
                hover_extra_name="std",
                height=min(MAX_HEIGHT, 160 + 22 * L * H),
            )
        )
        figs[-1].data[0].zmin = 0.0
        if "enlarged" in d:
            e = d["enlarged"]
            figs.append(
                heatmap_grid(
                    [np.asarray(e["pattern"], dtype=float), np.asarray(e["approx"], dtype=float)],
                    [f"{e['label']}", f"rank-{e['rank']} approximation (error {e['error']:.1%})"],
                    x_labels=labels,
                    y_labels=labels,
                    title=f"{what} of {e['label']} ({where}) and its best rank-{e['rank']} approximation",
                    x_title="key token",
                    y_title="query token",
                    colorbar_title="attention",
                    zmax=limit,
                    cols=2,
                    panel_px=560,
                )
            )
            curve = np.asarray(e["error_by_rank"], dtype=float)
            figs.append(
                line_plot(
                    np.arange(len(curve)),
                    {"relative error": curve},
                    title=f"{e['label']}: relative Frobenius error of the best rank-k approximation",
                    x_title="rank k",
                    y_title="||A - A_k|| / ||A||",
                    markers=True,
                )
            )
        return figs
