"""The plugin API: what an analysis declares, what it is given, what it returns.

An analysis is a subclass of :class:`Analysis` with class attributes ``id``, ``title``, ``category``
(``static``: weights only; ``dynamic``: forward passes on trajectories; ``causal``: interventions),
``description`` and ``parameters`` (typed :class:`Param` declarations, enough for a UI to build controls
and for the CLI to parse ``--param key=value``; a choice among the model's actions lists
:data:`MODEL_ACTIONS`, resolved against the checkpoint). It implements two steps:

- ``compute(ctx, params) -> AnalysisResult``: numbers only (tensors, arrays, dataframes, plain values);
  never imports dash or plotly.
- ``figures(result) -> list[plotly Figure]``: presentation only, from the result alone.

The :class:`AnalysisContext` holds the checkpoint (the model and what is known about it), the inputs (one
trajectory window or a batch), an optional edited counterfactual of them, and the ``ActivationCache`` of
each, computed once on first use and shared by every analysis run on that context. How a request becomes a
result, figures, a report and JSON with provenance is :func:`dtinterp.plugins.run.run_analysis`.
"""

from __future__ import annotations

import abc
import math
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import torch
from transformer_lens import ActivationCache

from dtinterp.errors import CheckpointError, DtinterpError
from dtinterp.interp.edits import Edit, apply_edits
from dtinterp.model.checkpoint import Checkpoint
from dtinterp.model.hooked_dt import HookedDecisionTransformer
from dtinterp.model.inputs import DTInputs, token_labels
from envs.encoding import ACTION_NAMES

if TYPE_CHECKING:
    from dtinterp.data.dataset import TrajectoryDataset

Category = Literal["static", "dynamic", "causal"]
CATEGORIES: tuple[str, ...] = ("static", "dynamic", "causal")
PARAM_TYPES = ("int", "float", "bool", "choice", "str")
_ID_RE = re.compile(r"^[a-z][a-z0-9_\-]*$")

#: A ``choice`` parameter's ``choices`` may hold this placeholder: it stands for the actions of the model
#: the analysis runs on (``Checkpoint.action_names``: a Dynamic-Obstacles model has only left, right,
#: forward), expanded when the parameters are resolved against a checkpoint, and for every MiniGrid
#: action without one. ``choices=("predicted", MODEL_ACTIONS)``. Its text is what ``--list`` shows.
MODEL_ACTIONS = "<the model's actions>"


class PluginError(DtinterpError):
    """A plugin id, declaration or parameter is invalid, or a plugin failed while running."""


class ParameterError(PluginError):
    """A parameter value is missing its declaration, of the wrong type or out of bounds."""


