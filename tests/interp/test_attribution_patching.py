"""Attribution patching, EAP and EAP-IG: exact where the metric is linear, first-order elsewhere."""

from __future__ import annotations

import functools

import pytest
import torch

from dtinterp.interp.attribution_patching import (
    SWEEPS,
    AttributionError,
    attribution_patching,
    eap_ig,
    edge_attribution_patching,
    exact_edge_patching,
)
from dtinterp.interp.graph import ComputeGraph, GraphError, embeddings, run_graph
from dtinterp.interp.metrics import LogitDiff, logit_diff
from dtinterp.interp.patching import hook_name
from dtinterp.interp.path_patching import path_patch
from dtinterp.model import DTInputs, HookedDecisionTransformer
from dtinterp.model.inputs import token_labels
from tests.interp.tiny import linearize, make_inputs, make_model


@functools.cache
def pair() -> tuple[DTInputs, DTInputs]:
    clean = make_inputs()
    corrupted = clean.clone()
    corrupted.rtg = 1.0 - corrupted.rtg
    corrupted.obs[:, :, 2, 2, 0] = (corrupted.obs[:, :, 2, 2, 0] + 3) % 10
    return clean, corrupted


def metric_for(model: HookedDecisionTransformer) -> LogitDiff:
    clean, corrupted = pair()
    with torch.inference_mode():  # the metric's tensors are inference tensors: must still work
        return logit_diff(model(clean), model(corrupted))


@functools.cache
def linear_model() -> HookedDecisionTransformer:
    """A model whose logits are affine in every activation the sweeps patch.

    No LayerNorm; W_Q = W_K = 0, so every attention pattern is uniform over the allowed keys whatever the
    residual stream; small MLP input weights and large biases, so every ReLU is on in every run (checked
    below).
    """
    return linearize(make_model(normalization_type=None))


@functools.cache
def nonlinear_model() -> HookedDecisionTransformer:
    return make_model()


def test_the_linear_model_is_linear():
    model = linear_model()
    for inputs in pair():
        _, cache = model.run_with_cache(inputs)
        for l in range(2):
            assert (cache[f"blocks.{l}.mlp.hook_pre"] > 0).all()


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_attribution_equals_exact_patching_where_the_metric_is_linear(direction):
    model = linear_model()
    clean, corrupted = pair()
    results = attribution_patching(model, clean, corrupted, metric_for(model), SWEEPS, direction=direction)
    assert set(results) == set(SWEEPS)
    for name, r in results.items():
        assert r.values.shape == r.exact.shape, name
        scale = r.exact_per_window.abs().max()
        assert (r.per_window - r.exact_per_window).abs().max() <= 1e-4 * max(1.0, float(scale)), name
        assert torch.allclose(r.values, r.per_window.mean(-1))
    # not vacuous: the maps that can move the metric do, and then the correlation is 1
    for name in ("resid_pre", "head_out_by_pos", "head_v_by_pos", "neuron_by_pos", "mlp_out"):
        assert results[name].exact.abs().max() > 1e-2, name
        assert results[name].correlation == pytest.approx(1.0, abs=1e-4), name
    # queries and keys cannot matter: patterns do not read the residual stream
    assert results["head_q_by_pos"].exact.abs().max() < 1e-6
    assert results["head_pattern_all_pos"].values.abs().max() < 1e-6


def test_edge_attribution_equals_path_patching_where_the_metric_is_linear():
    model = linear_model()
    clean, corrupted = pair()
    metric = metric_for(model)
    result = edge_attribution_patching(model, clean, corrupted, metric, exact=True)
    assert (result.per_window - result.exact_per_window).abs().max() <= 1e-4
    assert result.correlation == pytest.approx(1.0, abs=1e-4)
    assert result.exact.abs().max() > 1e-2
    # the batched exact effect of an edge is path patching of that edge
    for label in ("L0H1 -> L1H0.v", "L0H0 -> MLP0.in", "MLP0 -> logits", "L1H1 -> MLP1.in"):
        e = result.graph.parse_edge(label)
        edge = result.graph.edges[e]
        pp = path_patch(model, clean, corrupted, [edge.sender.name], [edge.receiver.name], metric)
        assert torch.allclose(pp.per_window - pp.clean, result.per_window[e], atol=1e-4), label
    # integrated gradients of an affine function are its plain gradient
    ig = eap_ig(model, clean, corrupted, metric, steps=4)
    assert torch.allclose(ig.per_window, result.per_window, atol=1e-4)
    assert ig.method == "integrated-gradients" and ig.steps == 4


