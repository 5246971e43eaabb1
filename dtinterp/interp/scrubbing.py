"""Hypothesis tests by causal scrubbing (Chan et al. 2022), at the level of the graph's nodes.

A *hypothesis* names the components that matter and, for each, what it reads: a feature of the window
(the Memory cue, the return-to-go bucket, the previous action, or the whole window). It is a JSON file, so
it can be shared and rerun::

    {"name": "cue through L0H2",
     "description": "the cue reaches the decision through head 0.2 and MLP 1",
     "metric": {"kind": "loss"},
     "nodes": [{"component": "blocks.0.attn.hook_z:h2", "reads": "cue_object"},
               {"component": "blocks.1.hook_mlp_out", "reads": "window"},
               {"component": "hook_state_embed", "reads": "obs"}],
     "treat_rest": "resample"}

**What is scrubbed.** Every node of the graph (:mod:`dtinterp.interp.graph`: the four input embeddings by
token kind, every head, every MLP) has its output (its write into the residual stream, at every token)
replaced, for each window ``b`` of a dataset:

- a node the hypothesis lists, reading feature ``f``: by its output on another window ``b'`` with
  ``f(b') == f(b)``, drawn uniformly (``b`` itself only when no other window agrees; ``window`` agrees with
  ``b`` alone, so such a node keeps its own output);
- every other node: by its output on a uniformly drawn other window (``treat_rest: "resample"``) or by its
  per-position mean over the dataset (``"mean"``).

Each replacement is the node's output when the *whole* model runs on the chosen window, and every node is
replaced, so nothing between nodes is recomputed: the logits are read off the sum of the replaced outputs
(plus the attention output biases), exactly what running the model with every node's output patched gives
(tested). This tests two claims at once: the output depends on the input only through the listed nodes'
outputs (the others can be resampled), and each listed node's output depends on the input only through its
feature. It does not scrub *inside* the hypothesis: a listed node's output comes from one agreeing window
through every path into it, so the hypothesis says nothing about which of its inputs carry the feature (list
the upstream nodes too, with their own features, to claim that). A node that matters only through
another node must be listed with it.

**What is reported.** The metric (the hypothesis' ``metric``: the loss on the recorded action, a
log-probability, a logit difference or the KL divergence from the clean run, at one state token) on the
clean, scrubbed and fully resampled (every node from a random window) runs, averaged over windows and over
``n_draws`` independent scrubbings, and the share recovered
``(metric_scrubbed - metric_random) / (metric_clean - metric_random)`` (1: the hypothesis explains the
behaviour; 0: no better than random inputs; the same for the loss or its negative) with a seeded
percentile bootstrap CI over windows, beside the *random-circuit baseline*: the same number of nodes drawn at
random (seeded, several draws), each reading the hypothesis' features in order.

**Features** (``reads``): ``window`` (the whole window), ``prev_action`` (action at t-1), ``obs`` (the
current observation and direction), ``timestep``, ``rtg`` (the current return-to-go), ``rtg_bucket:N`` (it
in ``N`` equal-width buckets over the dataset's range), any ground-truth fact the dataset records at the
window's last step (``cue_object``, ``correct_side``, ...; :mod:`envs.facts`), and any function registered
with :func:`register_feature`.

**Invariants** (tested): a hypothesis listing every node as reading ``window`` recovers exactly 1; on a model
whose logits read one head only, listing that head recovers 1 and listing any other recovers about 0; a
feature that identifies windows up to duplicates is matched to the duplicate (recovered 1).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from dtinterp.data.dataset import TrajectoryDataset
from dtinterp.data.episode import dataset_targets, dataset_windows
from dtinterp.data.windows import make_batch
from dtinterp.errors import DtinterpError
from dtinterp.interp.graph import ComputeGraph, GraphError, sender_values
from dtinterp.interp.metrics import KLDivergence, LogitDiff, LogProb, Metric
from dtinterp.model.checkpoint import Checkpoint
from dtinterp.model.hooked_dt import HookedDecisionTransformer
from dtinterp.model.inputs import DTInputs
from envs.encoding import ACTION_NAMES

TREAT_REST = ("resample", "mean")
METRIC_KINDS = ("loss", "logprob", "logit_diff", "kl")
_METRIC_KEYS = {
    "loss": {"k"},
    "logprob": {"k", "action"},
    "logit_diff": {"k", "good", "bad"},
    "kl": {"k"},
}
_HYPOTHESIS_KEYS = {"name", "description", "metric", "nodes", "treat_rest"}
FORMAT_NOTE = "see dtinterp/interp/scrubbing.py for the hypothesis format"


class HypothesisError(DtinterpError):
    """A hypothesis that is malformed or does not fit the model or the windows."""


# ----------------------------------------------------------------------------- windows and features


@dataclass
class WindowSet:
    """Windows with what is known about each: the inputs, and the dataset's facts at their last step."""

    inputs: DTInputs
    facts: dict[str, np.ndarray] = field(default_factory=dict)
    """Fact name -> value per window (``[W]``), e.g. ``cue_object``."""
    ends: list[tuple[int, int]] | None = None
    """``(episode, step)`` each window ends at, when cut from a dataset."""

    def __post_init__(self) -> None:
        W = self.inputs.batch_size
        for name, values in self.facts.items():
            if np.shape(values) != (W,):
                raise HypothesisError(
                    f"fact {name!r} has shape {np.shape(values)}, expected one value per window ({W},)"
                )

    @property
    def n_windows(self) -> int:
        return self.inputs.batch_size

    @classmethod
    def from_dataset(
        cls,
        ds: TrajectoryDataset,
        checkpoint: Checkpoint,
        episodes: Sequence[int] | None = None,
        max_windows: int = 1024,
        ends: Sequence[tuple[int, int]] | None = None,
    ) -> WindowSet:
        """Windows of ``ds`` (ending at ``ends``, else at the steps of ``episodes`` thinned to
        ``max_windows``; :func:`~dtinterp.data.episode.dataset_windows`) with the facts at their ends."""
        if ends is None:
            episodes = range(ds.n_episodes) if episodes is None else episodes
            inputs, ends = dataset_windows(ds, episodes, checkpoint, max_windows)
        else:
            checkpoint.check_fits(ds.env_spec, tuple(ds.obs.shape[1:3]), where="dataset")
            cfg = checkpoint.config
            try:
                inputs = make_batch(
                    ds, ends, cfg.context_len, checkpoint.rtg_scale, cfg.n_actions, cfg.max_timestep,
                    dataset_targets(ds),
                )  # fmt: skip
            except IndexError as exc:
                raise HypothesisError(f"dataset windows: {exc}") from None
        rows = np.array([int(ds.episode_starts[e]) + int(t) for e, t in ends], dtype=np.int64)
        facts = {name: np.asarray(values)[rows] for name, values in ds.facts.items()}
        return cls(inputs, facts, [(int(e), int(t)) for e, t in ends])

    def select(self, index: Sequence[int] | np.ndarray) -> WindowSet:
        """The windows ``index`` (in that order), with their facts."""
        idx = np.asarray(index, dtype=np.int64)
        return WindowSet(
            self.inputs[torch.as_tensor(idx)],
            {k: v[idx] for k, v in self.facts.items()},
            None if self.ends is None else [self.ends[i] for i in idx],
        )


