"""Circuit discovery: a hand-built circuit is found, and circuit evaluation agrees with plain ablation."""

from __future__ import annotations

import dataclasses
import functools

import pytest
import torch

from dtinterp.interp.ablation import ablate
from dtinterp.interp.attribution_patching import edge_attribution_patching
from dtinterp.interp.circuit_discovery import (
    Circuit,
    CircuitError,
    evaluate_circuits,
    faithfulness_curve,
    replacement_values,
    sender_hooks,
)
from dtinterp.interp.graph import ComputeGraph
from dtinterp.interp.metrics import logit_diff
from dtinterp.model import DTInputs, HookedDecisionTransformer
from tests.interp.tiny import make_inputs, make_model

CHAIN = {"state -> L0H0.v", "L0H0 -> L1H1.v", "L1H1 -> logits"}


@functools.cache
def pair() -> tuple[DTInputs, DTInputs]:
    """Clean windows and their partners with other observations (same returns, actions, timesteps)."""
    clean = make_inputs(4)
    return clean, dataclasses.replace(clean, obs=make_inputs(4, seed=1).obs)


@functools.cache
def chain_model() -> HookedDecisionTransformer:
    """The logits depend on the input through exactly one chain: state -> L0H0.v -> L1H1.v -> logits.

    Attention only, no LayerNorm, W_Q = W_K = 0 (fixed patterns). d_model is split into E (0-5), A (6-10)
    and B (11-15). Every embedding lives in E; head 0.0 reads E and writes A; head 1.1 reads only A and
    writes only B; the unembedding reads only B; heads 0.1 and 1.0 write nothing.
    """
    model = make_model(attn_only=True, normalization_type=None)
    E, A, B = slice(0, 6), slice(6, 11), slice(11, 16)
    with torch.no_grad():
        for p in (model.W_rtg, model.b_rtg, model.state_embed.b_state):
            p[6:] = 0.0
        model.state_embed.W_state[..., 6:] = 0.0
        model.state_embed.W_dir[:, 6:] = 0.0
        model.action_embed.weight[:, 6:] = 0.0
        model.time_embed.weight[:, 6:] = 0.0
        for blk in model.blocks:
            blk.attn.W_Q.zero_()
            blk.attn.W_K.zero_()
        a0, a1 = model.blocks[0].attn, model.blocks[1].attn
        a0.W_V[0, A] = a0.W_V[0, B] = 0.0
        a0.W_O[0, :, E] = a0.W_O[0, :, B] = 0.0
        a0.W_O[1] = 0.0
        a1.W_V[1, E] = a1.W_V[1, B] = 0.0
        a1.W_O[1, :, E] = a1.W_O[1, :, A] = 0.0
        a1.W_O[0] = 0.0
        model.W_U[:11] = 0.0
    return model


def metric_for(model: HookedDecisionTransformer):
    clean, corrupted = pair()
    with torch.inference_mode():
        return logit_diff(model(clean), model(corrupted))


def test_a_hand_built_circuit_is_recovered():
    model = chain_model()
    clean, corrupted = pair()
    metric = metric_for(model)
    scores = edge_attribution_patching(model, clean, corrupted, metric)
    assert set(scores.top(3)) == CHAIN
    assert scores.values.abs().sort(descending=True).values[3] < 1e-5  # nothing else carries anything

    curve = faithfulness_curve(model, clean, corrupted, metric, scores)
    assert curve.minimal_k == 3
    assert set(curve.minimal_circuit) == CHAIN
    assert curve.faithfulness[3] == pytest.approx(1.0, abs=1e-4)
    assert curve.faithfulness[-1] == pytest.approx(1.0, abs=1e-4)
    assert max(curve.faithfulness[:3]) < 0.9  # any two of the three edges are not enough
    with torch.inference_mode():
        corrupted_metric = float(metric(model(corrupted)).mean())
    assert curve.metric_empty == pytest.approx(corrupted_metric, abs=1e-4)  # resample from the partners
    assert curve.ks == list(range(scores.graph.n_edges + 1))

    nodes = faithfulness_curve(model, clean, corrupted, metric, scores, level="node")
    assert nodes.minimal_k == 3
    assert set(nodes.minimal_circuit) == {"state", "L0H0", "L1H1"}
    assert set(nodes.circuit(3).nodes) == {"state", "L0H0", "L1H1"}


