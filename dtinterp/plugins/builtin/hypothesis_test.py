"""Hypothesis test: how much of the behaviour a circuit hypothesis explains, by causal scrubbing.

A hypothesis (:mod:`dtinterp.interp.scrubbing`) names the nodes of the model's graph that matter and the
feature of the window each one reads; every other node is claimed irrelevant. Scrubbing replaces, in each
window, every listed node's output by its output on another window that agrees on its feature, and every
other node's by its output on a random window (or its mean), and reads the hypothesis' metric (the loss on
the recorded action, a log-probability, a logit difference or the KL from the clean run). Reported: the
share recovered, ``(scrubbed - random) / (clean - random)`` (1: the hypothesis explains the behaviour; 0: no
better than random inputs), with a percentile bootstrap CI over the windows, beside the random-circuit
baseline (as many nodes drawn at random, reading the same features).

``hypothesis`` is JSON text, the path of a hypothesis JSON file (``examples/hypotheses/`` ships one for
memory-s7), or ``every:FEATURE``: every node reads FEATURE (``every:obs``, the default, claims the decision
depends on the window only through the current observation; ``every:window`` is the model itself). Features:
``window``, ``prev_action``, ``obs``, ``timestep``, ``rtg``, ``rtg_bucket:N``, and on Memory the facts
each window pins down (:func:`dtinterp.interp.pairs.window_facts`): ``cue_object`` and ``correct_side``
(windows that never show the cue agree with each other on "not shown"), and the agent's pose.

``where`` restricts the test to the windows where a claim is meant to hold (``agent_x=5, agent_y=3,
agent_dir=right``: Memory's junction, where the agent chooses a side). Scrubbing needs at least two windows:
an episode's steps or a dataset (``--data F --episodes N``).

**Invariant** (tested): the numbers are :func:`~dtinterp.interp.scrubbing.scrub`'s on the same windows; a
hypothesis naming every node as reading ``window`` recovers 1 (up to float32 rounding: the scrubbed logits
are the nodes' outputs summed, the clean ones the model's forward pass).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch

from dtinterp.interp.graph import ComputeGraph
from dtinterp.interp.pairs import WINDOW_FACTS
from dtinterp.interp.scrubbing import (
    Hypothesis,
    HypothesisNode,
    WindowSet,
    load_hypothesis,
    scrub,
)
from dtinterp.plugins.api import Analysis, AnalysisContext, AnalysisResult, Param, ParameterError
from dtinterp.plugins.builtin._causal import user_errors
from dtinterp.plugins.builtin._common import WHERE_PARAM, where_windows

EVERY = "every:"
#: The metric of an ``every:FEATURE`` hypothesis: the decision margin, defined on any window.
EVERY_METRIC = {"kind": "logit_diff", "good": "clean_top", "bad": "clean_runner_up"}


def parse_hypothesis(text: str, graph: ComputeGraph, plugin_id: str) -> Hypothesis:
    """The hypothesis ``text`` names: JSON, a file's path or ``every:FEATURE`` (one-line errors)."""
    where = f"plugin {plugin_id!r} parameter 'hypothesis'"
    raw = str(text).strip()
    if not raw:
        raise ParameterError(f"{where}: give JSON text, a hypothesis file or every:FEATURE (e.g. every:obs)")
    if raw.startswith(EVERY):
        feature = raw[len(EVERY) :].strip()
        if not feature:
            raise ParameterError(f"{where}: every: needs a feature, e.g. every:obs")
        nodes = [HypothesisNode(s.name, feature) for s in graph.senders]
        return Hypothesis(f"every node reads {feature}", nodes, dict(EVERY_METRIC))
    with user_errors(plugin_id, "hypothesis"):
        if raw.startswith("{"):
            try:
                data = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ParameterError(f"{where}: not valid JSON ({exc})") from None
            return Hypothesis.from_json(data, where="the hypothesis")
        return load_hypothesis(raw)