Feature = Callable[[WindowSet], np.ndarray]
_FEATURES: dict[str, tuple[Feature, str]] = {}


def register_feature(name: str, fn: Feature, description: str = "") -> None:
    """Make ``reads: name`` available: ``fn(windows)`` returns one hashable value per window; two windows
    agree on the feature where their values are equal."""
    if not name or ":" in name or name in _FEATURES:
        raise HypothesisError(f"cannot register feature {name!r}: empty, contains ':' or already registered")
    _FEATURES[name] = (fn, description)


def _rows(x: np.ndarray) -> np.ndarray:
    """One integer code per row of ``x`` (equal rows, equal codes)."""
    return np.unique(x.reshape(len(x), -1), axis=0, return_inverse=True)[1].reshape(-1)


register_feature("window", lambda ws: np.arange(ws.n_windows), "the whole window (agrees only with itself)")
register_feature("prev_action", lambda ws: ws.inputs.actions[:, -2].cpu().numpy(), "the action taken at t-1")
register_feature(
    "obs",
    lambda ws: _rows(
        torch.cat(
            [ws.inputs.obs[:, -1].reshape(ws.n_windows, -1).long(), ws.inputs.directions[:, -1:].long()], 1
        )
        .cpu()
        .numpy()
    ),
    "the current observation and agent direction",
)
register_feature(
    "timestep", lambda ws: ws.inputs.timesteps[:, -1].cpu().numpy(), "the current episode timestep"
)
register_feature("rtg", lambda ws: ws.inputs.rtg[:, -1].cpu().numpy(), "the current return-to-go")


