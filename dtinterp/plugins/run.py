"""``run_analysis``: the one path from a request to a result, figures, a report and JSON with provenance.

The CLI (``dtinterp analyze``), the app's Analyses tab, the benchmarks and notebooks all run an analysis
through :func:`run_analysis`, so they check the same things in the same order:

1. the analysis exists and its parameters are valid (before any work);
2. the edits parse, a counterfactual analysis has at least one, and "analyse the edited windows" has some;
3. the context is built: clean windows, the edited windows, or clean vs edited (``needs_counterfactual``);
4. ``compute`` then ``figures``, each failure a one-line :class:`~dtinterp.plugins.api.PluginError`; a
   result computed from NaN or infinite logits or activations is refused the same way (never reported);
5. the :class:`AnalysisRun` carries the result, the figures and the **provenance**: the model (name, path,
   weights digest), the env and the episode (source, seed, target return), the steps or windows, the
   edits, the resolved parameters and the package version — enough to rerun it.

What the analysis reads (``target``): :data:`TARGET_CLEAN` the windows as given (with any edits as the
counterfactual, ``ctx.counterfactual``), :data:`TARGET_EDITED` the windows with the edits applied, read as
if they were clean. A counterfactual analysis (``needs_counterfactual``) always gets clean vs edited.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import plotly.graph_objects as go

import dtinterp
from dtinterp.data.dataset import TrajectoryDataset
from dtinterp.errors import DtinterpError
from dtinterp.interp.edits import Edit, apply_edits, parse_edit
from dtinterp.interp.interventions import parse_intervention
from dtinterp.model.checkpoint import Checkpoint
from dtinterp.model.inputs import DTInputs
from dtinterp.plugins.api import Analysis, AnalysisContext, AnalysisResult, PlayIntervention, PluginError
from dtinterp.plugins.registry import Registry, get_registry

TARGET_CLEAN, TARGET_EDITED = "clean", "edited"
TARGETS = (TARGET_CLEAN, TARGET_EDITED)
#: Stages a run reports through ``progress(i, text)``.
STAGES = ("checking parameters", "building the context", "computing", "drawing the figures")

#: ``contexts(inputs, edits) -> context manager yielding an AnalysisContext``: lets a caller (the app)
#: supply cached contexts and hold a lock while one is in use.
ContextFactory = Callable[[DTInputs | None, list[Edit]], contextlib.AbstractContextManager[AnalysisContext]]


@dataclass
class AnalysisRun:
    """One finished run: what it computed, what it drew, and exactly what it ran on."""

    analysis: Analysis
    result: AnalysisResult
    figures: list[go.Figure]
    provenance: dict[str, Any]
    """JSON: ``dtinterp_version``, ``analysis``, ``params``, ``model``, ``inputs``, ``edits``, ``target``."""
    inputs_info: dict[str, Any] = field(default_factory=dict)
    """The inputs described for people (report and page), one line per entry."""
    model_info: dict[str, Any] = field(default_factory=dict)

    @property
    def summary(self) -> str:
        return self.result.summary

    def to_json(self) -> dict[str, Any]:
        """The result (arrays as lists, NaN as null) with its provenance."""
        return {**self.result.to_json(), "provenance": self.provenance}

    def json_text(self) -> str:
        """:meth:`to_json` as text; a result that is not JSON-serialisable is a one-line PluginError."""
        try:
            return json.dumps(self.to_json(), allow_nan=False) + "\n"
        except (TypeError, ValueError) as exc:
            raise PluginError(
                f"plugin {self.analysis.id!r}: its result is not JSON-serialisable ({exc})"
            ) from None

    def report_html(self, figures: Sequence[Any] | None = None) -> str:
        """The standalone HTML report (``figures``: plotly Figures or dicts, default this run's figures)."""
        from dtinterp.plugins.report import render_report

        figs = (
            self.figures
            if figures is None
            else [f if isinstance(f, go.Figure) else go.Figure(f) for f in figures]
        )
        return render_report(
            plugin=self.analysis.describe(),
            params=self.result.params,
            model_info=self.model_info,
            inputs_info=self.inputs_info,
            summary=self.result.summary,
            figures=figs,
            provenance=self.provenance,
            interventions=[(i.label, i.text) for i in self.result.interventions],
        )


def parse_edits(edits: Sequence[Edit | str]) -> list[Edit]:
    """Edits given as objects or in the edit syntax (``R3=0.5``), as objects."""
    return [e if not isinstance(e, str) else parse_edit(e) for e in edits]


def run_analysis(
    checkpoint: Checkpoint,
    inputs: DTInputs | None,
    analysis: str | Analysis,
    params: Mapping[str, Any] | None = None,
    edits: Sequence[Edit | str] = (),
    *,
    target: str = TARGET_CLEAN,
    source: Mapping[str, Any] | None = None,
    registry: Registry | None = None,
    contexts: ContextFactory | None = None,
    progress: Callable[[int, str], None] | None = None,
    dataset: TrajectoryDataset | None = None,
) -> AnalysisRun:
    """Run ``analysis`` on ``inputs`` (windows of ``checkpoint``'s model; None for a static analysis).

    ``params`` are raw values (CLI text or Python values) validated by the plugin's declarations;
    ``edits`` edit objects or strings; ``target`` :data:`TARGET_CLEAN` or :data:`TARGET_EDITED`;
    ``source`` the provenance of the windows (the episode or dataset and the steps, see
    :meth:`dtinterp.data.episode.Episode.provenance`); ``dataset`` the dataset the windows were built from,
    cut to their episodes (:class:`~dtinterp.plugins.api.AnalysisContext`'s ``dataset``; a ``contexts``
    factory builds its own contexts). Bad input and failing plugins raise one-line
    :class:`~dtinterp.errors.DtinterpError` subclasses.
    """
    report = progress or (lambda _i, _text: None)
    registry = registry or get_registry()
    report(0, STAGES[0])
    plugin = analysis if isinstance(analysis, Analysis) else registry.get(analysis)
    resolved = plugin.resolve_params(params, checkpoint)  # a bad parameter fails before any work
    edit_list = parse_edits(edits)
    if target not in TARGETS:
        raise PluginError(f"target {target!r} must be one of {', '.join(TARGETS)}")
    if plugin.needs_edits(resolved) and not edit_list:
        raise PluginError(f"analysis {plugin.id!r} compares against a counterfactual: give at least one edit")
    if target == TARGET_EDITED and not edit_list and not plugin.needs_counterfactual:
        raise PluginError("the edited windows were asked for but no edits were given")
    if inputs is None and plugin.category != "static":
        raise PluginError(
            f"analysis {plugin.id!r} runs on windows: give a trajectory, a dataset or a rollout"
        )

    report(1, STAGES[1])
    if inputs is not None and tuple(inputs.obs.shape[2:4]) != tuple(checkpoint.config.obs_shape):
        raise PluginError(
            f"the windows hold {tuple(inputs.obs.shape[2:4])} observations but the model reads "
            f"{checkpoint.config.obs_shape}"
        )
    if inputs is None:
        ctx_inputs, ctx_edits, what = None, [], "weights only (no windows)"
    elif target == TARGET_EDITED and not plugin.needs_counterfactual:
        ctx_inputs, ctx_edits = apply_edits(inputs, edit_list, checkpoint.rtg_scale), []
        what = "the edited windows"
    elif edit_list:  # the clean windows, with the edited ones as the counterfactual
        ctx_inputs, ctx_edits, what = inputs, edit_list, "clean vs edited windows"
    else:
        ctx_inputs, ctx_edits, what = inputs, [], "the clean windows"
    source = dict(source or {})
    description = str(source.get("description", ""))

    report(
        2,
        f"{STAGES[2]} {plugin.title}"
        + ("" if ctx_inputs is None else f" on {ctx_inputs.batch_size} window(s)"),
    )
    factory = contexts
    if factory is None:
        factory = lambda i, e: contextlib.nullcontext(  # noqa: E731
            AnalysisContext(checkpoint, i, edits=e, description=description, dataset=dataset)
        )
    with factory(ctx_inputs, ctx_edits) as ctx:
        result = registry.run(plugin.id, ctx, params)
        ctx.check_finite()  # a result computed from NaN or inf activations is not reported
    check_interventions(plugin.id, result, checkpoint, ctx_inputs)

    report(3, STAGES[3])
    figures = registry.figures(plugin.id, result)
    if not isinstance(figures, list) or not all(isinstance(f, go.Figure) for f in figures):
        kinds = (
            sorted({type(f).__name__ for f in figures})
            if isinstance(figures, list)
            else [type(figures).__name__]
        )
        raise PluginError(
            f"plugin {plugin.id!r}: figures() must return a list of plotly Figures, got {kinds}"
        )

    edit_text = [str(e) for e in edit_list] if ctx_edits or target == TARGET_EDITED else []
    inputs_prov = {
        **{k: v for k, v in source.items() if k != "description"},
        "windows": 0 if ctx_inputs is None else ctx_inputs.batch_size,
        "context_len": checkpoint.context_len,
    }
    provenance = {
        "dtinterp_version": dtinterp.__version__,
        "analysis": {"id": plugin.id, "title": plugin.title, "category": plugin.category},
        "params": result.to_json()["params"],
        "model": checkpoint.provenance(),
        "inputs": inputs_prov,
        "target": what,
        "edits": edit_text,
    }
    inputs_info = {"runs on": what, **describe_source(source)}
    inputs_info["edits"] = ", ".join(edit_text) if edit_text else "none"
    return AnalysisRun(plugin, result, figures, provenance, inputs_info, checkpoint.describe())


def check_interventions(
    plugin_id: str, result: AnalysisResult, checkpoint: Checkpoint, inputs: DTInputs | None
) -> None:
    """One-line :class:`PluginError` unless every Play-tab intervention ``result`` suggests parses against
    ``checkpoint``'s model (a button never fills in a line the Play tab would refuse)."""
    for suggestion in result.interventions:
        if not isinstance(suggestion, PlayIntervention):
            raise PluginError(
                f"plugin {plugin_id!r}: suggested interventions must be PlayIntervention objects"
            )
        try:
            parse_intervention(suggestion.text, checkpoint, inputs)
        except DtinterpError as exc:
            raise PluginError(
                f"plugin {plugin_id!r} suggested an intervention that does not parse: {exc}"
            ) from None


def describe_source(source: Mapping[str, Any]) -> dict[str, Any]:
    """The windows' provenance as ``name -> text`` lines for a report or a page."""
    out: dict[str, Any] = {}
    if source.get("description"):
        out["source"] = source["description"]
    episode = source.get("episode")
    if isinstance(episode, Mapping):
        parts = [
            f"{episode.get('source')}",
            f"{episode.get('length')} steps",
            f"return {episode.get('return', 0):.4g}",
        ]
        if episode.get("seed") is not None:
            parts.append(f"env seed {episode['seed']}")
        if episode.get("target_return") is not None:
            parts.append(f"target return {episode['target_return']:g}")
        out["episode"] = ", ".join(str(p) for p in parts)
    if "dataset" in source:
        out["dataset"] = source["dataset"]
    if "episodes" in source:
        out["episodes"] = source["episodes"]
    if "steps" in source:
        steps = list(source["steps"])
        out["steps"] = ", ".join(str(s) for s in steps[:12]) + (
            f", … ({len(steps)} in all)" if len(steps) > 12 else ""
        )
    if "conditioning" in source:
        out["return-to-go"] = source["conditioning"]
    return out


__all__ = [
    "STAGES",
    "TARGETS",
    "TARGET_CLEAN",
    "TARGET_EDITED",
    "AnalysisRun",
    "check_interventions",
    "describe_source",
    "parse_edits",
    "run_analysis",
]
