"""The circuit view: score the model's graph on one window, knock nodes out, and play the result.

The app's Circuit tab (and a notebook) works on one *task*: a window of an episode, a clean/corrupted
pair of it and a metric (:func:`circuit_task`). Three computations on a task:

- :func:`score_circuit`: every edge of the graph (:mod:`dtinterp.interp.graph`) scored by edge
  attribution patching (``eap``), EAP with integrated gradients (``eap-ig``) or exact path patching of
  each edge (``exact``), all in the ``noise`` direction (the clean run, with an edge reading the
  corrupted run's sender output: :func:`~dtinterp.interp.attribution_patching.edge_attribution_patching`).
  A node's score is the sum of its outgoing edges' scores; its *exact* value patches the node's whole
  output (every edge out of it) with the corrupted run's, one batched graph run for all nodes.
- :func:`ablate_nodes`: the metric with a set of nodes (senders: embeddings by kind, heads, MLPs)
  ablated on the clean window, beside the full model and the fully ablated one: faithfulness
  ``metric(ablated) / metric(full)`` and the normalised ``(ablated - empty) / (full - empty)``
  (:func:`~dtinterp.interp.circuit_discovery.evaluate_circuits` with a node-level circuit of the nodes
  left on).
- :func:`play_out`: the same ablation hooked into every forward pass of seeded greedy episodes
  (:func:`~dtinterp.play.rollout.rollout`), against the unablated agent on the same seeds. A quick
  rollout cuts each episode after :func:`quick_cap` steps (4x the unablated agent's longest episode, at
  least 64): a knocked-out agent that wanders would otherwise play to the env's step limit, many times
  longer than the agent it is compared with. How many episodes were cut is reported.

**Ablations** (:data:`NODE_ABLATIONS`): ``zero``; ``mean``, the per-position mean over the *reference
windows*: every window the unablated agent saw in its seeded reference episodes (:class:`ReferenceRuns`);
``resample``: on the window, each ablated node reads its output in the pair's corrupted run (the usual
"corrupted activations" of circuit evaluation, so ablating every node gives the corrupted run); in the
rollout, where there is no partner, env slot ``b`` reads reference window ``b % R``
(:func:`~dtinterp.interp.ablation.ablation_hooks`).

**Pairs** (:data:`PAIR_CHOICES`; ``auto`` takes the first that applies): ``edits``, the window against a
copy with token edits applied; ``env``, the episode re-simulated with an env-level change (Memory: the
other cue object); ``episodes``, the window at the same step of the unablated agent's own episode from
another seed (the first reference episode that lasts that long and whose window differs).

**Invariants** (tested): ablating no node leaves the full model's metric; ablating every node with mean
ablation equals the model run with every sender's hook replaced by its mean over the reference windows;
a rollout without ablation plays exactly the plain rollout's episodes; the rollout's hooks ablate on a
window exactly what the graph ablation does (the metric of the hooked model equals :func:`ablate_nodes`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from dtinterp.data.episode import Episode
from dtinterp.errors import DtinterpError
from dtinterp.interp.ablation import ablation_hooks, ablation_values
from dtinterp.interp.attribution_patching import edge_attribution_patching, masked_runs
from dtinterp.interp.causal import METRICS, ChosenMetric, build_metric
from dtinterp.interp.circuit_discovery import Circuit, evaluate_circuits, replacement_values
from dtinterp.interp.edits import Edit, parse_edit
from dtinterp.interp.graph import ComputeGraph, Receiver, sender_values
from dtinterp.interp.pairs import Pair, PairError, edit_pair, env_pair, make_pair
from dtinterp.model.checkpoint import Checkpoint
from dtinterp.model.inputs import DTInputs
from dtinterp.play.rollout import EpisodeResult, rollout
from envs import env_facts

#: How edges are scored: attribution patching, with integrated gradients, or exact path patching.
SCORE_METHODS = ("eap", "eap-ig", "exact")
#: What an ablated node's output becomes (module docstring).
NODE_ABLATIONS = ("zero", "mean", "resample")
#: Where the corrupted run comes from; ``auto`` takes the first of the others that applies.
PAIR_CHOICES = ("auto", "edits", "env", "episodes")
#: Defaults of the quick rollout: episodes and first env seed (the shipped model cards evaluate from 1000).
QUICK_EPISODES, QUICK_SEED = 8, 1000
#: Most episodes a quick rollout may play.
MAX_QUICK_EPISODES = 64
#: A quick rollout cuts episodes after CAP_FACTOR x the unablated agent's longest one (at least MIN_CAP).
CAP_FACTOR, MIN_CAP = 4, 64


class CircuitViewError(DtinterpError):
    """A circuit-view request that cannot be met: an unknown node, method, ablation or pair choice."""


def receiver_node(receiver: Receiver) -> str:
    """The node a receiver belongs to: ``L1H0`` for ``L1H0.q``, ``MLP0`` for ``MLP0.in``, ``logits``."""
    return receiver.label.split(".")[0]


def node_labels(graph: ComputeGraph, nodes: Sequence[str]) -> list[str]:
    """Sender labels of ``nodes`` (labels or component names) in graph order, each once."""
    try:
        ids = sorted({graph.sender_index(n) for n in nodes})
    except DtinterpError as exc:
        raise CircuitViewError(str(exc)) from None
    return [graph.senders[u].label for u in ids]


# ----------------------------------------------------------------------------- reference episodes


class ReferenceRuns:
    """The unablated agent's seeded episodes: the quick rollout's baseline, the windows mean ablation
    averages over, and partners for an ``episodes`` pair. Played on first use, once."""

    def __init__(self, checkpoint: Checkpoint, target: float, seeds: Sequence[int]):
        if not seeds or len(seeds) > MAX_QUICK_EPISODES:
            raise CircuitViewError(
                f"the quick rollout plays 1 to {MAX_QUICK_EPISODES} episodes, got {len(seeds)}"
            )
        self.checkpoint = checkpoint
        self.target = float(target)
        self.seeds = [int(s) for s in seeds]

    @cached_property
    def results(self) -> list[EpisodeResult]:
        """One recorded greedy episode per seed."""
        if self.checkpoint.env_spec is None:
            raise CircuitViewError("the model records no env to play in")
        return rollout(
            self.checkpoint, self.target, self.seeds, num_envs=len(self.seeds), record=True, progress=False
        )

    @cached_property
    def windows(self) -> DTInputs:
        """Every window the agent decided at, in every episode."""
        eps = [r.episode for r in self.results if r.episode is not None and r.episode.length]
        return DTInputs.cat([ep.windows(self.checkpoint, range(ep.length)) for ep in eps])

    def describe(self) -> str:
        return (
            f"{self.windows.batch_size} windows of the unablated agent's {len(self.seeds)} episodes "
            f"(seeds {self.seeds[0]}..{self.seeds[-1]}, target {self.target:g})"
        )


# ----------------------------------------------------------------------------- the task


@dataclass
class CircuitTask:
    """One window of an episode, its clean/corrupted pair and the metric every computation reads."""

    checkpoint: Checkpoint
    step: int
    """The episode step whose window is studied (its action is the one predicted)."""
    pair: Pair
    """Clean window and corrupted partner (batch 1)."""
    metric: ChosenMetric
    clean_logits: Float[Tensor, "1 K A"]
    corrupted_logits: Float[Tensor, "1 K A"]

    @property
    def metric_label(self) -> str:
        return self.metric.label(self.checkpoint.action_names)

    def describe(self) -> dict[str, Any]:
        """What the task is, in words: step, pair, metric and the two runs' values and actions."""
        names = self.checkpoint.action_names
        return {
            "step": self.step,
            "pair": self.pair.source,
            "pair_description": self.pair.description,
            "metric": self.metric.name,
            "metric_label": self.metric_label,
            "clean": float(self.metric.metric(self.clean_logits)[0]),
            "corrupted": float(self.metric.metric(self.corrupted_logits)[0]),
            "clean_action": names[int(self.clean_logits[0, -1].argmax())],
            "corrupted_action": names[int(self.corrupted_logits[0, -1].argmax())],
        }


