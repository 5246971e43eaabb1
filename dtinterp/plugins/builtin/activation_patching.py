"""Activation patching: every sweep of the batched engine, noising or denoising, on a clean/corrupted pair.

The pair comes from the edits, from resampling another window at the same step, or from an env-level
change (Memory: the other cue object), see :mod:`dtinterp.interp.pairs`. Each patch copies one activation
(a residual stream or a layer's output at one token, a head's output, query, key, value or pattern, a
neuron) from one run into the other and reads the metric at a state token:

- ``denoise`` (base = corrupted, source = clean): a patch that brings the clean behaviour back *suffices*
  to carry the difference;
- ``noise`` (base = clean, source = corrupted): a patch that destroys it is *needed*.

The numbers are :meth:`dtinterp.interp.patching.PatchingEngine.sweep` (equal to TransformerLens'
``patching`` functions), shown as the normalised score ``(patched - corrupted) / (clean - corrupted)``
(0: the corrupted run, 1: the clean run; computed on the means over windows) or as the raw metric.

**Invariant** (tested): the values equal the library sweep on the same pair; noising with a corrupted run
identical to the clean one leaves the metric at the clean run's value for every patch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from dtinterp.interp.metrics import normalised_score
from dtinterp.interp.patching import DIRECTIONS, SWEEPS, PatchingEngine
from dtinterp.plugins.api import Analysis, AnalysisContext, AnalysisResult, Param
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

SHOW = ("score", "metric")


class ActivationPatching(Analysis):
    id = "activation-patching"
    title = "Activation patching"
    category = "causal"
    needs_counterfactual = True
    needs_edits = needs_edits_for_pair
    description = (
        "Copies one activation at a time (residual stream, attention or MLP output at one token, a head's "
        "output, query, key, value or pattern, a neuron) between a clean and a corrupted run and reads a "
        "metric at a state token: which activations carry the difference. Denoising (corrupted run, clean "
        "activation) or noising (the reverse). The pair: the edits, another window at the same step, or "
        "the episode re-simulated with the other Memory cue."
    )
    parameters = (
        Param(
            "sweep",
            "choice",
            "resid_pre",
            "What is patched, one patch per cell of the sweep.",
            choices=SWEEPS,
        ),
        Param(
            "direction",
            "choice",
            "denoise",
            "denoise: patch clean activations into the corrupted run; noise: corrupted into the clean run.",
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
            "score: (patched - corrupted) / (clean - corrupted), 0 = corrupted run, 1 = clean run; metric: "
            "the metric itself.",
            choices=SHOW,
        ),
        PAIR_SEED_PARAM,
    )

    @torch.no_grad()
    def compute(self, ctx: AnalysisContext, params: dict[str, Any]) -> AnalysisResult:
        k = state_timestep(ctx, params, self.id)
        pair = select_pair(context_pair(ctx, params, self.id), params, k, ctx.inputs.batch_size, self.id)
        with user_errors(self.id, "sweep"):
            engine = PatchingEngine(ctx.model, pair.clean, pair.corrupted, params["direction"])
        clean_logits, corrupted_logits = engine.clean_run.logits, engine.corrupted_run.logits
        chosen = choose_metric(ctx, params, clean_logits, corrupted_logits, k, self.id)
        with user_errors(self.id, "sweep"):
            result = engine.sweep(params["sweep"], chosen.metric)
        names = list(ctx.action_names)
        clean_m, corrupted_m = result.clean.double(), result.corrupted.double()
        per_window = result.per_window.double()
        score = normalised_score(per_window.mean(-1), clean_m.mean(), corrupted_m.mean())
        n = pair.size
        real_tokens = pair.clean.pad_mask.repeat_interleave(3, dim=1)[:, : pair.clean.shape[1]].any(0)
        data: dict[str, Any] = {
            "sweep": params["sweep"],
            "direction": params["direction"],
            "pair": pair.source,
            "pair_description": pair.description,
            "windows": pair.rows,
            "partners": pair.partners,
            "state_label": f"S{k + 1}",
            "metric": chosen.label(names),
            "axis_names": list(result.axis_names),
            "axis_labels": result.axis_labels,
            "real_tokens": real_tokens.cpu().numpy(),
            "values": per_window.mean(-1).cpu().numpy(),  # the metric under each patch, mean over windows
            "std": (per_window.std(-1) if n > 1 else torch.zeros_like(per_window[..., 0])).cpu().numpy(),
            "score": score.cpu().numpy(),
            "clean_metric": clean_m.cpu().numpy(),
            "corrupted_metric": corrupted_m.cpu().numpy(),
            "clean_predicted": predicted(names, clean_logits, k),
            "corrupted_predicted": predicted(names, corrupted_logits, k),
        }
        base = corrupted_m.mean() if params["direction"] == "denoise" else clean_m.mean()
        change = np.nan_to_num(np.abs(data["values"] - float(base)))
        scores, values = data["score"].ravel(), data["values"].ravel()
        top = ", ".join(
            _cell_label(result.axis_names, result.axis_labels, np.unravel_index(i, change.shape))
            + (f" (score {scores[i]:.2f})" if np.isfinite(scores[i]) else f" (metric {values[i]:+.3g})")
            for i in np.argsort(-change.ravel(), kind="stable")[:3]
        )
        runs = predictions_text({"clean": data["clean_predicted"], "corrupted": data["corrupted_predicted"]})
        summary = (
            f"Activation patching ({params['direction']}, {params['sweep']}) of the {pair.source} pair "
            f"({pair.description}) at {data['state_label']}, {windows_text(pair.rows)}: {data['metric']} is "
            f"{float(clean_m.mean()):+.3g} on the clean run and {float(corrupted_m.mean()):+.3g} on the "
            f"corrupted run ({runs}). Patches that move it most: {top}."
        )
        return AnalysisResult(self.id, params, data, summary)

    def figures(self, result: AnalysisResult) -> list[Any]:
        from dtinterp.viz.causal import sweep_figures

        d, p = result.data, result.params
        show_score = p["show"] == "score"
        z = np.asarray(d["score" if show_score else "values"], dtype=float)
        std = None if show_score else np.asarray(d["std"], dtype=float)
        runs = predictions_text({"clean": d["clean_predicted"], "corrupted": d["corrupted_predicted"]})
        clean, corrupted = np.mean(d["clean_metric"]), np.mean(d["corrupted_metric"])
        subtitle = (
            f"metric {d['metric']} at {d['state_label']}: clean {clean:+.3g}, corrupted {corrupted:+.3g} · "
            f"{runs}<br>{windows_text(d['windows'])} · pair: {d['pair_description']}"
        )
        signed = show_score or p["metric"] == "logit-diff"
        return sweep_figures(
            z,
            d["axis_names"],
            d["axis_labels"],
            title=f"Activation patching, {d['sweep']} ({d['direction']})",
            subtitle=subtitle,
            colorbar_title="score (0 corrupted, 1 clean)" if show_score else METRIC_NAMES[p["metric"]],
            real_tokens=d["real_tokens"],
            std=std,
            signed=signed,
        )


def _cell_label(axis_names: Any, axis_labels: dict[str, list[str]], index: tuple[int, ...]) -> str:
    """``L1 S4 H2`` for one cell of a sweep."""
    return " ".join(axis_labels[a][int(i)] for a, i in zip(axis_names, index))
