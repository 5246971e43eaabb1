"""The hypothesis test (causal scrubbing) as a plugin: its numbers are ``scrub``'s on the same windows, a
hypothesis naming every node as reading its own window recovers exactly 1, the shipped example hypothesis
fits memory-s7, and Memory windows give the cue and the correct side exactly where they show them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dtinterp.data.collect import collect
from dtinterp.data.windows import make_batch
from dtinterp.interp.graph import ComputeGraph
from dtinterp.interp.pairs import window_facts
from dtinterp.interp.scrubbing import Hypothesis, WindowSet, load_hypothesis, scrub
from dtinterp.model.checkpoint import Checkpoint
from dtinterp.plugins.api import AnalysisContext, ParameterError
from dtinterp.plugins.builtin.hypothesis_test import parse_hypothesis
from envs import EnvSpec
from tests.plugins.helpers import assert_labelled

PLUGIN = "hypothesis-test"
MEMORY = EnvSpec("MiniGrid-MemoryS7FixedStart-v0")
EXAMPLE = Path(__file__).parents[2] / "examples" / "hypotheses" / "memory-s7-correct-side.json"
HYPOTHESIS = {
    "name": "head 1.0 reads the previous action",
    "metric": {"kind": "kl"},
    "nodes": [
        {"component": "blocks.1.attn.hook_z:h0", "reads": "prev_action"},
        {"component": "hook_state_embed", "reads": "obs"},
    ],
    "treat_rest": "mean",
}


@pytest.fixture(scope="module")
def ckpt(tiny_model, tiny_meta) -> Checkpoint:
    return Checkpoint.from_model(tiny_model, tiny_meta)


def test_every_node_reading_its_own_window_recovers_exactly_one(ckpt, many_windows, registry):
    result = registry.run(PLUGIN, AnalysisContext(ckpt, many_windows), {"hypothesis": "every:window"})
    d = result.data
    assert d["recovered"] == pytest.approx(1.0, abs=1e-5)  # float32: outputs summed vs the model's forward
    assert d["ci"] == pytest.approx([1.0, 1.0], abs=1e-4)
    np.testing.assert_allclose(d["scrubbed_values"], d["clean_values"], atol=1e-5, rtol=0)
    assert len(d["nodes"]) == ComputeGraph.of(ckpt.model.cfg).n_senders
    assert_labelled(registry.figures(PLUGIN, result))


def test_the_plugin_is_scrub_on_the_same_windows(ckpt, many_windows, registry):
    params = {"hypothesis": json.dumps(HYPOTHESIS), "draws": 3, "random_circuits": 5, "seed": 7}
    result = registry.run(PLUGIN, AnalysisContext(ckpt, many_windows), params)
    expected = scrub(
        ckpt.model, WindowSet(many_windows), Hypothesis.from_json(HYPOTHESIS), n_draws=3, n_random=5, seed=7
    )
    d = result.data
    for key in ("recovered", "metric_clean", "metric_scrubbed", "metric_random", "baseline_mean"):
        assert d[key] == pytest.approx(getattr(expected, key), abs=1e-9), key
    assert d["ci"] == pytest.approx(list(expected.ci), abs=1e-9)
    assert d["random_recovered"] == pytest.approx(expected.random_recovered, abs=1e-9)
    assert d["nodes"] == [list(n) for n in expected.nodes] and d["treat_rest"] == "mean"
    figs = registry.figures(PLUGIN, result)
    assert_labelled(figs)
    assert len(figs[0].data) == 2  # the bars and the random circuits one by one


def test_where_scrubs_the_selected_windows_only(ckpt, many_windows, registry):
    params = {"hypothesis": json.dumps(HYPOTHESIS), "where": "prev_action=left", "random_circuits": 2}
    result = registry.run(PLUGIN, AnalysisContext(ckpt, many_windows), params)
    rows = np.flatnonzero(many_windows.actions[:, -2].numpy() == 0)
    assert 2 <= len(rows) < many_windows.batch_size
    assert list(result.data["rows"]) == rows.tolist() and result.data["n_windows"] == len(rows)
    expected = scrub(
        ckpt.model, WindowSet(many_windows).select(rows), Hypothesis.from_json(HYPOTHESIS), n_random=2
    )
    assert result.data["recovered"] == pytest.approx(expected.recovered, abs=1e-9)
    assert "where prev_action=left" in result.summary


def test_a_hypothesis_file_is_read_like_its_text(ckpt, many_windows, registry, tmp_path):
    path = tmp_path / "h.json"
    path.write_text(json.dumps(HYPOTHESIS))
    ctx = AnalysisContext(ckpt, many_windows)
    from_file = registry.run(PLUGIN, ctx, {"hypothesis": str(path), "random_circuits": 0})
    from_text = registry.run(PLUGIN, ctx, {"hypothesis": json.dumps(HYPOTHESIS), "random_circuits": 0})
    assert from_file.data["recovered"] == from_text.data["recovered"]
    assert "no random circuits" in from_file.summary


def test_the_shipped_example_fits_memory_s7():
    from dtinterp.model.config import DTConfig

    config = json.loads((Path(__file__).parents[2] / "trained_models/memory-s7/config.json").read_text())
    graph = ComputeGraph.of(DTConfig.from_dict(config["model"]))
    hypothesis = parse_hypothesis(str(EXAMPLE), graph, PLUGIN)
    assert hypothesis == load_hypothesis(EXAMPLE)
    labels = {graph.senders[u].label for n in hypothesis.nodes for u in graph.senders_of(n.component)}
    assert labels == {"L1H3", "MLP1"} and {n.reads for n in hypothesis.nodes} == {"correct_side"}


def test_memory_windows_give_the_cue_and_the_side_where_they_show_them():
    ds = collect(MEMORY, 3, "expert", seed=5, progress=False)
    lengths = ds.episode_lengths()
    ends = [(e, t) for e in range(ds.n_episodes) for t in range(int(lengths[e]))]
    inputs = make_batch(ds, ends, 4, 1.0, 7, 300)
    facts = window_facts(inputs, MEMORY)
    rows = np.array([int(ds.episode_starts[e]) + t for e, t in ends])
    for name in ("cue_object", "correct_side"):
        known = facts[name] >= 0
        assert known.any() and not known.all(), name  # the start room shows the cue, the corridor does not
        np.testing.assert_array_equal(facts[name][known], ds.facts[name][rows][known])
    for name in ("agent_x", "agent_y", "agent_dir"):  # the pose is pinned down wherever the window is
        np.testing.assert_array_equal(facts[name], ds.facts[name][rows])


def test_bad_hypotheses_are_one_line_errors(ckpt, many_windows, one_window, registry, tmp_path):
    ctx = AnalysisContext(ckpt, many_windows)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    for params, context, needle in (
        ({"hypothesis": "{'name': 1}"}, ctx, "not valid JSON"),
        ({"hypothesis": json.dumps({"name": "x", "nodes": []})}, ctx, "'nodes' must be a non-empty list"),
        ({"hypothesis": str(tmp_path / "missing.json")}, ctx, "does not exist"),
        ({"hypothesis": str(broken)}, ctx, "is not valid JSON"),
        ({"hypothesis": "every:colour"}, ctx, "unknown feature 'colour'"),
        ({"hypothesis": "every:"}, ctx, "needs a feature"),
        ({"hypothesis": " "}, ctx, "give JSON text"),
        (
            {"hypothesis": json.dumps({**HYPOTHESIS, "nodes": [{"component": "L5H0", "reads": "obs"}]})},
            ctx,
            "L5H0",
        ),
        ({}, AnalysisContext(ckpt, one_window), "there is 1"),
        ({"where": "timestep=99"}, ctx, "there is 0 of the 6 where timestep=99"),
        ({"where": "agent_x"}, ctx, "is not NAME=VALUE"),
        ({"where": "colour=red"}, ctx, "unknown name 'colour'"),
        ({"where": "prev_action=jump"}, ctx, "not an integer or one of left"),
        ({"where": "cue_object=key"}, ctx, "only Memory envs"),
    ):
        with pytest.raises(ParameterError, match=needle) as err:
            registry.run(PLUGIN, context, params)
        assert "\n" not in str(err.value) and PLUGIN in str(err.value)