@dataclass(frozen=True)
class Param:
    """A typed analysis parameter: default, bounds or choices, help text."""

    name: str
    type: str
    default: Any
    help: str = ""
    min: float | None = None
    max: float | None = None
    choices: tuple[Any, ...] | None = None

    def check_declaration(self) -> None:
        """Raise ``ValueError`` if the declaration itself is inconsistent."""
        if not re.match(r"^[a-z][a-z0-9_]*$", self.name):
            raise ValueError(f"parameter name {self.name!r} must be a lowercase identifier")
        if self.type not in PARAM_TYPES:
            raise ValueError(f"parameter {self.name!r}: type {self.type!r} not in {PARAM_TYPES}")
        if self.type == "choice" and not self.choices:
            raise ValueError(f"parameter {self.name!r}: a choice parameter needs choices")
        if self.choices is not None and MODEL_ACTIONS in self.choices and self.type != "choice":
            raise ValueError(
                f"parameter {self.name!r}: MODEL_ACTIONS belongs in a choice parameter's choices"
            )
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"parameter {self.name!r}: min > max")
        self.coerce(self.default, where="default of")

    @property
    def model_dependent(self) -> bool:
        """True if the choices include :data:`MODEL_ACTIONS` (they depend on the model)."""
        return self.choices is not None and MODEL_ACTIONS in self.choices

    def resolved_choices(self, action_names: Sequence[str] | None = None) -> tuple[Any, ...]:
        """The choices with :data:`MODEL_ACTIONS` expanded to ``action_names`` (default: every MiniGrid action)."""
        names = tuple(ACTION_NAMES if action_names is None else action_names)
        out: list[Any] = []
        for c in self.choices or ():
            for v in names if c == MODEL_ACTIONS else (c,):
                if v not in out:
                    out.append(v)
        return tuple(out)

    def coerce(self, value: Any, where: str = "", action_names: Sequence[str] | None = None) -> Any:
        """``value`` (a Python value or the text of ``--param name=text``) as this parameter's type.

        ``action_names`` (the model's actions) is what :data:`MODEL_ACTIONS` stands for among the choices.
        """
        label = f"{where} parameter {self.name!r}".strip()
        try:
            if self.type == "bool":
                if isinstance(value, str):
                    low = value.strip().lower()
                    if low not in ("true", "false", "1", "0", "yes", "no"):
                        raise ValueError
                    value = low in ("true", "1", "yes")
                elif not isinstance(value, (bool, np.bool_)):
                    raise ValueError
                return bool(value)
            if self.type == "int":
                if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                    raise ValueError
                value = int(value)
            elif self.type == "float":
                if isinstance(value, bool):
                    raise ValueError
                value = float(value)
                if not math.isfinite(value):
                    raise ValueError
            elif self.type == "str":
                value = str(value)
            elif self.type == "choice":
                choices = self.resolved_choices(action_names)
                options = {str(c): c for c in choices}
                if not _among(value, choices) and str(value) not in options:
                    model = " for this model" if self.model_dependent and action_names is not None else ""
                    raise ParameterError(f"{label}: {value!r} is not one of {list(choices)}{model}")
                return options.get(str(value), value)
        except (TypeError, ValueError, OverflowError):
            raise ParameterError(f"{label}: expected {self.type}, got {value!r}") from None
        if self.min is not None and value < self.min:
            raise ParameterError(f"{label}: {value} is below the minimum {self.min}")
        if self.max is not None and value > self.max:
            raise ParameterError(f"{label}: {value} is above the maximum {self.max}")
        return value

    def describe_type(self, action_names: Sequence[str] | None = None) -> str:
        """The type with its bounds or choices, e.g. ``int in [2, 512]`` or ``choice: a | b``.

        The one description of a parameter's type, shared by ``--list``, the app's controls and reports.
        :data:`MODEL_ACTIONS` reads ``<the model's actions>``, or the actions themselves given
        ``action_names``.
        """
        return describe_param_type(self.to_dict(), action_names)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def _among(value: Any, choices: Sequence[Any]) -> bool:
    """``value in choices`` for any value (one that cannot be compared is not among them)."""
    try:
        return value in choices
    except (TypeError, ValueError):
        return False


def describe_param_type(p: Mapping[str, Any], action_names: Sequence[str] | None = None) -> str:
    """:meth:`Param.describe_type` of a declaration's dict form (:meth:`Param.to_dict`, as reports hold it)."""

    def num(x: Any) -> str:
        return str(int(x)) if isinstance(x, (int, float)) and float(x).is_integer() else f"{x:g}"

    if p.get("choices") is not None:
        shown = [
            name
            for c in p["choices"]
            for name in (action_names if c == MODEL_ACTIONS and action_names is not None else (c,))
        ]
        return f"{p['type']}: {' | '.join(str(c) for c in shown)}"
    lo, hi = p.get("min"), p.get("max")
    if lo is not None and hi is not None:
        return f"{p['type']} in [{num(lo)}, {num(hi)}]"
    if lo is not None:
        return f"{p['type']} >= {num(lo)}"
    if hi is not None:
        return f"{p['type']} <= {num(hi)}"
    return str(p["type"])


@dataclass(frozen=True)
class PlayIntervention:
    """An intervention a result suggests trying while the model plays: a button label and one line of the
    Play tab's syntax (:mod:`dtinterp.interp.interventions`), e.g. ``steer: saved:cue @ blocks.0.hook_resid_mid x 4``.

    :func:`~dtinterp.plugins.run.run_analysis` checks that each line parses against the model; reports list
    them and the app's Analyses tab shows one button each, which fills in the Play tab's intervention.
    """

    label: str
    text: str


