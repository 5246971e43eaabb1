"""Attribution patching: every patch of a sweep, or every edge, estimated from one gradient, beside the exact
patching it estimates.

On the clean/corrupted pair of the causal plugins (``pair``: the edits, another window at the same step, or
Memory's other cue), :mod:`dtinterp.interp.attribution_patching` estimates the effect of a patch, copying
an activation from the *source* run into the *base* run, to first order:
``(a_source - a_base) . d metric / d a``, one forward of each run and one backward pass for every patch.

- a node ``sweep`` (named and laid out as activation patching's: ``resid_pre`` layer x token,
  ``head_out_by_pos`` layer x token x head, ``neuron_by_pos`` layer x token x neuron, ...), or
- ``edges`` (EAP, Syed et al. 2023): every edge sender -> receiver of the model's graph
  (:mod:`dtinterp.interp.graph`), the receiver being a head's query, key or value input, an MLP's input or
  the logits.

``steps > 1`` averages the gradient over that many points between the two runs' input embeddings
(integrated gradients; EAP-IG for edges, Hanna et al. 2024). With ``exact`` (the default) the plugin also
runs the exact patching of the same patches on the same pair (the patching engine's sweep; every edge
path-patched alone) and reports the Pearson and Spearman correlations of estimate and exact effect over the
map's entries. Values are *effects* on the metric, ``patched - base``, averaged over the windows (``where``
keeps the pairs of one situation, e.g. Memory's junction: ``agent_x=5, agent_y=3, agent_dir=right``).

``direction``: ``denoise`` (base = corrupted run, source = clean: which activations bring the clean
behaviour back) or ``noise`` (base = clean run); ``auto`` is denoise for node sweeps (as activation
patching) and noise for edges (as path patching and EAP).

**Invariant** (tested): the numbers are the library's on the same pair; where the metric is linear in the
patched activations (no LayerNorm, attention patterns fixed, ReLUs on) the estimates equal the exact
patches and the correlation is 1.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from dtinterp.interp.attribution_patching import (
    SWEEPS,
    attribution_patching,
    edge_attribution_patching,
)
from dtinterp.interp.patching import DIRECTIONS
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
from dtinterp.plugins.builtin._common import (
    POSITION_PARAM,
    WHERE_PARAM,
    WINDOW_PARAM,
    state_timestep,
    where_windows,
)

EDGES = "edges"
#: Entries named in the summary.
TOP = 5


def resolve_direction(direction: str, sweep: str) -> str:
    """``auto``: noise for edges (as path patching), denoise for node sweeps (as activation patching)."""
    if direction != "auto":
        return direction
    return "noise" if sweep == EDGES else "denoise"


def method_name(sweep: str, steps: int) -> str:
    """``EAP``, ``EAP-IG (8 steps)``, ``attribution patching`` or ``integrated gradients (8 steps)``."""
    if sweep == EDGES:
        return "EAP" if steps == 1 else f"EAP-IG ({steps} steps)"
    return "attribution patching" if steps == 1 else f"integrated gradients ({steps} steps)"


class AttributionPatching(Analysis):
    id = "attribution-patching"
    title = "Attribution patching"
    category = "causal"
    needs_counterfactual = True
    needs_edits = needs_edits_for_pair
    description = (
        "Every patch of a sweep (residual stream x token, head x token, neuron x token, ...) or every edge "
        "of the model's graph (EAP; EAP-IG with steps > 1) estimated from one gradient, beside the exact "
        "patching of the same patches on the same clean/corrupted pair and the correlation of the two."
    )
    parameters = (
        Param(
            "sweep",
            "choice",
            "head_out_by_pos",
            "What is patched: a node sweep (laid out as activation patching's) or edges (every sender -> "
            "receiver edge of the model's graph).",
            choices=(*SWEEPS, EDGES),
        ),
        Param(
            "steps",
            "int",
            1,
            "Points of the integrated-gradients path between the two runs' input embeddings (1: plain "
            "attribution patching / EAP; 8 is EAP-IG's usual choice).",
            min=1,
            max=64,
        ),
        Param(
            "direction",
            "choice",
            "auto",
            "denoise: clean activations into the corrupted run; noise: the reverse; auto: denoise for node "
            "sweeps, noise for edges.",
            choices=("auto", *DIRECTIONS),
        ),
        Param(
            "exact",
            "bool",
            True,
            "Also run the exact patching of every patch (every edge path-patched alone) and correlate.",
        ),
        PAIR_PARAM,
        METRIC_PARAM,
        ACTION_PARAM,
        versus_param("corrupted"),
        POSITION_PARAM,
        WINDOW_PARAM,
        WHERE_PARAM,
        PAIR_SEED_PARAM,
    )

    def compute(self, ctx: AnalysisContext, params: dict[str, Any]) -> AnalysisResult:
        model = ctx.model
        k = state_timestep(ctx, params, self.id)
        where = where_windows(ctx, params, self.id)[0] if params["where"].strip() else None
        pair = context_pair(ctx, params, self.id)
        pair = select_pair(pair, params, k, ctx.inputs.batch_size, self.id, where)
        with torch.inference_mode():
            clean_logits, corrupted_logits = model(pair.clean), model(pair.corrupted)
        chosen = choose_metric(ctx, params, clean_logits, corrupted_logits, k, self.id)
        sweep, steps, exact = params["sweep"], params["steps"], params["exact"]
        direction = resolve_direction(params["direction"], sweep)
        with user_errors(self.id, "sweep"):
            if sweep == EDGES:
                res = edge_attribution_patching(
                    model,
                    pair.clean,
                    pair.corrupted,
                    chosen.metric,
                    direction=direction,
                    steps=steps,
                    exact=exact,
                )
            else:
                res = attribution_patching(
                    model,
                    pair.clean,
                    pair.corrupted,
                    chosen.metric,
                    [sweep],
                    direction=direction,
                    steps=steps,
                    exact=exact,
                )[sweep]
        names = list(ctx.action_names)
        base, source = res.base.double(), res.source.double()
        data: dict[str, Any] = {
            "sweep": sweep,
            "method": method_name(sweep, steps),
            "steps": steps,
            "direction": direction,
            "pair": pair.source,
            "pair_description": pair.description,
            "windows": pair.rows,
            "state_label": f"S{k + 1}",
            "metric": chosen.label(names),
            "axis_names": list(res.axis_names),
            "axis_labels": res.axis_labels,
            "estimate": res.values.double().cpu().numpy(),
            "exact": None if res.exact is None else res.exact.double().cpu().numpy(),
            "correlation": res.correlation,
            "rank_correlation": res.rank_correlation,
            "base_metric": base.cpu().numpy(),  # per window: the unpatched base run
            "source_metric": source.cpu().numpy(),  # per window: the source run (everything patched)
            "clean_predicted": predicted(names, clean_logits, k),
            "corrupted_predicted": predicted(names, corrupted_logits, k),
        }
        if sweep == EDGES:
            graph = res.graph
            data["senders"] = graph.sender_labels()
            data["receivers"] = graph.receiver_labels()
            data["edge_index"] = graph.edge_index.cpu().numpy()  # [E, 2]: sender, receiver of each edge
        else:
            P = pair.clean.shape[1]
            data["real_tokens"] = pair.clean.pad_mask.repeat_interleave(3, dim=1)[:, :P].any(0).cpu().numpy()
        labels = entry_labels(data)
        est = data["estimate"].ravel()
        ex = None if data["exact"] is None else data["exact"].ravel()
        top = ", ".join(
            f"{labels[i]} {est[i]:+.3g}" + ("" if ex is None else f" (exact {ex[i]:+.3g})")
            for i in np.argsort(-np.abs(np.nan_to_num(est)), kind="stable")[:TOP]
        )
        runs = predictions_text({"clean": data["clean_predicted"], "corrupted": data["corrupted_predicted"]})
        base_run = "corrupted" if direction == "denoise" else "clean"
        what = f"every edge ({len(est)})" if sweep == EDGES else f"{sweep} ({len(est)} patches)"
        agreement = (
            " (no exact patching: exact=false)"
            if ex is None
            else f". Against exact {'path' if sweep == EDGES else 'activation'} patching: Pearson r = "
            f"{_num(res.correlation)}, Spearman ρ = {_num(res.rank_correlation)}"
        )
        summary = (
            f"{_first_upper(data['method'])} ({direction}: base = the {base_run} run) of {what} on the "
            f"{pair.source} pair ({pair.description}) at {data['state_label']}, {windows_text(pair.rows)}: "
            f"{data['metric']} is {float(base.mean()):+.3g} on the base run and {float(source.mean()):+.3g} "
            f"with everything patched ({runs}){agreement}. Largest estimates: {top}."
        )
        return AnalysisResult(self.id, params, data, summary)

    def figures(self, result: AnalysisResult) -> list[Any]:
        from dtinterp.viz import heatmap
        from dtinterp.viz.causal import estimate_scatter, sweep_figures
        from dtinterp.viz.style import MAX_HEIGHT

        d, p = result.data, result.params
        unit = f"effect on the {METRIC_NAMES[p['metric']]}"
        est = np.asarray(d["estimate"], dtype=float)
        exact = None if d["exact"] is None else np.asarray(d["exact"], dtype=float)
        finite = np.abs(np.concatenate([est.ravel(), [] if exact is None else exact.ravel()]))
        finite = finite[np.isfinite(finite)]
        zmax = float(finite.max()) if finite.size and finite.max() > 0 else None  # one scale for both maps
        runs = predictions_text({"clean": d["clean_predicted"], "corrupted": d["corrupted_predicted"]})
        base, source = float(np.mean(d["base_metric"])), float(np.mean(d["source_metric"]))
        subtitle = (
            f"metric {d['metric']} at {d['state_label']}: base run {base:+.3g}, all patched {source:+.3g} · "
            f"{runs}<br>{windows_text(d['windows'])} · pair: {d['pair_description']}"
        )
        exact_name = "path patching of each edge" if d["sweep"] == EDGES else "activation patching"
        maps = [("estimate", est, _first_upper(d["method"]))]
        if exact is not None:
            maps.append(("exact", exact, f"Exact {exact_name}"))
        figs = []
        for _, values, what in maps:
            title = f"{what}, {d['sweep']} ({d['direction']})"
            if d["sweep"] == EDGES:
                senders, receivers = d["senders"], d["receivers"]
                z = np.full((len(senders), len(receivers)), np.nan)
                idx = np.asarray(d["edge_index"], dtype=int)
                z[idx[:, 0], idx[:, 1]] = values
                fig = heatmap(
                    z,
                    x_labels=receivers,
                    y_labels=senders,
                    title=title,
                    x_title="receiver (its input)",
                    y_title="sender",
                    colorbar_title=unit,
                    diverging=True,
                    zmax=zmax,
                    height=min(MAX_HEIGHT, 260 + 28 * len(senders)),
                )
                fig.update_layout(title={"text": f"{title}<br><sup>{subtitle}</sup>"}, margin={"t": 110})
                figs.append(fig)
            else:
                figs += sweep_figures(
                    values,
                    d["axis_names"],
                    d["axis_labels"],
                    title=title,
                    subtitle=subtitle,
                    colorbar_title=unit,
                    real_tokens=d["real_tokens"],
                    signed=True,
                    zmax=zmax,
                )
        if exact is not None:
            labels = np.asarray(entry_labels(d))
            keep = ~((est.ravel() == 0) & (exact.ravel() == 0))  # padded tokens, rows no logit reads
            figs.append(
                estimate_scatter(
                    est.ravel()[keep],
                    exact.ravel()[keep],
                    list(labels[keep]),
                    title=f"{_first_upper(d['method'])} against exact {exact_name}: Pearson r = "
                    f"{_num(d['correlation'])}, Spearman ρ = {_num(d['rank_correlation'])}",
                    subtitle=f"{d['sweep']}, {int(keep.sum())} patches (those 0 in both left out) · {subtitle}",
                    x_title=f"exact {unit}",
                    y_title=f"estimated {unit}",
                )
            )
        return figs


def entry_labels(d: dict[str, Any]) -> list[str]:
    """A label per entry of the map, in ``ravel`` order: ``L1 S4 H2`` or the edge's ``L0H1 -> L1H0.v``."""
    if d["sweep"] == EDGES:
        return list(d["axis_labels"]["edge"])
    labels = [d["axis_labels"][a] for a in d["axis_names"]]
    shape = tuple(len(x) for x in labels)
    return [" ".join(labels[a][i] for a, i in enumerate(idx)) for idx in np.ndindex(*shape)]


def _num(x: float | None) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.3f}"


def _first_upper(text: str) -> str:
    """``text`` with its first letter upper-case (``EAP-IG`` stays as it is)."""
    return text[:1].upper() + text[1:]
