"""The Circuit tab: the model as a graph, its edges scored on the current window, nodes knocked out on the spot.

The graph (dash-cytoscape) has the model's nodes left to right by layer: the input embeddings by kind
(``rtg``, ``state``, ``action``, ``time``), each layer's heads and MLP, and the logits. Every number comes
from :mod:`dtinterp.interp.circuit_view`; this module only chooses what to compute on and draws it:

- **Score edges** scores every edge on the window at the Replay tab's step (default: the episode's last
  step) with a clean/corrupted pair: the Replay tab's edits if there are any, else the other-cue
  episode (Memory), else the same step of the agent's own episode from another seed (``auto``; or one
  of them by choice), by EAP, EAP-IG or exact path patching. An edge's width is ``|score|`` and its
  colour the sign; a node's size is its score (the sum of its outgoing edges); only the top-N edges are
  drawn. Clicking a node or an edge shows its scores and a small figure.
- **Ablated nodes** (the checklist, or clicks on nodes in "toggle" mode): ablating them (zero; mean over
  every window of the unablated agent's quick-rollout episodes; resample) re-evaluates the metric on the
  window (beside the full model and every node ablated: faithfulness) and plays a quick seeded rollout
  beside the unablated agent on the same seeds. The result says exactly what ran. No ablated node: no run.

Both runs are Dash background callbacks (a "running" state on the page; the job runs in a forked
worker with its own copy of the model). State lives in the browser: the scores in
``ids.CIRCUIT_SCORES_STORE``, the ablated nodes in the checklist's value, nothing on the server, so any
worker can answer any request. Plain functions (:func:`score_in_app`, :func:`ablate_in_app`,
:func:`graph_elements`, :func:`details_view`) hold the logic; the callbacks pass the browser's values
through. A bad input is one line in the tab's message, never a traceback.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import dash_cytoscape as cyto
from dash import Dash, Input, Output, State, ctx, dcc, html, no_update

from dash_app import ids
from dash_app.cache import ModelEntry, model_entry
from dash_app.inputs import InputError, load_episode, parse_seed
from dash_app.jobs import job_error
from dtinterp.data.episode import Episode
from dtinterp.errors import DtinterpError
from dtinterp.interp.causal import METRICS
from dtinterp.interp.circuit_view import (
    MAX_QUICK_EPISODES,
    NODE_ABLATIONS,
    PAIR_CHOICES,
    QUICK_EPISODES,
    QUICK_SEED,
    ReferenceRuns,
    ablate_nodes,
    circuit_task,
    play_out,
    score_circuit,
)
from dtinterp.interp.graph import ComputeGraph
from envs.errors import EnvSpecError

#: Edges drawn by default (the strongest by |score|).
TOP_N = 25
#: ``ids.CIRCUIT_CLICK_MODE`` values.
CLICK_INSPECT, CLICK_TOGGLE = "inspect", "toggle"
PAIR_HELP = {
    "auto": "auto: the Replay edits, else the other cue (Memory), else another seed's episode",
    "edits": "the Replay tab's edits",
    "env": "the other cue object (Memory)",
    "episodes": "the same step of the agent's episode from another seed",
}
METHOD_HELP = {
    "eap": "EAP (one gradient)",
    "eap-ig": "EAP-IG (integrated gradients)",
    "exact": "exact (path-patch every edge)",
}
ABLATION_HELP = {
    "zero": "zero",
    "mean": "mean over the reference episodes' windows",
    "resample": "resample (window: the corrupted run; rollout: reference windows)",
}
#: Node colours by kind; ablated nodes are grey with a dashed red border.
KIND_COLOURS = {"embed": "#e8a33d", "head": "#5b8def", "mlp": "#49a35b", "logits": "#555555"}
#: Edge colours by the sign of the score.
NEGATIVE, POSITIVE = "#d62728", "#1f77b4"
#: Layout grid of the graph, in pixels.
COLUMN, ROW = 190, 110


Progress = Callable[[str], None]


# ------------------------------------------------------------------ plain logic


def _hold(entry: ModelEntry):  # noqa: ANN202 - the model's lock (a context manager)
    """The model's lock for one computation (in a background job, a fresh copy: see dash_app.jobs)."""
    return entry.lock