def _same(a: DTInputs, b: DTInputs) -> bool:
    return all(torch.equal(getattr(a, f), getattr(b, f)) for f in ("obs", "directions", "actions", "rtg"))


def episodes_pair(checkpoint: Checkpoint, window: DTInputs, step: int, reference: ReferenceRuns) -> Pair:
    """``window`` against the window at ``step`` of the first reference episode that lasts that long and
    whose window differs (the same timesteps, so the same padding)."""
    for r in reference.results:
        ep = r.episode
        if ep is None or ep.length <= step:
            continue
        other = ep.windows(checkpoint, [step])
        if not _same(other, window):
            what = (
                f"the same step of the agent's own episode from seed {r.seed} (target {reference.target:g})"
            )
            pair = make_pair(window, other, what)
            pair.source = "episodes"
            return pair
    raise PairError(
        f"pair=episodes: none of the {len(reference.seeds)} reference episodes reaches step {step} with a "
        "different window; add an edit in the Replay tab or choose other seeds"
    )


def circuit_task(
    checkpoint: Checkpoint,
    episode: Episode,
    step: int,
    *,
    pair: str = "auto",
    edits: Sequence[Edit | str] = (),
    metric: str = "logit-diff",
    reference: ReferenceRuns | None = None,
) -> CircuitTask:
    """The task at ``step`` of ``episode``: its window, the pair ``pair`` (:data:`PAIR_CHOICES`) and the
    metric ``metric`` (:data:`~dtinterp.interp.causal.METRICS`; logit-diff: the clean run's top action
    minus the corrupted run's). ``reference`` is needed only for an ``episodes`` pair."""
    if pair not in PAIR_CHOICES:
        raise CircuitViewError(f"pair must be one of {', '.join(PAIR_CHOICES)}, got {pair!r}")
    if metric not in METRICS:
        raise CircuitViewError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    window = episode.windows(checkpoint, [step])
    edit_list = [e if not isinstance(e, str) else parse_edit(e) for e in edits]
    chosen: Pair | None = None
    if pair == "edits" or (pair == "auto" and edit_list):
        chosen = edit_pair(window, edit_list, checkpoint.rtg_scale)
        chosen.description = f"edits {chosen.description}"
    elif pair in ("env", "auto"):
        try:
            chosen = env_pair(window, checkpoint.env_spec)
        except PairError:
            if pair == "env":
                raise
    if chosen is None:
        if reference is None:
            raise CircuitViewError("pair=episodes needs reference episodes")
        chosen = episodes_pair(checkpoint, window, step, reference)
    model = checkpoint.model
    with torch.inference_mode():
        clean, corrupted = model(chosen.clean), model(chosen.corrupted)
    return CircuitTask(checkpoint, step, chosen, build_metric(metric, clean, corrupted), clean, corrupted)