@dataclass
class AnalysisResult:
    """What ``compute`` returns: named arrays/tables/numbers plus the parameters that made them."""

    plugin_id: str
    params: dict[str, Any]
    data: dict[str, Any]
    summary: str = ""
    interventions: list[PlayIntervention] = field(default_factory=list)
    """Interventions worth trying in the Play tab (e.g. ablating or steering with a feature found)."""

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict: tensors and arrays become nested lists, dataframes lists of records; the
        suggested interventions under ``interventions`` when there are any."""
        out = {
            "plugin_id": self.plugin_id,
            "params": _jsonable(self.params),
            "summary": self.summary,
            "data": _jsonable(self.data),
        }
        if self.interventions:
            out["interventions"] = [{"label": i.label, "text": i.text} for i in self.interventions]
        return out


def _jsonable(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        if x.dtype.kind == "f":
            return np.where(np.isfinite(x), x, None).tolist() if not np.isfinite(x).all() else x.tolist()
        return x.tolist()
    if isinstance(x, (np.generic,)):
        return x.item()
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if hasattr(x, "to_dict") and hasattr(x, "columns"):  # a pandas DataFrame
        return _jsonable(x.to_dict(orient="records"))
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


class AnalysisContext:
    """Checkpoint + inputs (+ an optional edited counterfactual), with caches computed once and shared.

    The first argument is a :class:`~dtinterp.model.checkpoint.Checkpoint`, or a bare model with its
    checkpoint metadata ``meta`` (``AnalysisContext(model, inputs, meta)``, as in notebooks). ``inputs``
    is a batch of context windows (batch 1 for a single trajectory step), or None for a static analysis
    (weights only). ``edits`` are applied to a copy to form ``counterfactual``. Forward passes run lazily
    under ``torch.inference_mode`` and are memoised; hooks live only for one ``run_with_cache`` call.

    ``dataset`` is the dataset the windows were built from, cut to the episodes they cover (``--data F
    --episodes N``: its first N episodes), for an analysis that needs what windows do not hold: the env's
    ground-truth facts at every step (:mod:`envs.facts`), or more windows than one cache should. It is None
    when the windows come from one episode (a trajectory, a rollout, the app's Play tab).
    """

    def __init__(
        self,
        model: Checkpoint | HookedDecisionTransformer,
        inputs: DTInputs | None,
        meta: Mapping[str, Any] | None = None,
        edits: Sequence[Edit] = (),
        description: str = "",
        dataset: TrajectoryDataset | None = None,
    ):
        if isinstance(model, Checkpoint):
            self.checkpoint = model
        else:
            try:
                self.checkpoint = Checkpoint.from_model(model, dict(meta or {}), require_env=False)
            except CheckpointError as exc:
                raise PluginError(str(exc)) from None
        self.model = self.checkpoint.model
        self.inputs = None if inputs is None else inputs.to(self.model.W_U.device)
        self.meta = self.checkpoint.meta
        self.edits = list(edits)
        self.description = description
        self.dataset = dataset
        if self.edits and self.inputs is None:
            raise PluginError("edits need inputs to apply to")
        self.counterfactual = apply_edits(self.inputs, self.edits, self.rtg_scale) if self.edits else None
        self._lock = threading.RLock()
        self._runs: dict[str, tuple[torch.Tensor, ActivationCache]] = {}

    @property
    def rtg_scale(self) -> float:
        return self.checkpoint.rtg_scale

    @property
    def action_names(self) -> tuple[str, ...]:
        """The model's actions in id order (a 3-action model has no ``toggle``)."""
        return self.checkpoint.action_names

    @property
    def token_labels(self) -> list[str]:
        K = self.inputs.context_len if self.inputs is not None else self.model.cfg.context_len
        return token_labels(K)

    def _run(self, which: str) -> tuple[torch.Tensor, ActivationCache]:
        with self._lock:
            if which not in self._runs:
                if self.inputs is None:
                    raise PluginError("this analysis needs inputs: give a trajectory, a dataset or a rollout")
                inputs = self.inputs if which == "clean" else self.counterfactual
                if inputs is None:
                    raise PluginError("this analysis needs a counterfactual: give at least one edit")
                with torch.inference_mode():
                    logits, raw = self.model.run_with_cache(inputs)
                self._runs[which] = (logits, ActivationCache(raw, self.model))
            return self._runs[which]

    @property
    def logits(self) -> torch.Tensor:
        """Action logits ``[B, K, n_actions]`` of the clean inputs."""
        return self._run("clean")[0]

    @property
    def cache(self) -> ActivationCache:
        """Activation cache of the clean inputs."""
        return self._run("clean")[1]

    @property
    def cf_logits(self) -> torch.Tensor:
        return self._run("counterfactual")[0]

    @property
    def cf_cache(self) -> ActivationCache:
        return self._run("counterfactual")[1]

    def check_finite(self) -> None:
        """Raise a one-line :class:`PluginError` if a forward pass run on this context overflowed.

        Its logits and every cached activation must be finite (attention scores excepted: they hold -inf
        at masked keys by design); whatever an analysis computed from NaN or inf is not a number to
        report. :func:`~dtinterp.plugins.run.run_analysis` calls this after ``compute``.
        """
        with self._lock:
            for which, (logits, cache) in self._runs.items():
                named = [("logits", logits)] + [
                    (k, v) for k, v in cache.cache_dict.items() if not k.endswith("hook_attn_scores")
                ]
                for name, t in named:
                    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                        raise PluginError(
                            f"the model's {name} on the {which} windows hold NaN or infinite values (an input "
                            "or a weight beyond what float32 represents): no result is reported"
                        )

    def describe(self) -> dict[str, Any]:
        """Plain description of the model and inputs, for reports."""
        cfg = self.model.cfg
        spec = self.checkpoint.env_spec
        return {
            "description": self.description,
            "env": None if spec is None else spec.env_id,
            "model": {k: getattr(cfg, k) for k in ("n_layers", "n_heads", "d_model", "d_mlp", "context_len")},
            "batch": 0 if self.inputs is None else self.inputs.batch_size,
            "context_len": cfg.context_len if self.inputs is None else self.inputs.context_len,
            "edits": [str(e) for e in self.edits],
        }


class Analysis(abc.ABC):
    """Base class of every analysis plugin (see the module docstring)."""

    id: ClassVar[str]
    title: ClassVar[str]
    category: ClassVar[str]
    description: ClassVar[str] = ""
    parameters: ClassVar[tuple[Param, ...]] = ()
    needs_counterfactual: ClassVar[bool] = False
    """True if ``compute`` reads ``ctx.counterfactual`` (the app then asks for an edit)."""

    min_windows: ClassVar[int] = 1
    """The fewest windows ``compute`` can work with (causal scrubbing draws other windows: 2); the app then
    starts it on every step of the episode."""

    def needs_edits(self, params: Mapping[str, Any]) -> bool:
        """True if a run with the resolved ``params`` cannot go without edits (the CLI and ``run_analysis``
        refuse it then). By default ``needs_counterfactual``; a plugin that can build its own counterfactual
        (e.g. the causal plugins with ``pair=env``) says when it does not need them."""
        return self.needs_counterfactual

    @abc.abstractmethod
    def compute(self, ctx: AnalysisContext, params: dict[str, Any]) -> AnalysisResult:
        """The numbers of the analysis on ``ctx`` with resolved ``params``."""

    @abc.abstractmethod
    def figures(self, result: AnalysisResult) -> list[Any]:
        """Plotly figures of ``result``."""

    @classmethod
    def check_declaration(cls) -> None:
        """Raise ``ValueError`` if the class declares an invalid id, category or parameters."""
        for attr in ("id", "title", "category"):
            if not isinstance(getattr(cls, attr, None), str):
                raise ValueError(f"{cls.__name__} must declare a string {attr!r}")
        if not _ID_RE.match(cls.id):
            raise ValueError(f"plugin id {cls.id!r} must be a lowercase slug")
        if cls.category not in CATEGORIES:
            raise ValueError(f"plugin {cls.id!r}: category {cls.category!r} not in {CATEGORIES}")
        if not all(isinstance(p, Param) for p in cls.parameters):
            raise ValueError(f"plugin {cls.id!r}: parameters must be Param instances")
        names = [p.name for p in cls.parameters]
        if len(set(names)) != len(names):
            raise ValueError(f"plugin {cls.id!r}: duplicate parameter names")
        for p in cls.parameters:
            p.check_declaration()

    def resolve_params(
        self, raw: Mapping[str, Any] | None = None, checkpoint: Checkpoint | None = None
    ) -> dict[str, Any]:
        """Defaults overlaid with ``raw`` (Python values or CLI text), each validated.

        With ``checkpoint``, choices that depend on the model (:data:`MODEL_ACTIONS`) are its actions;
        without one, every MiniGrid action is accepted.
        """
        raw = dict(raw or {})
        declared = {p.name: p for p in self.parameters}
        unknown = sorted(set(raw) - set(declared), key=str)
        if unknown:
            raise ParameterError(
                f"plugin {self.id!r} has no parameter {unknown[0]!r} (parameters: {', '.join(declared) or 'none'})"
            )
        names = None if checkpoint is None else checkpoint.action_names
        where = f"plugin {self.id!r}"
        resolved = {}
        for n, p in declared.items():
            if n in raw:
                resolved[n] = p.coerce(raw[n], where, names)
            elif p.model_dependent and names is not None:  # a default this model may not have
                resolved[n] = p.coerce(p.default, f"{where} default of", names)
            else:
                resolved[n] = p.default
        return resolved

    def run(self, ctx: AnalysisContext, params: Mapping[str, Any] | None = None) -> AnalysisResult:
        """Resolve parameters and compute."""
        return self.compute(ctx, self.resolve_params(params, ctx.checkpoint))

    @classmethod
    def describe(cls) -> dict[str, Any]:
        return {
            "id": cls.id,
            "title": cls.title,
            "category": cls.category,
            "description": cls.description,
            "needs_counterfactual": cls.needs_counterfactual,
            "min_windows": cls.min_windows,
            "parameters": [p.to_dict() for p in cls.parameters],
        }


@dataclass
class PluginFailure:
    """A plugin that could not be loaded, declared invalid parameters, or raised while computing."""

    name: str
    stage: str
    error: str

    def __str__(self) -> str:
        return f"plugin {self.name!r} failed at {self.stage}: {self.error}"