def features() -> dict[str, str]:
    """Names and descriptions of the registered features (plus ``rtg_bucket:N`` and dataset facts)."""
    return {name: desc for name, (_, desc) in _FEATURES.items()} | {
        "rtg_bucket:N": "the current return-to-go in N equal-width buckets over the windows' range"
    }


def feature_values(windows: WindowSet, name: str) -> np.ndarray:
    """``[W]`` codes of feature ``name`` (registered, ``rtg_bucket:N`` or a fact of the windows)."""
    name = str(name).strip()
    if name in _FEATURES:
        values = np.asarray(_FEATURES[name][0](windows))
    elif name.startswith("rtg_bucket:"):
        n = name.split(":", 1)[1]
        if not n.isdigit() or int(n) < 1:
            raise HypothesisError(f"feature {name!r}: the bucket count must be a positive integer")
        rtg = windows.inputs.rtg[:, -1].double().cpu().numpy()
        lo, hi = float(rtg.min()), float(rtg.max())
        width = (hi - lo) / int(n) if hi > lo else 1.0
        values = np.minimum(((rtg - lo) / width).astype(np.int64), int(n) - 1)
    elif name in windows.facts:
        values = np.asarray(windows.facts[name])
    else:
        known = sorted(_FEATURES) + ["rtg_bucket:N"] + sorted(windows.facts)
        raise HypothesisError(f"unknown feature {name!r}: expected one of {', '.join(known)}")
    if values.shape != (windows.n_windows,):
        raise HypothesisError(f"feature {name!r} gave shape {values.shape}, expected ({windows.n_windows},)")
    return _rows(values)


def agreeing_partners(
    codes: Int[np.ndarray, "W"], rng: np.random.Generator, n_draws: int = 1
) -> tuple[Int[np.ndarray, "D W"], Int[np.ndarray, "W"]]:
    """For each window, ``n_draws`` uniformly drawn *other* windows with the same code (itself where it has
    none), and a mask of the windows that had none."""
    codes = np.asarray(codes)
    W = len(codes)
    order = np.argsort(codes, kind="stable")
    sorted_codes = codes[order]
    start = np.searchsorted(sorted_codes, codes, side="left")
    size = np.searchsorted(sorted_codes, codes, side="right") - start
    where = np.empty(W, dtype=np.int64)
    where[order] = np.arange(W)
    pos = where - start  # each window's place in its group
    alone = size == 1
    r = (rng.random((n_draws, W)) * np.maximum(size - 1, 1)).astype(np.int64)
    r = r + (r >= pos)  # skip the window itself
    out = order[np.minimum(start + r, W - 1)]
    out[:, alone] = np.arange(W)[alone]
    return out, alone


def random_partners(W: int, rng: np.random.Generator, n_draws: int = 1) -> Int[np.ndarray, "D W"]:
    """For each window, ``n_draws`` uniformly drawn other windows."""
    if W < 2:
        raise HypothesisError("scrubbing needs at least 2 windows")
    r = (rng.random((n_draws, W)) * (W - 1)).astype(np.int64)
    return r + (r >= np.arange(W))


# ----------------------------------------------------------------------------- hypotheses


@dataclass
class HypothesisNode:
    component: str
    """A graph node: ``hook_state_embed``, ``blocks.0.attn.hook_z:h2`` (or ``L0H2``), ``blocks.1.hook_mlp_out``;
    a whole attention layer (``blocks.0.hook_attn_out``) stands for each of its heads."""
    reads: str
    """The feature it reads (see the module docstring)."""