# ----------------------------------------------------------------------------- scores


@dataclass
class CircuitScores:
    """Every edge and node of the graph scored on one task."""

    graph: ComputeGraph
    method: str
    """``eap``, ``eap-ig`` or ``exact``."""
    steps: int
    """Integrated-gradients steps (1 for ``eap`` and ``exact``)."""
    edge: Float[Tensor, "E"]
    """Each edge's score (effect on the metric of the edge reading the corrupted run), graph order."""
    estimate: Float[Tensor, "E"]
    """The gradient estimate of each edge (equal to ``edge`` unless ``method`` is ``exact``)."""
    node: Float[Tensor, "U"]
    """Each node's score: the sum of its outgoing edges' scores."""
    node_exact: Float[Tensor, "U"]
    """The exact effect of patching each node's whole output with the corrupted run's."""
    correlation: float | None
    """``exact``: Pearson correlation of the estimate and the exact effects over the edges."""
    task: dict[str, Any]
    """:meth:`CircuitTask.describe` of the task scored."""

    def to_json(self) -> dict[str, Any]:
        """Plain JSON: the task, the method, and one record per node and edge with its score and rank."""
        g = self.graph
        edge_rank = _ranks(self.edge)
        node_rank = _ranks(self.node)
        return {
            "task": self.task,
            "method": self.method,
            "steps": self.steps,
            "correlation": self.correlation,
            "nodes": [
                {
                    "label": s.label,
                    "name": s.name,
                    "kind": s.kind,
                    "layer": s.layer,
                    "score": float(self.node[u]),
                    "exact": float(self.node_exact[u]),
                    "rank": node_rank[u],
                }
                for u, s in enumerate(g.senders)
            ],
            "edges": [
                {
                    "label": e.label,
                    "source": e.sender.label,
                    "target": receiver_node(e.receiver),
                    "input": e.receiver.kind,
                    "score": float(self.edge[i]),
                    "estimate": float(self.estimate[i]),
                    "rank": edge_rank[i],
                }
                for i, e in enumerate(g.edges)
            ],
        }


