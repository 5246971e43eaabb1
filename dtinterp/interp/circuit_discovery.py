"""Circuit discovery from attribution scores, and the faithfulness of the circuits found.

A *circuit* is a set of edges (or nodes) of the model's graph (:mod:`dtinterp.interp.graph`). Given
scores (edge attribution patching, EAP-IG, or any score per edge or node), :func:`faithfulness_curve`
ranks edges (or nodes) by ``|score|``, takes the top ``k`` for a range of ``k`` and evaluates each circuit
on the clean windows of a dataset of clean/corrupted pairs:

- **edge level**: every edge *outside* the circuit is ablated: its receiver reads the sender's ablation
  value instead of the sender's live output, while edges inside read the live output (itself computed from
  whatever reached the sender). The logits are a receiver like any other.
- **node level**: every edge out of a node outside the circuit is ablated (the node's output is replaced
  wherever it is read), as :func:`dtinterp.interp.ablation.ablate` does.

Ablation values come from :func:`dtinterp.interp.ablation.ablation_values` on the senders' hooks
(``hook_embed`` split by token kind, ``hook_pos_embed``, each layer's ``hook_z`` through ``W_O``,
``hook_mlp_out``):

- ``mean``: per-position mean over reference windows (default: the clean windows themselves);
- ``resample``: another window's activation: by default each clean window's own corrupted partner
  (the usual "corrupted activations" of EAP evaluations), or, with ``reference`` windows, a seeded random
  reference window per clean window.

Reported per ``k``: ``metric(circuit)`` averaged over the windows, ``faithfulness = mean metric(circuit) /
mean metric(full model)`` (a ratio of means, stable where single windows have a metric near 0), and the
normalised ``(metric(circuit) - metric(empty)) / (metric(full) - metric(empty))`` where the empty circuit
ablates every edge. The *minimal circuit* is the smallest evaluated ``k`` whose faithfulness reaches the
threshold (0.9 by default).

**Invariants** (tested): the full circuit is the model (faithfulness 1); with resample ablation from the
corrupted partners, the empty circuit is the corrupted run; a node-level circuit equals ablating the other
nodes with :func:`~dtinterp.interp.ablation.ablate`; on a hand-built model whose logits depend on the
input through exactly one chain of three edges, EAP ranks those three first and the minimal circuit is
exactly that chain.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from dtinterp.errors import DtinterpError
from dtinterp.interp.ablation import ablation_values
from dtinterp.interp.attribution_patching import DEFAULT_MAX_BYTES, EdgeAttributionResult, masked_runs
from dtinterp.interp.graph import ComputeGraph, embed_senders
from dtinterp.interp.metrics import Metric
from dtinterp.model.hooked_dt import HookedDecisionTransformer
from dtinterp.model.inputs import DTInputs

LEVELS = ("edge", "node")
CIRCUIT_ABLATIONS = ("mean", "resample")
#: Up to this many edges the curve evaluates every k; beyond, a geometric grid of about 64 values.
_ALL_K_UP_TO = 256


class CircuitError(DtinterpError):
    """A circuit request that cannot be met: unknown level or ablation, scores of the wrong size, ..."""


@dataclass
class Circuit:
    """Edges of a model's graph kept live; every other edge is ablated when the circuit is evaluated."""

    graph: ComputeGraph
    kept: Bool[Tensor, "U R"]
    """``kept[u, r]``: the edge sender ``u`` -> receiver ``r`` is in the circuit (only graph edges)."""
    level: str = "edge"
    """How it was built: ``edge`` (a set of edges) or ``node`` (every edge out of a set of nodes)."""
    nodes: list[str] = field(default_factory=list)
    """For a node-level circuit, the labels of its nodes."""

    @classmethod
    def from_edges(cls, graph: ComputeGraph, edges: Sequence[int | str]) -> Circuit:
        """The circuit of the given edges (indices into ``graph.edges`` or ``"SENDER -> RECEIVER"``)."""
        ids = [graph.parse_edge(e) if isinstance(e, str) else int(e) for e in edges]
        bad = [e for e in ids if not 0 <= e < graph.n_edges]
        if bad:
            raise CircuitError(f"edge index {bad[0]} out of range 0..{graph.n_edges - 1}")
        kept = torch.zeros(graph.n_senders, graph.n_receivers, dtype=torch.bool)
        if ids:
            idx = graph.edge_index[torch.as_tensor(ids, dtype=torch.long)]
            kept[idx[:, 0], idx[:, 1]] = True
        return cls(graph, kept, "edge")

    @classmethod
    def from_nodes(cls, graph: ComputeGraph, nodes: Sequence[int | str]) -> Circuit:
        """The circuit of every edge out of the given senders (indices, labels or component names)."""
        ids = sorted({graph.sender_index(n) if isinstance(n, str) else int(n) for n in nodes})
        bad = [u for u in ids if not 0 <= u < graph.n_senders]
        if bad:
            raise CircuitError(f"node index {bad[0]} out of range 0..{graph.n_senders - 1}")
        kept = torch.zeros(graph.n_senders, graph.n_receivers, dtype=torch.bool)
        kept[ids] = graph.valid[ids]
        return cls(graph, kept, "node", [graph.senders[u].label for u in ids])

    @property
    def n_edges(self) -> int:
        return int((self.kept & self.graph.valid).sum())

    def edge_labels(self) -> list[str]:
        """Labels of the kept edges, in graph order."""
        keep = (self.kept & self.graph.valid)[self.graph.edge_index[:, 0], self.graph.edge_index[:, 1]]
        return [e.label for e, k in zip(self.graph.edges, keep.tolist()) if k]

    def ablated(self) -> Bool[Tensor, "U R"]:
        """The edges the evaluation ablates: every graph edge not kept."""
        return self.graph.valid & ~self.kept

    def to_dict(self) -> dict[str, Any]:
        """JSON form: level, nodes and edge labels (``"L0H1 -> L1H0.v"``)."""
        return {"level": self.level, "nodes": list(self.nodes), "edges": self.edge_labels()}

    @classmethod
    def from_dict(cls, graph: ComputeGraph, data: dict[str, Any]) -> Circuit:
        """Inverse of :meth:`to_dict` (for this model's graph)."""
        if not isinstance(data, dict) or data.get("level") not in LEVELS:
            raise CircuitError(f"a circuit must be an object with 'level' one of {LEVELS}")
        if data["level"] == "node":
            return cls.from_nodes(graph, list(data.get("nodes", [])))
        return cls.from_edges(graph, list(data.get("edges", [])))