@dataclass
class Hypothesis:
    """Which nodes matter and what each reads; everything else is claimed irrelevant."""

    name: str
    nodes: list[HypothesisNode]
    metric: dict[str, Any] = field(default_factory=lambda: {"kind": "loss"})
    """``{"kind": "loss" | "logprob" | "logit_diff" | "kl", "k": -1, ...}`` (see :func:`build_metric`)."""
    treat_rest: str = "resample"
    """What the unlisted nodes get: ``resample`` (a random window's output) or ``mean``."""
    description: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "metric": dict(self.metric),
            "nodes": [{"component": n.component, "reads": n.reads} for n in self.nodes],
            "treat_rest": self.treat_rest,
        }

    @classmethod
    def from_json(cls, data: Any, where: str = "hypothesis") -> Hypothesis:
        """Parse and check the structure; any problem is one :class:`HypothesisError` line naming the key."""

        def fail(msg: str) -> None:
            raise HypothesisError(f"{where}: {msg} ({FORMAT_NOTE})")

        if not isinstance(data, dict):
            fail("expected a JSON object")
        unknown = sorted(set(data) - _HYPOTHESIS_KEYS, key=str)
        if unknown:
            fail(f"unknown key {unknown[0]!r}; keys are {', '.join(sorted(_HYPOTHESIS_KEYS))}")
        name = data.get("name")
        if not isinstance(name, str) or not name.strip():
            fail("'name' must be a non-empty string")
        description = data.get("description", "")
        if not isinstance(description, str):
            fail("'description' must be a string")
        nodes = data.get("nodes")
        if not isinstance(nodes, list) or not nodes:
            fail('\'nodes\' must be a non-empty list of {"component", "reads"} objects')
        parsed = []
        for i, node in enumerate(nodes):
            if not isinstance(node, dict) or set(node) != {"component", "reads"}:
                fail(f"nodes[{i}] must be an object with exactly the keys 'component' and 'reads'")
            for key in ("component", "reads"):
                if not isinstance(node[key], str) or not node[key].strip():
                    fail(f"nodes[{i}].{key} must be a non-empty string")
            parsed.append(HypothesisNode(node["component"].strip(), node["reads"].strip()))
        treat_rest = data.get("treat_rest", "resample")
        if treat_rest not in TREAT_REST:
            fail(f"'treat_rest' must be one of {TREAT_REST}, got {treat_rest!r}")
        metric = data.get("metric", {"kind": "loss"})
        if not isinstance(metric, dict) or metric.get("kind") not in METRIC_KINDS:
            fail(f"'metric' must be an object whose 'kind' is one of {', '.join(METRIC_KINDS)}")
        extra = sorted(set(metric) - {"kind"} - _METRIC_KEYS[metric["kind"]], key=str)
        if extra:
            fail(f"metric {metric['kind']!r} takes no key {extra[0]!r}")
        k = metric.get("k", -1)
        if isinstance(k, bool) or not isinstance(k, int):
            fail(f"metric 'k' must be an integer (the state token read; -1 the last), got {k!r}")
        for key in ("action", "good", "bad"):
            if key in metric and not isinstance(metric[key], str):
                fail(f"metric '{key}' must be an action name, 'recorded', 'clean_top' or 'clean_runner_up'")
        return cls(name.strip(), parsed, dict(metric), treat_rest, description)

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")
        return path