def _ranks(values: Tensor) -> list[int]:
    """1-based rank of each entry by decreasing ``|value|`` (ties keep order)."""
    order = sorted(range(len(values)), key=lambda i: -abs(float(values[i])))
    out = [0] * len(values)
    for r, i in enumerate(order):
        out[i] = r + 1
    return out


def score_circuit(task: CircuitTask, method: str = "eap", steps: int = 8) -> CircuitScores:
    """Score every edge and node of the model's graph on ``task`` (see the module docstring)."""
    if method not in SCORE_METHODS:
        raise CircuitViewError(f"method must be one of {', '.join(SCORE_METHODS)}, got {method!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= 64:
        raise CircuitViewError(f"integrated-gradients steps must be an integer in 1..64, got {steps!r}")
    model = task.checkpoint.model
    clean, corrupted, metric = task.pair.clean, task.pair.corrupted, task.metric.metric
    steps = steps if method == "eap-ig" else 1
    result = edge_attribution_patching(
        model, clean, corrupted, metric, direction="noise", steps=steps, exact=method == "exact"
    )
    estimate = result.values.detach().float().cpu()
    edge = result.exact.detach().float().cpu() if result.exact is not None else estimate
    graph = result.graph
    node = torch.zeros(graph.n_senders).index_add(0, graph.edge_index[:, 0], edge)
    # Patch each node's whole output (every edge out of it) with the corrupted run's: one stacked run.
    ablate = graph.valid.clone().unsqueeze(0).repeat(graph.n_senders, 1, 1)
    ablate &= torch.eye(graph.n_senders, dtype=torch.bool)[:, :, None]
    with torch.no_grad():
        patched = masked_runs(model, graph, clean, ablate, sender_values(model, graph, corrupted), metric)
    node_exact = (patched[:, 0] - float(task.metric.metric(task.clean_logits)[0])).float().cpu()
    return CircuitScores(
        graph=graph,
        method=method,
        steps=steps,
        edge=edge,
        estimate=estimate,
        node=node,
        node_exact=node_exact,
        correlation=result.correlation,
        task=task.describe(),
    )


# ----------------------------------------------------------------------------- ablation


@dataclass
class NodeAblation:
    """The metric of the task's clean window with some nodes ablated, beside the full and empty models."""

    nodes: list[str]
    """Labels of the ablated nodes (graph order)."""
    kind: str
    """``zero``, ``mean`` or ``resample``."""
    full: float
    """Metric of the model itself."""
    ablated: float
    """Metric with ``nodes`` ablated."""
    empty: float
    """Metric with every node ablated."""
    reference: str
    """Where the replacement values came from, in words."""

    @property
    def faithfulness(self) -> float:
        """``ablated / full`` (NaN if the full metric is 0)."""
        return self.ablated / self.full if self.full != 0 else float("nan")

    @property
    def normalised(self) -> float:
        """``(ablated - empty) / (full - empty)`` (NaN without a gap): 1 = the model, 0 = nothing left."""
        gap = self.full - self.empty
        return (self.ablated - self.empty) / gap if gap != 0 else float("nan")

    def to_json(self) -> dict[str, Any]:
        return {
            "nodes": self.nodes,
            "kind": self.kind,
            "full": self.full,
            "ablated": self.ablated,
            "empty": self.empty,
            "faithfulness": self.faithfulness,
            "normalised": self.normalised,
            "reference": self.reference,
        }


def _check_kind(kind: str) -> None:
    if kind not in NODE_ABLATIONS:
        raise CircuitViewError(f"ablation must be one of {', '.join(NODE_ABLATIONS)}, got {kind!r}")


def ablate_nodes(
    task: CircuitTask, nodes: Sequence[str], kind: str = "mean", reference: ReferenceRuns | None = None
) -> NodeAblation:
    """The task's metric with ``nodes`` (labels or component names) ablated (module docstring).

    ``reference`` gives mean ablation its windows.
    """
    _check_kind(kind)
    model = task.checkpoint.model
    graph = ComputeGraph.of(model.cfg)
    labels = node_labels(graph, nodes)
    clean = task.pair.clean
    if kind == "zero":
        P = clean.shape[1]
        replacement = torch.zeros(1, P, graph.n_senders, model.cfg.d_model, device=model.W_U.device)
        where = "zero"
    elif kind == "mean":
        if reference is None:
            raise CircuitViewError("mean ablation needs reference windows")
        replacement = replacement_values(model, graph, clean, "mean", reference.windows)
        where = f"the mean over {reference.describe()}"
    else:
        replacement = replacement_values(model, graph, clean, "resample", task.pair.corrupted)
        where = f"the corrupted run ({task.pair.description})"
    kept = [s.label for s in graph.senders if s.label not in labels]
    circuits = [Circuit.from_nodes(graph, kept), Circuit.from_nodes(graph, graph.sender_labels())]
    circuits.append(Circuit.from_nodes(graph, []))
    values = evaluate_circuits(model, clean, circuits, task.metric.metric, replacement)[:, 0].tolist()
    return NodeAblation(labels, kind, full=values[1], ablated=values[0], empty=values[2], reference=where)


def node_hooks(
    checkpoint: Checkpoint, nodes: Sequence[str], kind: str = "mean", reference: ReferenceRuns | None = None
) -> list[tuple[str, Any]]:
    """Forward hooks that ablate ``nodes`` in every forward pass (a rollout's), as :func:`ablate_nodes`
    does on a window: the senders' own hooks (``hook_rtg_embed``, ``blocks.1.attn.hook_z:h2``,
    ``blocks.0.hook_mlp_out``) with zero, the mean over the reference windows, or reference window
    ``b % R`` (resample). No nodes: no hooks."""
    _check_kind(kind)
    model = checkpoint.model
    graph = ComputeGraph.of(model.cfg)
    names = [graph.senders[graph.sender_index(n)].name for n in node_labels(graph, nodes)]
    if not names:
        return []
    if kind == "zero":
        return ablation_hooks(model, names, "zero")
    if reference is None:
        raise CircuitViewError(f"{kind} ablation in a rollout needs reference windows")
    values = ablation_values(model, names, kind, reference.windows)
    return ablation_hooks(model, names, kind, values)


@dataclass
class PlayedOut:
    """Seeded greedy episodes with the nodes ablated, beside the unablated agent on the same seeds."""

    nodes: list[str]
    kind: str
    target: float
    seeds: list[int]
    max_steps: int
    """Episodes were cut after this many steps (:func:`quick_cap`); a cut episode has its return so far."""
    returns: list[float]
    """Return of each ablated episode, in seed order."""
    lengths: list[int]
    cut: int
    """Ablated episodes cut at ``max_steps`` before the env ended them."""
    baseline_returns: list[float]
    """Return of each unablated episode (the reference runs), in seed order."""
    baseline_lengths: list[int]

    @property
    def success(self) -> float:
        """Share of ablated episodes with a positive return (MiniGrid pays only for the goal)."""
        return float(np.mean([r > 0 for r in self.returns]))

    @property
    def baseline_success(self) -> float:
        return float(np.mean([r > 0 for r in self.baseline_returns]))

    def to_json(self) -> dict[str, Any]:
        return {
            "nodes": self.nodes,
            "kind": self.kind,
            "target": self.target,
            "seeds": self.seeds,
            "max_steps": self.max_steps,
            "returns": self.returns,
            "lengths": self.lengths,
            "cut": self.cut,
            "baseline_returns": self.baseline_returns,
            "baseline_lengths": self.baseline_lengths,
            "success": self.success,
            "baseline_success": self.baseline_success,
            "mean_return": float(np.mean(self.returns)),
            "baseline_mean_return": float(np.mean(self.baseline_returns)),
            "unchanged": self.returns == self.baseline_returns and self.lengths == self.baseline_lengths,
        }


def quick_cap(reference: ReferenceRuns) -> int:
    """Step cap of a quick rollout: :data:`CAP_FACTOR` times the unablated agent's longest episode (at
    least :data:`MIN_CAP`), at most the env's own limit. An ablated agent that wanders would otherwise
    play to the env's limit, many times longer than the agent it is compared with."""
    longest = max(r.length for r in reference.results)
    limit = env_facts(reference.checkpoint.env_spec).max_steps
    return int(min(limit, max(MIN_CAP, CAP_FACTOR * longest)))


def play_out(checkpoint: Checkpoint, nodes: Sequence[str], kind: str, reference: ReferenceRuns) -> PlayedOut:
    """The reference seeds played greedily with ``nodes`` ablated (:func:`node_hooks`), each episode cut
    after :func:`quick_cap` steps."""
    graph = ComputeGraph.of(checkpoint.model.cfg)
    labels = node_labels(graph, nodes)
    hooks = node_hooks(checkpoint, labels, kind, reference)
    cap = quick_cap(reference)
    played = rollout(
        checkpoint, reference.target, reference.seeds, num_envs=len(reference.seeds), record=True,
        progress=False, hooks=hooks, max_steps=cap,
    )  # fmt: skip
    base = reference.results
    cut = sum(1 for r in played if r.episode is not None and r.episode.truncated and r.length == cap)
    return PlayedOut(
        nodes=labels,
        kind=kind,
        target=reference.target,
        seeds=list(reference.seeds),
        max_steps=cap,
        returns=[float(r.episode_return) for r in played],
        lengths=[int(r.length) for r in played],
        cut=cut,
        baseline_returns=[float(r.episode_return) for r in base],
        baseline_lengths=[int(r.length) for r in base],
    )


__all__ = [
    "MAX_QUICK_EPISODES",
    "NODE_ABLATIONS",
    "PAIR_CHOICES",
    "QUICK_EPISODES",
    "QUICK_SEED",
    "CAP_FACTOR",
    "MIN_CAP",
    "SCORE_METHODS",
    "CircuitScores",
    "CircuitTask",
    "CircuitViewError",
    "NodeAblation",
    "PlayedOut",
    "ReferenceRuns",
    "ablate_nodes",
    "circuit_task",
    "episodes_pair",
    "node_hooks",
    "node_labels",
    "play_out",
    "quick_cap",
    "receiver_node",
    "score_circuit",
]
