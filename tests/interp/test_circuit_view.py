"""The circuit view on the shipped Memory agent: ablating nothing is the model, ablating everything is the
mean-ablated model computed by hand, the rollout's hooks ablate what the graph ablates, and a rollout
without ablation is the plain rollout."""

from __future__ import annotations

import pytest
import torch

from dtinterp.errors import DtinterpError
from dtinterp.interp.circuit_view import (
    ReferenceRuns,
    ablate_nodes,
    circuit_task,
    node_hooks,
    play_out,
    quick_cap,
    score_circuit,
)
from dtinterp.interp.graph import ComputeGraph
from dtinterp.model.checkpoint import Checkpoint, load_checkpoint
from dtinterp.model.shipped import resolve_model
from dtinterp.play.rollout import play_episode, rollout

SEEDS = range(1000, 1004)
NODES = ["state", "L0H1", "MLP0"]


@pytest.fixture(scope="module")
def checkpoint() -> Checkpoint:
    return load_checkpoint(resolve_model("memory-s7"))


@pytest.fixture(scope="module")
def reference(checkpoint) -> ReferenceRuns:
    return ReferenceRuns(checkpoint, 1.0, SEEDS)


@pytest.fixture(scope="module")
def task(checkpoint, reference):
    """The agent's choice of an end object (step 5 of seed 0): the cue decides it."""
    episode = play_episode(checkpoint, 1.0, seed=0)
    return circuit_task(checkpoint, episode, 5, reference=reference)


def _metric(task, hooks=()) -> float:
    model = task.checkpoint.model
    with torch.inference_mode(), model.hooks(fwd_hooks=list(hooks)):
        return float(task.metric.metric(model(task.pair.clean))[0])


def test_the_task_is_the_other_cue_pair_at_the_choice(task):
    d = task.describe()
    assert d["pair"] == "env" and d["clean_action"] != d["corrupted_action"]
    assert d["clean"] == pytest.approx(_metric(task), abs=1e-5)


@pytest.mark.parametrize("kind", ["zero", "mean", "resample"])
def test_ablating_no_node_is_the_model(task, reference, kind):
    a = ablate_nodes(task, [], kind, reference)
    assert a.nodes == [] and a.ablated == pytest.approx(a.full, abs=1e-4)
    assert a.full == pytest.approx(_metric(task), abs=1e-4)
    assert a.faithfulness == pytest.approx(1.0, abs=1e-5) and a.normalised == pytest.approx(1.0, abs=1e-5)


def _hand_means(checkpoint, windows) -> list[tuple[str, object]]:
    """Hooks replacing every sender's activation by its per-position mean over the real tokens of
    ``windows``, written out without the ablation library."""
    model = checkpoint.model
    P = windows.shape[1]
    real_k = windows.pad_mask.float()
    real = {"k": real_k, "a": real_k[:, :-1], "p": real_k.repeat_interleave(3, 1)[:, :P]}
    hooks = {"hook_rtg_embed": "k", "hook_state_embed": "k", "hook_action_embed": "a", "hook_time_embed": "k"}
    for l in range(model.cfg.n_layers):
        hooks[f"blocks.{l}.attn.hook_z"] = "p"
        hooks[f"blocks.{l}.hook_mlp_out"] = "p"
    with torch.inference_mode():
        _, cache = model.run_with_cache(windows, names_filter=list(hooks))
    out = []
    for name, axis in hooks.items():
        act, w = cache[name], real[axis]
        w = w.reshape(*w.shape, *([1] * (act.dim() - 2)))
        count = w.sum(0, keepdim=True)
        mean = torch.where(count > 0, (act * w).sum(0, keepdim=True) / count.clamp(min=1), act.mean(0, True))
        out.append((name, lambda a, hook, m=mean: m.expand_as(a).clone()))
    return out


def test_mean_ablating_every_node_is_the_mean_ablated_model(checkpoint, task, reference):
    graph = ComputeGraph.of(checkpoint.config)
    a = ablate_nodes(task, graph.sender_labels(), "mean", reference)
    want = _metric(task, _hand_means(checkpoint, reference.windows))
    assert a.ablated == pytest.approx(want, abs=1e-4)
    assert a.empty == pytest.approx(want, abs=1e-4) and a.normalised == pytest.approx(0.0, abs=1e-5)