# ----------------------------------------------------------------------------- ablation values


def sender_hooks(graph: ComputeGraph) -> list[str]:
    """The hooks whose activations give every sender's write: embeddings, ``hook_z``, ``hook_mlp_out``."""
    names = ["hook_embed", "hook_pos_embed"]
    for l in range(graph.cfg.n_layers):
        names.append(f"blocks.{l}.attn.hook_z")
        if not graph.cfg.attn_only:
            names.append(f"blocks.{l}.hook_mlp_out")
    return names


def _to_senders(model: HookedDecisionTransformer, values: dict[str, Tensor]) -> Float[Tensor, "R P U d"]:
    """Activations at :func:`sender_hooks` (``[R, ...]``) as the senders' writes ``[R, P, U, d]``."""
    parts = [embed_senders(values["hook_embed"], values["hook_pos_embed"])]
    for l, blk in enumerate(model.blocks):
        parts.append(torch.einsum("rphe,hed->rphd", values[f"blocks.{l}.attn.hook_z"], blk.attn.W_O))
        if not model.cfg.attn_only:
            parts.append(values[f"blocks.{l}.hook_mlp_out"].unsqueeze(2))
    return torch.cat(parts, 2).detach()


def replacement_values(
    model: HookedDecisionTransformer,
    graph: ComputeGraph,
    inputs: DTInputs,
    ablation: str = "mean",
    reference: DTInputs | None = None,
    resample_index: Int[Tensor, "B"] | None = None,
    seed: int = 0,
) -> Float[Tensor, "Bs P U d"]:
    """The value each sender's ablated edges carry, for the windows ``inputs`` (see the module docstring).

    ``mean``: ``[1, P, U, d]`` from ``reference`` (default: ``inputs``). ``resample``: ``[B, P, U, d]``,
    row ``b`` from reference window ``resample_index[b]`` (default: row ``b`` itself when ``reference`` has
    as many windows, as with corrupted partners; else a seeded uniform draw).
    """
    if ablation not in CIRCUIT_ABLATIONS:
        raise CircuitError(f"ablation must be one of {CIRCUIT_ABLATIONS}, got {ablation!r}")
    reference = inputs if reference is None else reference
    if reference.shape[1] != inputs.shape[1]:
        raise CircuitError(
            f"reference windows have {reference.shape[1]} tokens, the evaluated windows {inputs.shape[1]}"
        )
    values = ablation_values(model, sender_hooks(graph), ablation, reference)
    senders = _to_senders(model, values)
    if ablation == "mean":
        return senders
    B, R = inputs.batch_size, reference.batch_size
    if resample_index is None:
        if R == B:
            resample_index = torch.arange(B)
        else:
            resample_index = torch.randint(R, (B,), generator=torch.Generator().manual_seed(seed))
    if resample_index.shape != (B,) or int(resample_index.min()) < 0 or int(resample_index.max()) >= R:
        raise CircuitError(f"resample_index must hold one reference window (0..{R - 1}) per window ({B},)")
    return senders[resample_index.to(senders.device)]


