"""Ablation: knock out a set of components and measure what the decision loses, per window or on average.

Components are named as TransformerLens hooks plus an index (``blocks.1.attn.hook_z:h2``,
``blocks.0.mlp.hook_post:n113``, ``blocks.1.hook_attn_out``, ``hook_rtg_embed``, ...; see
:mod:`dtinterp.interp.hooknames`). Three replacements (:func:`dtinterp.interp.causal.ablation_effects`):
``zero``; ``mean``, the per-position mean over the *other* windows of the batch (real tokens only); and
``resample``, another window's activation (one real wherever this window is). The components are ablated
together and, with ``each``, one at a time; the metric compares the unablated run (clean) with the
ablated one (corrupted): by default the logit of the unablated run's top action minus that of the ablated
run's top action (its runner-up where they agree), fixed by the run with every component ablated so the
bars are comparable.

**Invariant** (tested): zero-ablating a head whose output weights are zero changes nothing; an ablation of
nothing is a one-line error.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from dtinterp.interp.causal import EFFECT_KINDS, ablation_effects
from dtinterp.plugins.api import Analysis, AnalysisContext, AnalysisResult, Param
from dtinterp.plugins.builtin._causal import (
    ACTION_PARAM,
    METRIC_NAMES,
    METRIC_PARAM,
    choose_metric,
    predicted,
    predictions_text,
    user_errors,
    versus_param,
    windows_text,
)
from dtinterp.plugins.builtin._common import (
    POSITION_PARAM,
    WINDOW_PARAM,
    mean_std,
    selected_rows,
    state_timestep,
)

COMPONENTS_HELP = (
    "Components to ablate, comma-separated: heads blocks.1.attn.hook_z:h2, neurons "
    "blocks.0.mlp.hook_post:n113, layer outputs blocks.1.hook_attn_out / hook_mlp_out, embeddings "
    "hook_rtg_embed, ..."
)


class Ablation(Analysis):
    id = "ablation"
    title = "Ablation"
    category = "causal"
    description = (
        "Zero, mean or resample ablation of any set of components (heads, neurons, layer outputs, "
        "embeddings), together and one at a time: the change of a metric of the decision at a state token "
        "(logit difference, log-probability or KL from the unablated run), for one window or averaged over "
        "many. Mean and resample values come from the other windows of the batch."
    )
    parameters = (
        Param("components", "str", "blocks.0.attn.hook_z:h0", COMPONENTS_HELP),
        Param(
            "kind",
            "choice",
            "zero",
            "zero; mean: the per-position mean over the other windows; resample: another window's "
            "activation.",
            choices=EFFECT_KINDS,
        ),
        Param("each", "bool", True, "Also ablate each component alone (one bar each)."),
        METRIC_PARAM,
        ACTION_PARAM,
        versus_param("ablated"),
        POSITION_PARAM,
        WINDOW_PARAM,
        Param(
            "seed",
            "int",
            0,
            "Seed of kind=resample's choice of the window each activation comes from.",
            min=0,
        ),
    )

    @torch.no_grad()
    def compute(self, ctx: AnalysisContext, params: dict[str, Any]) -> AnalysisResult:
        k = state_timestep(ctx, params, self.id)
        rows = selected_rows(ctx, params, self.id, k)
        with user_errors(self.id, "components"):
            eff = ablation_effects(
                ctx.model, ctx.inputs, params["components"], params["kind"], each=params["each"],
                seed=params["seed"],
            )  # fmt: skip
        names = list(ctx.action_names)
        chosen = choose_metric(ctx, params, eff.clean_logits, eff.ablated_logits[-1], k, self.id)
        clean = chosen.metric(eff.clean_logits).double()  # [B]
        ablated = chosen.metric(eff.ablated_logits).double()  # [G, B]
        effect = ablated - clean
        mean, std = mean_std(effect.T, rows)  # over the shown windows
        r = rows.to(eff.clean_logits.device)
        probs = eff.clean_logits[r, k].softmax(-1).double().mean(0)
        ablated_probs = eff.ablated_logits[-1][r, k].softmax(-1).double().mean(0)
        shown = rows.tolist()
        data: dict[str, Any] = {
            "components": eff.components[-1],
            "kind": eff.kind,
            "labels": eff.labels,
            "windows": shown,
            "state_label": f"S{k + 1}",
            "metric": chosen.label(names, shown, ("unablated", "ablated")),
            "clean_metric": clean[r].cpu().numpy(),
            "ablated_metric": ablated[:, r].cpu().numpy(),  # [G, n]
            "effect_mean": mean,
            "effect_std": std,
            "action_names": names,
            "clean_probs": probs.cpu().numpy(),
            "ablated_probs": ablated_probs.cpu().numpy(),
            "clean_predicted": [predicted(names, eff.clean_logits, k)[b] for b in shown],
            "ablated_predicted": [predicted(names, eff.ablated_logits[-1], k)[b] for b in shown],
            "resample_from": None if eff.resample_index is None else eff.resample_index.tolist(),
        }
        runs = predictions_text({"unablated": data["clean_predicted"], "ablated": data["ablated_predicted"]})
        parts = ", ".join(f"{lab} {m:+.3g}" for lab, m in zip(eff.labels, mean))
        changed = sum(a != b for a, b in zip(data["clean_predicted"], data["ablated_predicted"]))
        summary = (
            f"{eff.kind.capitalize()} ablation of {', '.join(eff.components[-1])} at {data['state_label']}, "
            f"{windows_text(shown)}: {data['metric']} is {float(clean[r].mean()):+.3g} unablated; change "
            f"{parts}. The top action changes in {changed} of {len(shown)} window(s) ({runs})."
        )
        return AnalysisResult(self.id, params, data, summary)

    def figures(self, result: AnalysisResult) -> list[Any]:
        import plotly.graph_objects as go

        from dtinterp.viz.causal import interval_bars
        from dtinterp.viz.style import color, finish

        d = result.data
        runs = predictions_text({"unablated": d["clean_predicted"], "ablated": d["ablated_predicted"]})
        n = len(d["windows"])
        subtitle = (
            f"metric {d['metric']} at {d['state_label']} (unablated {np.mean(d['clean_metric']):+.3g}) · "
            f"{runs}<br>"
            f"{windows_text(d['windows'])}" + (" · bars: ±1 std over windows" if n > 1 else "")
        )
        mean, std = np.asarray(d["effect_mean"], dtype=float), np.asarray(d["effect_std"], dtype=float)
        bars = interval_bars(
            d["labels"],
            {f"change of {d['metric']}": (mean, mean - std, mean + std)},
            title=f"{d['kind'].capitalize()} ablation: change of the metric",
            subtitle=subtitle,
            x_title="ablated",
            y_title=f"change of the {METRIC_NAMES[result.params['metric']]}",
        )
        bars.add_hline(y=0, line={"color": "grey", "width": 1})
        probs = go.Figure()
        for i, (name, key) in enumerate(
            (("unablated", "clean_probs"), ("ablated (together)", "ablated_probs"))
        ):
            probs.add_trace(
                go.Bar(
                    x=d["action_names"],
                    y=np.asarray(d[key], dtype=float),
                    name=name,
                    marker={"color": color(i)},
                )
            )
        probs.update_layout(barmode="group")
        finish(probs, "Action probabilities", "action", "probability", height=420)
        probs.update_layout(
            title={"text": f"Action probabilities at {d['state_label']}, unablated vs ablated<br><sup>"
                   f"{runs} · {windows_text(d['windows'])}</sup>"},
            margin={"t": 110},
        )  # fmt: skip
        return [bars, probs]
