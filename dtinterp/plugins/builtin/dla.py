"""Direct logit attribution of a direction at a state token: by component, layer (the logit lens), head,
neuron and source token, for one window or as the mean and spread over many.

The numbers are :func:`dtinterp.interp.dla.direction_attribution` on the context's shared cache: with
the final LayerNorm's cached scale the readout is linear in the residual stream, so the components
(embeddings, every head, every MLP layer, the residual biases and the direction's own bias) add up to
the direction's value, each head splits exactly over the source tokens it attends to, and
``accumulated`` (the running sum after each layer) ends at the value. The logit lens re-normalises each
partial residual stream with the final LN instead (what the model would read if it stopped there).

**Invariant** (tested): the parts sum to the direction's value within 1e-4, and each head's by-source
split sums to the head's total. Over many windows the means keep both sums (padding contributes 0).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import torch

from dtinterp.interp.dla import direction_attribution
from dtinterp.plugins.api import Analysis, AnalysisContext, AnalysisResult, Param
from dtinterp.plugins.builtin._common import (
    POSITION_PARAM,
    WINDOW_PARAM,
    mean_std,
    selected_rows,
    state_timestep,
    window_label,
)
from dtinterp.plugins.directions_param import DIRECTION_PARAM, parse_direction


class DirectLogitAttribution(Analysis):
    id = "dla"
    title = "Direct logit attribution"
    category = "dynamic"
    description = (
        "Which components write the direction (by default the top action's logit minus the runner-up's) "
        "straight into the readout at a state token: embeddings, each head, each MLP layer and neuron, "
        "the biases; accumulated layer by layer (and the logit lens); each head split by source token. "
        "One window, or the mean and spread over many."
    )
    parameters = (
        DIRECTION_PARAM,
        POSITION_PARAM,
        WINDOW_PARAM,
        Param("top_k", "int", 20, "Neurons drawn (largest mean |contribution|).", min=1, max=200),
    )

    @torch.no_grad()
    def compute(self, ctx: AnalysisContext, params: dict[str, Any]) -> AnalysisResult:
        model = ctx.model
        direction = parse_direction(params["direction"], ctx.action_names, self.id, model=model)
        k = state_timestep(ctx, params, self.id)
        rows = selected_rows(ctx, params, self.id, k)
        att = direction_attribution(model, ctx.inputs, direction.spec, position=k, cache=ctx.cache)
        n = len(rows)
        L, H = model.cfg.n_layers, model.cfg.n_heads

        def stats(x: torch.Tensor) -> dict[str, np.ndarray]:
            mean, std = mean_std(x, rows)
            return {"mean": mean, "std": std}

        value = att.value[rows.to(att.value.device)]
        labels = Counter(att.direction.labels[int(b)] for b in rows)  # top vs runner-up: per window
        real_src = ctx.inputs.pad_mask[rows].repeat_interleave(3, dim=1)[:, : 3 * ctx.inputs.context_len - 1]
        decomposition_error = float((att.components.sum(-1) - att.value)[rows].abs().max())
        source_error = float((att.by_source.sum(-1) - att.by_head)[rows].abs().max())
        data: dict[str, Any] = {
            "direction": direction.label,
            "direction_labels": dict(labels.most_common()),
            "state_label": f"S{k + 1}",
            "windows": rows.cpu().numpy(),
            "value": value.cpu().numpy(),
            "value_mean": float(value.double().mean()),
            "value_std": float(value.double().std()) if n > 1 else 0.0,
            "components": {"labels": att.component_labels, **stats(att.components)},
            "layers": {
                "labels": att.layer_labels,
                "by_layer": stats(att.by_layer),
                "accumulated": stats(att.accumulated),
                "logit_lens": stats(att.logit_lens),
            },
            "heads": {"labels": att.heads, **stats(att.by_head.reshape(-1, L * H))},
            "by_source": {
                "token_labels": att.source_labels,
                "real": real_src.any(0).cpu().numpy(),  # sources real in at least one window
                **stats(att.by_source.reshape(-1, L * H, att.by_source.shape[-1])),
            },
            "decomposition_error": decomposition_error,
            "source_error": source_error,
        }
        if att.by_neuron is not None:
            m = model.cfg.d_mlp
            mean, std = mean_std(att.by_neuron.reshape(-1, L * m), rows)
            top = np.argsort(-np.abs(mean), kind="stable")[: params["top_k"]]
            data["neurons"] = {
                "labels": [f"L{i // m}N{i % m}" for i in top],
                "mean": mean[top],
                "std": std[top],
            }
        comp = data["components"]
        order = np.argsort(-np.abs(comp["mean"]), kind="stable")
        top3 = ", ".join(f"{comp['labels'][i]} {comp['mean'][i]:+.3g}" for i in order[:3])
        which = window_label(params, n)
        what = direction.label if len(labels) != 1 else next(iter(labels))
        summary = (
            f"{what} at {data['state_label']} ({which}): value {data['value_mean']:+.3g}"
            + (f" ± {data['value_std']:.3g}" if n > 1 else "")
            + f". Largest direct contributions: {top3}. The parts sum to the value within "
            f"{decomposition_error:.1e}."
        )
        return AnalysisResult(self.id, params, data, summary)

    def figures(self, result: AnalysisResult) -> list[Any]:
        import plotly.graph_objects as go

        from dtinterp.viz import heatmap
        from dtinterp.viz.style import color, finish, robust_limit

        d = result.data
        n = len(d["windows"])
        where = f"{d['state_label']}, {window_label(result.params, n)}"
        what = d["direction"] if len(d["direction_labels"]) != 1 else next(iter(d["direction_labels"]))
        spread = " (±1 std over windows)" if n > 1 else ""

        def bars(labels: list[str], mean: Any, std: Any, title: str, x_title: str) -> go.Figure:
            groups = [
                0 if lab.endswith("embed") else 1 if "H" in lab else 2 if "mlp" in lab else 3
                for lab in labels
            ]
            fig = go.Figure(
                go.Bar(
                    x=labels,
                    y=np.asarray(mean, dtype=float),
                    error_y={"type": "data", "array": np.asarray(std, dtype=float), "visible": n > 1},
                    marker={"color": [color(g) for g in groups]},
                    hovertemplate="%{x}: %{y:.4g}<extra></extra>",
                )
            )
            fig.update_xaxes(type="category")
            fig.add_hline(y=0, line={"color": "grey", "width": 1})
            return finish(fig, title, x_title, "contribution", height=450)

        c = d["components"]
        figs = [
            bars(
                c["labels"],
                c["mean"],
                c["std"],
                f"Direct attribution of {what} at {where}: value {d['value_mean']:+.3g}{spread}",
                "component",
            )
        ]

        lay = d["layers"]
        lens = go.Figure()
        lens.add_trace(
            go.Bar(
                x=lay["labels"],
                y=np.asarray(lay["by_layer"]["mean"], dtype=float),
                error_y={
                    "type": "data",
                    "array": np.asarray(lay["by_layer"]["std"], dtype=float),
                    "visible": n > 1,
                },
                name="this layer's output",
                marker={"color": color(0)},
            )
        )
        for i, (key, name) in enumerate(
            (("accumulated", "accumulated (direct)"), ("logit_lens", "logit lens"))
        ):
            lens.add_trace(
                go.Scatter(
                    x=lay["labels"],
                    y=np.asarray(lay[key]["mean"], dtype=float),
                    error_y={
                        "type": "data",
                        "array": np.asarray(lay[key]["std"], dtype=float),
                        "visible": n > 1,
                    },
                    name=name,
                    mode="lines+markers",
                    line={"color": color(i + 1)},
                )
            )
        lens.update_xaxes(type="category")
        figs.append(
            finish(
                lens,
                f"{what} layer by layer at {where}{spread}",
                "residual stream after",
                "value",
                height=450,
            )
        )

        heads = np.asarray(d["heads"]["mean"], dtype=float)
        labels = d["heads"]["labels"]
        n_layers = len({lab.split("H")[0] for lab in labels})
        grid = heads.reshape(n_layers, -1)
        figs.append(
            heatmap(
                grid,
                x_labels=[f"H{h}" for h in range(grid.shape[1])],
                y_labels=[f"L{layer}" for layer in range(n_layers)],
                title=f"Direct attribution of {what} by head at {where}",
                x_title="head",
                y_title="layer",
                colorbar_title="contribution",
                diverging=True,
                hover_extra=np.asarray(d["heads"]["std"], dtype=float).reshape(grid.shape),
                hover_extra_name="std",
                height=min(600, 160 + 60 * n_layers),
            )
        )

        src = d["by_source"]
        real = np.asarray(src["real"], dtype=bool)
        z = np.asarray(src["mean"], dtype=float)[:, real]
        figs.append(
            heatmap(
                z,
                x_labels=[lab for lab, r in zip(src["token_labels"], real) if r],
                y_labels=labels,
                title=f"Each head's direct attribution of {what} split by source token ({where})",
                x_title="source token",
                y_title="head",
                colorbar_title="contribution",
                diverging=True,
                zmax=robust_limit(z),
                hover_extra=np.asarray(src["std"], dtype=float)[:, real],
                hover_extra_name="std",
                height=min(900, 160 + 22 * len(labels)),
            )
        )
        if "neurons" in d:
            nr = d["neurons"]
            figs.append(
                bars(
                    nr["labels"],
                    nr["mean"],
                    nr["std"],
                    f"Neurons with the largest direct attribution of {what} at {where}{spread}",
                    "neuron",
                )
            )
        return figs
