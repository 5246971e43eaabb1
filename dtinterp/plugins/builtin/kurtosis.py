"""Activation kurtosis of residual dimensions and MLP neurons, in the model's basis vs a random rotation
(the privileged-basis test), over every real token of the batch of trajectory windows."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import torch

from dtinterp.interp.kurtosis import HEAVY_TAIL, basis_kurtosis, site_activations, summarize
from dtinterp.plugins.api import Analysis, AnalysisContext, AnalysisResult, Param
from dtinterp.plugins.builtin._common import one_window_run

_SITE_RE = re.compile(r"blocks\.(\d+)\.(hook_resid_post|mlp\.hook_post)")


def site_label(hook_name: str) -> str:
    """``blocks.1.hook_resid_post`` -> ``L1 resid``; ``blocks.1.mlp.hook_post`` -> ``L1 mlp``."""
    m = _SITE_RE.fullmatch(hook_name)
    if m is None:
        return hook_name
    return f"L{m.group(1)} {'resid' if m.group(2) == 'hook_resid_post' else 'mlp'}"


class Kurtosis(Analysis):
    id = "kurtosis"
    title = "Activation kurtosis (privileged basis)"
    category = "dynamic"
    description = (
        "Pearson kurtosis (Gaussian = 3) of each residual dimension (resid_post) and MLP neuron (hook_post) "
        "per layer over all real tokens of the batch, in the model's basis and after a random rotation: "
        "heavy tails only in the model's basis mean the basis is privileged. Give it many windows."
    )
    parameters = (
        Param("seed", "int", 0, "Seed of the random orthogonal rotation.", min=0, max=2**31 - 1),
        Param(
            "window",
            "int",
            -1,
            "Window of the batch whose tokens are pooled (-1: every window; one window's few tokens give "
            "noisy estimates).",
            min=-1,
        ),
    )

    def compute(self, ctx: AnalysisContext, params: dict[str, Any]) -> AnalysisResult:
        cache, pad = ctx.cache, ctx.inputs.pad_mask
        if params["window"] >= 0:
            cache, _, pad = one_window_run(ctx, params["window"], self.id)
        with torch.no_grad():
            acts = site_activations(ctx.model, cache, pad)
            per_site = basis_kurtosis(acts, seed=params["seed"])
        sites = list(per_site)
        n_tokens = int(next(iter(acts.values())).shape[0])
        data: dict[str, Any] = {
            "sites": sites,
            "site_labels": [site_label(s) for s in sites],
            "n_tokens": n_tokens,
            "heavy_tail": HEAVY_TAIL,
            "model": {s: k.cpu().numpy() for s, (k, _) in per_site.items()},
            "rotated": {s: r.cpu().numpy() for s, (_, r) in per_site.items()},
            "summary": {
                s: {"model": summarize(k), "rotated": summarize(r)} for s, (k, r) in per_site.items()
            },
        }
        parts = []
        for s in sites:
            m, r = data["summary"][s]["model"], data["summary"][s]["rotated"]
            parts.append(f"{site_label(s)} median {m['median']:.1f} vs {r['median']:.1f} rotated")
        note = " (few tokens: estimates are noisy; run on many windows)" if n_tokens < 200 else ""
        summary = f"Kurtosis over {n_tokens} tokens{note}: " + "; ".join(parts) + "."
        return AnalysisResult(self.id, params, data, summary)

    def figures(self, result: AnalysisResult) -> list[Any]:
        from dtinterp.viz import histogram, strip_plot

        d = result.data
        labels = dict(zip(d["sites"], d["site_labels"]))
        model = {labels[s]: np.asarray(v, dtype=float) for s, v in d["model"].items()}
        rotated = {labels[s]: np.asarray(v, dtype=float) for s, v in d["rotated"].items()}
        figs = [
            strip_plot(
                {"model basis": model, "random rotation": rotated},
                title=f"Kurtosis per dimension / neuron over {d['n_tokens']} tokens (Gaussian = 3)",
                x_title="layer and site",
                y_title="kurtosis (log scale)",
                log_y=True,
                points="all",
            )
        ]
        for kind, what in (("resid", "residual stream dimensions"), ("mlp", "MLP neurons")):
            chosen = [lab for lab in model if lab.endswith(kind)]
            if not chosen:
                continue
            figs.append(
                histogram(
                    {
                        "model basis": np.log10(np.concatenate([model[c] for c in chosen])),
                        "random rotation": np.log10(np.concatenate([rotated[c] for c in chosen])),
                    },
                    title=f"Kurtosis of {what}, all layers (log10; Gaussian = {np.log10(3):.2f})",
                    x_title="log10 kurtosis",
                    y_title="count",
                )
            )
        return figs