def load_hypothesis(path: str | os.PathLike) -> Hypothesis:
    """Read a hypothesis JSON file (one-line :class:`HypothesisError` for a missing or malformed one)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HypothesisError(f"hypothesis file {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise HypothesisError(f"hypothesis file {str(path)!r} is not valid JSON ({text})") from None
    return Hypothesis.from_json(data, where=f"hypothesis file {str(path)!r}")


def _action(spec: str, model: HookedDecisionTransformer, inputs: DTInputs, clean: Tensor, k: int) -> Tensor:
    """Per-window action ids named by ``spec``: an action name, ``recorded``, ``clean_top``, ``clean_runner_up``."""
    B = inputs.batch_size
    if spec == "recorded":
        a = inputs.actions[:, k].long()
        if bool((a >= model.cfg.n_actions).any()):
            raise HypothesisError(
                f"metric reads the recorded action at state token {k}, but some windows have none"
            )
        return a
    if spec in ("clean_top", "clean_runner_up"):
        top2 = clean[:, k].topk(2, dim=-1).indices
        return top2[:, 0 if spec == "clean_top" else 1]
    names = ACTION_NAMES[: model.cfg.n_actions]
    if spec not in names:
        raise HypothesisError(
            f"unknown action {spec!r} in the metric: expected one of {', '.join(names)}, 'recorded', "
            "'clean_top' or 'clean_runner_up'"
        )
    return torch.full((B,), names.index(spec), dtype=torch.long)


@dataclass(frozen=True, eq=False)
class _Loss:
    """Cross-entropy of the recorded action (the training loss): ``-log p(action)``."""

    logprob: LogProb

    def __call__(self, logits: Tensor) -> Tensor:
        return -self.logprob(logits)


def build_metric(
    spec: dict[str, Any],
    model: HookedDecisionTransformer,
    inputs: DTInputs,
    clean_logits: Float[Tensor, "B K A"],
) -> Metric:
    """The metric a hypothesis names, for these windows (``clean_logits``: the unscrubbed run's)."""
    kind, k = spec.get("kind", "loss"), int(spec.get("k", -1))
    K = inputs.context_len
    if not -K <= k < K:
        raise HypothesisError(f"metric reads state token {k}, but the windows have {K} timesteps")
    clean = clean_logits.detach()
    if kind == "loss":
        return _Loss(LogProb(_action("recorded", model, inputs, clean, k), k))
    if kind == "logprob":
        return LogProb(_action(spec.get("action", "recorded"), model, inputs, clean, k), k)
    if kind == "logit_diff":
        good = _action(spec.get("good", "clean_top"), model, inputs, clean, k)
        bad = _action(spec.get("bad", "clean_runner_up"), model, inputs, clean, k)
        return LogitDiff(good, bad, k)
    if kind == "kl":
        return KLDivergence(clean, k)
    raise HypothesisError(f"unknown metric kind {kind!r}; expected one of {', '.join(METRIC_KINDS)}")


def _describe(spec: dict[str, Any]) -> str:
    extra = ", ".join(f"{k}={v}" for k, v in spec.items() if k != "kind")
    return f"{spec.get('kind', 'loss')}({extra})" if extra else str(spec.get("kind", "loss"))


# ----------------------------------------------------------------------------- scrubbing


def scrubbed_logits(
    model: HookedDecisionTransformer,
    outputs: Float[Tensor, "W K U d"],
    sources: Int[Tensor, "U W"],
    means: Float[Tensor, "K U d"] | None = None,
) -> Float[Tensor, "W K A"]:
    """Logits at the state tokens when every node ``u`` of window ``b`` outputs what it outputs on window
    ``sources[u, b]`` (``-1``: its mean, from ``means``): the final residual stream is the sum of the
    nodes' outputs plus the attention output biases. ``outputs``: every node's write at the state tokens."""
    W, K, U, d = outputs.shape
    src = sources.to(outputs.device)
    gathered = outputs[src.clamp(min=0), :, torch.arange(U, device=outputs.device)[:, None]]  # [U, W, K, d]
    if means is not None and bool((src < 0).any()):
        gathered = torch.where((src < 0)[:, :, None, None], means.permute(1, 0, 2)[:, None], gathered)
    bias = sum(blk.attn.b_O for blk in model.blocks)
    resid = gathered.sum(0) + bias  # [W, K, d]
    return model.ln_final(resid) @ model.W_U + model.b_U


@dataclass
class ScrubResult:
    """A hypothesis tested on a set of windows, beside random hypotheses of the same size."""

    hypothesis: str
    """The hypothesis' name."""
    metric: str
    """The metric, e.g. ``loss`` or ``logit_diff(good=clean_top)``."""
    nodes: list[tuple[str, str]]
    """``(node label, feature)`` of each listed node (a whole layer expanded into its heads)."""
    treat_rest: str
    n_windows: int
    n_draws: int
    """Independent scrubbings averaged per window."""
    clean: Float[Tensor, "W"]
    """The metric of the unscrubbed model, per window."""
    scrubbed: Float[Tensor, "W"]
    """The metric under the hypothesis' scrubbing, per window (mean over draws)."""
    random: Float[Tensor, "W"]
    """The metric with every node from a random window (or its mean), per window (mean over draws)."""
    metric_clean: float
    metric_scrubbed: float
    metric_random: float
    recovered: float
    """``(metric_scrubbed - metric_random) / (metric_clean - metric_random)`` (NaN without a gap)."""
    ci: tuple[float, float]
    """Percentile bootstrap interval of ``recovered`` over windows."""
    confidence: float
    n_bootstrap: int
    random_circuits: list[list[str]]
    """The random hypotheses of the baseline: node labels of each draw."""
    random_recovered: list[float]
    """``recovered`` of each random hypothesis."""
    unmatched: dict[str, float]
    """Per listed node (except those reading ``window``), the share of windows no other window agreed with
    (they kept their own output)."""
    seed: int

    @property
    def baseline_mean(self) -> float:
        return float(np.mean(self.random_recovered)) if self.random_recovered else float("nan")

    @property
    def baseline_std(self) -> float:
        return float(np.std(self.random_recovered)) if self.random_recovered else float("nan")

    def to_json(self) -> dict[str, Any]:
        """The scalar results (no per-window values) as JSON."""
        return {
            "hypothesis": self.hypothesis, "metric": self.metric, "nodes": [list(n) for n in self.nodes],
            "treat_rest": self.treat_rest, "n_windows": self.n_windows, "n_draws": self.n_draws,
            "metric_clean": self.metric_clean, "metric_scrubbed": self.metric_scrubbed,
            "metric_random": self.metric_random, "recovered": self.recovered, "ci": list(self.ci),
            "confidence": self.confidence, "baseline_mean": self.baseline_mean,
            "baseline_std": self.baseline_std, "random_recovered": self.random_recovered,
            "unmatched": self.unmatched, "seed": self.seed,
        }  # fmt: skip


def _share(s: np.ndarray, r: np.ndarray, c: np.ndarray) -> np.ndarray:
    gap = c - r
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(gap != 0, (s - r) / np.where(gap != 0, gap, 1.0), np.nan)


def _resolve(graph: ComputeGraph, hypothesis: Hypothesis) -> list[tuple[int, str]]:
    out: dict[int, str] = {}
    for i, node in enumerate(hypothesis.nodes):
        try:
            senders = graph.senders_of(node.component)
        except GraphError as exc:
            raise HypothesisError(f"hypothesis {hypothesis.name!r}: nodes[{i}]: {exc}") from None
        for u in senders:
            if out.get(u, node.reads) != node.reads:
                raise HypothesisError(
                    f"hypothesis {hypothesis.name!r}: node {graph.senders[u].label} is listed twice, reading "
                    f"{out[u]!r} and {node.reads!r}"
                )
            out[u] = node.reads
    return list(out.items())


def scrub(
    model: HookedDecisionTransformer,
    windows: WindowSet,
    hypothesis: Hypothesis,
    *,
    n_draws: int = 4,
    n_bootstrap: int = 1000,
    n_random: int = 20,
    confidence: float = 0.95,
    seed: int = 0,
    batch_size: int = 256,
) -> ScrubResult:
    """Test ``hypothesis`` on ``windows`` (see the module docstring)."""
    if not 0 < confidence < 1:
        raise HypothesisError(f"confidence must be in (0, 1), got {confidence!r}")
    for name, value in (("n_draws", n_draws), ("n_bootstrap", n_bootstrap)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise HypothesisError(f"{name} must be a positive integer, got {value!r}")
    if isinstance(n_random, bool) or not isinstance(n_random, int) or n_random < 0:
        raise HypothesisError(f"n_random must be a non-negative integer, got {n_random!r}")
    graph = ComputeGraph.of(model.cfg)
    listed = _resolve(graph, hypothesis)
    W, U = windows.n_windows, graph.n_senders
    codes = {reads: feature_values(windows, reads) for reads in {r for _, r in listed}}
    inputs = windows.inputs
    with torch.no_grad():
        outputs = sender_values(model, graph, inputs, batch_size)[:, 1::3]  # [W, K, U, d]
        clean_logits = torch.cat([model(inputs[b : b + batch_size]) for b in range(0, W, batch_size)])
    metric = build_metric(hypothesis.metric, model, inputs, clean_logits)
    real = inputs.pad_mask.to(outputs.dtype)[:, :, None, None]  # [W, K, 1, 1]
    means = (outputs * real).sum(0) / real.sum(0).clamp(min=1)  # [K, U, d]: over real tokens
    # One stream per purpose, so the fully random run is the same for every hypothesis on these windows.
    rng_random, rng_scrub, rng_circuits, rng_boot = (np.random.default_rng([seed, i]) for i in range(4))
    mean_rest = hypothesis.treat_rest == "mean"

    def rest(draws: int, rng: np.random.Generator) -> np.ndarray:
        """``[draws, U, W]`` sources of the unlisted nodes: random other windows, or -1 (the mean)."""
        if mean_rest:
            return np.full((draws, U, W), -1, dtype=np.int64)
        return np.stack([random_partners(W, rng, draws) for _ in range(U)], 1)  # [D, U, W]

    def run(
        assignment: list[tuple[int, str]], rng: np.random.Generator
    ) -> tuple[np.ndarray, dict[str, float]]:
        sources = rest(n_draws, rng)
        unmatched = {}
        for u, reads in assignment:
            partners, alone = agreeing_partners(codes[reads], rng, n_draws)
            sources[:, u] = partners
            if reads != "window":  # a window always agrees with itself alone
                unmatched[graph.senders[u].label] = float(alone.mean())
        values = []
        with torch.no_grad():
            for d in range(n_draws):
                logits = scrubbed_logits(model, outputs, torch.as_tensor(sources[d]), means)
                values.append(metric(logits).double().cpu().numpy())
        return np.mean(values, 0), unmatched

    clean = metric(clean_logits).double().cpu().numpy()
    random_values, _ = run([], rng_random)
    scrubbed, unmatched = run(listed, rng_scrub)
    idx = rng_boot.integers(0, W, size=(n_bootstrap, W))
    boot = _share(scrubbed[idx].mean(1), random_values[idx].mean(1), clean[idx].mean(1))
    boot = boot[np.isfinite(boot)]
    alpha = (1 - confidence) / 2
    ci = (
        (float(np.quantile(boot, alpha)), float(np.quantile(boot, 1 - alpha)))
        if boot.size
        else (math.nan, math.nan)
    )
    recovered = float(_share(scrubbed.mean(), random_values.mean(), clean.mean()))
    reads = [r for _, r in listed]
    random_circuits, random_recovered = [], []
    for _ in range(n_random):
        chosen = rng_circuits.choice(U, size=len(listed), replace=False).tolist()
        values, _ = run(list(zip(chosen, reads)), rng_circuits)
        random_circuits.append([graph.senders[u].label for u in chosen])
        random_recovered.append(float(_share(values.mean(), random_values.mean(), clean.mean())))
    return ScrubResult(
        hypothesis=hypothesis.name,
        metric=_describe(hypothesis.metric),
        nodes=[(graph.senders[u].label, r) for u, r in listed],
        treat_rest=hypothesis.treat_rest,
        n_windows=W,
        n_draws=n_draws,
        clean=torch.from_numpy(clean),
        scrubbed=torch.from_numpy(scrubbed),
        random=torch.from_numpy(random_values),
        metric_clean=float(clean.mean()),
        metric_scrubbed=float(scrubbed.mean()),
        metric_random=float(random_values.mean()),
        recovered=recovered,
        ci=ci,
        confidence=confidence,
        n_bootstrap=n_bootstrap,
        random_circuits=random_circuits,
        random_recovered=random_recovered,
        unmatched=unmatched,
        seed=seed,
    )


__all__ = [
    "METRIC_KINDS",
    "TREAT_REST",
    "Hypothesis",
    "HypothesisError",
    "HypothesisNode",
    "ScrubResult",
    "WindowSet",
    "agreeing_partners",
    "build_metric",
    "feature_values",
    "features",
    "load_hypothesis",
    "random_partners",
    "register_feature",
    "scrub",
    "scrubbed_logits",
]