def test_batched_edge_patching_equals_path_patching_in_a_nonlinear_model():
    model = nonlinear_model()
    clean, corrupted = pair()
    metric = metric_for(model)
    graph = ComputeGraph(model.cfg)
    labels = ["L0H0 -> L1H1.q", "L0H1 -> L1H0.k", "MLP0 -> L1H1.v", "L1H0 -> MLP1.in", "MLP1 -> logits"]
    ids = [graph.parse_edge(x) for x in labels]
    exact = exact_edge_patching(model, clean, corrupted, metric, ids, max_bytes=1)  # one edge per chunk
    for row, e in zip(exact, ids):
        edge = graph.edges[e]
        pp = path_patch(model, clean, corrupted, [edge.sender.name], [edge.receiver.name], metric)
        assert torch.allclose(pp.per_window - pp.clean, row, atol=2e-5), edge.label
        assert row.abs().max() > 1e-4, edge.label


def test_attribution_is_the_first_order_effect_of_a_small_patch():
    model = nonlinear_model()
    clean, _ = pair()
    nudged = clean.clone()
    nudged.rtg = nudged.rtg + 1e-2
    metric = LogitDiff(0, 1)
    for name, r in attribution_patching(
        model, clean, nudged, metric, ("resid_pre", "head_out_by_pos")
    ).items():
        err = (r.values - r.exact).abs().max()
        assert err <= 0.02 * r.exact.abs().max(), name
        assert r.correlation > 0.999, name
    edges = edge_attribution_patching(model, clean, nudged, metric, exact=True)
    assert (edges.values - edges.exact).abs().max() <= 0.02 * edges.exact.abs().max()


def test_node_scores_are_the_attribution_of_patching_a_whole_sender():
    model = nonlinear_model()
    clean, corrupted = pair()
    metric = metric_for(model)
    edges = edge_attribution_patching(model, clean, corrupted, metric, direction="noise")
    nodes = attribution_patching(
        model, clean, corrupted, metric, ("head_out_all_pos", "mlp_out"), direction="noise", exact=False
    )
    scores, graph = edges.node_scores(), edges.graph
    for l in range(2):
        for h in range(2):
            expected = nodes["head_out_all_pos"].values[l, h]
            assert float(scores[graph.sender_index(f"L{l}H{h}")]) == pytest.approx(float(expected), abs=1e-5)
        expected = nodes["mlp_out"].values[l].sum()
        assert float(scores[graph.sender_index(f"MLP{l}")]) == pytest.approx(float(expected), abs=1e-5)


def test_integrated_gradients_over_the_inputs_are_complete():
    """Summed over every edge out of the embeddings, EAP-IG recovers the whole change of the metric."""
    model = nonlinear_model()
    clean, corrupted = pair()
    metric = metric_for(model)
    ig = edge_attribution_patching(model, clean, corrupted, metric, steps=64)
    from_inputs = ig.per_window[ig.graph.edge_index[:, 0] < 4].sum(0)  # senders 0-3: the embeddings
    total = ig.source - ig.base
    assert total.abs().min() > 0.05
    assert (from_inputs - total).abs().max() <= 0.03 * total.abs().max()
    plain = edge_attribution_patching(model, clean, corrupted, metric)
    assert (plain.per_window[plain.graph.edge_index[:, 0] < 4].sum(0) - total).abs().max() > (
        from_inputs - total
    ).abs().max()


def test_the_graph_forward_is_the_model():
    for kw in ({}, dict(attn_only=True, normalization_type=None), dict(normalization_type="LNPre")):
        model = make_model(**kw)
        inputs = make_inputs()
        graph = ComputeGraph(model.cfg)
        embed, pos_embed, allowed = embeddings(model, inputs)
        with torch.no_grad():
            _, cache = model.run_with_cache(inputs)
            for split in (True, False):
                run = run_graph(
                    model, graph, embed, pos_embed, allowed, split=split, sites=True, patterns=True
                )
                assert torch.allclose(run.logits[0], model(inputs), atol=1e-4)
                for (layer, site), t in run.sites.items():
                    ref = cache[hook_name(layer, site)]
                    if layer == model.cfg.n_layers - 1 and site not in (
                        "resid_pre",
                        "k",
                        "v",
                        "embed",
                        "pos_embed",
                    ):
                        ref = ref[:, :, 1::3] if site == "pattern" else ref[:, 1::3]
                    assert torch.allclose(t[0], ref, atol=1e-4), (kw, site)
            # the senders' writes sum to the final residual stream at the state tokens
            L = model.cfg.n_layers
            bias = sum(model.blocks[l].attn.b_O for l in range(L))
            final = cache[f"blocks.{L - 1}.hook_resid_post"][:, 1::3]
            assert torch.allclose(run.senders[0, :, 1::3].sum(2) + bias, final, atol=1e-4)


