"""Counterfactual attention: every head's attention on the clean and the edited window, and their difference.

Beside the patterns it reports how the edit moves the predicted action distribution at one state token
(probabilities before and after, KL(clean || counterfactual)). With ``value_weighted`` each entry is
``||pattern[q, k] * v[k] @ W_O||`` (Kobayashi et al. 2020; see :mod:`dtinterp.interp.attention`),
optionally renormalised per row.

Every layer is computed; the figure shows one layer (by default the one whose attention the edit changes
most; ``layer`` picks another) and every head of it, or one head (``head``). Padded timesteps of the window
are left out of the axes: a padded query attends only to itself, which is not attention worth drawing.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from dtinterp.interp.attention import action_shift, compare_attention
from dtinterp.plugins.api import Analysis, AnalysisContext, AnalysisResult, Param, ParameterError
from envs.encoding import ACTION_NAMES


class CounterfactualAttention(Analysis):
    id = "counterfactual-attention"
    title = "Counterfactual attention"
    category = "causal"
    needs_counterfactual = True
    description = (
        "Attention patterns of every head on the clean and the edited (counterfactual) window, their "
        "difference, and the change of the predicted action distribution caused by the edit."
    )
    parameters = (
        Param("layer", "int", -1, "Layer to show (-1: the layer whose attention changes most).", min=-1),
        Param("head", "int", -1, "Head of the layer to show (-1: every head).", min=-1),
        Param(
            "position",
            "int",
            0,
            "Query: the state token S_k (k = 1..K; 0: the last state) whose action distribution is compared.",
            min=0,
        ),
        Param(
            "value_weighted",
            "bool",
            False,
            "Weight each entry by what it writes into the residual stream: ||pattern[q, k] * v[k] @ W_O|| "
            "(Kobayashi et al. 2020).",
        ),
        Param(
            "renormalize",
            "bool",
            True,
            "With value_weighted: divide each row by its sum, so it is again a distribution over sources.",
        ),
        Param("window", "int", 0, "Which window of the batch (row index).", min=0),
    )

    def compute(self, ctx: AnalysisContext, params: dict[str, Any]) -> AnalysisResult:
        model = ctx.model
        L, B, K = model.cfg.n_layers, ctx.inputs.batch_size, ctx.inputs.context_len
        b, layer, pos = params["window"], params["layer"], params["position"]
        if b >= B:
            raise ParameterError(f"plugin {self.id!r}: window {b} is outside the batch of {B} windows")
        if layer >= L:
            raise ParameterError(f"plugin {self.id!r}: layer {layer} is outside the model's {L} layers")
        if params["head"] >= model.cfg.n_heads:
            raise ParameterError(
                f"plugin {self.id!r}: head {params['head']} is outside the model's {model.cfg.n_heads} heads"
            )
        if pos > K:
            raise ParameterError(f"plugin {self.id!r}: position {pos} is outside the window of {K} timesteps")
        k = K - 1 if pos == 0 else pos - 1
        if not bool(ctx.inputs.pad_mask[b, k]):
            raise ParameterError(f"plugin {self.id!r}: position {k + 1} is a padded timestep of window {b}")
        if ctx.counterfactual is None:
            raise ParameterError(f"plugin {self.id!r} needs a counterfactual: give at least one edit")
        layers = list(range(L)) if layer < 0 else [layer]
        query = 3 * k + 1

        with torch.inference_mode():
            clean, cf, diff = (
                x[:, b].cpu().numpy()  # [L', H, P, P]
                for x in compare_attention(
                    ctx.cache, ctx.cf_cache, layers, params["value_weighted"], params["renormalize"]
                )
            )
            p_clean, p_cf, kl = (x.cpu().numpy() for x in action_shift(ctx.logits[b, k], ctx.cf_logits[b, k]))
        names = list(ACTION_NAMES[: model.cfg.n_actions])
        head_change = np.abs(diff).max((-2, -1))  # [L', H]
        data: dict[str, Any] = {
            "token_labels": ctx.token_labels,
            "real_tokens": ctx.inputs.pad_mask[b].repeat_interleave(3)[: 3 * K - 1].cpu().numpy(),
            "layers": layers,
            "query": query,
            "query_label": ctx.token_labels[query],
            "edits": [str(e) for e in ctx.edits],
            "clean": clean,
            "counterfactual": cf,
            "difference": diff,
            "query_rows": {
                "clean": clean[:, :, query],
                "counterfactual": cf[:, :, query],
                "difference": diff[:, :, query],
            },
            "head_max_abs_difference": head_change,
            "action_names": names,
            "probs_clean": p_clean,
            "probs_counterfactual": p_cf,
            "kl": float(kl),
            "predicted_clean": names[int(p_clean.argmax())],
            "predicted_counterfactual": names[int(p_cf.argmax())],
        }
        li, h = np.unravel_index(int(head_change.argmax()), head_change.shape)
        data["shown_layer"] = layers[int(head_change.max(1).argmax())] if layer < 0 else layer
        what = "value-weighted attention" if params["value_weighted"] else "attention"
        summary = (
            f"Edit {', '.join(data['edits'])}: at {data['query_label']} the predicted action goes "
            f"{data['predicted_clean']} -> {data['predicted_counterfactual']} "
            f"(KL(clean || counterfactual) = {data['kl']:.3g}); the {what} of L{layers[li]}H{h} changes most "
            f"(max |difference| {float(head_change[li, h]):.3g})."
        )
        return AnalysisResult(self.id, params, data, summary)

    def figures(self, result: AnalysisResult) -> list[Any]:
        import plotly.graph_objects as go

        from dtinterp.viz.heatmap import heatmap
        from dtinterp.viz.panels import panel_grid
        from dtinterp.viz.style import DIVERGING, MAX_HEIGHT, SEQUENTIAL, finish, robust_limit

        d = result.data
        layers = list(d["layers"])
        real = np.asarray(d["real_tokens"], dtype=bool)
        labels = [lab for lab, r in zip(d["token_labels"], real) if r]  # padding left out
        li = layers.index(int(d["shown_layer"]))
        keep = np.ix_(real, real)
        clean, cf, diff = (
            np.asarray(d[key], dtype=float)[li] for key in ("clean", "counterfactual", "difference")
        )  # [H, P, P]
        n_heads = clean.shape[0]
        head = int(result.params.get("head", -1))
        heads = [head] if head >= 0 else list(range(n_heads))
        kinds = ("clean", "counterfactual", "difference")
        layer = layers[li]
        grid = panel_grid(
            [f"L{layer}H{h} {kind}" for kind in kinds for h in heads],
            len(heads),
            hspace=min(0.2 / len(heads), 0.05),
            vspace=0.09,
            right=0.95,
        )
        shown = [m[h][keep] for m in (clean, cf) for h in heads]
        top = robust_limit(np.concatenate([m.ravel() for m in shown])) if shown else 1.0
        lim = robust_limit(np.concatenate([diff[h][keep].ravel() for h in heads]))
        hover = "query %{y}<br>key %{x}<br>%{z:.3f}<extra></extra>"
        traces, ticks = [], {"type": "category", "tickfont": {"size": 8}}
        for row, (z, axis) in enumerate(((clean, "coloraxis"), (cf, "coloraxis"), (diff, "coloraxis2"))):
            for col, h in enumerate(heads):
                i = row * len(heads) + col
                traces.append(
                    {"type": "heatmap", "z": z[h][keep], "x": labels, "y": labels, "coloraxis": axis,
                     "hovertemplate": hover, "xaxis": grid.x[i], "yaxis": grid.y[i]}
                )  # fmt: skip
                grid.axis(i, "x").update(ticks, title={"text": "key token" if row == 2 else ""})
                grid.axis(i, "y").update(ticks, autorange="reversed", title={"text": "query"})
        value = " (value-weighted)" if result.params.get("value_weighted") else ""
        layout = {
            **grid.layout,
            "coloraxis": {"colorscale": SEQUENTIAL, "cmin": 0.0, "cmax": top, "colorbar": {"title": {"text": "attention"}, "x": 1.02, "len": 0.6, "y": 0.7}},
            "coloraxis2": {"colorscale": DIVERGING, "cmid": 0.0, "cmin": -lim, "cmax": lim, "colorbar": {"title": {"text": "difference"}, "x": 1.02, "len": 0.3, "y": 0.15}},
            "height": min(MAX_HEIGHT, 840),
        }  # fmt: skip
        grid = finish(
            go.Figure(data=traces, layout=layout),
            f"Attention{value} of layer {layer}: clean, counterfactual ({', '.join(d['edits'])}) and difference",
        )

        names = d["action_names"]
        bars = go.Figure(
            [
                go.Bar(x=names, y=np.asarray(d["probs_clean"], dtype=float), name="clean"),
                go.Bar(x=names, y=np.asarray(d["probs_counterfactual"], dtype=float), name="counterfactual"),
            ]
        )
        bars.update_layout(barmode="group")
        finish(
            bars,
            f"Action probabilities at {d['query_label']} (KL(clean || counterfactual) = {d['kl']:.3g})",
            "action",
            "probability",
        )

        all_heads = [f"L{lyr}H{h}" for lyr in layers for h in range(n_heads)]
        rows = heatmap(
            np.asarray(d["query_rows"]["difference"], dtype=float).reshape(len(all_heads), -1)[:, real],
            x_labels=labels,
            y_labels=all_heads,
            title=f"Change of attention{value} from query {d['query_label']} (counterfactual - clean)",
            x_title="key token",
            y_title="head",
            colorbar_title="difference",
            diverging=True,
        )
        return [grid, bars, rows]