def window_step(episode: Episode, step: int | None) -> int:
    """The step whose window is studied: the Replay tab's, else the episode's last observation."""
    last = episode.n_obs - 1
    s = last if step is None else int(step)
    if not 0 <= s <= last:
        raise InputError(f"step {s} is outside the episode (0..{last}): choose it in the Replay tab")
    return s


def parse_episodes(value: Any) -> int:
    """The quick rollout's number of episodes: an integer in ``1 .. MAX_QUICK_EPISODES``."""
    text = "" if value is None else str(value).strip()
    if not text.isdigit() or not 1 <= int(text) <= MAX_QUICK_EPISODES:
        raise InputError(f"episodes {value!r} must be an integer between 1 and {MAX_QUICK_EPISODES}")
    return int(text)


def _setup(
    model: str, data: Any, step: int | None, seed: Any, episodes: Any
) -> tuple[ModelEntry, Episode, int, ReferenceRuns]:
    """The model, the episode, the step studied and the reference runs (not played yet) of a request."""
    entry = model_entry(model)
    episode = load_episode(data)
    if episode is None:
        raise InputError("no episode: play one in the Play tab or load one in the Replay tab")
    s = window_step(episode, step)
    target = 1.0 if episode.target_return is None else float(episode.target_return)
    first = parse_seed(seed)
    seeds = range(first, first + parse_episodes(episodes))
    return entry, episode, s, ReferenceRuns(entry.checkpoint, target, seeds)