def test_graph_names_and_labels():
    graph = ComputeGraph(make_model().cfg)
    assert graph.sender_labels() == [
        "rtg",
        "state",
        "action",
        "time",
        "L0H0",
        "L0H1",
        "MLP0",
        "L1H0",
        "L1H1",
        "MLP1",
    ]
    assert graph.receiver_labels()[:7] == [
        "L0H0.q",
        "L0H1.q",
        "L0H0.k",
        "L0H1.k",
        "L0H0.v",
        "L0H1.v",
        "MLP0.in",
    ]
    assert graph.receivers[-1].name == "logits"
    # 4 embeddings feed all 15 receivers; layer-0 heads feed MLP0, layer 1 (6 + 1) and the logits; ...
    assert graph.n_edges == 4 * 15 + 2 * 9 + 8 + 2 * 2 + 1
    e = graph.parse_edge("blocks.0.attn.hook_z:h1 -> blocks.1.attn.hook_v:h0")
    assert graph.edges[e].label == "L0H1 -> L1H0.v"
    assert graph.senders_of("blocks.1.hook_attn_out") == [7, 8]
    assert graph.senders_of("hook_embed") == [0, 1, 2]
    with pytest.raises(GraphError, match="no edge L1H0 -> L0H0.q"):
        graph.parse_edge("L1H0 -> L0H0.q")
    with pytest.raises(GraphError, match="not a node"):
        graph.senders_of("blocks.0.mlp.hook_post:n3")


def test_results_carry_labels_in_the_engines_layout():
    model = nonlinear_model()
    clean, corrupted = pair()
    r = attribution_patching(
        model, clean, corrupted, metric_for(model), ("head_out_by_pos", "head_pattern_by_pos")
    )
    heads = r["head_out_by_pos"]
    assert heads.axis_names == ("layer", "pos", "head")
    assert heads.axis_labels == {"layer": ["L0", "L1"], "pos": token_labels(3), "head": ["H0", "H1"]}
    assert heads.per_window.shape == (2, 8, 2, 3)
    assert r["head_pattern_by_pos"].axis_names == ("layer", "head", "dest_pos")
    edges = edge_attribution_patching(model, clean, corrupted, metric_for(model))
    assert edges.axis_labels["edge"][0] == "rtg -> L0H0.q"
    m = edges.matrix()
    assert torch.isnan(m[7, 0]) and not torch.isnan(m[0, 0])  # L1H0 does not feed L0H0.q
    assert len(edges.top(3)) == 3


def test_works_inside_inference_mode():
    model = nonlinear_model()
    clean, corrupted = pair()
    metric = metric_for(model)
    expected = edge_attribution_patching(model, clean, corrupted, metric).per_window
    with torch.inference_mode():
        got = edge_attribution_patching(model, clean, corrupted, metric).per_window
        nodes = attribution_patching(model, clean, corrupted, metric, ["resid_pre"], exact=False)
    assert torch.allclose(got, expected) and nodes["resid_pre"].values.abs().max() > 0


def test_bad_requests_are_one_line_errors():
    model = nonlinear_model()
    clean, corrupted = pair()
    metric = metric_for(model)
    with pytest.raises(AttributionError, match="unknown sweep 'heads'"):
        attribution_patching(model, clean, corrupted, metric, ["heads"])
    with pytest.raises(AttributionError, match="steps must be a positive integer"):
        edge_attribution_patching(model, clean, corrupted, metric, steps=0)
    other = corrupted.clone()
    other.pad_mask[1, 0] = False
    with pytest.raises(AttributionError, match="pad the same timesteps"):
        edge_attribution_patching(model, clean, other, metric, steps=2)
    with pytest.raises(AttributionError, match="differ"):
        attribution_patching(model, clean, corrupted[0], metric)
    with pytest.raises(AttributionError, match="one value per window"):
        attribution_patching(model, clean, corrupted, lambda logits: logits.sum())
    with pytest.raises(AttributionError, match="attention-only"):
        attribution_patching(make_model(attn_only=True), clean, corrupted, metric, ["neuron_by_pos"])
