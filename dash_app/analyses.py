"""The Analyses tab: run any registered analysis plugin on the current window and show its figures.

The tab knows plugins only through the registry (:func:`dtinterp.plugins.registry.get_registry`): the
menu lists every plugin grouped by category, the description and the parameter controls come from the
plugin's declaration (:mod:`dash_app.controls`), and the figures from its ``figures(result)``. A plugin
installed later under the ``dtinterp.analyses`` entry point appears here with no change to the app.

What a run analyses (the same steps as ``dtinterp analyze``: inputs -> context -> plugin -> figures):

- **windows**: the model's window at the step chosen in the Replay tab (``ids.STEP_STORE``), or the
  windows ending at every taken step of the episode (at most :data:`MAX_WINDOWS`, evenly thinned), for
  analyses that pool statistics over many tokens;
- **target**: the clean windows, or the windows with the Replay tab's edits (``ids.EDITS_STORE``)
  applied. A plugin that compares clean and edited runs (``needs_counterfactual``) always gets both,
  and asks for an edit when there is none.

A run is a Dash background callback (the app's ``DiskcacheManager``): it reports its stage on a progress
bar, can be cancelled, and keeps the page responsive. The background job runs in a forked worker
process with its own copy of the model (:func:`analysis_context`), so cancelling it can never leave hooks on
the server's shared model. In the server process itself (tests, notebooks) every computation holds the
model's lock. A plugin that raises shows its one-line ``PluginError`` and nothing else is affected.

Logic lives in plain functions (:func:`run_analysis`, :func:`build_inputs`, :func:`report_html`, ...); the
callbacks only pass the browser's values through.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import plotly.graph_objects as go
import torch
from dash import ALL, Dash, Input, Output, State, ctx, dcc, html, no_update

from dash_app import controls, ids
from dash_app.state import (
    CONTEXTS,
    InputError,
    ModelEntry,
    check_traj,
    model_entry,
    step_window,
    traj_to_dataset,
)
from dtinterp.analyze import describe_model
from dtinterp.errors import DtinterpError
from dtinterp.interp.edits import Edit, apply_edits, parse_edit
from dtinterp.interp.trajectory import episode_windows
from dtinterp.model.inputs import DTInputs
from dtinterp.plugins.api import CATEGORIES, Analysis, AnalysisContext, PluginError
from dtinterp.plugins.registry import Registry, get_registry
from dtinterp.viz.report import render_report
from envs.errors import EnvSpecError

#: The most windows a whole-episode run uses (the CLI's ``--max-windows`` default).
MAX_WINDOWS = 256
#: ``ids.ANALYSIS_WINDOWS`` values.
WINDOWS_STEP, WINDOWS_EPISODE = "step", "episode"
#: ``ids.ANALYSIS_USE_EDITS`` values.
TARGET_CLEAN, TARGET_EDITED = "clean", "edited"
CATEGORY_HELP = {
    "static": "weights only: the same result for any trajectory",
    "dynamic": "forward passes on the windows",
    "causal": "interventions: edits, patching, sweeps",
}
#: Stages a run reports on the progress bar.
STAGES = ("checking parameters", "building the windows", "computing", "drawing the figures")

_SERVER_PID = os.getpid()

Progress = Callable[[int, str], None]


# ------------------------------------------------------------------ plain logic


@contextlib.contextmanager
def analysis_context(
    entry: ModelEntry, inputs: DTInputs, edits: Sequence[Edit] = (), description: str = ""
) -> Iterator[AnalysisContext]:
    """The analysis context of (model, inputs, edits), with the model's lock held while it is in use.

    In the server process the context comes from the shared LRU (:data:`dash_app.state.CONTEXTS`), so
    forward passes already run for the Replay tab are reused, and the model's lock serialises every
    computation on the shared model. A background callback runs in a worker *forked* from the server:
    its model is a private copy that no other thread touches, and any lock another server thread held
    at the fork would stay held forever in the copy, so the worker builds its own context and holds
    nothing. Cancelling a run kills the worker, which therefore never leaves hooks on the server's model.
    """
    if in_worker():
        yield AnalysisContext(entry.model, inputs, entry.meta, edits=list(edits), description=description)
    else:
        with entry.lock:
            yield CONTEXTS.get(entry, inputs, edits, description=description)


def in_worker() -> bool:
    """Whether this is a background-callback worker forked from the server process."""
    return os.getpid() != _SERVER_PID


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
        parts.append(
            html.P(
                "Compares the clean window with the edited one: add at least one edit in the Replay tab.",
                className="notice",
            )
        )
    if not plugin.parameters:
        parts.append(html.P("This analysis takes no parameters.", className="hint"))
    return html.Div(parts)


def failures_text(registry: Registry) -> list[str]:
    """One line per plugin that could not be loaded or declared itself invalidly (it is skipped)."""
    return [
        f"{f.name} ({f.stage}): {f.error}" for f in registry.failures if f.stage in ("import", "declaration")
    ]


def parse_edit_strings(edits: Sequence[str] | None) -> list[Edit]:
    """The Replay tab's edits (strings in ``ids.EDITS_STORE``) as edit objects."""
    return [parse_edit(str(e)) for e in edits or []]


