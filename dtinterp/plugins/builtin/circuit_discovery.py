"""Circuit discovery: rank the model's edges (or nodes) by a score, keep the top k, and measure how much of
the behaviour each top-k circuit keeps with everything else ablated.

Scores (on the clean/corrupted pair of the causal plugins, ``noise`` direction: base = the clean run):
``eap`` (edge attribution patching), ``eap-ig`` (with ``steps`` points of integrated gradients) or
``exact`` (every edge path-patched alone, :func:`~dtinterp.interp.attribution_patching.exact_edge_patching`);
a node (``level=node``) scores the sum of its outgoing edges. :func:`dtinterp.interp.circuit_discovery.\
faithfulness_curve` then evaluates the top-k circuits on the clean windows, every edge outside the circuit
reading its sender's ablation value instead of the live output: ``resample``, the corrupted partner's
activation (each clean window's own partner), or ``mean``, the per-position mean over the clean windows.

The metric is the logit difference (``action`` minus ``versus``, by default the clean run's top action minus
the corrupted run's) at the state token named by ``position``, averaged over every pair of the context (a
dataset gives many). Faithfulness is ``mean metric(circuit) / mean metric(full model)``; the *minimal circuit*
is the smallest evaluated k whose faithfulness reaches ``threshold``. ``points`` bounds the circuit sizes
evaluated: every k up to that many edges, else 0, all of them and a geometric grid between (dense at small k).
``where`` keeps the pairs of one situation (Memory's junction: ``agent_x=5, agent_y=3, agent_dir=right``).

**Invariant** (tested): the curve equals the library's on the same pair and scores; the circuit of every
edge is the full model (faithfulness 1).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from dtinterp.interp.attribution_patching import edge_attribution_patching, exact_edge_patching
from dtinterp.interp.circuit_discovery import CIRCUIT_ABLATIONS, LEVELS, faithfulness_curve
from dtinterp.interp.graph import ComputeGraph
from dtinterp.plugins.api import Analysis, AnalysisContext, AnalysisResult, Param
from dtinterp.plugins.builtin._causal import (
    ACTION_PARAM,
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

SCORES = ("eap-ig", "eap", "exact")
SCORE_NAMES = {"eap-ig": "EAP-IG", "eap": "EAP", "exact": "exact path patching"}
ABLATION_NAMES = {
    "resample": "resample ablation from each window's corrupted partner",
    "mean": "mean ablation over the clean windows",
}
#: Circuit members listed in the summary.
LISTED = 12


def circuit_sizes(n: int, points: int) -> list[int]:
    """The circuit sizes evaluated: every k in 0..n if ``points`` is 0 or ``n <= points``, else 0, n and
    ``points - 1`` sizes on a geometric grid from 1 to n (rounded, so every small k is kept)."""
    if points == 0 or n <= points:
        return list(range(n + 1))
    grid = np.unique(np.round(np.geomspace(1, n, points - 1)).astype(int)).tolist()
    return sorted({0, n, *grid})


class CircuitDiscovery(Analysis):
    id = "circuit-discovery"
    title = "Circuit discovery"
    category = "causal"
    needs_counterfactual = True
    needs_edits = needs_edits_for_pair
    description = (
        "Ranks every edge (or node) of the model's graph by EAP, EAP-IG or exact path patching, keeps the "
        "top k with every other edge ablated (resampled from the corrupted partner, or mean), and draws the "
        "faithfulness curve over k: the minimal circuit that keeps a threshold share of the logit "
        "difference, its edges listed and drawn."
    )
    parameters = (
        Param(
            "scores",
            "choice",
            "eap-ig",
            "How edges are ranked: eap-ig (integrated gradients, steps points), eap (one gradient), exact "
            "(every edge path-patched alone: slower, no approximation).",
            choices=SCORES,
        ),
        Param("steps", "int", 8, "Integrated-gradients points of scores=eap-ig.", min=2, max=64),
        Param(
            "level",
            "choice",
            "edge",
            "edge: circuits are sets of edges; node: sets of nodes (every edge out of a node kept or ablated "
            "together; a node scores the sum of its outgoing edges).",
            choices=LEVELS,
        ),
        Param(
            "ablation",
            "choice",
            "resample",
            "What an edge outside the circuit carries: resample, the corrupted partner's activation; mean, "
            "the per-position mean over the clean windows.",
            choices=CIRCUIT_ABLATIONS,
        ),
        Param(
            "threshold",
            "float",
            0.9,
            "Faithfulness (mean metric of the circuit / of the full model) the minimal circuit must reach.",
            min=0.01,
            max=1.5,
        ),
        Param(
            "points",
            "int",
            32,
            "Circuit sizes evaluated: every k up to this many edges (nodes), else a grid dense at small k; "
            "0: every k.",
            min=0,
            max=4096,
        ),
        PAIR_PARAM,
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
        metric_params = {**params, "metric": "logit-diff"}  # faithfulness is a ratio of logit differences
        chosen = choose_metric(ctx, metric_params, clean_logits, corrupted_logits, k, self.id)
        graph = ComputeGraph.of(model.cfg)
        how, level = params["scores"], params["level"]
        with user_errors(self.id, "scores"):
            if how == "exact":
                edge_scores = exact_edge_patching(model, pair.clean, pair.corrupted, chosen.metric).mean(-1)
            else:
                steps = 1 if how == "eap" else params["steps"]
                edge_scores = edge_attribution_patching(
                    model, pair.clean, pair.corrupted, chosen.metric, direction="noise", steps=steps
                ).values
        edge_scores = edge_scores.detach().double().cpu()
        scores = edge_scores if level == "edge" else node_scores(graph, edge_scores)
        n = graph.n_edges if level == "edge" else graph.n_senders
        ks = circuit_sizes(n, params["points"])
        with user_errors(self.id, "ablation"):
            curve = faithfulness_curve(
                model,
                pair.clean,
                pair.corrupted,
                chosen.metric,
                scores.float(),
                level=level,
                ks=ks,
                ablation=params["ablation"],
                threshold=params["threshold"],
                seed=params["seed"],
            )
        faith = np.asarray(curve.faithfulness, dtype=float)
        shown_k = curve.minimal_k
        if shown_k is None:  # no circuit reaches the threshold: draw the most faithful one evaluated
            shown_k = curve.ks[int(np.nanargmax(faith))] if np.isfinite(faith).any() else curve.ks[-1]
        names = list(ctx.action_names)
        unit = "edges" if level == "edge" else "nodes"
        data: dict[str, Any] = {
            "scores": how,
            "score_name": SCORE_NAMES[how] + (f" ({params['steps']} steps)" if how == "eap-ig" else ""),
            "level": level,
            "unit": unit,
            "ablation": curve.ablation,
            "pair": pair.source,
            "pair_description": pair.description,
            "windows": pair.rows,
            "state_label": f"S{k + 1}",
            "metric": chosen.label(names),
            "n": n,
            "ks": curve.ks,
            "faithfulness": faith,
            "normalised": np.asarray(curve.normalised, dtype=float),
            "circuit_metric": np.asarray(curve.metric, dtype=float),
            "metric_full": curve.metric_full,
            "metric_empty": curve.metric_empty,
            "threshold": curve.threshold,
            "minimal_k": curve.minimal_k,
            "minimal_circuit": curve.minimal_circuit,
            "ranking": curve.ranking,
            "ranked_scores": np.asarray(curve.scores, dtype=float),
            "shown_k": shown_k,
            "shown_faithfulness": float(faith[curve.ks.index(shown_k)]),
            "drawn_edges": drawn_edges(graph, curve.ranking[:shown_k], edge_scores, level),
            "graph": {
                "n_layers": model.cfg.n_layers,
                "n_heads": model.cfg.n_heads,
                "attn_only": bool(model.cfg.attn_only),
            },
            "clean_predicted": predicted(names, clean_logits, k),
            "corrupted_predicted": predicted(names, corrupted_logits, k),
        }
        runs = predictions_text({"clean": data["clean_predicted"], "corrupted": data["corrupted_predicted"]})
        head = (
            f"Circuits of the top-k {unit} by {data['score_name']}, {ABLATION_NAMES[curve.ablation]}, on the "
            f"{pair.source} pair ({pair.description}) at {data['state_label']}, {windows_text(pair.rows)}: "
            f"{data['metric']} is {curve.metric_full:+.3g} in the full model ({runs}) and "
            f"{curve.metric_empty:+.3g} with every edge ablated."
        )
        if curve.minimal_k is None:
            found = (
                f" No evaluated circuit reaches faithfulness {curve.threshold:g}; the most faithful has k = "
                f"{shown_k} ({data['shown_faithfulness']:.3f})."
            )
        elif curve.minimal_k == 0:
            found = (
                f" The empty circuit already keeps {data['shown_faithfulness']:.3f} of it (≥ {curve.threshold:g}): "
                "what the ablation puts in decides as the full model does; choose a pair whose decisions differ."
            )
        else:
            members = curve.minimal_circuit[:LISTED]
            more = f", … ({curve.minimal_k} in all)" if curve.minimal_k > LISTED else ""
            found = (
                f" Minimal circuit at faithfulness ≥ {curve.threshold:g}: k = {curve.minimal_k} of {n} {unit} "
                f"(faithfulness {data['shown_faithfulness']:.3f}): {', '.join(members)}{more}."
            )
        if curve.ablation == "mean" and pair.size == 1:
            found += " (Mean ablation over one window is that window itself: give several.)"
        return AnalysisResult(self.id, params, data, head + found)

    def figures(self, result: AnalysisResult) -> list[Any]:
        from dtinterp.viz.graph import circuit_graph
        from dtinterp.viz.lines import line_plot

        d = result.data
        runs = predictions_text({"clean": d["clean_predicted"], "corrupted": d["corrupted_predicted"]})
        subtitle = (
            f"metric {d['metric']} at {d['state_label']}: full model {d['metric_full']:+.3g}, every edge "
            f"ablated {d['metric_empty']:+.3g} · {runs}<br>{windows_text(d['windows'])} · pair: "
            f"{d['pair_description']}"
        )
        ks = np.asarray(d["ks"], dtype=float)
        title = f"Faithfulness of the top-k {d['unit']} by {d['score_name']} ({d['ablation']} ablation)"
        curve = line_plot(
            ks,
            {
                "faithfulness = metric(circuit) / metric(full)": np.asarray(d["faithfulness"], dtype=float),
                "normalised = (circuit − empty) / (full − empty)": np.asarray(d["normalised"], dtype=float),
            },
            title=title,
            x_title=f"k: {d['unit']} kept (of {d['n']})",
            y_title="share of the full model's metric",
            markers=True,
            height=500,
        )
        curve.add_hline(
            y=d["threshold"],
            line={"color": "grey", "dash": "dash"},
            annotation_text=f"threshold {d['threshold']:g}",
        )
        if d["minimal_k"] is not None:
            curve.add_vline(
                x=d["minimal_k"],
                line={"color": "grey", "dash": "dot"},
                annotation_text=f"minimal k = {d['minimal_k']}",
            )
        curve.update_layout(title={"text": f"{title}<br><sup>{subtitle}</sup>"}, margin={"t": 110})
        k = d["shown_k"]
        if d["minimal_k"] is None:
            what = f"No circuit reaches {d['threshold']:g}: the most faithful evaluated, k = {k}"
        else:
            what = f"Minimal circuit: the top {k} {d['unit']} by {d['score_name']}"
        g = d["graph"]
        drawn = circuit_graph(
            g["n_layers"],
            g["n_heads"],
            [tuple(e) for e in d["drawn_edges"]],
            attn_only=g["attn_only"],
            nodes=d["ranking"][:k] if d["level"] == "node" else (),
            title=f"{what} (faithfulness {d['shown_faithfulness']:.3f}, {d['ablation']} ablation)",
            subtitle="edge width: |score| · "
            + ("" if d["level"] == "edge" else "edges among the nodes · ")
            + f"{windows_text(d['windows'])} · pair: {d['pair_description']}",
        )
        return [curve, drawn]


def node_scores(graph: ComputeGraph, edge_scores: torch.Tensor) -> torch.Tensor:
    """Each sender's summed outgoing edge scores (``EdgeAttributionResult.node_scores`` of any edge scores)."""
    out = torch.zeros(graph.n_senders, dtype=edge_scores.dtype)
    return out.index_add(0, graph.edge_index[:, 0], edge_scores)


def drawn_edges(
    graph: ComputeGraph, members: list[str], edge_scores: torch.Tensor, level: str
) -> list[tuple[str, str, float]]:
    """``(sender, receiver, score)`` of a circuit's edges: the edges themselves, or (nodes) every edge
    between two of its nodes and from them to the logits."""
    if level == "edge":
        ids = [graph.parse_edge(label) for label in members]
    else:
        kept = set(members) | {"logits"}
        ids = [
            e
            for e, edge in enumerate(graph.edges)
            if edge.sender.label in kept and edge.receiver.label.split(".")[0] in kept
        ]
    return [(graph.edges[e].sender.label, graph.edges[e].receiver.label, float(edge_scores[e])) for e in ids]
