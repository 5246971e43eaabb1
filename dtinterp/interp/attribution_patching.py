"""Attribution patching: the first-order (gradient) estimate of every activation patch and edge patch.

Activation patching (:mod:`dtinterp.interp.patching`) runs the model once per patch. Its first-order
Taylor approximation needs one run of each input and one backward pass for *every* patch at once
(Nanda 2023, "Attribution patching"; Syed et al. 2023, "Attribution patching outperforms automated
circuit discovery"). With the *base* run (whose activation is overwritten) and the *source* run (whose
activation is written in), as in the patching engine:

    ``metric(base with a := a_source) - metric(base)  ~=  (a_source - a_base) . d metric / d a |_base``

summed over the patched activation's features (a head's ``d_head``, a residual stream's ``d_model``; a
neuron is one number). ``direction`` is the engine's: ``denoise`` (base = corrupted run, source = clean; the
default for node sweeps, as in the engine and TransformerLens) or ``noise`` (base = clean, source =
corrupted; the default for edges, as in path patching and in Syed et al.).

- :func:`attribution_patching`: node sweeps, named and laid out as the engine's (``resid_pre``
  ``[layer, pos]``, ``head_out_by_pos`` ``[layer, pos, head]``, ``neuron_by_pos`` ``[layer, pos, neuron]``,
  ... :data:`SWEEPS`).
- :func:`edge_attribution_patching` (EAP): every edge of the graph (:mod:`dtinterp.interp.graph`),
  ``(a_u(source) - a_u(base)) . d metric / d x_v``, summed over positions, where ``x_v`` is the residual
  stream receiver ``v`` reads (a head's query, key or value input separately, an MLP's input, the
  logits). The receivers' inputs are split copies of the residual stream, so autograd gives each its
  own gradient; LayerNorm is differentiated exactly (its scale is not frozen).
- **Integrated gradients** (``steps > 1``; EAP-IG, Hanna et al. 2024, "Have faith in faithfulness"):
  the gradient is averaged over ``steps`` points on the straight line between the two runs' *input
  embeddings* (``hook_embed`` and ``hook_pos_embed``), ``e_k = e_source + k/steps (e_base - e_source)``,
  ``k = 1..steps`` (``k = steps`` is the base run: one step is plain attribution patching), as the
  EAP-IG authors' ``EAP-IG-inputs`` does. The activation differences stay those of the two real runs.
  The interpolated runs use the base run's attention mask, so both runs must pad the same timesteps.

Every result carries, when asked (``exact=True``), the exact patching of the same patches on the same
inputs (the engine's sweep; for edges, path patching of each edge, computed batched on the graph) and the
Pearson and Spearman correlations of estimate and exact effect over the map's entries. Estimates and
exact effects are *effects*: ``patched - base``, per window and averaged.

**Invariant** (tested): where the metric is linear in the patched activation (a model without
LayerNorm whose attention patterns do not depend on the residual stream and whose ReLUs stay on one side),
every estimate equals the exact patch: node sweeps equal the engine's, edge scores equal path patching,
and integrated gradients equal plain attribution. Cost (``benchmarks/attribution.py``): a clean forward, a
corrupted forward and a backward pass that computes no weight gradients.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from dtinterp.errors import DtinterpError
from dtinterp.interp.graph import ComputeGraph, embeddings, run_graph, sender_values
from dtinterp.interp.metrics import Metric
from dtinterp.interp.patching import DIRECTIONS, PatchingEngine
from dtinterp.model.hooked_dt import HookedDecisionTransformer
from dtinterp.model.inputs import DTInputs, token_labels

#: Node sweeps: name -> (site, result axes). Same names and layouts as the patching engine's sweeps.
_SWEEPS: dict[str, tuple[str, tuple[str, ...]]] = {
    "resid_pre": ("resid_pre", ("layer", "pos")),
    "resid_mid": ("resid_mid", ("layer", "pos")),
    "resid_post": ("resid_post", ("layer", "pos")),
    "attn_out": ("attn_out", ("layer", "pos")),
    "mlp_out": ("mlp_out", ("layer", "pos")),
    "head_out_by_pos": ("z", ("layer", "pos", "head")),
    "head_out_all_pos": ("z", ("layer", "head")),
    "head_q_by_pos": ("q", ("layer", "pos", "head")),
    "head_k_by_pos": ("k", ("layer", "pos", "head")),
    "head_v_by_pos": ("v", ("layer", "pos", "head")),
    "head_q_all_pos": ("q", ("layer", "head")),
    "head_k_all_pos": ("k", ("layer", "head")),
    "head_v_all_pos": ("v", ("layer", "head")),
    "head_pattern_by_pos": ("pattern", ("layer", "head", "dest_pos")),
    "head_pattern_all_pos": ("pattern", ("layer", "head")),
    "neuron_by_pos": ("post", ("layer", "pos", "neuron")),
    "neuron_all_pos": ("post", ("layer", "neuron")),
}
SWEEPS = tuple(_SWEEPS)
#: Every node of the model: each residual stream x position, each head x position, each neuron x position.
ALL_NODES = ("resid_pre", "head_out_by_pos", "neuron_by_pos")
_MLP_SITES = ("resid_mid", "mlp_out", "pre", "post")
#: Memory budget of one batched exact edge-patching forward.
DEFAULT_MAX_BYTES = 256 * 2**20


class AttributionError(DtinterpError):
    """Inputs attribution patching cannot use: shapes, sweep names, steps, metric output."""


@dataclass(kw_only=True)
class AttributionResult:
    """Estimated effect of every patch of a sweep (or every edge), beside the exact effect when computed."""

    name: str
    """The sweep (``resid_pre``, ``head_out_by_pos``, ...) or ``edges``."""
    method: str
    """``attribution`` (one gradient) or ``integrated-gradients``."""
    direction: str
    """``denoise`` (base = corrupted run, source = clean) or ``noise`` (the reverse)."""
    steps: int
    """Points of the integrated-gradients path (1: plain attribution patching)."""
    values: Float[Tensor, "..."]
    """Estimated effect on the metric (patched - base) of each patch, averaged over the windows."""
    per_window: Float[Tensor, "... B"]
    """The estimate per window (last axis); ``values == per_window.mean(-1)``."""
    axis_names: tuple[str, ...]
    """Axes of ``values``: ``layer``, ``pos``, ``dest_pos``, ``head``, ``neuron``; ``edge`` for edges."""
    axis_labels: dict[str, list[str]] = field(default_factory=dict)
    """Labels along each axis: ``L0``; ``R1, S1, A1, ...``; ``H0``; ``N0``; ``L0H1 -> L1H0.v``."""
    base: Float[Tensor, "B"]
    """Metric of the unpatched base run, per window."""
    source: Float[Tensor, "B"]
    """Metric of the unpatched source run, per window (patching everything gives ``source - base``)."""
    exact: Float[Tensor, "..."] | None = None
    """Exact effect of each patch (patched - base), averaged over the windows; None unless computed."""
    exact_per_window: Float[Tensor, "... B"] | None = None
    """The exact effect per window."""
    correlation: float | None = None
    """Pearson correlation of ``values`` and ``exact`` over the entries (NaN if either is constant)."""
    rank_correlation: float | None = None
    """Spearman (rank) correlation of ``values`` and ``exact`` over the entries."""

    def normalised(self) -> Float[Tensor, "..."]:
        """``values / mean(source - base)``: the share of the whole difference each patch is credited with."""
        gap = float((self.source - self.base).mean())
        return self.values / gap if gap != 0 else torch.full_like(self.values, float("nan"))


@dataclass(kw_only=True)
class EdgeAttributionResult(AttributionResult):
    """Edge scores (axis ``edge``, in :attr:`ComputeGraph.edges` order) and the graph they belong to."""

    graph: ComputeGraph
    """The graph whose edges ``values`` scores."""

    def matrix(self, exact: bool = False) -> Float[Tensor, "U R"]:
        """Scores as a ``[sender, receiver]`` table (NaN where there is no edge); ``exact``: the exact effects."""
        src = self.exact if exact else self.values
        if src is None:
            raise AttributionError("no exact edge effects were computed (exact=True)")
        out = torch.full((self.graph.n_senders, self.graph.n_receivers), float("nan"))
        u, r = self.graph.edge_index.unbind(1)
        out[u, r] = src.detach().float().cpu()
        return out

    def node_scores(self) -> Float[Tensor, "U"]:
        """Each sender's summed outgoing edge scores: the attribution of patching that sender's whole output
        (every receiver reads it), in sender order."""
        out = torch.zeros(self.graph.n_senders, dtype=self.values.dtype)
        return out.index_add(0, self.graph.edge_index[:, 0], self.values.cpu())

    def ranking(self) -> list[int]:
        """Edge indices by decreasing ``|score|`` (ties keep graph order)."""
        return sorted(range(len(self.values)), key=lambda e: -abs(float(self.values[e])))

    def top(self, k: int) -> list[str]:
        """Labels of the ``k`` edges with the largest ``|score|``."""
        return [self.graph.edges[e].label for e in self.ranking()[:k]]


def correlations(estimate: Tensor, exact: Tensor) -> tuple[float, float]:
    """Pearson and Spearman correlation of two maps over their entries (NaN where either is constant)."""
    x = estimate.detach().double().cpu().reshape(-1).numpy()
    y = exact.detach().double().cpu().reshape(-1).numpy()

    def pearson(a: np.ndarray, b: np.ndarray) -> float:
        a, b = a - a.mean(), b - b.mean()
        den = float(np.sqrt((a * a).sum() * (b * b).sum()))
        return float((a * b).sum() / den) if den > 0 else float("nan")

    def ranks(a: np.ndarray) -> np.ndarray:
        from scipy.stats import rankdata

        return rankdata(a)

    return pearson(x, y), pearson(ranks(x), ranks(y))


# ----------------------------------------------------------------------------- gradients


def _check(
    model: HookedDecisionTransformer, clean: DTInputs, corrupted: DTInputs, direction: str, steps: int
):
    if direction not in DIRECTIONS:
        raise AttributionError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if clean.shape != corrupted.shape:
        raise AttributionError(f"clean inputs {clean.shape} and corrupted inputs {corrupted.shape} differ")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise AttributionError(f"steps must be a positive integer, got {steps!r}")
    if steps > 1 and not torch.equal(clean.pad_mask, corrupted.pad_mask):
        raise AttributionError(
            "integrated gradients interpolate the embeddings under one attention mask: the clean and "
            "corrupted windows must pad the same timesteps"
        )
    if model.training:
        raise AttributionError("the model is in training mode; call model.eval() first")
    return (clean, corrupted) if direction == "noise" else (corrupted, clean)


def _grad_safe(metric: Metric) -> Metric:
    """``metric`` with its tensor fields cloned outside inference mode (a metric built under
    ``torch.inference_mode()``, e.g. from ``logit_diff`` of two recorded runs, holds tensors that autograd
    may not save)."""
    if not dataclasses.is_dataclass(metric):
        return metric
    with torch.inference_mode(False):
        changes = {
            f.name: getattr(metric, f.name).clone()
            for f in dataclasses.fields(metric)
            if isinstance(getattr(metric, f.name), Tensor)
        }
    return dataclasses.replace(metric, **changes) if changes else metric


def _metric_values(metric: Metric, logits: Tensor, B: int) -> Tensor:
    values = metric(logits)
    if not isinstance(values, Tensor) or values.shape != (B,):
        shape = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
        raise AttributionError(
            f"metric must map logits [B, K, A] to one value per window ({B},), got {shape}"
        )
    return values


#: Up to this many windows, the base and source runs go through one stacked forward pass (tiny batches
#: cost the per-op overhead, not the arithmetic, so two windows cost about as much as one); above it the
#: source run goes alone and without a graph, so the backward pass only covers the base run.
_STACK_MAX_WINDOWS = 8


@dataclass
class _Runs:
    """The base and source runs (detached) and the metric's gradients at the base (or averaged on the path).

    ``acts`` / ``grads`` are keyed by ``(layer, site)`` (node sweeps) or by receiver group (edges, where
    ``acts`` holds the senders' writes under ``"senders"``), batch first."""

    base_metric: Tensor
    source_metric: Tensor
    base_acts: dict
    source_acts: dict
    grads: dict


def _gradient_runs(
    model: HookedDecisionTransformer,
    graph: ComputeGraph,
    base: DTInputs,
    source: DTInputs,
    metric: Metric,
    steps: int,
    split: bool,
    needed: set[str] = frozenset(),
) -> _Runs:
    """The base and source runs and ``steps`` backward passes on the path from the source's embeddings to
    the base's (the last point is the base run itself). With ``split`` the gradients are taken at the
    receivers' inputs and the activations are the senders' writes; otherwise at the ``needed`` sites.

    Only activation gradients are asked of autograd, so the backward pass computes no weight gradient
    (the model's parameters are left as they are)."""
    B = base.batch_size
    metric = _grad_safe(metric)
    with torch.inference_mode(False):  # normal tensors even when called under inference mode
        e, p, allowed = embeddings(model, DTInputs.cat([base, source]))
    kw = dict(split=split, senders=split, sites=not split, patterns="pattern" in needed)

    def take(run, rows: slice) -> dict:
        if split:
            return {"senders": run.senders[0, rows].detach()}
        return {key: t[0, rows].detach() for key, t in run.sites.items() if key[1] in needed}

    def backward(run, values: Tensor, rows: slice, weight: float, grads: dict) -> None:
        if split:
            keys, wrt = list(range(len(run.receivers))), list(run.receivers)
        else:
            keys = [key for key in run.sites if key[1] in needed]
            wrt = [run.sites[key] for key in keys]
        got = torch.autograd.grad(values.sum(), wrt, allow_unused=True)
        for key, x, g in zip(keys, wrt, got):
            g = (torch.zeros_like(x) if g is None else g)[0, rows]
            g = g if weight == 1 else g * weight
            grads[key] = g if key not in grads else grads[key] + g

    grads: dict = {}
    with torch.inference_mode(False), torch.enable_grad():
        if steps == 1 and B <= _STACK_MAX_WINDOWS:  # one forward of both runs, one backward from the base's
            run = run_graph(model, graph, e.requires_grad_(), p, allowed, **kw)
            base_metric = _metric_values(metric, run.logits[0, :B], B)
            source_metric = _metric_values(metric, run.logits[0, B:], B).detach()
            backward(run, base_metric, slice(0, B), 1.0, grads)
            return _Runs(
                base_metric.detach(), source_metric, take(run, slice(0, B)), take(run, slice(B, None)), grads
            )
        e_base, e_src, p_base, p_src = e[:B], e[B:], p[:B], p[B:]
        with torch.no_grad():
            src = run_graph(model, graph, e_src, p_src, allowed[B:], **kw)
            source_metric = _metric_values(metric, src.logits[0], B)
        for k in range(1, steps + 1):
            t = k / steps
            embed = (e_base if k == steps else e_src + t * (e_base - e_src)).detach().requires_grad_()
            pos = p_base if k == steps else p_src + t * (p_base - p_src)
            run = run_graph(model, graph, embed, pos, allowed[:B], **kw)
            values = _metric_values(metric, run.logits[0], B)
            backward(run, values, slice(None), 1 / steps, grads)
    return _Runs(values.detach(), source_metric, take(run, slice(None)), take(src, slice(None)), grads)


# ----------------------------------------------------------------------------- node sweeps


def _reduce(site: str, axes: tuple[str, ...], prod: Tensor) -> Tensor:
    """Per-window attribution ``[B, ...]`` of one layer from ``(a_source - a_base) * grad`` at a site."""
    if site == "pattern":  # [B, H, Pq, Pk]: one patch per query row
        out = prod.sum(-1)  # [B, H, Pq]
        return out if "dest_pos" in axes else out.sum(-1)
    if site == "post":  # [B, P, m]: a neuron is one number
        return prod if "pos" in axes else prod.sum(1)
    if site in ("q", "k", "v", "z"):  # [B, P, H, dh]
        out = prod.sum(-1)
        return out if "pos" in axes else out.sum(1)
    return prod.sum(-1)  # [B, P, d] -> [B, P]


@functools.lru_cache(maxsize=64)
def _labels(axes: tuple[str, ...], P: int, n_layers: int, n_heads: int, d_mlp: int) -> dict[str, list[str]]:
    sizes = {"layer": n_layers, "head": n_heads, "neuron": d_mlp}
    return {
        a: token_labels((P + 1) // 3)
        if a in ("pos", "dest_pos")
        else [f"{a[0].upper()}{i}" for i in range(sizes[a])]
        for a in axes
    }


def attribution_patching(
    model: HookedDecisionTransformer,
    clean: DTInputs,
    corrupted: DTInputs,
    metric: Metric,
    sweeps: Sequence[str] = ALL_NODES,
    *,
    direction: str = "denoise",
    steps: int = 1,
    exact: bool = True,
    max_bytes: int | None = None,
) -> dict[str, AttributionResult]:
    """Attribution patching of every patch of each of ``sweeps`` (:data:`SWEEPS`) from one gradient.

    Returns one :class:`AttributionResult` per sweep, laid out as the engine's sweep of that name. With
    ``exact``, each also holds the engine's exact sweep on the same inputs and the correlations.
    ``steps > 1``: integrated gradients along the input embeddings (module docstring).
    """
    base, source = _check(model, clean, corrupted, direction, steps)
    sweeps = list(dict.fromkeys(sweeps))
    for s in sweeps:
        if s not in _SWEEPS:
            raise AttributionError(f"unknown sweep {s!r}; expected one of {', '.join(SWEEPS)}")
        if model.cfg.attn_only and _SWEEPS[s][0] in _MLP_SITES:
            raise AttributionError(f"sweep {s!r} needs MLPs, but the model is attention-only")
    if not sweeps:
        raise AttributionError("no sweeps given")
    graph = ComputeGraph.of(model.cfg)
    needed = {_SWEEPS[s][0] for s in sweeps}
    runs = _gradient_runs(model, graph, base, source, metric, steps, split=False, needed=needed)
    P = clean.shape[1]
    engine = None
    if exact:
        kw = {} if max_bytes is None else {"max_bytes": max_bytes}
        engine = PatchingEngine(model, clean, corrupted, direction, **kw)
    results = {}
    for name in sweeps:
        site, axes = _SWEEPS[name]
        per_layer = []
        for l in range(model.cfg.n_layers):
            key = (l, site)
            red = _reduce(site, axes, (runs.source_acts[key] - runs.base_acts[key]) * runs.grads[key])
            by_pos = "pos" in axes or "dest_pos" in axes
            if by_pos and l == model.cfg.n_layers - 1 and site not in ("resid_pre", "k", "v"):
                # the last layer is computed at the state tokens only: every other row is 0
                dim = 2 if site == "pattern" else 1
                full = red.new_zeros(*red.shape[:dim], P, *red.shape[dim + 1 :])
                full.index_copy_(dim, torch.arange(1, P, 3, device=red.device), red)
                red = full
            per_layer.append(red)
        per_window = torch.stack(per_layer).movedim(1, -1)  # [L, ..., B]
        result = AttributionResult(
            name=name,
            method="attribution" if steps == 1 else "integrated-gradients",
            direction=direction,
            steps=steps,
            values=per_window.mean(-1),
            per_window=per_window,
            axis_names=axes,
            axis_labels={
                a: list(v)
                for a, v in _labels(axes, P, model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_mlp).items()
            },
            base=runs.base_metric,
            source=runs.source_metric,
        )
        if engine is not None:
            with torch.no_grad():
                effect = engine.sweep(name, metric).per_window - metric(engine.base.logits)
            result.exact_per_window = effect
            result.exact = effect.mean(-1)
            result.correlation, result.rank_correlation = correlations(result.values, result.exact)
        results[name] = result
    return results


# ----------------------------------------------------------------------------- edges


def edge_attribution_patching(
    model: HookedDecisionTransformer,
    clean: DTInputs,
    corrupted: DTInputs,
    metric: Metric,
    *,
    direction: str = "noise",
    steps: int = 1,
    exact: bool = False,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> EdgeAttributionResult:
    """EAP (``steps=1``) or EAP-IG (``steps > 1``) score of every edge of the model's graph.

    ``exact`` also path-patches every edge (:func:`exact_edge_patching`) and reports the correlations.
    """
    base, source = _check(model, clean, corrupted, direction, steps)
    graph = ComputeGraph.of(model.cfg)
    runs = _gradient_runs(model, graph, base, source, metric, steps, split=True)
    delta = runs.source_acts["senders"] - runs.base_acts["senders"]  # [B, P, U, d]
    parts = []
    for key in sorted(runs.grads):  # receiver groups in order; the last layer's read the state tokens only
        g = runs.grads[key]  # [B, rows, n, d]
        d_rows = delta if g.shape[1] == delta.shape[1] else delta[:, 1::3]
        parts.append(torch.einsum("bpud,bprd->urb", d_rows, g))
    scores = torch.cat(parts, 1)  # [U, R, B]
    u, r = graph.edge_index.unbind(1)
    per_window = scores[u.to(scores.device), r.to(scores.device)]  # [E, B]
    method = "attribution" if steps == 1 else "integrated-gradients"
    result = EdgeAttributionResult(
        name="edges",
        method=method,
        direction=direction,
        steps=steps,
        values=per_window.mean(-1),
        per_window=per_window,
        axis_names=("edge",),
        axis_labels={"edge": graph.edge_labels()},
        base=runs.base_metric,
        source=runs.source_metric,
        graph=graph,
    )
    if exact:
        effect = exact_edge_patching(
            model, clean, corrupted, metric, direction=direction, max_bytes=max_bytes
        )
        result.exact_per_window = effect
        result.exact = effect.mean(-1)
        result.correlation, result.rank_correlation = correlations(result.values, result.exact)
    return result


eap = partial(edge_attribution_patching, steps=1)
eap_ig = partial(edge_attribution_patching, steps=8)


def _bytes_per_run(model: HookedDecisionTransformer, graph: ComputeGraph, P: int) -> int:
    """A generous estimate of the activations one window of one masked graph run holds."""
    c = model.cfg
    per_layer = P * (4 * 3 * c.n_heads * c.d_model + 3 * graph.n_senders * c.d_model + 4 * c.d_mlp)
    return 4 * (c.n_layers * (per_layer + 2 * c.n_heads * P * P) + 4 * P * c.d_model)


def masked_runs(
    model: HookedDecisionTransformer,
    graph: ComputeGraph,
    inputs: DTInputs,
    ablate: Bool[Tensor, "N U R"],
    replacement: Float[Tensor, "Bs P U d"],
    metric: Metric,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Float[Tensor, "N B"]:
    """The metric of ``inputs`` under each of ``N`` edge ablations (:func:`~dtinterp.interp.graph.run_graph`),
    in chunks of about ``max_bytes`` of activations, without gradients."""
    B, P = inputs.shape
    embed, pos_embed, allowed = embeddings(model, inputs)
    cap = max(1, max_bytes // (_bytes_per_run(model, graph, P) * B))
    out = []
    with torch.no_grad():
        for n0 in range(0, ablate.shape[0], cap):
            run = run_graph(
                model, graph, embed, pos_embed, allowed, ablate=ablate[n0 : n0 + cap], replacement=replacement
            )
            values = metric(run.logits)
            if values.shape != (run.logits.shape[0], B):
                raise AttributionError(
                    f"metric returned shape {tuple(values.shape)} for logits {tuple(run.logits.shape)}; "
                    "it must map [..., B, K, A] to [..., B]"
                )
            out.append(values)
    return torch.cat(out)


def exact_edge_patching(
    model: HookedDecisionTransformer,
    clean: DTInputs,
    corrupted: DTInputs,
    metric: Metric,
    edges: Sequence[int] | None = None,
    *,
    direction: str = "noise",
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Float[Tensor, "E B"]:
    """Exact effect (patched - base) of path-patching each edge alone: receiver ``v`` reads sender ``u``'s
    source-run output, everything else is live. Equal to
    :func:`~dtinterp.interp.path_patching.path_patch` of ``[u] -> [v]`` (tested), batched on the graph.
    ``edges``: indices into the graph's edges (default: all)."""
    base, source = _check(model, clean, corrupted, direction, 1)
    B = base.batch_size
    graph = ComputeGraph.of(model.cfg)
    idx = torch.arange(graph.n_edges) if edges is None else torch.as_tensor(list(edges), dtype=torch.long)
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= graph.n_edges):
        raise AttributionError(f"edge index out of range 0..{graph.n_edges - 1}")
    ablate = torch.zeros(len(idx), graph.n_senders, graph.n_receivers, dtype=torch.bool)
    ablate[torch.arange(len(idx)), graph.edge_index[idx, 0], graph.edge_index[idx, 1]] = True
    replacement = sender_values(model, graph, source)
    with torch.no_grad():
        e, p, allowed = embeddings(model, base)
        base_metric = _metric_values(metric, run_graph(model, graph, e, p, allowed, split=False).logits[0], B)
    patched = masked_runs(model, graph, base, ablate.to(e.device), replacement, metric, max_bytes)
    return patched - base_metric


__all__ = [
    "ALL_NODES",
    "DEFAULT_MAX_BYTES",
    "SWEEPS",
    "AttributionError",
    "AttributionResult",
    "EdgeAttributionResult",
    "attribution_patching",
    "correlations",
    "eap",
    "eap_ig",
    "edge_attribution_patching",
    "exact_edge_patching",
    "masked_runs",
]