def test_mean_ablated_circuits_match_hook_ablation():
    model = make_model()
    clean, corrupted = pair()
    metric = metric_for(model)
    graph = ComputeGraph(model.cfg)
    replacement = replacement_values(model, graph, clean, "mean")
    keep = ["state", "L0H1", "MLP1"]
    others = [s.name for s in graph.senders if s.label not in keep]
    node_circuit = Circuit.from_nodes(graph, keep)
    full, empty, node_level = evaluate_circuits(
        model, clean, [Circuit.from_nodes(graph, range(graph.n_senders)), Circuit.from_edges(graph, []), node_circuit],
        metric, replacement,
    )  # fmt: skip
    with torch.inference_mode():
        assert torch.allclose(full, metric(model(clean)), atol=1e-5)
    expected = ablate(model, clean, others, metric, "mean", clean).ablated
    assert torch.allclose(node_level, expected, atol=1e-4)
    assert not torch.allclose(node_level, full, atol=1e-3)
    # the empty circuit: every sender replaced by its mean
    every = [s.name for s in graph.senders]
    assert torch.allclose(empty, ablate(model, clean, every, metric, "mean", clean).ablated, atol=1e-4)
    assert sender_hooks(graph)[:3] == ["hook_embed", "hook_pos_embed", "blocks.0.attn.hook_z"]


def test_edge_circuits_only_cut_their_own_edges():
    model = make_model()
    clean, corrupted = pair()
    metric = metric_for(model)
    graph = ComputeGraph(model.cfg)
    replacement = replacement_values(model, graph, clean, "resample", corrupted)
    every = list(range(graph.n_edges))
    one_cut = [e for e in every if graph.edges[e].label != "L0H1 -> L1H0.v"]
    full, cut = evaluate_circuits(
        model,
        clean,
        [Circuit.from_edges(graph, every), Circuit.from_edges(graph, one_cut)],
        metric,
        replacement,
    )
    with torch.inference_mode():
        assert torch.allclose(full, metric(model(clean)), atol=1e-5)
    scores = edge_attribution_patching(model, clean, corrupted, metric, exact=True)
    e = graph.parse_edge("L0H1 -> L1H0.v")
    assert torch.allclose(cut - full, scores.exact_per_window[e], atol=1e-5)  # cutting one edge = patching it


def test_circuits_round_trip_through_json():
    graph = ComputeGraph(make_model().cfg)
    c = Circuit.from_edges(graph, ["L0H0 -> L1H1.v", "MLP1 -> logits"])
    assert c.n_edges == 2
    back = Circuit.from_dict(graph, c.to_dict())
    assert torch.equal(back.kept, c.kept) and back.edge_labels() == ["L0H0 -> L1H1.v", "MLP1 -> logits"]
    n = Circuit.from_nodes(graph, ["L0H1", "blocks.1.hook_mlp_out"])
    assert Circuit.from_dict(graph, n.to_dict()).nodes == ["L0H1", "MLP1"]


def test_bad_requests_are_one_line_errors():
    model = make_model()
    clean, corrupted = pair()
    metric = metric_for(model)
    graph = ComputeGraph(model.cfg)
    with pytest.raises(CircuitError, match="level must be one of"):
        faithfulness_curve(model, clean, corrupted, metric, torch.zeros(3), level="heads")
    with pytest.raises(CircuitError, match=f"must hold {graph.n_edges} values"):
        faithfulness_curve(model, clean, corrupted, metric, torch.zeros(3))
    with pytest.raises(CircuitError, match="ablation must be one of"):
        faithfulness_curve(model, clean, corrupted, metric, torch.zeros(graph.n_edges), ablation="zero")
    with pytest.raises(CircuitError, match="needs reference windows"):
        faithfulness_curve(model, clean, None, metric, torch.zeros(graph.n_edges))
    with pytest.raises(CircuitError, match="k must lie in"):
        faithfulness_curve(model, clean, corrupted, metric, torch.zeros(graph.n_edges), ks=[500])