#: Facts a hypothesis reads whose share of open windows the summary reports.
READ_FACTS = ("cue_object", "correct_side")


class HypothesisTest(Analysis):
    id = "hypothesis-test"
    title = "Hypothesis test (causal scrubbing)"
    category = "causal"
    min_windows = 2
    description = (
        "Tests a circuit hypothesis (which nodes matter and which feature of the window each reads; JSON "
        "text or file) by causal scrubbing on the windows: the share of the metric (or loss) it recovers, "
        "with a bootstrap CI, beside random circuits of the same size. Needs several windows."
    )
    parameters = (
        Param(
            "hypothesis",
            "str",
            "every:obs",
            "JSON text, a hypothesis JSON file (e.g. examples/hypotheses/memory-s7-correct-side.json), or "
            "every:FEATURE (every node reads FEATURE; every:obs: only the current observation matters).",
        ),
        WHERE_PARAM,
        Param("draws", "int", 4, "Independent scrubbings averaged per window.", min=1, max=64),
        Param(
            "random_circuits",
            "int",
            20,
            "Random hypotheses of the same size in the baseline (0: none).",
            min=0,
            max=500,
        ),
        Param("bootstrap", "int", 1000, "Bootstrap resamples of the windows for the CI.", min=10, max=100000),
        Param("seed", "int", 0, "Seed of the scrubbing draws, the random circuits and the bootstrap.", min=0),
    )

    @torch.no_grad()
    def compute(self, ctx: AnalysisContext, params: dict[str, Any]) -> AnalysisResult:
        model = ctx.model
        graph = ComputeGraph.of(model.cfg)
        hypothesis = parse_hypothesis(params["hypothesis"], graph, self.id)
        reads = {n.reads for n in hypothesis.nodes}
        rows, facts = where_windows(ctx, params, self.id, facts_wanted=bool(reads & set(WINDOW_FACTS)))
        windows = WindowSet(ctx.inputs, facts).select(rows)
        W = windows.n_windows
        if W < 2:
            where = (
                f" of the {ctx.inputs.batch_size} where {params['where'].strip()}"
                if params["where"].strip()
                else ""
            )
            raise ParameterError(
                f"plugin {self.id!r}: scrubbing draws other windows, but there is {W}{where}: run it on every "
                "step of an episode or on a dataset (--data F --episodes N)"
            )
        known = {name: float((v >= 0).mean()) for name, v in windows.facts.items() if name in READ_FACTS}
        with user_errors(self.id, "hypothesis"):
            res = scrub(
                model,
                windows,
                hypothesis,
                n_draws=params["draws"],
                n_bootstrap=params["bootstrap"],
                n_random=params["random_circuits"],
                seed=params["seed"],
            )
        data: dict[str, Any] = {
            **res.to_json(),
            "description": hypothesis.description,
            "hypothesis_json": hypothesis.to_json(),
            "clean_values": res.clean.numpy(),
            "scrubbed_values": res.scrubbed.numpy(),
            "random_values": res.random.numpy(),
            "random_circuits": res.random_circuits,
            "facts_known": known,
            "where": params["where"].strip(),
            "rows": rows,
            "n_bootstrap": res.n_bootstrap,
        }
        nodes = ", ".join(f"{label} reads {reads}" for label, reads in res.nodes[:8])
        more = f", … ({len(res.nodes)} nodes)" if len(res.nodes) > 8 else ""
        pct = int(round(100 * res.confidence))
        baseline = (
            f"random circuits of {len(res.nodes)} node(s): {res.baseline_mean:.3f} ± {res.baseline_std:.3f} "
            f"(mean ± std of {len(res.random_recovered)})"
            if res.random_recovered
            else "no random circuits drawn"
        )
        unmatched = [f"{label} {share:.0%}" for label, share in res.unmatched.items() if share > 0]
        alone = (
            f" Windows no other window agreed with (they kept their own output): {', '.join(unmatched[:6])}."
            if unmatched
            else ""
        )
        open_facts = [f"{name} in {1 - share:.0%}" for name, share in known.items() if share < 1]
        shown = (
            f" Left open by what the windows show (they agree with each other on it): {', '.join(open_facts)}."
            if open_facts
            else ""
        )
        selected = f" where {data['where']}" if data["where"] else ""
        summary = (
            f"Causal scrubbing of “{res.hypothesis}” ({nodes}{more}; the rest {res.treat_rest}d) on {W} "
            f"windows{selected}, {res.n_draws} draw(s) each: {res.metric} is {res.metric_clean:+.4g} clean, "
            f"{res.metric_scrubbed:+.4g} scrubbed, {res.metric_random:+.4g} with every node random. Share "
            f"recovered {_num(res.recovered)} [{pct}% CI {_num(res.ci[0])}, {_num(res.ci[1])}]; {baseline}."
            f"{alone}{shown}"
        )
        return AnalysisResult(self.id, params, data, summary)

    def figures(self, result: AnalysisResult) -> list[Any]:
        import plotly.graph_objects as go

        from dtinterp.viz.causal import interval_bars
        from dtinterp.viz.style import color

        d = result.data
        pct = int(round(100 * d["confidence"]))
        n_random = len(d["random_recovered"])
        subtitle = (
            f"metric {d['metric']}; every unlisted node {d['treat_rest']}d · {d['n_windows']} windows, "
            f"{d['n_draws']} draw(s) each, seed {d['seed']}<br>hypothesis: bootstrap {pct}% CI over windows "
            f"({d['n_bootstrap']} resamples) · random circuits: mean ± std of {n_random} draws (points)"
        )
        rec = float("nan") if d["recovered"] is None else d["recovered"]
        lo, hi = (float("nan") if v is None else v for v in d["ci"])
        cats = ["the hypothesis", f"random circuits ({n_random})"]
        mean, std = d["baseline_mean"], d["baseline_std"]
        mean, std = (float("nan"), 0.0) if mean is None else (mean, std)
        share = interval_bars(
            cats,
            {"share recovered": ([rec, mean], [lo, mean - std], [hi, mean + std])},
            title=f"Causal scrubbing of “{d['hypothesis']}”: share of the metric recovered",
            subtitle=subtitle,
            x_title="hypothesis",
            y_title="share recovered (0: random inputs, 1: clean)",
        )
        if n_random:
            share.add_trace(
                go.Scatter(
                    x=[cats[1]] * n_random,
                    y=np.asarray(d["random_recovered"], dtype=float),
                    mode="markers",
                    name="one random circuit",
                    marker={"color": color(1), "size": 7, "opacity": 0.6},
                    text=[", ".join(c) for c in d["random_circuits"]],
                    hovertemplate="%{text}<br>recovered %{y:.3f}<extra></extra>",
                )
            )
        for y in (0, 1):
            share.add_hline(y=y, line={"color": "grey", "width": 1, "dash": "dot"})
        runs = {"clean": "clean_values", "scrubbed": "scrubbed_values", "every node random": "random_values"}
        values = {name: np.asarray(d[key], dtype=float) for name, key in runs.items()}
        means = [float(v.mean()) for v in values.values()]
        stds = [float(v.std(ddof=1)) if v.size > 1 else 0.0 for v in values.values()]
        metric = interval_bars(
            list(runs),
            {
                d["metric"]: (
                    means,
                    [m - s for m, s in zip(means, stds)],
                    [m + s for m, s in zip(means, stds)],
                )
            },
            title=f"The metric ({d['metric']}) of the clean, scrubbed and random runs",
            subtitle=f"{d['n_windows']} windows · bars: ±1 std over windows",
            x_title="run",
            y_title=f"{d['metric']} (mean over windows)",
        )
        return [share, metric]


def _num(x: float | None) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.3f}"


__all__ = ["HypothesisTest", "parse_hypothesis"]
