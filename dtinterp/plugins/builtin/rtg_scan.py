"""RTG scan: action logits and each component's direct logit contribution as the return-to-go is swept.

The window's RTG is set to ``n_points`` values in ``[rtg_min, rtg_max]`` (return units) and the sweep runs
as one batched forward pass (see :mod:`dtinterp.interp.rtg_scan` for the ``shift``/``constant`` modes).
The components' contributions to one action are then correlated over the sweep and clustered (average
linkage on ``1 - correlation``), which groups components that respond to the RTG together. The
clustergram holds the ``max_cluster`` components whose contribution varies most over the sweep (all of
them at layer and head granularity with the default 64; at neuron granularity the full matrix would be
thousands squared). The attributed action is fixed over the sweep (by default the one predicted for the
actual window), so the curves of different RTGs are comparable.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from dtinterp.interp.attribution import GRANULARITIES
from dtinterp.interp.rtg_scan import RTG_MODES, correlation_clustering, rtg_scan
from dtinterp.plugins.api import (
    MODEL_ACTIONS,
    Analysis,
    AnalysisContext,
    AnalysisResult,
    Param,
    ParameterError,
)
from envs.encoding import ACTION_NAMES


def _resolve_state(ctx: AnalysisContext, params: dict[str, Any], plugin_id: str) -> tuple[int, int]:
    """``(batch row, 0-based timestep)`` named by the ``window`` and ``position`` parameters.

    ``position`` is the 1-based timestep of the state token (``0``: the last); it must be a real timestep.
    """
    B, K = ctx.inputs.batch_size, ctx.inputs.context_len
    b, pos = params["window"], params["position"]
    if b >= B:
        raise ParameterError(f"plugin {plugin_id!r}: window {b} is outside the batch of {B} windows")
    if pos > K:
        raise ParameterError(f"plugin {plugin_id!r}: position {pos} is outside the window of {K} timesteps")
    k = K - 1 if pos == 0 else pos - 1
    if not bool(ctx.inputs.pad_mask[b, k]):
        raise ParameterError(f"plugin {plugin_id!r}: position {k + 1} is a padded timestep of window {b}")
    return b, k


class RTGScan(Analysis):
    id = "rtg-scan"
    title = "RTG scan with clustergram"
    category = "causal"
    description = (
        "Sweeps the return-to-go of the current window over a range of values in one batched forward pass "
        "and shows the action logits and probabilities, every component's direct contribution to one "
        "action's logit, and a clustergram of how those contributions co-vary with the RTG."
    )
    parameters = (
        Param("rtg_min", "float", -1.0, "Lowest RTG of the sweep, in return units.", min=-1e6, max=1e6),
        Param("rtg_max", "float", 1.0, "Highest RTG of the sweep, in return units.", min=-1e6, max=1e6),
        Param("n_points", "int", 128, "Number of RTG values (the batch of the single forward pass).", 2, 512),
        Param(
            "mode",
            "choice",
            "shift",
            "shift: add (value - last RTG) to every real RTG, keeping the rewards inside the window; "
            "constant: set every real RTG to the value.",
            choices=RTG_MODES,
        ),
        Param(
            "granularity",
            "choice",
            "head",
            "Components: layer (attention and MLP per layer), head (each head, MLP per layer) or neuron "
            "(each head and each MLP neuron).",
            choices=GRANULARITIES,
        ),
        Param("position", "int", 0, "State token S_k to read, k = 1..K (0: the last state).", min=0),
        Param(
            "action",
            "choice",
            "predicted",
            "Action whose logit is attributed: the one the model predicts for the actual window, or a name.",
            choices=("predicted", MODEL_ACTIONS),
        ),
        Param("window", "int", 0, "Which window of the batch (row index).", min=0),
        Param("top_k", "int", 8, "Components drawn in the contributions plot (largest variance).", 1, 64),
        Param(
            "max_cluster",
            "int",
            64,
            "Components in the clustergram: those whose contribution varies most over the sweep (constant "
            "ones are left out).",
            min=2,
            max=512,
        ),
    )

    def compute(self, ctx: AnalysisContext, params: dict[str, Any]) -> AnalysisResult:
        if params["rtg_min"] >= params["rtg_max"]:
            raise ParameterError(
                f"plugin {self.id!r}: rtg_min {params['rtg_min']} must be below rtg_max {params['rtg_max']}"
            )
        model = ctx.model
        n_actions = model.cfg.n_actions
        names = list(ACTION_NAMES[:n_actions])
        b, k = _resolve_state(ctx, params, self.id)
        actual_logits = ctx.logits[b, k].detach()  # [A]
        if params["action"] == "predicted":
            action = int(actual_logits.argmax())
        elif params["action"] in names:
            action = names.index(params["action"])
        else:
            raise ParameterError(f"plugin {self.id!r}: action {params['action']!r} is not one of {names}")

        values = torch.linspace(params["rtg_min"], params["rtg_max"], params["n_points"])
        scan = rtg_scan(
            model,
            ctx.inputs[b],
            values,
            rtg_scale=ctx.rtg_scale,
            mode=params["mode"],
            position=k,
            granularity=params["granularity"],
        )
        contrib = scan.contributions[:, :, action].double().cpu().numpy()  # [C, N]
        variance = contrib.var(1)
        # Components whose contribution does not move with the RTG (biases, neurons that never fire) have
        # no correlation to cluster by: they are left out of the clustergram, not drawn as blank rows.
        constant = np.sqrt(variance) <= 1e-6 * np.abs(contrib).max(1, initial=0.0)
        candidates = np.flatnonzero(~constant) if (~constant).any() else np.arange(len(variance))
        by_variance = candidates[np.argsort(-variance[candidates], kind="stable")]
        chosen = np.sort(by_variance[: params["max_cluster"]])
        clus = correlation_clustering(contrib[chosen])
        predicted = scan.logits.argmax(-1).cpu().numpy()  # [N]
        actual_rtg = float(ctx.inputs.rtg[b, k]) * ctx.rtg_scale

        data: dict[str, Any] = {
            "action_names": names,
            "action": action,
            "state_label": f"S{k + 1}",
            "actual_rtg": actual_rtg,
            "actual_logits": actual_logits.cpu().numpy(),
            "actual_probs": actual_logits.softmax(-1).cpu().numpy(),
            "values": scan.values.cpu().numpy(),
            "logits": scan.logits.cpu().numpy(),  # [N, A]
            "probs": scan.probs.cpu().numpy(),  # [N, A]
            "predicted": predicted,
            "labels": scan.labels,
            "contributions": contrib,  # [C, N] to the chosen action's logit
            "b_U": float(scan.b_U[action]),
            "variance": variance,
            "cluster": {
                "components": chosen,  # indices into labels
                "n_constant": int(constant.sum()),  # components left out: constant over the sweep
                "labels": [scan.labels[i] for i in chosen],
                "corr": clus.corr,
                "constant": clus.constant,
                "order": clus.order,
                "linkage": clus.linkage,
                "icoord": clus.dendrogram["icoord"],
                "dcoord": clus.dendrogram["dcoord"],
            },
        }
        switches = np.flatnonzero(predicted[1:] != predicted[:-1])
        change = (
            "the predicted action is " + names[int(predicted[0])] + " over the whole sweep"
            if switches.size == 0
            else f"the predicted action changes {switches.size} time(s), first from {names[int(predicted[0])]} "
            f"to {names[int(predicted[switches[0] + 1])]} at RTG ≈ {float(values[switches[0] + 1]):.3g}"
        )
        top = int(variance.argmax())
        summary = (
            f"RTG scan of {data['state_label']} over [{params['rtg_min']:g}, {params['rtg_max']:g}] "
            f"({params['n_points']} points, {params['mode']}; actual RTG {actual_rtg:.3g}): {change}. "
            f"The contribution to {names[action]} varies most in {scan.labels[top]} "
            f"(std {variance[top] ** 0.5:.3g}). {int(constant.sum())} component(s) constant over the sweep are "
            "left out of the clustergram."
        )
        return AnalysisResult(self.id, params, data, summary)

    def figures(self, result: AnalysisResult) -> list[Any]:
        from plotly.subplots import make_subplots

        from dtinterp.viz.clustergram import clustergram
        from dtinterp.viz.lines import line_plot
        from dtinterp.viz.style import color, finish

        d = result.data
        x = np.asarray(d["values"], dtype=float)
        names, action, state = d["action_names"], d["action"], d["state_label"]
        mark = {"line": {"color": "black", "width": 1, "dash": "dash"}}

        curves = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08)
        for row, key in ((1, "logits"), (2, "probs")):
            y = np.asarray(d[key], dtype=float)
            for a, name in enumerate(names):
                curves.add_scatter(
                    x=x, y=y[:, a], name=name, legendgroup=name, showlegend=row == 1,
                    line={"color": color(a), "width": 3 if a == action else 1.5}, row=row, col=1,
                )  # fmt: skip
        curves.add_vline(x=d["actual_rtg"], annotation_text="actual RTG", **mark)
        finish(curves, f"Action logits and probabilities at {state} vs RTG", height=600)
        curves.update_xaxes(title_text="RTG (return units)", row=2, col=1)
        curves.update_yaxes(title_text="logit", row=1, col=1)
        curves.update_yaxes(title_text="probability", row=2, col=1)

        contrib = np.asarray(d["contributions"], dtype=float)
        top = np.argsort(-np.asarray(d["variance"], dtype=float), kind="stable")[: result.params["top_k"]]
        lines = line_plot(
            x,
            {d["labels"][i]: contrib[i] for i in top},
            title=f"Direct contribution to the {names[action]} logit at {state} (top {len(top)} by variance)",
            x_title="RTG (return units)",
            y_title="logit contribution",
            zero_line=True,
        )
        lines.add_vline(x=d["actual_rtg"], **mark)

        c = d["cluster"]
        gram = clustergram(
            np.asarray(c["corr"], dtype=float),
            c["labels"],
            c["order"],
            c["icoord"],
            c["dcoord"],
            title=f"Correlation over the RTG sweep of contributions to {names[action]} (clustered; "
            f"{c.get('n_constant', 0)} constant components left out)",
        )
        return [curves, lines, gram]