def test_resample_ablating_every_node_is_the_corrupted_run(checkpoint, task):
    a = ablate_nodes(task, ComputeGraph.of(checkpoint.config).sender_labels(), "resample")
    assert a.ablated == pytest.approx(task.describe()["corrupted"], abs=1e-4)


@pytest.mark.parametrize("kind", ["zero", "mean"])
def test_rollout_hooks_ablate_what_the_graph_ablates(checkpoint, task, reference, kind):
    a = ablate_nodes(task, NODES, kind, reference)
    assert a.nodes == NODES and abs(a.ablated - a.full) > 1e-2  # these nodes matter here
    assert _metric(task, node_hooks(checkpoint, NODES, kind, reference)) == pytest.approx(a.ablated, abs=1e-4)


def test_a_rollout_without_ablation_is_the_plain_rollout(checkpoint, reference):
    played = play_out(checkpoint, [], "mean", reference)
    plain = rollout(checkpoint, 1.0, list(SEEDS), num_envs=2, progress=False)
    assert played.returns == [r.episode_return for r in plain]
    assert played.lengths == [r.length for r in plain]
    assert played.to_json()["unchanged"] and played.cut == 0 and played.success == played.baseline_success
    assert played.max_steps == quick_cap(reference) >= 64


def test_knocking_out_the_state_embedding_loses_every_episode(checkpoint, reference):
    played = play_out(checkpoint, ["state"], "zero", reference)
    assert played.baseline_success == 1.0 and played.success == 0.0 and played.nodes == ["state"]
    assert all(n <= played.max_steps for n in played.lengths)


def test_node_exact_is_patching_that_node_from_the_corrupted_run(checkpoint, task):
    scores = score_circuit(task, "eap")
    graph = scores.graph
    assert torch.allclose(
        scores.node, torch.zeros(graph.n_senders).index_add(0, graph.edge_index[:, 0], scores.edge)
    )
    model = checkpoint.model
    u = graph.sender_index("L0H1")
    with torch.inference_mode():
        _, cache = model.run_with_cache(task.pair.corrupted, names_filter=["blocks.0.attn.hook_z"])

    def patch(act, hook):
        act = act.clone()
        act[:, :, 1] = cache["blocks.0.attn.hook_z"][:, :, 1]
        return act

    effect = _metric(task, [("blocks.0.attn.hook_z", patch)]) - _metric(task)
    assert float(scores.node_exact[u]) == pytest.approx(effect, abs=1e-4)
    j = scores.to_json()
    assert len(j["edges"]) == graph.n_edges and sorted(e["rank"] for e in j["edges"]) == list(
        range(1, graph.n_edges + 1)
    )
    assert {e["target"] for e in j["edges"]} >= {"L1H0", "MLP1", "logits"}


def test_exact_scores_are_path_patching_and_the_estimate_correlates(task):
    scores = score_circuit(task, "exact")
    assert scores.correlation is not None and scores.correlation > 0.5
    assert not torch.equal(scores.edge, scores.estimate)


def test_an_episodes_pair_takes_another_seed_at_the_same_step(checkpoint, reference):
    episode = play_episode(checkpoint, 1.0, seed=0)
    t = circuit_task(checkpoint, episode, 2, pair="episodes", reference=reference)
    assert t.pair.source == "episodes" and "seed 10" in t.pair.description
    assert torch.equal(t.pair.clean.timesteps, t.pair.corrupted.timesteps)
    assert not torch.equal(t.pair.clean.obs, t.pair.corrupted.obs)


def test_bad_requests_are_one_line_errors(checkpoint, task, reference):
    episode = play_episode(checkpoint, 1.0, seed=0)
    for call, match in (
        (lambda: ablate_nodes(task, ["L9H9"], "mean", reference), "not a sender"),
        (lambda: ablate_nodes(task, ["L0H0"], "gaussian", reference), "ablation must be one of"),
        (lambda: ablate_nodes(task, ["L0H0"], "mean"), "reference windows"),
        (lambda: score_circuit(task, "acdc"), "method must be one of"),
        (lambda: circuit_task(checkpoint, episode, 5, pair="swap"), "pair must be one of"),
        (lambda: circuit_task(checkpoint, episode, 5, pair="edits"), "at least one edit"),
        (lambda: ReferenceRuns(checkpoint, 1.0, []), "1 to 64 episodes"),
    ):
        with pytest.raises(DtinterpError, match=match) as e:
            call()
        assert "\n" not in str(e.value)
