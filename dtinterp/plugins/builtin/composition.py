"""Composition scores: how much each head's output feeds a later head's queries, keys or values.

Weights only (:func:`dtinterp.interp.circuits.all_composition_scores`, Elhage et al. 2021):
``||W_A W_B||_F / (||W_A||_F ||W_B||_F)`` with ``W_A`` the OV matrix of an earlier head and ``W_B`` the QK
matrix (Q-composition), its transpose (K-composition) or the OV matrix (V-composition) of a later head,
for every pair of heads in different layers. Random matrices already compose at a level set by their
shapes, so freshly initialised models of the same architecture give the **baseline** drawn beside the
scores (mean and spread over their valid pairs). The head graph draws the pairs above ``threshold``
(default, per mode: the top 10% of pairs, and only those above the baseline mean + 3 standard deviations).

**Invariant** (tested): the scores equal an independent dense computation of the Frobenius norms; the
baseline comes from models of the same shape.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from dtinterp.interp.circuits import COMPOSITION_MODES, all_composition_scores
from dtinterp.plugins.api import Analysis, AnalysisContext, AnalysisResult, Param, ParameterError


class Composition(Analysis):
    id = "composition"
    title = "Composition scores"
    category = "static"
    description = (
        "Q-, K- and V-composition between every pair of heads in different layers (does a head's output "
        "feed a later head's queries, keys or values?), beside the scores of randomly initialised models of "
        "the same shape, and the graph of the pairs that stand out."
    )
    parameters = (
        Param(
            "threshold",
            "float",
            0.0,
            "Head graph: draw pairs scoring above this (0: per mode, the top 10% of pairs, if above the random "
            "baseline's mean + 3 std).",
            min=0.0,
            max=1.0,
        ),
        Param("fold_ln", "bool", True, "Fold the later head's ln1 weight and centring into its input side."),
        Param("baseline_samples", "int", 4, "Random models averaged for the baseline.", min=1, max=32),
    )

    @torch.no_grad()
    def compute(self, ctx: AnalysisContext, params: dict[str, Any]) -> AnalysisResult:
        cfg = ctx.model.cfg
        if cfg.n_layers < 2:
            raise ParameterError(f"plugin {self.id!r}: a one-layer model has no pairs of heads to compose")
        comp = all_composition_scores(
            ctx.model, fold=params["fold_ln"], baseline_samples=params["baseline_samples"]
        )
        valid = comp.valid
        data: dict[str, Any] = {
            "heads": comp.heads,
            "n_layers": cfg.n_layers,
            "n_heads": cfg.n_heads,
            "valid": valid.reshape(len(comp.heads), -1).numpy(),
            "modes": list(COMPOSITION_MODES),
            "scores": {
                m: comp.matrix(m).numpy() for m in COMPOSITION_MODES
            },  # [source head, destination head]
            "baseline_mean": comp.baseline_mean,
            "baseline_std": comp.baseline_std,
        }
        thresholds = {
            m: params["threshold"] or comp.baseline_mean[m] + 3 * comp.baseline_std[m]
            for m in COMPOSITION_MODES
        }
        edges: dict[str, list[tuple[int, int, int, int, float]]] = {}
        for m in COMPOSITION_MODES:
            s = comp.scores[m]
            idx = torch.nonzero(valid & (s > thresholds[m])).tolist()
            edges[m] = [(l1, h1, l2, h2, float(s[l1, h1, l2, h2])) for l1, h1, l2, h2 in idx]
        data["thresholds"] = thresholds
        data["edges"] = edges
        parts = []
        for m in COMPOSITION_MODES:
            s = comp.scores[m][valid]
            i = int(s.argmax())
            pair = torch.nonzero(valid)[i].tolist()
            parts.append(
                f"{m}: max {float(s[i]):.3f} (L{pair[0]}H{pair[1]} → L{pair[2]}H{pair[3]}), mean {float(s.mean()):.3f} "
                f"vs random {comp.baseline_mean[m]:.3f} ± {comp.baseline_std[m]:.3f}, {len(edges[m])} pairs above "
                f"{thresholds[m]:.3f}"
            )
        summary = "Composition scores. " + "; ".join(parts) + "."
        return AnalysisResult(self.id, params, data, summary)

    def figures(self, result: AnalysisResult) -> list[Any]:
        import plotly.graph_objects as go

        from dtinterp.viz.graph import head_graph
        from dtinterp.viz.heatmap import heatmap_grid
        from dtinterp.viz.style import color, finish

        d = result.data
        heads, modes = d["heads"], d["modes"]
        valid = np.asarray(d["valid"], dtype=bool)
        mats = [np.where(valid, np.asarray(d["scores"][m], dtype=float), np.nan) for m in modes]
        top = max(float(np.nanmax(m)) for m in mats)
        figs = [
            heatmap_grid(
                mats,
                [
                    f"{m}-composition (random {d['baseline_mean'][m]:.3f} ± {d['baseline_std'][m]:.3f})"
                    for m in modes
                ],
                x_labels=heads,
                y_labels=heads,
                title="Composition scores: earlier head (row) into later head (column); blank: same or later layer",
                x_title="destination head (later)",
                y_title="source head (earlier)",
                colorbar_title="score",
                zmax=top,
                cols=3,
                panel_px=min(560, 140 + 28 * len(heads)),
                hover="%{y} → %{x}<br>%{z:.3f}",
            )
        ]
        dist = go.Figure()
        for i, m in enumerate(modes):
            scores = np.asarray(d["scores"][m], dtype=float)[valid]
            dist.add_trace(
                go.Box(
                    y=scores,
                    x=[f"{m}-composition"] * scores.size,
                    name="trained model",
                    marker={"color": color(0)},
                    boxpoints="all",
                    jitter=0.4,
                    showlegend=i == 0,
                    legendgroup="trained",
                    offsetgroup="trained",
                    hovertext=[f"{heads[a]} → {heads[b]}" for a, b in zip(*np.nonzero(valid))],
                )
            )
            dist.add_trace(
                go.Scatter(
                    x=[f"{m}-composition"],
                    y=[d["baseline_mean"][m]],
                    error_y={"type": "data", "array": [3 * d["baseline_std"][m]]},
                    mode="markers",
                    marker={"color": color(1), "size": 12, "symbol": "diamond"},
                    name="random init (mean ± 3 std)",
                    showlegend=i == 0,
                    legendgroup="random",
                )
            )
        dist.update_layout(boxmode="group")
        figs.append(
            finish(
                dist,
                "Composition scores of the trained model beside randomly initialised models of the same shape",
                "mode",
                "score",
            )
        )
        edges = {m: [tuple(e) for e in d["edges"][m]] for m in modes}
        thr = ", ".join(f"{m} > {d['thresholds'][m]:.3f}" for m in modes)
        figs.append(
            head_graph(
                int(d["n_layers"]),
                int(d["n_heads"]),
                edges,
                title=f"Heads that compose ({thr}); wider: stronger",
            )
        )
        return figs