def build_inputs(
    entry: ModelEntry, traj: dict[str, Any] | None, step: int | None, windows: str
) -> tuple[DTInputs, dict[str, Any]]:
    """The windows a run analyses, and a description of them for the report.

    ``windows`` is :data:`WINDOWS_STEP` (the window at ``step``, default the last observation) or
    :data:`WINDOWS_EPISODE` (every taken step, at most :data:`MAX_WINDOWS`).
    """
    if traj is None:
        raise InputError("no trajectory: play one or load one in the Replay tab")
    obs = check_traj(traj)
    info: dict[str, Any] = {
        "source": f"trajectory ({traj['source']}) of {len(traj['actions'])} steps",
        "env": entry.spec.to_json(),
        "return-to-go": f"target {float(traj['target_rtg']):g} minus rewards so far",
    }
    if windows == WINDOWS_EPISODE:
        ds = traj_to_dataset(traj)
        inputs = episode_windows(ds, [0], entry.model, entry.rtg_scale, MAX_WINDOWS, entry.spec, "trajectory")
        n = len(traj["actions"])
        info["windows"] = (
            f"{inputs.batch_size}, ending at {'every' if inputs.batch_size == n else 'evenly spaced'} taken step(s)"
        )
        return inputs, info
    if windows != WINDOWS_STEP:
        raise InputError(f"unknown choice of windows {windows!r}")
    step = len(obs) - 1 if step is None else int(step)
    inputs = step_window(traj, entry, step)
    info["step"] = f"{step} (the window ends here; its action is the one predicted)"
    return inputs, info


