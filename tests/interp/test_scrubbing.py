"""Causal scrubbing of node-level hypotheses: exact where the answer is known by construction."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch

from dtinterp.data.collect import collect
from dtinterp.interp.graph import ComputeGraph, embeddings, run_graph
from dtinterp.interp.scrubbing import (
    Hypothesis,
    HypothesisError,
    HypothesisNode,
    WindowSet,
    agreeing_partners,
    build_metric,
    feature_values,
    features,
    load_hypothesis,
    scrub,
    scrubbed_logits,
)
from dtinterp.model import DTInputs, HookedDecisionTransformer
from dtinterp.model.checkpoint import Checkpoint
from envs import EnvSpec
from tests.interp.tiny import make_inputs, make_model


@functools.cache
def readout_model() -> HookedDecisionTransformer:
    """Attention only, no LayerNorm: the unembedding reads coordinates 8-15, which only head 1.1 writes."""
    model = make_model(attn_only=True, normalization_type=None)
    with torch.no_grad():
        for p in (model.W_rtg, model.b_rtg, model.state_embed.b_state):
            p[8:] = 0.0
        model.state_embed.W_state[..., 8:] = 0.0
        model.state_embed.W_dir[:, 8:] = 0.0
        model.action_embed.weight[:, 8:] = 0.0
        model.time_embed.weight[:, 8:] = 0.0
        for l, blk in enumerate(model.blocks):
            for h in range(2):
                if (l, h) != (1, 1):
                    blk.attn.W_O[h, :, 8:] = 0.0
        model.W_U[:8] = 0.0
    return model


def hypothesis(*nodes: tuple[str, str], metric=None, treat_rest="resample") -> Hypothesis:
    return Hypothesis(
        "test", [HypothesisNode(c, r) for c, r in nodes], metric or {"kind": "logit_diff"}, treat_rest
    )


def test_listing_every_node_with_its_window_recovers_everything():
    model = make_model()
    windows = WindowSet(make_inputs(24))
    graph = ComputeGraph(model.cfg)
    every = hypothesis(*[(s.name, "window") for s in graph.senders], metric={"kind": "loss"})
    result = scrub(model, windows, every, n_random=0)
    assert torch.allclose(result.scrubbed, result.clean, atol=1e-5)
    assert result.recovered == pytest.approx(1.0, abs=1e-4)
    assert result.metric_random > result.metric_clean  # random windows raise the loss
    assert result.nodes[0] == ("rtg", "window") and len(result.nodes) == graph.n_senders


def test_only_the_head_the_logits_read_matters():
    model = readout_model()
    windows = WindowSet(make_inputs(B=96))
    right = scrub(model, windows, hypothesis(("L1H1", "window")), n_random=24, n_draws=32)
    assert right.recovered == pytest.approx(1.0, abs=1e-4)
    assert right.ci[0] == pytest.approx(1.0, abs=1e-3) and right.ci[1] == pytest.approx(1.0, abs=1e-3)
    wrong = scrub(model, windows, hypothesis(("blocks.0.attn.hook_z:h0", "window")), n_random=0, n_draws=32)
    assert abs(wrong.recovered) < 0.2
    assert wrong.ci[0] < 0 < wrong.ci[1]  # indistinguishable from random inputs
    assert torch.equal(wrong.random, right.random)  # one random reference for every hypothesis
    assert any(nodes == ["L1H1"] for nodes in right.random_circuits)
    for nodes, share in zip(right.random_circuits, right.random_recovered):  # the random baseline
        if nodes == ["L1H1"]:
            assert share == pytest.approx(1.0, abs=1e-4)
        else:
            assert abs(share) < 0.2
    assert right.baseline_mean < 0.5


def test_agreeing_windows_are_drawn_by_the_feature():
    model = readout_model()
    base = make_inputs(B=12)
    inputs = DTInputs.cat([base, base.clone()])  # every window twice
    windows = WindowSet(inputs, {"twin": np.arange(24) % 12})
    twins = scrub(model, windows, hypothesis(("L1H1", "twin")), n_random=0)
    assert twins.recovered == pytest.approx(1.0, abs=1e-4)  # the partner is always the twin
    assert twins.unmatched == {"L1H1": 0.0}
    anything = scrub(model, windows, hypothesis(("L1H1", "rtg_bucket:1")), n_random=0)
    assert anything.recovered < 0.5  # one bucket: every window agrees, so this is a random draw


def test_agreeing_partners():
    rng = np.random.default_rng(0)
    codes = np.array([3, 1, 3, 2, 3, 1])
    partners, alone = agreeing_partners(codes, rng, n_draws=50)
    assert (codes[partners] == codes).all()
    assert (partners[:, [0, 1, 2, 4, 5]] != np.array([0, 1, 2, 4, 5])).all()  # never itself ...
    assert (partners[:, 3] == 3).all() and alone.tolist() == [False, False, False, True, False, False]
    assert set(partners[:, 0].tolist()) == {2, 4}  # ... and uniform over the others


def test_scrubbed_logits_are_the_model_with_every_node_patched():
    model = make_model()
    inputs = make_inputs(B=6)
    graph = ComputeGraph(model.cfg)
    with torch.no_grad():
        e, p, allowed = embeddings(model, inputs)
        writes = run_graph(model, graph, e, p, allowed, split=False).senders[0]  # [W, P, U, d]
        _, cache = model.run_with_cache(inputs)
    sources = torch.randint(0, 6, (graph.n_senders, 6), generator=torch.Generator().manual_seed(1))
    got = scrubbed_logits(model, writes[:, 1::3], sources)

    kinds = torch.arange(inputs.shape[1]) % 3

    def embed_hook(t, hook):
        return torch.stack([cache["hook_embed"][sources[int(kinds[q])], q] for q in range(t.shape[1])], 1)

    def pos_hook(t, hook):
        return cache["hook_pos_embed"][sources[3]]

    def z_hook(layer):
        def fn(t, hook):
            u0 = graph.sender_index(f"L{layer}H0")
            return torch.stack([cache[hook.name][sources[u0 + h], :, h] for h in range(2)], 2)

        return fn

    def mlp_hook(layer):
        return lambda t, hook: cache[hook.name][sources[graph.sender_index(f"MLP{layer}")]]

    hooks = [("hook_embed", embed_hook), ("hook_pos_embed", pos_hook)]
    for l in range(2):
        hooks += [(f"blocks.{l}.attn.hook_z", z_hook(l)), (f"blocks.{l}.hook_mlp_out", mlp_hook(l))]
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        expected = model(inputs)
    assert torch.allclose(got, expected, atol=1e-4)


def test_metrics_a_hypothesis_can_name():
    model = make_model()
    inputs = make_inputs(B=5)
    with torch.no_grad():
        logits = model(inputs)
    loss = build_metric({"kind": "loss"}, model, inputs, logits)(logits)
    logprob = build_metric({"kind": "logprob", "action": "recorded"}, model, inputs, logits)(logits)
    assert torch.allclose(loss, -logprob)
    diff = build_metric({"kind": "logit_diff"}, model, inputs, logits)(logits)
    assert (diff >= 0).all()  # the clean top action against the runner-up
    assert torch.allclose(
        build_metric({"kind": "kl"}, model, inputs, logits)(logits), torch.zeros(5), atol=1e-6
    )
    forward = build_metric({"kind": "logprob", "action": "forward", "k": 1}, model, inputs, logits)(logits)
    assert torch.allclose(forward, logits[:, 1].log_softmax(-1)[:, 2])
    with pytest.raises(HypothesisError, match="unknown action 'jump'"):
        build_metric({"kind": "logprob", "action": "jump"}, model, inputs, logits)


def test_hypotheses_round_trip_through_json(tmp_path):
    h = Hypothesis(
        "cue", [HypothesisNode("blocks.0.attn.hook_z:h1", "cue_object"), HypothesisNode("L1H0", "window")],
        {"kind": "logit_diff", "good": "left", "bad": "right"}, "mean", "the cue through head 0.1",
    )  # fmt: skip
    path = h.save(tmp_path / "h.json")
    assert load_hypothesis(path) == h
    assert json.loads(path.read_text())["nodes"][0] == {
        "component": "blocks.0.attn.hook_z:h1",
        "reads": "cue_object",
    }


BAD = [
    ([], "expected a JSON object"),
    ({"name": "x", "nodes": [], "treat_rest": "resample"}, "'nodes' must be a non-empty list"),
    ({"name": "x", "nodes": [{"component": "L0H0"}]}, r"nodes\[0\] must be an object with exactly"),
    ({"name": "x", "nodes": [{"component": "L0H0", "reads": 3}]}, r"nodes\[0\].reads must be a non-empty string"),
    ({"name": "x", "nodes": [{"component": "L0H0", "reads": "window"}], "treat_rest": "zero"}, "'treat_rest'"),
    ({"name": "x", "nodes": [{"component": "L0H0", "reads": "window"}], "metric": {"kind": "acc"}}, "'kind'"),
    ({"name": "x", "nodes": [{"component": "L0H0", "reads": "window"}], "metric": {"kind": "kl", "good": "left"}},
     "takes no key 'good'"),
    ({"name": "x", "nodes": [{"component": "L0H0", "reads": "window"}], "extra": 1}, "unknown key 'extra'"),
    ({"name": "", "nodes": [{"component": "L0H0", "reads": "window"}]}, "'name' must be a non-empty string"),
]  # fmt: skip


@pytest.mark.parametrize("data, message", BAD)
def test_malformed_hypotheses_are_one_line_errors(tmp_path, data, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(HypothesisError, match=message) as info:
        load_hypothesis(path)
    assert "\n" not in str(info.value) and "bad.json" in str(info.value)


def test_hypotheses_that_do_not_fit_the_model_or_windows(tmp_path):
    model = make_model()
    windows = WindowSet(make_inputs(B=6))
    with pytest.raises(HypothesisError, match="does not exist"):
        load_hypothesis(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(HypothesisError, match="not valid JSON"):
        load_hypothesis(tmp_path / "broken.json")
    with pytest.raises(HypothesisError, match=r"nodes\[0\].*layer 5 out of range"):
        scrub(model, windows, hypothesis(("blocks.5.attn.hook_z:h0", "window")))
    with pytest.raises(HypothesisError, match="unknown feature 'cue_object'"):
        scrub(model, windows, hypothesis(("L0H0", "cue_object")))
    with pytest.raises(HypothesisError, match="listed twice"):
        scrub(model, windows, hypothesis(("L0H0", "window"), ("blocks.0.hook_attn_out", "obs")))


def test_windows_from_a_dataset_carry_its_facts():
    spec = EnvSpec("MiniGrid-DoorKey-5x5-v0")
    model = make_model(context_len=3, max_timestep=250)
    ck = Checkpoint.from_model(model, {"env_spec": spec.to_dict(), "rtg_scale": 1.0})
    ds = collect(spec, 2, "expert", seed=0, progress=False)
    windows = WindowSet.from_dataset(ds, ck, max_windows=6)
    assert windows.n_windows == 6 and set(windows.facts) == set(ds.facts)
    rows = [int(ds.episode_starts[e]) + t for e, t in windows.ends]
    assert (windows.facts["agent_x"] == ds.facts["agent_x"][rows]).all()
    codes = feature_values(windows, "carrying_key")
    assert codes.shape == (6,)
    assert (feature_values(windows, "window") == np.arange(6)).all()
    picked = WindowSet.from_dataset(ds, ck, ends=[(1, 0), (0, 2)])
    assert (
        picked.ends == [(1, 0), (0, 2)]
        and picked.facts["agent_x"][0] == ds.facts["agent_x"][ds.episode_starts[1]]
    )
    assert picked.select([1]).ends == [(0, 2)]
    with pytest.raises(HypothesisError, match="step 99 is outside episode 0"):
        WindowSet.from_dataset(ds, ck, ends=[(0, 99)])


def test_every_feature_codes_agreement():
    inputs = make_inputs(B=8)
    inputs.obs[4:] = inputs.obs[:4]  # windows 4-7 end on the observations of windows 0-3 ...
    inputs.directions[4:] = inputs.directions[:4]
    inputs.rtg[:, -1] = torch.tensor([0.0, 0.1, 0.2, 0.3, 0.45, 0.55, 0.9, 1.0])
    windows = WindowSet(inputs, {"side": np.array([0, 1] * 4)})
    obs = feature_values(windows, "obs")
    assert (obs[:4] == obs[4:]).all() and len(set(obs[:4].tolist())) == 4  # ... so they agree on "obs"
    assert (feature_values(windows, "rtg_bucket:2") == np.array([0, 0, 0, 0, 0, 1, 1, 1])).all()
    assert (
        feature_values(windows, "prev_action") == np.unique(inputs.actions[:, -2], return_inverse=True)[1]
    ).all()
    assert (feature_values(windows, "side") == np.array([0, 1] * 4)).all()
    assert len(set(feature_values(windows, "timestep").tolist())) == 1
    assert len(set(feature_values(windows, "rtg").tolist())) == 8
    with pytest.raises(HypothesisError, match="bucket count must be a positive integer"):
        feature_values(windows, "rtg_bucket:x")
    assert set(features()) >= {"window", "prev_action", "obs", "timestep", "rtg", "rtg_bucket:N"}
