"""The Analyses tab: run any registered analysis plugin on the current window and show its figures.

The tab knows plugins only through the registry (:func:`dtinterp.plugins.registry.get_registry`): the
menu lists every plugin grouped by category, the description and the parameter controls come from the
plugin's declaration (:mod:`dash_app.controls`), and the figures from its ``figures(result)``. A plugin
installed later under the ``dtinterp.analyses`` entry point appears here with no change to the app.

A run is the library's :func:`dtinterp.plugins.run.run_analysis`, the same as ``dtinterp analyze``; this
tab only chooses what it runs on:

- **windows**: the model's window at the step chosen in the Replay tab (``ids.STEP_STORE``), or the
  windows ending at every taken step of the episode (at most :data:`MAX_WINDOWS`, evenly thinned), for
  analyses that pool statistics over many tokens;
- **target**: the clean windows, or the windows with the Replay tab's edits (``ids.EDITS_STORE``)
  applied. A plugin that compares clean and edited runs (``needs_counterfactual``) always gets both,
  and asks for an edit when there is none.

A result may suggest interventions to try while the model plays (``AnalysisResult.interventions``, e.g.
the feature dashboard's "steer along this feature"): each becomes a button that fills in the Play tab's
intervention and shows the Play tab (:func:`intervention_buttons`). The tab does not know which plugin
made them.

A run is a Dash background callback (the app's ``DiskcacheManager``): it reports its stage on a progress
bar, can be cancelled, and keeps the page responsive. The background job runs in a forked worker
process with its own copy of the model (:func:`analysis_context`), so cancelling it can never leave hooks on
the server's shared model. In the server process itself (tests, notebooks) every computation holds the
model's lock. A plugin that raises shows its one-line ``PluginError`` and nothing else is affected.

Logic lives in plain functions (:func:`run_in_app`, :func:`build_inputs`, :func:`report_html`, ...); the
callbacks only pass the browser's values through. Static analyses (weights only) run without an episode.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from dash import ALL, Dash, Input, Output, State, ctx, dcc, html, no_update

from dash_app import controls, ids
from dash_app.cache import CONTEXTS, ModelEntry, model_entry
from dash_app.inputs import InputError, load_episode
from dash_app.jobs import in_job, job_error
from dtinterp.data.episode import Episode
from dtinterp.errors import DtinterpError
from dtinterp.interp.edits import Edit
from dtinterp.model.inputs import DTInputs
from dtinterp.plugins.api import CATEGORIES, Analysis, AnalysisContext
from dtinterp.plugins.registry import Registry, get_registry
from dtinterp.plugins.report import render_report
from dtinterp.plugins.run import STAGES, TARGET_CLEAN, TARGET_EDITED, run_analysis
from envs.errors import EnvSpecError

#: The most windows a whole-episode run uses (the CLI's ``--max-windows`` default).
MAX_WINDOWS = 256
#: ``ids.ANALYSIS_WINDOWS`` values.
WINDOWS_STEP, WINDOWS_EPISODE = "step", "episode"
CATEGORY_HELP = {
    "static": "weights only: the same result for any trajectory",
    "dynamic": "forward passes on the windows",
    "causal": "interventions: edits, patching, sweeps",
}


Progress = Callable[[int, str], None]


# ------------------------------------------------------------------ plain logic


@contextlib.contextmanager
def analysis_context(
    entry: ModelEntry, inputs: DTInputs | None, edits: Sequence[Edit] = (), description: str = ""
) -> Iterator[AnalysisContext]:
    """The analysis context of (model, inputs, edits), with the model's lock held while it is in use.

    In the server process the context comes from the shared LRU (:data:`dash_app.cache.CONTEXTS`), so
    forward passes already run for the Replay tab are reused, and the model's lock serialises every
    computation on the shared model. A background callback runs in a worker *forked* from the server:
    its model is a private copy that no other thread touches, and any lock another server thread held
    at the fork would stay held forever in the copy, so the worker builds its own context and holds
    nothing. Cancelling a run kills the worker, which therefore never leaves hooks on the server's model.
    """
    if in_job():
        yield AnalysisContext(entry.checkpoint, inputs, edits=list(edits), description=description)
    else:
        with entry.lock:
            yield CONTEXTS.get(entry, inputs, edits, description=description)


def plugin_options(registry: Registry, category: str | None) -> list[dict[str, str]]:
    """Dropdown options of the plugins of ``category`` (every category when None), by title."""
    groups = registry.by_category()
    cats = CATEGORIES if category not in groups else (category,)
    return [
        {"label": f"{p.title}  ·  {p.category}" if category not in groups else p.title, "value": p.id}
        for c in cats
        for p in groups[c]
    ]


def describe_plugin(plugin: Analysis) -> html.Div:
    """Title, category, id, description and (if any) the need for edits of one plugin."""
    parts: list[Any] = [
        html.H4(plugin.title),
        html.P(
            [html.Code(plugin.id), f" · {plugin.category} ({CATEGORY_HELP.get(plugin.category, '')})"],
            className="hint",
        ),
        html.P(plugin.description),
    ]
    if plugin.needs_counterfactual:
        text = "Compares the clean window with the edited one: add at least one edit in the Replay tab."
        if not plugin.needs_edits(plugin.resolve_params()):
            text = (
                "Compares the clean window with a counterfactual it builds itself by default; a parameter "
                "can ask for the Replay tab's edits instead."
            )
        elif type(plugin).needs_edits is not Analysis.needs_edits:
            text = (
                "Compares the clean window with a counterfactual: the edited one (add at least one edit in the "
                "Replay tab), unless a parameter chooses another."
            )
        parts.append(html.P(text, className="notice"))
    if not plugin.parameters:
        parts.append(html.P("This analysis takes no parameters.", className="hint"))
    return html.Div(parts)


def failures_text(registry: Registry) -> list[str]:
    """One line per plugin that could not be loaded or declared itself invalidly (it is skipped)."""
    return [
        f"{f.name} ({f.stage}): {f.error}" for f in registry.failures if f.stage in ("import", "declaration")
    ]


def build_inputs(
    entry: ModelEntry, episode: Episode | None, step: int | None, windows: str
) -> tuple[DTInputs, dict[str, Any]]:
    """The windows a run analyses, and their provenance.

    ``windows`` is :data:`WINDOWS_STEP` (the window at ``step``, default the last observation) or
    :data:`WINDOWS_EPISODE` (every taken step, at most :data:`MAX_WINDOWS`, evenly thinned).
    """
    if episode is None:
        raise InputError("no episode: play one or load one in the Replay tab")
    source: dict[str, Any] = {"episode": episode.provenance(), "conditioning": episode.conditioning()}
    if windows == WINDOWS_EPISODE:
        if episode.length == 0:
            raise InputError("the episode has no steps yet: take an action first")
        steps = list(range(episode.length))
        if len(steps) > MAX_WINDOWS:
            keep = np.unique(np.round(np.linspace(0, len(steps) - 1, MAX_WINDOWS)).astype(np.int64))
            steps = [steps[i] for i in keep]
        source["description"] = f"every taken step of the episode ({len(steps)} windows)"
    elif windows == WINDOWS_STEP:
        steps = [episode.n_obs - 1 if step is None else int(step)]
        live = " (the current state)" if episode.live and steps[0] == episode.length else ""
        source["description"] = f"the window at step {steps[0]}{live}"
    else:
        raise InputError(f"unknown choice of windows {windows!r}")
    source["steps"] = steps
    return episode.windows(entry.checkpoint, steps), source


def run_in_app(
    model: str,
    data: Any,
    step: int | None,
    plugin_id: str,
    raw_params: Mapping[str, Any],
    target: str = TARGET_CLEAN,
    windows: str = WINDOWS_STEP,
    edits: Sequence[str] | None = (),
    progress: Progress | None = None,
    registry: Registry | None = None,
) -> dict[str, Any]:
    """Run one plugin as the Analyses tab does and return what the tab shows.

    ``data`` is the page's episode (``Episode.to_json()``), ``raw_params`` the controls' values (see
    :func:`dash_app.controls.values_from_controls`), ``target`` :data:`TARGET_CLEAN` or
    :data:`TARGET_EDITED`, ``edits`` the Replay tab's edit strings. Returns ``{"ok", "message", "summary",
    "figures" (plotly Figures), "result_json" (text or None), "report" (the arguments of
    :func:`report_html`), "ran_on" (what it ran on, in words), "seconds"}``; a bad input or a failing
    plugin gives ``ok`` False and a one-line ``message``, never an exception.
    """
    t0 = time.perf_counter()
    registry = registry or get_registry()
    out: dict[str, Any] = {"ok": False, "message": "", "summary": "", "figures": [], "result_json": None}
    try:
        plugin = registry.get(plugin_id)
        entry = model_entry(model)
        params = controls.values_from_controls(plugin, raw_params, entry.checkpoint)
        edit_list = list(edits or []) if plugin.needs_counterfactual or target == TARGET_EDITED else []
        if plugin.category == "static" and not plugin.needs_counterfactual:
            inputs, source = None, {"description": "none: the analysis reads the weights only"}
        else:
            inputs, source = build_inputs(entry, load_episode(data), step, windows)
        run = run_analysis(
            entry.checkpoint,
            inputs,
            plugin,
            params,
            edit_list,
            target=target,
            source=source,
            registry=registry,
            contexts=lambda i, e: analysis_context(entry, i, e, str(source.get("description", ""))),
            progress=progress,
        )
        try:
            out["result_json"] = run.json_text()
        except DtinterpError as exc:
            out["message"] = f"{exc}; no JSON download"
        out.update(
            ok=True,
            summary=run.summary,
            figures=run.figures,
            ran_on=ran_on_text(run.inputs_info),
            report={
                "plugin": plugin.describe(),
                "params": run.result.params,
                "model_info": run.model_info,
                "inputs_info": run.inputs_info,
                "summary": run.summary,
                "provenance": run.provenance,
                "interventions": [{"label": i.label, "text": i.text} for i in run.result.interventions],
            },
        )
    except (DtinterpError, EnvSpecError) as exc:
        out["message"] = str(exc)
    out["seconds"] = time.perf_counter() - t0
    return out


def ran_on_text(inputs_info: Mapping[str, Any]) -> str:
    """One line naming exactly what a run analysed: windows, steps, clean or edited, and the edits."""
    parts = [f"Ran on {inputs_info.get('runs on', '')}"]
    for key in ("source", "episode", "steps", "edits"):
        if inputs_info.get(key) not in (None, "", "none") or key == "edits":
            parts.append(f"{key}: {inputs_info.get(key)}")
    return " · ".join(parts)


def report_html(report: Mapping[str, Any], figures: Sequence[Any]) -> str:
    """The standalone HTML report of a finished run (``figures``: plotly Figures or the page's dicts)."""
    figs = [f if isinstance(f, go.Figure) else go.Figure(f) for f in figures]
    return render_report(
        plugin=report["plugin"],
        params=report["params"],
        model_info=report["model_info"],
        inputs_info=report["inputs_info"],
        summary=report["summary"],
        figures=figs,
        provenance=report.get("provenance"),
        interventions=[(i["label"], i["text"]) for i in report.get("interventions", [])],
    )


def intervention_buttons(store: Mapping[str, Any] | None) -> list[Any]:
    """The buttons of the Play-tab interventions the shown result suggests (none without a result)."""
    suggested = ((store or {}).get("report") or {}).get("interventions") or []
    if not suggested:
        return []
    return [
        html.Span("Try it while the model plays: ", className="hint"),
        *(
            html.Button(
                i["label"],
                id={"type": ids.ANALYSIS_INTERVENTION_TYPE, "index": n},
                n_clicks=0,
                title=f"fill in the Play tab's intervention with: {i['text']}",
            )
            for n, i in enumerate(suggested)
        ),
    ]


def suggested_intervention(store: Mapping[str, Any] | None, index: Any) -> str | None:
    """The line of suggestion ``index`` of the shown result (None if there is no such suggestion)."""
    suggested = ((store or {}).get("report") or {}).get("interventions") or []
    if not isinstance(index, int) or not 0 <= index < len(suggested):
        return None
    return str(suggested[index]["text"])


def target_text(
    model: str, data: Any, step: int | None, edits: Sequence[str] | None, windows: str, target: str
) -> str:
    """One line saying what a run will use: model, episode, step or windows, clean or edited, the edits."""
    try:
        episode = load_episode(data)
    except DtinterpError as exc:
        return f"model {model} · {exc}"
    if episode is None:
        return f"model {model} · no episode yet (static analyses need none)"
    if windows == WINDOWS_EPISODE:
        where = f"every taken step (0..{max(episode.length - 1, 0)}) of a {episode.length}-step episode"
    else:
        at = episode.n_obs - 1 if step is None else step
        where = f"step {at} of a {episode.length}-step episode"
    e = ", ".join(edits) if edits else "none"
    what = "edited windows" if target == TARGET_EDITED else "clean windows"
    return f"model {model} · {where} · {what} · Replay edits: {e}"


def file_stem(report: Mapping[str, Any]) -> str:
    """File name stem of a run's downloads, e.g. ``dtinterp-kurtosis``."""
    return f"dtinterp-{report['plugin']['id']}"


# ------------------------------------------------------------------ layout


def _figure_graph(i: int, fig: go.Figure) -> dcc.Graph:
    return dcc.Graph(
        id={"type": ids.ANALYSIS_FIGURE_TYPE, "index": i},
        figure=fig,
        config={"displaylogo": False, "toImageButtonOptions": {"format": "svg"}},
        className="analysis-figure",
    )


def layout() -> html.Div:
    """The Analyses tab's components (the plugin menu comes from the registry now)."""
    registry = get_registry()
    counts = {c: len(ps) for c, ps in registry.by_category().items()}
    first = next((ps[0].id for ps in registry.by_category().values() if ps), None)
    broken = failures_text(registry)
    return html.Div(
        [
            dcc.Store(id=ids.ANALYSIS_RESULT_STORE, data=None, storage_type="memory"),
            html.Div(
                [
                    dcc.RadioItems(
                        id=ids.ANALYSES_CATEGORY,
                        options=[{"label": f"all ({sum(counts.values())})", "value": "all"}]
                        + [
                            {"label": f"{c} ({counts[c]})", "value": c, "title": CATEGORY_HELP.get(c, "")}
                            for c in CATEGORIES
                        ],
                        value="all",
                        inline=True,
                    ),
                    dcc.Dropdown(
                        id=ids.ANALYSIS_SELECT,
                        options=plugin_options(registry, None),
                        value=first,
                        clearable=False,
                        placeholder="analysis",
                        style={"minWidth": "420px"},
                    ),
                ],
                className="controls-row",
            ),
            html.Div(
                [html.B("Plugins that failed to load (skipped): "), html.Ul([html.Li(b) for b in broken])]
                if broken
                else [],
                id=ids.ANALYSIS_BROKEN,
                className="tab-message",
            ),
            html.Div(id=ids.ANALYSIS_DESCRIPTION, className="analysis-description"),
            html.Div(id=ids.ANALYSIS_PARAMS, className="analysis-params"),
            html.Div(
                [
                    html.Label("Windows"),
                    dcc.RadioItems(
                        id=ids.ANALYSIS_WINDOWS,
                        options=[
                            {"label": "the window at the Replay step", "value": WINDOWS_STEP},
                            {
                                "label": f"every step of the episode (up to {MAX_WINDOWS})",
                                "value": WINDOWS_EPISODE,
                            },
                        ],
                        value=WINDOWS_STEP,
                        inline=True,
                    ),
                ],
                className="controls-row",
            ),
            html.Div(
                [
                    html.Label("Target"),
                    dcc.RadioItems(
                        id=ids.ANALYSIS_USE_EDITS,
                        options=[
                            {"label": "clean window", "value": TARGET_CLEAN},
                            {"label": "edited window (the Replay tab's edits)", "value": TARGET_EDITED},
                        ],
                        value=TARGET_CLEAN,
                        inline=True,
                    ),
                ],
                className="controls-row",
            ),
            html.Div(id=ids.ANALYSIS_TARGET_INFO, className="hint"),
            html.Div(
                [
                    html.Button("Run", id=ids.ANALYSIS_RUN, n_clicks=0, className="run-button"),
                    html.Button("Cancel", id=ids.ANALYSIS_CANCEL, n_clicks=0, disabled=True),
                    html.Progress(
                        id=ids.ANALYSIS_PROGRESS,
                        value="0",
                        max=str(len(STAGES)),
                        style={"visibility": "hidden"},
                    ),
                    html.Span(id=ids.ANALYSIS_STATUS, className="status-line"),
                    html.Button(
                        "Download HTML", id=ids.ANALYSIS_DOWNLOAD_HTML_BUTTON, n_clicks=0, disabled=True
                    ),
                    html.Button(
                        "Download JSON", id=ids.ANALYSIS_DOWNLOAD_JSON_BUTTON, n_clicks=0, disabled=True
                    ),
                    dcc.Download(id=ids.ANALYSIS_DOWNLOAD),
                ],
                className="controls-row",
            ),
            html.Div(id=ids.ANALYSIS_MESSAGE, className="tab-message", role="alert"),
            html.Pre(id=ids.ANALYSIS_SUMMARY, className="analysis-summary"),
            html.Div(id=ids.ANALYSIS_INTERVENTIONS, className="controls-row"),
            html.Div(id=ids.ANALYSIS_FIGURES, className="analysis-figures"),
        ]
    )


# ------------------------------------------------------------------ callbacks


def register(app: Dash) -> None:
    """The Analyses tab's callbacks; the run is a background callback with progress and cancel."""

    @app.callback(
        Output(ids.ANALYSIS_SELECT, "options"),
        Output(ids.ANALYSIS_SELECT, "value"),
        Input(ids.ANALYSES_CATEGORY, "value"),
        State(ids.ANALYSIS_SELECT, "value"),
        prevent_initial_call=True,
    )
    def _category(category, current):
        options = plugin_options(get_registry(), None if category == "all" else category)
        values = [o["value"] for o in options]
        return options, (current if current in values else (values[0] if values else None))

    @app.callback(
        Output(ids.ANALYSIS_DESCRIPTION, "children"),
        Output(ids.ANALYSIS_PARAMS, "children"),
        Output(ids.ANALYSIS_USE_EDITS, "options"),
        Output(ids.ANALYSIS_USE_EDITS, "value"),
        Output(ids.ANALYSIS_WINDOWS, "value"),
        Input(ids.ANALYSIS_SELECT, "value"),
        Input(ids.MODEL_STORE, "data"),
    )
    def _plugin(plugin_id, model):
        if plugin_id is None:
            return html.P("No analysis is installed.", className="hint"), [], no_update, no_update, no_update
        try:
            plugin = get_registry().get(plugin_id)
        except DtinterpError as exc:
            return html.P(str(exc), className="tab-message"), [], no_update, no_update, no_update
        cf = plugin.needs_counterfactual
        options = [
            {"label": "clean window", "value": TARGET_CLEAN, "disabled": cf},
            {
                "label": "clean vs edited (always, for this analysis)"
                if cf
                else "edited window (the Replay tab's edits)",
                "value": TARGET_EDITED,
            },
        ]
        # A new analysis starts from its own defaults: no choice made for another one carries over.
        value = TARGET_EDITED if cf else TARGET_CLEAN
        try:  # choices that depend on the model (its actions) list the page's model's own
            actions = model_entry(model).checkpoint.action_names
        except DtinterpError:
            actions = None
        return (
            describe_plugin(plugin),
            controls.plugin_controls(plugin, actions),
            options,
            value,
            WINDOWS_EPISODE if plugin.min_windows > 1 else WINDOWS_STEP,
        )

    @app.callback(
        Output(ids.ANALYSIS_TARGET_INFO, "children"),
        Input(ids.ANALYSES_SHOWN_EPISODE, "data"),
        Input(ids.ANALYSIS_WINDOWS, "value"),
        Input(ids.ANALYSIS_USE_EDITS, "value"),
        State(ids.MODEL_STORE, "data"),
        State(ids.STEP_STORE, "data"),
        State(ids.EDITS_STORE, "data"),
    )
    def _target(data, windows, target, model, step, edits):
        # ANALYSES_SHOWN_EPISODE is handed over while this tab is shown: the step and edits (set in the Replay
        # tab) are read then, so the line always names what a run would use now.
        return "Will run on: " + target_text(model, data, step, edits, windows, target)

    @app.callback(
        Output(ids.ANALYSIS_SUMMARY, "children"),
        Output(ids.ANALYSIS_FIGURES, "children"),
        Output(ids.ANALYSIS_RESULT_STORE, "data"),
        Output(ids.ANALYSIS_MESSAGE, "children"),
        Output(ids.ANALYSIS_DOWNLOAD_HTML_BUTTON, "disabled"),
        Output(ids.ANALYSIS_DOWNLOAD_JSON_BUTTON, "disabled"),
        Input(ids.ANALYSIS_RUN, "n_clicks"),
        State(ids.ANALYSIS_SELECT, "value"),
        State({"type": ids.ANALYSIS_PARAM_TYPE, "plugin": ALL, "name": ALL}, "id"),
        State({"type": ids.ANALYSIS_PARAM_TYPE, "plugin": ALL, "name": ALL}, "value"),
        State(ids.ANALYSIS_USE_EDITS, "value"),
        State(ids.ANALYSIS_WINDOWS, "value"),
        State(ids.MODEL_STORE, "data"),
        State(ids.TRAJ_STORE, "data"),
        State(ids.STEP_STORE, "data"),
        State(ids.EDITS_STORE, "data"),
        background=True,
        progress=[
            Output(ids.ANALYSIS_PROGRESS, "value"),
            Output(ids.ANALYSIS_STATUS, "children"),
        ],
        running=[
            (Output(ids.ANALYSIS_RUN, "disabled"), True, False),
            (Output(ids.ANALYSIS_CANCEL, "disabled"), False, True),
            (Output(ids.ANALYSIS_PROGRESS, "style"), {"visibility": "visible"}, {"visibility": "hidden"}),
            (Output(ids.ANALYSIS_STATUS, "style"), {"visibility": "visible"}, {"visibility": "hidden"}),
        ],
        cancel=[Input(ids.ANALYSIS_CANCEL, "n_clicks")],
        on_error=job_error(ids.ANALYSIS_MESSAGE),
        prevent_initial_call=True,
    )
    def _run(set_progress, _n, plugin_id, param_ids, param_values, target, windows, model, data, step, edits):
        def progress(i: int, text: str) -> None:
            set_progress((str(i + 1), f"{i + 1}/{len(STAGES)} {text}…"))

        raw = controls.raw_values(plugin_id, param_ids, param_values)
        r = run_in_app(model, data, step, plugin_id, raw, target, windows, edits, progress=progress)
        if not r["ok"]:
            return "", [], None, r["message"], True, True
        graphs = [html.P(r["ran_on"], className="ran-on")] + [
            _figure_graph(i, f) for i, f in enumerate(r["figures"])
        ]
        store = {"report": r["report"], "json": r["result_json"]}
        summary = f"{r['summary']}\n({len(r['figures'])} figure(s) in {r['seconds']:.2f} s)"
        return summary, graphs, store, r["message"], False, r["result_json"] is None

    @app.callback(
        Output(ids.ANALYSIS_INTERVENTIONS, "children"),
        Input(ids.ANALYSIS_RESULT_STORE, "data"),
    )
    def _suggestions(store):
        return intervention_buttons(store)

    @app.callback(
        Output(ids.PLAY_INTERVENTION, "value", allow_duplicate=True),
        Output(ids.TABS, "value", allow_duplicate=True),
        Input({"type": ids.ANALYSIS_INTERVENTION_TYPE, "index": ALL}, "n_clicks"),
        State(ids.ANALYSIS_RESULT_STORE, "data"),
        prevent_initial_call=True,
    )
    def _use_suggestion(_clicks, store):
        # New buttons arrive with n_clicks 0 and fire this callback too: only a click counts.
        if not isinstance(ctx.triggered_id, Mapping) or not ctx.triggered[0]["value"]:
            return no_update, no_update
        text = suggested_intervention(store, ctx.triggered_id.get("index"))
        return (no_update, no_update) if text is None else (text, ids.TAB_PLAY)

    @app.callback(
        Output(ids.ANALYSIS_MESSAGE, "children", allow_duplicate=True),
        Input(ids.ANALYSIS_CANCEL, "n_clicks"),
        prevent_initial_call=True,
    )
    def _cancelled(_n):
        return "Run cancelled: nothing was computed; the figures below (if any) are from the previous run."

    @app.callback(
        Output(ids.ANALYSIS_DOWNLOAD, "data"),
        Output(ids.ANALYSIS_MESSAGE, "children", allow_duplicate=True),
        Input(ids.ANALYSIS_DOWNLOAD_HTML_BUTTON, "n_clicks"),
        Input(ids.ANALYSIS_DOWNLOAD_JSON_BUTTON, "n_clicks"),
        State(ids.ANALYSIS_RESULT_STORE, "data"),
        State({"type": ids.ANALYSIS_FIGURE_TYPE, "index": ALL}, "figure"),
        prevent_initial_call=True,
    )
    def _download(_html, _json, store, figures):
        if not store:
            return no_update, "Run an analysis first."
        stem = file_stem(store["report"])
        if ctx.triggered_id == ids.ANALYSIS_DOWNLOAD_JSON_BUTTON:
            if store.get("json") is None:
                return no_update, "This result has no JSON form."
            return dcc.send_string(store["json"] + "\n", f"{stem}.json"), ""
        try:
            html_text = report_html(store["report"], figures)
        except ValueError as exc:  # a figure the page altered beyond what plotly validates
            return no_update, f"Report not written: {exc}"
        return dcc.send_string(html_text, f"{stem}.html"), ""


__all__ = [
    "MAX_WINDOWS",
    "STAGES",
    "TARGET_CLEAN",
    "TARGET_EDITED",
    "WINDOWS_EPISODE",
    "WINDOWS_STEP",
    "analysis_context",
    "build_inputs",
    "describe_plugin",
    "failures_text",
    "file_stem",
    "intervention_buttons",
    "layout",
    "plugin_options",
    "register",
    "report_html",
    "ran_on_text",
    "run_in_app",
    "suggested_intervention",
    "target_text",
]
