"""Path patching: a sender's effect along chosen paths only, on a clean/corrupted pair.

Activation patching a head changes everything downstream of it; path patching
(:mod:`dtinterp.interp.path_patching`, Wang et al. 2022) lets the change reach only the receivers, every
other head and MLP frozen. Three forms:

- ``senders-to-logits``: every head and every MLP as the sender, the logits (the direct path) as the
  receiver: which components write the difference straight into the readout (a heatmap layer x sender);
- ``senders-to-heads``: the ``senders`` (e.g. ``blocks.0.attn.hook_z:h1``) into each later head's query,
  key or value input alone (a heatmap layer x head): which heads read what the senders wrote;
- ``explicit``: design your own, ``senders`` to ``receivers`` (``blocks.1.attn.hook_v:h2``,
  ``blocks.1.mlp.hook_pre``, or ``logits``), one number.

Default direction ``noise`` (base = clean run, source = corrupted run, as Wang et al.); values are shown
as the normalised score (0: the corrupted run, 1: the clean run) or as the raw metric.

**Invariant** (tested): every form equals the library function on the same pair; a head whose output
weights are zero has no path effect (its score is 0: the base run's metric).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from dtinterp.interp.causal import parse_component_list
from dtinterp.interp.metrics import normalised_score
from dtinterp.interp.patching import DIRECTIONS
from dtinterp.interp.path_patching import (
    RECEIVER_HEAD_INPUTS,
    path_patch,
    path_patch_to_heads,
    path_patch_to_logits,
)
from dtinterp.plugins.api import Analysis, AnalysisContext, AnalysisResult, Param, ParameterError
from dtinterp.plugins.builtin._causal import (
    ACTION_PARAM,
    METRIC_NAMES,
    METRIC_PARAM,
    PAIR_PARAM,
    PAIR_SEED_PARAM,
    choose_metric,
    context_pair,
    needs_edits_for_pair,
    predicted,
    predictions_text,
    select_pair,
    user_errors,
    versus_param,
    windows_text,
)
from dtinterp.plugins.builtin._common import POSITION_PARAM, WINDOW_PARAM, state_timestep

MODES = ("senders-to-logits", "senders-to-heads", "explicit")


class PathPatching(Analysis):
    id = "path-patching"
    title = "Path patching"
    category = "causal"
    needs_counterfactual = True
    needs_edits = needs_edits_for_pair
    description = (
        "A sender's effect along chosen paths only, every other component frozen: every head and MLP to "
        "the logits directly, chosen senders into each later head's query, key or value, or your own "
        "senders and receivers. On the same clean/corrupted pairs as activation patching."
    )
    parameters = (
        Param(
            "mode",
            "choice",
            "senders-to-logits",
            "senders-to-logits: every head and MLP -> logits; senders-to-heads: the senders -> each head's "
            "receiver_input; explicit: the senders -> the receivers.",
            choices=MODES,
        ),
        Param(
            "senders",
            "str",
            "",
            "Senders for senders-to-heads and explicit, e.g. blocks.0.attn.hook_z:h1, blocks.0.hook_mlp_out "
            "(heads, a layer's attention, MLPs or neurons blocks.0.mlp.hook_post:n5).",
        ),
        Param(
            "receivers",
            "str",
            "logits",
            "Receivers for explicit: logits, or head inputs (blocks.1.attn.hook_q|k|v[:hN]) and MLP inputs "
            "(blocks.1.mlp.hook_pre[:nN]).",
        ),
        Param(
            "receiver_input",
            "choice",
            "v",
            "For senders-to-heads: which input of each head receives.",
            choices=RECEIVER_HEAD_INPUTS,
        ),
        Param(
            "direction",
            "choice",
            "noise",
            "noise: the senders carry the corrupted run's values into the clean run; denoise: the reverse.",
            choices=DIRECTIONS,
        ),
        PAIR_PARAM,
        METRIC_PARAM,
        ACTION_PARAM,
        versus_param("corrupted"),
        POSITION_PARAM,
        WINDOW_PARAM,
        Param(
            "show",
            "choice",
            "score",
            "score: (patched - corrupted) / (clean - corrupted); metric: the metric itself.",
            choices=("score", "metric"),
        ),
        PAIR_SEED_PARAM,
    )

    @torch.no_grad()
    def compute(self, ctx: AnalysisContext, params: dict[str, Any]) -> AnalysisResult:
        model = ctx.model
        k = state_timestep(ctx, params, self.id)
        pair = select_pair(context_pair(ctx, params, self.id), params, k, ctx.inputs.batch_size, self.id)
        with torch.inference_mode():
            clean_logits, corrupted_logits = model(pair.clean), model(pair.corrupted)
        chosen = choose_metric(ctx, params, clean_logits, corrupted_logits, k, self.id)
        mode, direction = params["mode"], params["direction"]
        senders: list[str] = []
        if mode != "senders-to-logits":
            if not params["senders"].strip():
                raise ParameterError(
                    f"plugin {self.id!r} parameter 'senders': mode {mode} needs senders, e.g. "
                    "blocks.0.attn.hook_z:h1"
                )
            with user_errors(self.id, "senders"):
                senders = [str(c) for c in parse_component_list(params["senders"], model)]
        if mode == "senders-to-logits":
            res = path_patch_to_logits(model, pair.clean, pair.corrupted, chosen.metric, direction=direction)
            what = "every head and MLP -> logits"
        elif mode == "senders-to-heads":
            with user_errors(self.id, "senders"):
                res = path_patch_to_heads(
                    model, pair.clean, pair.corrupted, senders, chosen.metric, params["receiver_input"],
                    direction=direction,
                )  # fmt: skip
            what = f"{' + '.join(senders)} -> each head's {params['receiver_input']}"
        else:
            receivers = [r for r in params["receivers"].replace(",", " ").split() if r]
            if not receivers:
                raise ParameterError(
                    f"plugin {self.id!r} parameter 'receivers': give logits or head/MLP inputs"
                )
            with user_errors(self.id, "receivers"):
                res = path_patch(
                    model, pair.clean, pair.corrupted, senders, receivers, chosen.metric, direction=direction
                )
            what = res.name
        names = list(ctx.action_names)
        per_window = res.per_window.double()
        clean_m, corrupted_m = res.clean.double(), res.corrupted.double()
        values = per_window.mean(-1)
        score = normalised_score(values, clean_m.mean(), corrupted_m.mean())
        n = pair.size
        data: dict[str, Any] = {
            "mode": mode,
            "paths": what,
            "direction": direction,
            "pair": pair.source,
            "pair_description": pair.description,
            "windows": pair.rows,
            "state_label": f"S{k + 1}",
            "metric": chosen.label(names),
            "axis_names": list(res.axis_names),
            "axis_labels": res.axis_labels,
            "values": values.cpu().numpy(),
            "std": (per_window.std(-1) if n > 1 else torch.zeros_like(values)).cpu().numpy(),
            "score": score.cpu().numpy(),
            "clean_metric": clean_m.cpu().numpy(),
            "corrupted_metric": corrupted_m.cpu().numpy(),
            "clean_predicted": predicted(names, clean_logits, k),
            "corrupted_predicted": predicted(names, corrupted_logits, k),
        }
        runs = predictions_text({"clean": data["clean_predicted"], "corrupted": data["corrupted_predicted"]})
        head = (
            f"Path patching ({direction}) {what} on the {pair.source} pair ({pair.description}) at "
            f"{data['state_label']}, {windows_text(pair.rows)}: {data['metric']} is "
            f"{float(clean_m.mean()):+.3g} clean, {float(corrupted_m.mean()):+.3g} corrupted ({runs})"
        )
        if res.axis_names:
            base = clean_m.mean() if direction == "noise" else corrupted_m.mean()
            change = np.abs(data["values"] - float(base))
            order = np.argsort(-np.nan_to_num(change).ravel(), kind="stable")[:3]
            flat_score = data["score"].ravel()
            cells = [
                " ".join(
                    res.axis_labels[a][int(i)]
                    for a, i in zip(res.axis_names, np.unravel_index(j, change.shape))
                )
                + (f" (score {flat_score[j]:.2f})" if np.isfinite(flat_score[j]) else "")
                for j in order
            ]
            summary = f"{head}. Strongest paths: {', '.join(cells)}."
        else:
            s = float(data["score"])
            summary = f"{head}. Along these paths: {float(values):+.3g}" + (
                f" (score {s:.2f})." if np.isfinite(s) else "."
            )
        return AnalysisResult(self.id, params, data, summary)

    def figures(self, result: AnalysisResult) -> list[Any]:
        from dtinterp.viz.causal import interval_bars, sweep_figures

        d, p = result.data, result.params
        runs = predictions_text({"clean": d["clean_predicted"], "corrupted": d["corrupted_predicted"]})
        clean, corrupted = float(np.mean(d["clean_metric"])), float(np.mean(d["corrupted_metric"]))
        subtitle = (
            f"metric {d['metric']} at {d['state_label']}: clean {clean:+.3g}, corrupted {corrupted:+.3g} · "
            f"{runs}<br>{windows_text(d['windows'])} · pair: {d['pair_description']}"
        )
        title = f"Path patching ({d['direction']}): {d['paths']}"
        if not d["axis_names"]:  # one number: the paths beside the two runs
            value, std = float(np.asarray(d["values"])), float(np.asarray(d["std"]))
            score = float(np.asarray(d["score"], dtype=float))
            bars = {
                d["metric"]: (
                    [clean, corrupted, value],
                    [
                        clean - np.std(d["clean_metric"]),
                        corrupted - np.std(d["corrupted_metric"]),
                        value - std,
                    ],
                    [
                        clean + np.std(d["clean_metric"]),
                        corrupted + np.std(d["corrupted_metric"]),
                        value + std,
                    ],
                )
            }
            note = f" (score {score:.2f})" if np.isfinite(score) else ""
            return [
                interval_bars(
                    ["clean run", "corrupted run", "along the paths"],
                    bars,
                    title=f"{title}{note}",
                    subtitle=subtitle + " · bars: ±1 std over windows",
                    x_title="run",
                    y_title=METRIC_NAMES[p["metric"]],
                )
            ]
        show_score = p["show"] == "score"
        return sweep_figures(
            np.asarray(d["score" if show_score else "values"], dtype=float),
            d["axis_names"],
            d["axis_labels"],
            title=title,
            subtitle=subtitle,
            colorbar_title="score (0 corrupted, 1 clean)" if show_score else METRIC_NAMES[p["metric"]],
            std=None if show_score else np.asarray(d["std"], dtype=float),
            signed=show_score or p["metric"] == "logit-diff",
        )