def run_analysis(
    model: str,
    traj: dict[str, Any] | None,
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

    ``raw_params`` are the controls' values (see :func:`dash_app.controls.values_from_controls`),
    ``target`` is :data:`TARGET_CLEAN` or :data:`TARGET_EDITED`, ``edits`` the Replay tab's edit strings.
    Returns ``{"ok", "message", "summary", "figures" (plotly Figures), "result_json" (text or None),
    "report" (the arguments of :func:`report_html`), "seconds"}``; a bad input or a failing plugin gives
    ``ok`` False and a one-line ``message``, never an exception.
    """
    t0 = time.perf_counter()
    if in_worker():
        torch.set_num_threads(1)  # OpenMP's thread pool does not survive the fork: torch would hang
    registry = registry or get_registry()
    report = progress or (lambda _i, _text: None)
    out: dict[str, Any] = {"ok": False, "message": "", "summary": "", "figures": [], "result_json": None}
    try:
        report(0, STAGES[0])
        plugin = registry.get(plugin_id)
        params = controls.values_from_controls(plugin, raw_params)
        edit_list = parse_edit_strings(edits)
        if plugin.needs_counterfactual and not edit_list:
            raise PluginError(
                f"analysis {plugin.id!r} compares against a counterfactual: add at least one edit in the Replay tab"
            )
        if target == TARGET_EDITED and not edit_list:
            raise InputError(
                "target 'edited window' needs edits: add them in the Replay tab, or pick the clean window"
            )
        entry = model_entry(model)

        report(1, STAGES[1])
        inputs, inputs_info = build_inputs(entry, traj, step, windows)
        if plugin.needs_counterfactual:
            ctx_inputs, ctx_edits = inputs, edit_list  # clean vs edited, in one context
            inputs_info["edits"] = [str(e) for e in edit_list]
        elif target == TARGET_EDITED:
            ctx_inputs, ctx_edits = (
                apply_edits(inputs, edit_list, entry.rtg_scale),
                [],
            )  # analyse the edited window
            inputs_info["edits"] = f"applied before the analysis: {', '.join(str(e) for e in edit_list)}"
        else:
            ctx_inputs, ctx_edits = inputs, []
            inputs_info["edits"] = "none"

        report(2, f"{STAGES[2]} {plugin.title} on {ctx_inputs.batch_size} window(s)")
        with analysis_context(entry, ctx_inputs, ctx_edits, str(inputs_info["source"])) as context:
            result = registry.run(plugin.id, context, params)

        report(3, STAGES[3])
        figures = registry.figures(plugin.id, result)
        if not isinstance(figures, list) or not all(isinstance(f, go.Figure) for f in figures):
            raise PluginError(f"plugin {plugin.id!r}: figures() must return a list of plotly Figures")
        try:
            out["result_json"] = json.dumps(result.to_json(), allow_nan=False)
        except (TypeError, ValueError) as exc:
            out["message"] = (
                f"plugin {plugin.id!r}: its result is not JSON-serialisable ({exc}); no JSON download"
            )
        out.update(
            ok=True,
            summary=result.summary,
            figures=figures,
            report={
                "plugin": plugin.describe(),
                "params": result.params,
                "model_info": describe_model(str(entry.path), entry.model, entry.meta),
                "inputs_info": inputs_info,
                "summary": result.summary,
            },
        )
    except (DtinterpError, EnvSpecError) as exc:
        out["message"] = str(exc)
    out["seconds"] = time.perf_counter() - t0
    return out


def report_html(report: Mapping[str, Any], figures: Sequence[Any]) -> str:
    """The standalone HTML report (:func:`dtinterp.viz.report.render_report`) of a finished run.

    ``figures`` are plotly Figures or their dicts (as the page's graphs hold them).
    """
    figs = [f if isinstance(f, go.Figure) else go.Figure(f) for f in figures]
    return render_report(
        plugin=report["plugin"],
        params=report["params"],
        model_info=report["model_info"],
        inputs_info=report["inputs_info"],
        summary=report["summary"],
        figures=figs,
    )


def target_text(
    model: str, traj: dict[str, Any] | None, step: int | None, edits: Sequence[str] | None
) -> str:
    """One line saying what a run will use: model, trajectory, step and the Replay tab's edits."""
    if traj is None:
        return f"model {model} · no trajectory yet"
    n_obs = len(traj.get("directions", []))
    at = n_obs - 1 if step is None else step
    e = ", ".join(edits) if edits else "none"
    return (
        f"model {model} · step {at} of a {len(traj.get('actions', []))}-step trajectory · Replay edits: {e}"
    )


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
        Input(ids.ANALYSIS_SELECT, "value"),
    )
    def _plugin(plugin_id):
        if plugin_id is None:
            return html.P("No analysis is installed.", className="hint"), [], no_update, no_update
        try:
            plugin = get_registry().get(plugin_id)
        except PluginError as exc:
            return html.P(str(exc), className="tab-message"), [], no_update, no_update
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
        value = TARGET_EDITED if cf else no_update
        return describe_plugin(plugin), controls.plugin_controls(plugin), options, value

    @app.callback(
        Output(ids.ANALYSIS_TARGET_INFO, "children"),
        Input(ids.MODEL_STORE, "data"),
        Input(ids.TRAJ_STORE, "data"),
        Input(ids.STEP_STORE, "data"),
        Input(ids.EDITS_STORE, "data"),
    )
    def _target(model, traj, step, edits):
        return "Runs on: " + target_text(model, traj, step, edits)

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
        prevent_initial_call=True,
    )
    def _run(set_progress, _n, plugin_id, param_ids, param_values, target, windows, model, traj, step, edits):
        def progress(i: int, text: str) -> None:
            set_progress((str(i + 1), f"{i + 1}/{len(STAGES)} {text}…"))

        raw = controls.raw_values(plugin_id, param_ids, param_values)
        r = run_analysis(model, traj, step, plugin_id, raw, target, windows, edits, progress=progress)
        if not r["ok"]:
            return "", [], None, r["message"], True, True
        graphs = [_figure_graph(i, f) for i, f in enumerate(r["figures"])]
        store = {"report": r["report"], "json": r["result_json"]}
        summary = f"{r['summary']}\n({len(graphs)} figure(s) in {r['seconds']:.2f} s)"
        return summary, graphs, store, r["message"], False, r["result_json"] is None

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
    "in_worker",
    "layout",
    "parse_edit_strings",
    "plugin_options",
    "register",
    "report_html",
    "run_analysis",
    "target_text",
]