def score_in_app(
    model: str,
    data: Any,
    step: int | None,
    edits: Sequence[str] | None,
    method: str,
    ig_steps: Any,
    pair: str,
    metric: str,
    seed: Any = QUICK_SEED,
    episodes: Any = QUICK_EPISODES,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Score every edge as the tab does: ``{"ok", "message", "scores" (JSON with "model" and "seconds")}``.

    A bad input gives ``ok`` False and a one-line ``message``, never an exception.
    """
    t0 = time.perf_counter()
    say = progress or (lambda _text: None)
    try:
        entry, episode, s, reference = _setup(model, data, step, seed, episodes)
        try:
            n_steps = int(str(ig_steps).strip())
        except ValueError:
            raise InputError(f"integrated-gradients steps {ig_steps!r} must be an integer") from None
        with _hold(entry):
            say("building the pair")
            task = circuit_task(
                entry.checkpoint, episode, s, pair=pair, edits=edits or [], metric=metric, reference=reference
            )
            say(f"scoring {ComputeGraph.of(entry.checkpoint.config).n_edges} edges")
            scores = score_circuit(task, method, n_steps).to_json()
    except (DtinterpError, EnvSpecError) as exc:
        return {"ok": False, "message": str(exc), "scores": None}
    scores.update(model=entry.key, seconds=time.perf_counter() - t0)
    return {"ok": True, "message": "", "scores": scores}


def ablate_in_app(
    model: str,
    data: Any,
    step: int | None,
    edits: Sequence[str] | None,
    pair: str,
    metric: str,
    nodes: Sequence[str] | None,
    kind: str,
    seed: Any = QUICK_SEED,
    episodes: Any = QUICK_EPISODES,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Ablate ``nodes`` as the tab does: the metric on the window and the quick rollout.

    Returns ``{"ok", "message", "task", "ablation", "played", "reference", "seconds"}`` (plain JSON); a bad
    input gives ``ok`` False and a one-line ``message``.
    """
    t0 = time.perf_counter()
    say = progress or (lambda _text: None)
    try:
        entry, episode, s, reference = _setup(model, data, step, seed, episodes)
        with _hold(entry):
            say(f"playing the unablated agent on {len(reference.seeds)} seeds")
            _ = reference.results
            t1 = time.perf_counter()
            task = circuit_task(
                entry.checkpoint, episode, s, pair=pair, edits=edits or [], metric=metric, reference=reference
            )
            say("evaluating the metric")
            ablation = ablate_nodes(task, list(nodes or []), kind, reference)
            t2 = time.perf_counter()
            say("playing the ablated agent")
            played = play_out(entry.checkpoint, ablation.nodes, kind, reference)
    except (DtinterpError, EnvSpecError) as exc:
        return {"ok": False, "message": str(exc)}
    t3 = time.perf_counter()
    return {
        "ok": True,
        "message": "",
        "model": entry.key,
        "task": task.describe(),
        "ablation": ablation.to_json(),
        "played": played.to_json(),
        "reference": reference.describe(),
        "seconds": {"reference": t1 - t0, "metric": t2 - t1, "rollout": t3 - t2, "total": t3 - t0},
    }


def target_text(model: str, data: Any, step: int | None, edits: Sequence[str] | None, pair: str) -> str:
    """One line saying what scoring and ablating will use now."""
    try:
        episode = load_episode(data)
    except DtinterpError as exc:
        return f"model {model} · {exc}"
    if episode is None:
        return f"model {model} · no episode yet"
    at = episode.n_obs - 1 if step is None else step
    where = f"the window at step {at} of a {episode.length}-step episode"
    where += (
        " (the Replay tab's step)" if step is not None else " (its latest; choose another in the Replay tab)"
    )
    e = ", ".join(edits) if edits else "none"
    return f"model {model} · {where} · corrupted run: {PAIR_HELP.get(pair, pair)} · Replay edits: {e}"


# ------------------------------------------------------------------ the graph


def _node_list(graph: ComputeGraph) -> list[dict[str, Any]]:
    out = [{"label": s.label, "name": s.name, "kind": s.kind, "layer": s.layer} for s in graph.senders]
    return out + [{"label": "logits", "name": "logits", "kind": "logits", "layer": graph.cfg.n_layers}]


def _positions(nodes: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Left to right by layer: the embeddings, then each layer's heads and MLP, then the logits."""
    columns: dict[int, list[str]] = {}
    for n in nodes:
        if n["kind"] == "embed":
            col = 0
        elif n["kind"] == "head":
            col = 2 * n["layer"] + 1
        elif n["kind"] == "mlp":
            col = 2 * n["layer"] + 2
        else:
            col = 2 * n["layer"] + 1
        columns.setdefault(col, []).append(n["label"])
    pos = {}
    for col, labels in columns.items():
        for i, label in enumerate(labels):
            pos[label] = {"x": col * COLUMN, "y": (i - (len(labels) - 1) / 2) * ROW}
    return pos


def graph_elements(
    entry: ModelEntry, scores: dict[str, Any] | None, top_n: Any, ablated: Sequence[str] | None
) -> list[dict[str, Any]]:
    """The cytoscape elements: every node (sized by score when scored, greyed when ablated) and the
    ``top_n`` edges by ``|score|`` (none before scoring)."""
    nodes = _node_list(ComputeGraph.of(entry.checkpoint.config))
    off = set(ablated or [])
    scored = {n["label"]: n for n in (scores or {}).get("nodes", [])}
    big = max((abs(n["score"]) for n in scored.values()), default=0.0) or 1.0
    pos = _positions(nodes)
    out: list[dict[str, Any]] = []
    for n in nodes:
        score = scored.get(n["label"], {}).get("score")
        size = 34 if score is None else 24 + 40 * abs(score) / big
        classes = n["kind"] + (" ablated" if n["label"] in off else "")
        data = {"id": n["label"], "label": n["label"], "kind": n["kind"], "size": round(size, 1)}
        out.append({"data": data, "position": pos[n["label"]], "classes": classes})
    edges = sorted((scores or {}).get("edges", []), key=lambda e: e["rank"])[: _top_n(top_n)]
    top = max((abs(e["score"]) for e in edges), default=0.0) or 1.0
    for e in edges:
        out.append(
            {
                "data": {
                    "id": e["label"],
                    "source": e["source"],
                    "target": e["target"],
                    "input": e["input"] if e["input"] in ("q", "k", "v") else "",
                    "width": round(1 + 9 * abs(e["score"]) / top, 2),
                    "colour": NEGATIVE if e["score"] < 0 else POSITIVE,
                },
                "classes": "ablated" if e["source"] in off else "",
            }
        )
    return out


def _top_n(value: Any) -> int:
    try:
        return max(0, int(value))
    except (TypeError, ValueError):
        return TOP_N


STYLESHEET = [
    {
        "selector": "node",
        "style": {
            "label": "data(label)",
            "width": "data(size)",
            "height": "data(size)",
            "font-size": 13,
            "text-valign": "center",
            "text-halign": "center",
            "color": "#fff",
            "text-outline-width": 2,
            "text-outline-color": "#333",
            "border-width": 1,
            "border-color": "#333",
        },
    },
    *[{"selector": f".{k}", "style": {"background-color": c}} for k, c in KIND_COLOURS.items()],
    {
        "selector": "node.ablated",
        "style": {
            "background-color": "#cccccc",
            "border-width": 3,
            "border-style": "dashed",
            "border-color": "#b00020",
        },
    },
    {
        "selector": "edge",
        "style": {
            "width": "data(width)",
            "line-color": "data(colour)",
            "target-arrow-color": "data(colour)",
            "target-arrow-shape": "triangle",
            "arrow-scale": 0.8,
            "curve-style": "bezier",
            "opacity": 0.75,
            "label": "data(input)",
            "font-size": 10,
            "color": "#333",
            "text-background-color": "#fff",
            "text-background-opacity": 0.8,
        },
    },
    {"selector": "edge.ablated", "style": {"line-style": "dashed", "opacity": 0.35}},
    {"selector": ":selected", "style": {"overlay-color": "#ffbf00", "overlay-opacity": 0.3}},
]


# ------------------------------------------------------------------ the side panel and the results


def _bars(labels: Sequence[str], values: Sequence[float], title: str, highlight: str | None = None) -> dict:
    """A small horizontal bar chart of scores, coloured by sign (``highlight`` outlined), as a figure dict."""
    colours = [NEGATIVE if v < 0 else POSITIVE for v in values]
    widths = [3 if lab == highlight else 0 for lab in labels]
    return {
        "data": [
            {
                "type": "bar",
                "orientation": "h",
                "y": list(labels),
                "x": [float(v) for v in values],
                "marker": {"color": colours, "line": {"color": "#000", "width": widths}},
                "hovertemplate": "%{y}: %{x:.4f}<extra></extra>",
            }
        ],
        "layout": {
            "title": {"text": title, "x": 0.02, "xanchor": "left", "font": {"size": 13}},
            "height": 90 + 22 * len(labels),
            "margin": {"l": 130, "r": 10, "t": 36, "b": 36},
            "xaxis": {"title": {"text": "score (effect on the metric)"}, "zeroline": True},
            "yaxis": {"autorange": "reversed", "automargin": True},
            "plot_bgcolor": "white",
            "paper_bgcolor": "white",
        },
    }


def _table(rows: Sequence[tuple[str, Any]]) -> html.Table:
    return html.Table([html.Tr([html.Th(k), html.Td(v)]) for k, v in rows], className="step-info")


def _num(x: float | None) -> str:
    return "–" if x is None else f"{x:+.4f}"


def details_view(
    tapped: dict[str, Any] | None,
    kind: str | None,
    scores: dict[str, Any] | None,
    ablated: Sequence[str] | None,
) -> list[Any]:
    """The side panel for a clicked node (``kind`` "node") or edge ("edge"): its scores and a figure."""
    if not tapped:
        return [html.P("Click a node or an edge to see its scores.", className="hint")]
    label = str(tapped.get("id", ""))
    scored = scores is not None
    hint = [] if scored else [html.P("Press Score edges to see scores.", className="hint")]
    if kind == "node":
        node = next((n for n in (scores or {}).get("nodes", []) if n["label"] == label), None)
        if label == "logits":
            info = [("node", "logits"), ("reads", "the final residual stream at the state tokens")]
            return [html.H4("logits"), _table(info), *hint]
        n_nodes = len((scores or {}).get("nodes", []))
        rows: list[tuple[str, Any]] = [("component", tapped.get("kind", ""))]
        if node is not None:
            rows = [
                ("component", node["name"]),
                ("score", f"{_num(node['score'])} (sum of its outgoing edges)"),
                ("rank", f"{node['rank']} of {n_nodes} by |score|"),
                ("exact patch", f"{_num(node['exact'])} (its whole output from the corrupted run)"),
            ]
        rows.append(("ablated", "yes" if label in (ablated or []) else "no"))
        parts: list[Any] = [html.H4(label), _table(rows), *hint]
        if scored:
            edges = [e for e in scores["edges"] if e["source"] == label or e["target"] == label]
            edges = sorted(edges, key=lambda e: e["rank"])[:12]
            if edges:
                fig = _bars(
                    [e["label"] for e in edges], [e["score"] for e in edges], f"{label}: its strongest edges"
                )
                parts.append(_graph(fig))
        return parts
    edge = next((e for e in (scores or {}).get("edges", []) if e["label"] == label), None)
    if edge is None:
        return [html.H4(label), *hint]
    n_edges = len(scores["edges"])
    rows = [
        ("score", _num(edge["score"])),
        ("rank", f"{edge['rank']} of {n_edges} by |score|"),
        ("carries", f"{edge['source']}'s output into {_reader(edge)}"),
    ]
    if scores.get("method") == "exact":
        rows.append(("EAP estimate", _num(edge["estimate"])))
    same = sorted((e for e in scores["edges"] if e["target"] == edge["target"]), key=lambda e: e["rank"])[:12]
    if edge not in same:
        same.append(edge)
    fig = _bars([e["label"] for e in same], [e["score"] for e in same], f"edges into {edge['target']}", label)
    return [html.H4(label), _table(rows), _graph(fig)]


def _reader(edge: dict[str, Any]) -> str:
    """Where an edge ends, in words: ``L1H0's value input``, ``MLP0's input``, ``the logits``."""
    words = {"q": "query", "k": "key", "v": "value"}
    if edge["input"] in words:
        return f"{edge['target']}'s {words[edge['input']]} input"
    return "the logits" if edge["target"] == "logits" else f"{edge['target']}'s input"


def last_tapped(node: dict | None, edge: dict | None) -> tuple[dict | None, str | None]:
    """``(data, "node" | "edge")`` of the element clicked last (cytoscape's tap events carry a timestamp)."""
    taps = [(t.get("timeStamp") or 0, t.get("data"), k) for t, k in ((node, "node"), (edge, "edge")) if t]
    if not taps:
        return None, None
    _, data, kind = max(taps, key=lambda x: x[0])
    return data, kind


def _graph(fig: dict) -> dcc.Graph:
    return dcc.Graph(id=ids.CIRCUIT_DETAILS_GRAPH, figure=fig, config={"displayModeBar": False})


def scores_summary(scores: dict[str, Any] | None) -> str:
    """One paragraph on the last scoring: what was scored, how, and the metric's two values."""
    if not scores:
        return ""
    t = scores["task"]
    how = {"eap": "EAP", "eap-ig": f"EAP-IG ({scores['steps']} steps)", "exact": "exact path patching"}[
        scores["method"]
    ]
    corr = "" if scores.get("correlation") is None else f" · EAP vs exact: r = {scores['correlation']:.3f}"
    return (
        f"Scored {len(scores['edges'])} edges by {how} on the window at step {t['step']} · corrupted run: "
        f"{t['pair_description']} · metric {t['metric_label']}: clean {t['clean']:.3f} ({t['clean_action']}), "
        f"corrupted {t['corrupted']:.3f} ({t['corrupted_action']}){corr} · {scores['seconds']:.1f} s. "
        "An edge's score is the change of the metric when that edge alone reads the corrupted run "
        "(red: negative, the edge carries what the clean answer needs)."
    )


def result_view(r: dict[str, Any]) -> list[Any]:
    """What an ablation did, and exactly what ran."""
    a, p, t = r["ablation"], r["played"], r["task"]
    nodes = ", ".join(a["nodes"]) or "none"
    seeds = p["seeds"]
    return [
        html.P(
            [
                html.B(f"Metric {t['metric_label']}: "),
                f"{a['full']:.3f} (full model) → {a['ablated']:.3f} with {nodes} ablated "
                f"(every node ablated: {a['empty']:.3f}) · faithfulness {a['faithfulness']:.3f} · "
                f"normalised {a['normalised']:.3f}",
            ],
            className="circuit-metric",
        ),
        html.P(
            [
                html.B("Quick rollout: "),
                f"success {p['baseline_success']:.0%} → {p['success']:.0%}, mean return "
                f"{p['baseline_mean_return']:.3f} → {p['mean_return']:.3f} (unablated → ablated, "
                f"{len(seeds)} episodes on the same seeds)"
                + (" · every episode unchanged" if p["unchanged"] else "")
                + (f" · {p['cut']} cut at {p['max_steps']} steps" if p["cut"] else ""),
            ],
            className="circuit-rollout",
        ),
        html.P(
            f"Ran on: model {r['model']} · window at step {t['step']} · corrupted run: {t['pair_description']} · "
            f"{a['kind']} ablation ({a['reference']}) of {nodes} · seeds {seeds[0]}..{seeds[-1]} at target "
            f"{p['target']:g}, greedy, episodes cut at {p['max_steps']} steps · metric in "
            f"{r['seconds']['metric']:.2f} s, rollouts in {r['seconds']['reference'] + r['seconds']['rollout']:.2f} s",
            className="ran-on",
        ),
    ]


# ------------------------------------------------------------------ layout


def _radio(component_id: str, options: dict[str, str], value: str) -> dcc.RadioItems:
    return dcc.RadioItems(
        id=component_id,
        options=[{"label": v, "value": k} for k, v in options.items()],
        value=value,
        inline=True,
    )


def _field(before: str, component_id: str, value: Any, after: str = "", **kw: Any) -> html.Label:
    """A short typed field inside its words (submitted on Enter or when it loses focus)."""
    box = dcc.Input(id=component_id, value=value, debounce=True, className="small-input", **kw)
    return html.Label([before, box, after], className="inline-field")


NOTHING_ABLATED = html.P(
    "No node is ablated: tick nodes here, or click them in toggle mode.", className="hint"
)
LEGEND = (
    "Nodes left to right by layer: input embeddings by kind (orange), heads (blue), MLPs (green), the logits; "
    "a node's size is its score. Edges: width |score|, red negative, blue positive; q/k/v name the head "
    "input an edge feeds. Dashed grey nodes are ablated."
)


def layout() -> html.Div:
    """The Circuit tab's components."""
    return html.Div(
        [
            dcc.Store(id=ids.CIRCUIT_SCORES_STORE, data=None, storage_type="memory"),
            html.Div(
                [
                    html.Label("Score by"),
                    _radio(ids.CIRCUIT_METHOD, METHOD_HELP, "eap"),
                    _field("IG steps ", ids.CIRCUIT_IG_STEPS, "8", type="text"),
                    html.Label("Metric"),
                    dcc.Dropdown(
                        id=ids.CIRCUIT_METRIC,
                        options=[{"label": m, "value": m} for m in METRICS],
                        value="logit-diff",
                        clearable=False,
                        style={"width": "150px"},
                    ),
                ],
                className="controls-row",
            ),
            html.Div(
                [
                    html.Label("Corrupted run"),
                    _radio(ids.CIRCUIT_PAIR, {k: PAIR_HELP[k] for k in PAIR_CHOICES}, "auto"),
                ],
                className="controls-row",
            ),
            html.Div(id=ids.CIRCUIT_TARGET_INFO, className="hint"),
            html.Div(
                [
                    html.Button("Score edges", id=ids.CIRCUIT_SCORE, n_clicks=0, className="run-button"),
                    html.Span(id=ids.CIRCUIT_SCORE_STATUS, className="status-line"),
                    _field("Show the top ", ids.CIRCUIT_TOP_N, TOP_N, " edges", type="number", min=0, step=1),
                    html.Label("Clicking a node"),
                    _radio(
                        ids.CIRCUIT_CLICK_MODE,
                        {CLICK_INSPECT: "shows its scores", CLICK_TOGGLE: "toggles its ablation"},
                        CLICK_INSPECT,
                    ),
                ],
                className="controls-row",
            ),
            html.Div(id=ids.CIRCUIT_MESSAGE, className="tab-message", role="alert"),
            html.P(id=ids.CIRCUIT_SUMMARY, className="circuit-summary"),
            html.Div(
                [
                    cyto.Cytoscape(
                        id=ids.CIRCUIT_GRAPH,
                        elements=[],
                        layout={"name": "preset", "fit": True, "padding": 30},
                        stylesheet=STYLESHEET,
                        style={"width": "100%", "height": "480px"},
                        minZoom=0.3,
                        maxZoom=3,
                        autoungrabify=True,
                        className="circuit-graph",
                    ),
                    html.Div(
                        details_view(None, None, None, None),
                        id=ids.CIRCUIT_DETAILS,
                        className="circuit-details",
                    ),
                ],
                className="circuit-columns",
            ),
            html.P(LEGEND, className="hint"),
            html.Div(
                [
                    html.Label("Ablated nodes", className="param-name"),
                    dcc.Checklist(id=ids.CIRCUIT_ABLATED, options=[], value=[], inline=True),
                ],
                className="circuit-ablated",
            ),
            html.Div(
                [
                    html.Label("Ablation"),
                    _radio(ids.CIRCUIT_ABLATION, {k: ABLATION_HELP[k] for k in NODE_ABLATIONS}, "mean"),
                ],
                className="controls-row",
            ),
            html.Div(
                [
                    _field(
                        "Quick rollout: ", ids.CIRCUIT_EPISODES, str(QUICK_EPISODES), " episodes", type="text"
                    ),
                    _field("from seed ", ids.CIRCUIT_SEED, str(QUICK_SEED), type="text"),
                    html.Button("Clear ablations", id=ids.CIRCUIT_CLEAR, n_clicks=0),
                    html.Span(id=ids.CIRCUIT_ABLATE_STATUS, className="status-line"),
                ],
                className="controls-row",
            ),
            html.Div(NOTHING_ABLATED, id=ids.CIRCUIT_RESULT, className="circuit-result"),
        ]
    )


# ------------------------------------------------------------------ callbacks


def register(app: Dash) -> None:
    """The Circuit tab's callbacks: scoring and ablating run in the background; drawing is immediate."""

    @app.callback(
        Output(ids.CIRCUIT_ABLATED, "options"),
        Output(ids.CIRCUIT_ABLATED, "value"),
        Input(ids.MODEL_STORE, "data"),
        Input(ids.CIRCUIT_CLEAR, "n_clicks"),
        State(ids.CIRCUIT_ABLATED, "value"),
    )
    def _nodes(model, _clear, ablated):
        # A new model or Clear empties the ablated nodes; a page load leaves them alone, so it starts no run.
        reset = [] if ctx.triggered_id is not None and ablated else no_update
        if ctx.triggered_id == ids.CIRCUIT_CLEAR:
            return no_update, reset
        try:
            graph = ComputeGraph.of(model_entry(model).checkpoint.config)
        except DtinterpError:
            return [], reset
        return [{"label": s.label, "value": s.label} for s in graph.senders], reset

    @app.callback(
        Output(ids.CIRCUIT_SCORES_STORE, "data", allow_duplicate=True),
        Output(ids.CIRCUIT_SUMMARY, "children", allow_duplicate=True),
        Output(ids.CIRCUIT_RESULT, "children", allow_duplicate=True),
        Input(ids.MODEL_STORE, "data"),
        prevent_initial_call=True,
    )
    def _new_model(_model):
        return None, "", NOTHING_ABLATED  # the last model's scores and ablations say nothing about this one

    @app.callback(
        Output(ids.CIRCUIT_GRAPH, "elements"),
        Input(ids.CIRCUIT_SCORES_STORE, "data"),
        Input(ids.CIRCUIT_TOP_N, "value"),
        Input(ids.CIRCUIT_ABLATED, "value"),
        Input(ids.MODEL_STORE, "data"),
    )
    def _draw(scores, top_n, ablated, model):
        try:
            entry = model_entry(model)
        except DtinterpError:
            return []
        if scores is not None and scores.get("model") != entry.key:
            scores = None  # another model's scores
        return graph_elements(entry, scores, top_n, ablated)

    @app.callback(
        Output(ids.CIRCUIT_TARGET_INFO, "children"),
        Input(ids.CIRCUIT_SHOWN_EPISODE, "data"),
        Input(ids.CIRCUIT_PAIR, "value"),
        State(ids.MODEL_STORE, "data"),
        State(ids.STEP_STORE, "data"),
        State(ids.EDITS_STORE, "data"),
    )
    def _target(data, pair, model, step, edits):
        return "Will use: " + target_text(model, data, step, edits, pair)

    @app.callback(
        Output(ids.CIRCUIT_ABLATED, "value", allow_duplicate=True),
        Input(ids.CIRCUIT_GRAPH, "tapNode"),
        State(ids.CIRCUIT_CLICK_MODE, "value"),
        State(ids.CIRCUIT_ABLATED, "value"),
        State(ids.CIRCUIT_ABLATED, "options"),
        prevent_initial_call=True,
    )
    def _toggle(node, mode, ablated, options):
        label = ((node or {}).get("data") or {}).get("id")
        if mode != CLICK_TOGGLE or label not in {o["value"] for o in options or []}:
            return no_update
        ablated = list(ablated or [])
        return [a for a in ablated if a != label] if label in ablated else ablated + [label]

    @app.callback(
        Output(ids.CIRCUIT_DETAILS, "children"),
        Input(ids.CIRCUIT_GRAPH, "tapNode"),
        Input(ids.CIRCUIT_GRAPH, "tapEdge"),
        Input(ids.CIRCUIT_SCORES_STORE, "data"),
        Input(ids.CIRCUIT_ABLATED, "value"),
        prevent_initial_call=True,
    )
    def _details(node, edge, scores, ablated):
        # The last element clicked (node or edge), shown with the current scores and ablations.
        tapped, kind = last_tapped(node, edge)
        return details_view(tapped, kind, scores, ablated)

    @app.callback(
        Output(ids.CIRCUIT_SCORES_STORE, "data"),
        Output(ids.CIRCUIT_SUMMARY, "children"),
        Output(ids.CIRCUIT_MESSAGE, "children"),
        Input(ids.CIRCUIT_SCORE, "n_clicks"),
        State(ids.CIRCUIT_METHOD, "value"),
        State(ids.CIRCUIT_IG_STEPS, "value"),
        State(ids.CIRCUIT_PAIR, "value"),
        State(ids.CIRCUIT_METRIC, "value"),
        State(ids.CIRCUIT_SEED, "value"),
        State(ids.CIRCUIT_EPISODES, "value"),
        State(ids.MODEL_STORE, "data"),
        State(ids.TRAJ_STORE, "data"),
        State(ids.STEP_STORE, "data"),
        State(ids.EDITS_STORE, "data"),
        background=True,
        progress=[Output(ids.CIRCUIT_SCORE_STATUS, "children")],
        running=[
            (Output(ids.CIRCUIT_SCORE, "disabled"), True, False),
            (Output(ids.CIRCUIT_SCORE_STATUS, "style"), {"visibility": "visible"}, {"visibility": "hidden"}),
        ],
        on_error=job_error(ids.CIRCUIT_MESSAGE),
        prevent_initial_call=True,
    )
    def _score(set_progress, _n, method, ig_steps, pair, metric, seed, episodes, model, data, step, edits):
        set_progress("Scoring…")
        r = score_in_app(
            model, data, step, edits, method, ig_steps, pair, metric, seed, episodes,
            progress=lambda text: set_progress(f"Scoring: {text}…"),
        )  # fmt: skip
        if not r["ok"]:
            return no_update, no_update, r["message"]
        return r["scores"], scores_summary(r["scores"]), ""

    @app.callback(
        Output(ids.CIRCUIT_RESULT, "children"),
        Output(ids.CIRCUIT_MESSAGE, "children", allow_duplicate=True),
        Input(ids.CIRCUIT_ABLATED, "value"),
        Input(ids.CIRCUIT_ABLATION, "value"),
        Input(ids.CIRCUIT_EPISODES, "value"),
        Input(ids.CIRCUIT_SEED, "value"),
        State(ids.CIRCUIT_PAIR, "value"),
        State(ids.CIRCUIT_METRIC, "value"),
        State(ids.MODEL_STORE, "data"),
        State(ids.TRAJ_STORE, "data"),
        State(ids.STEP_STORE, "data"),
        State(ids.EDITS_STORE, "data"),
        background=True,
        progress=[Output(ids.CIRCUIT_ABLATE_STATUS, "children")],
        running=[
            (Output(ids.CIRCUIT_ABLATED, "style"), {"opacity": 0.5, "pointerEvents": "none"}, {}),
            (Output(ids.CIRCUIT_CLEAR, "disabled"), True, False),
            (Output(ids.CIRCUIT_ABLATE_STATUS, "style"), {"visibility": "visible"}, {"visibility": "hidden"}),
        ],
        on_error=job_error(ids.CIRCUIT_MESSAGE),
        prevent_initial_call=True,
    )
    def _ablate(set_progress, nodes, kind, episodes, seed, pair, metric, model, data, step, edits):
        if not nodes:
            return NOTHING_ABLATED, ""
        set_progress("Ablating…")
        r = ablate_in_app(
            model, data, step, edits, pair, metric, nodes, kind, seed, episodes,
            progress=lambda text: set_progress(f"Ablating: {text}…"),
        )  # fmt: skip
        if not r["ok"]:
            return no_update, r["message"]
        return result_view(r), ""


__all__ = [
    "CLICK_INSPECT",
    "CLICK_TOGGLE",
    "TOP_N",
    "ablate_in_app",
    "details_view",
    "last_tapped",
    "graph_elements",
    "layout",
    "register",
    "result_view",
    "score_in_app",
    "scores_summary",
    "target_text",
    "window_step",
]