def evaluate_circuits(
    model: HookedDecisionTransformer,
    inputs: DTInputs,
    circuits: Sequence[Circuit],
    metric: Metric,
    replacement: Float[Tensor, "Bs P U d"],
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Float[Tensor, "C B"]:
    """The metric of ``inputs`` with each circuit's other edges reading ``replacement``
    (:func:`replacement_values`), one batched run per chunk of circuits."""
    if not circuits:
        raise CircuitError("no circuits to evaluate")
    graph = circuits[0].graph
    ablate = torch.stack([c.ablated() for c in circuits]).to(replacement.device)
    return masked_runs(model, graph, inputs, ablate, replacement, metric, max_bytes)


# ----------------------------------------------------------------------------- the curve


@dataclass
class FaithfulnessCurve:
    """Faithfulness of the top-``k`` circuits for a range of ``k``."""

    level: str
    """``edge`` or ``node``."""
    ablation: str
    """``mean`` or ``resample``: what an edge outside the circuit reads."""
    graph: ComputeGraph
    order: list[int]
    """Ranked edge (or sender) indices, by decreasing ``|score|``."""
    ranking: list[str]
    """Their labels (``L0H1 -> L1H0.v``, or ``L0H1``), in rank order."""
    scores: list[float]
    """Their scores, in rank order."""
    ks: list[int]
    """Circuit sizes evaluated."""
    metric_full: float
    """Mean metric of the model itself."""
    metric_empty: float
    """Mean metric with every edge ablated."""
    metric: list[float]
    """Mean metric of the top-``k`` circuit for each ``k``."""
    per_window: Float[Tensor, "k B"]
    """The circuits' metric per window."""
    faithfulness: list[float]
    """``metric[k] / metric_full`` (NaN if ``metric_full`` is 0)."""
    normalised: list[float]
    """``(metric[k] - metric_empty) / (metric_full - metric_empty)`` (NaN without a gap)."""
    threshold: float
    """Faithfulness the minimal circuit must reach."""
    minimal_k: int | None
    """Smallest evaluated ``k`` with ``faithfulness >= threshold`` (None: none reaches it)."""
    minimal_circuit: list[str] | None
    """Labels of the minimal circuit's edges (or nodes)."""

    def circuit(self, k: int) -> Circuit:
        """The top-``k`` circuit."""
        if self.level == "node":
            return Circuit.from_nodes(self.graph, self.order[:k])
        return Circuit.from_edges(self.graph, self.order[:k])


def _default_ks(n: int) -> list[int]:
    if n <= _ALL_K_UP_TO:
        return list(range(n + 1))
    return sorted({0, n, *np.unique(np.round(np.geomspace(1, n, 64)).astype(int)).tolist()})


def faithfulness_curve(
    model: HookedDecisionTransformer,
    clean: DTInputs,
    corrupted: DTInputs | None,
    metric: Metric,
    scores: EdgeAttributionResult | Float[Tensor, "n"],
    *,
    level: str = "edge",
    ks: Sequence[int] | None = None,
    ablation: str = "resample",
    reference: DTInputs | None = None,
    resample_index: Int[Tensor, "B"] | None = None,
    seed: int = 0,
    threshold: float = 0.9,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> FaithfulnessCurve:
    """Rank edges (``level="edge"``) or nodes by ``|score|``, evaluate the top-``k`` circuits on ``clean``.

    ``scores``: an :class:`~dtinterp.interp.attribution_patching.EdgeAttributionResult` (nodes score the
    sum of their outgoing edges, :meth:`~EdgeAttributionResult.node_scores`) or one score per edge / node.
    ``resample`` ablation reads ``reference`` windows (default: ``corrupted``, each clean window's partner);
    ``mean`` ablation averages over ``reference`` (default: ``clean``).
    """
    if level not in LEVELS:
        raise CircuitError(f"level must be one of {LEVELS}, got {level!r}")
    if not 0 < threshold <= 1.5:
        raise CircuitError(f"threshold must be a faithfulness in (0, 1.5], got {threshold!r}")
    graph = ComputeGraph.of(model.cfg)
    n = graph.n_edges if level == "edge" else graph.n_senders
    if isinstance(scores, EdgeAttributionResult):
        values = scores.values.detach().cpu() if level == "edge" else scores.node_scores()
    else:
        values = torch.as_tensor(scores).detach().float().cpu().reshape(-1)
    if values.shape != (n,):
        raise CircuitError(
            f"{level}-level scores must hold {n} values (one per {level}), got {tuple(values.shape)}"
        )
    order = sorted(range(n), key=lambda i: -abs(float(values[i])))
    labels = [graph.edges[i].label if level == "edge" else graph.senders[i].label for i in order]
    ks = _default_ks(n) if ks is None else sorted({int(k) for k in ks})
    if not ks or ks[0] < 0 or ks[-1] > n:
        raise CircuitError(f"k must lie in 0..{n}, got {ks}")
    if ablation == "resample" and reference is None:
        if corrupted is None:
            raise CircuitError("resample ablation needs reference windows (or the corrupted partners)")
        reference = corrupted
    replacement = replacement_values(model, graph, clean, ablation, reference, resample_index, seed)
    build = Circuit.from_nodes if level == "node" else Circuit.from_edges
    circuits = [build(graph, order[:k]) for k in ks]
    circuits += [build(graph, []), build(graph, order)]  # empty and full
    per_window = evaluate_circuits(model, clean, circuits, metric, replacement, max_bytes).cpu()
    empty, full = float(per_window[-2].mean()), float(per_window[-1].mean())
    per_window = per_window[:-2]
    means = per_window.mean(-1).tolist()
    faith = [m / full if full != 0 else float("nan") for m in means]
    gap = full - empty
    normalised = [(m - empty) / gap if gap != 0 else float("nan") for m in means]
    minimal = next((k for k, f in zip(ks, faith) if f >= threshold), None)
    return FaithfulnessCurve(
        level=level,
        ablation=ablation,
        graph=graph,
        order=order,
        ranking=labels,
        scores=[float(values[i]) for i in order],
        ks=list(ks),
        metric_full=full,
        metric_empty=empty,
        metric=means,
        per_window=per_window,
        faithfulness=faith,
        normalised=normalised,
        threshold=float(threshold),
        minimal_k=minimal,
        minimal_circuit=None if minimal is None else labels[:minimal],
    )


__all__ = [
    "CIRCUIT_ABLATIONS",
    "LEVELS",
    "Circuit",
    "CircuitError",
    "FaithfulnessCurve",
    "evaluate_circuits",
    "faithfulness_curve",
    "replacement_values",
    "sender_hooks",
]
