"""The probes plugin: a fact the observation determines is read from the embeddings while shuffled labels
stay at chance, its numbers are the library's on the same store, bad input is one line, a saved probe
suggests Play-tab lines that parse, and ``dtinterp analyze --data`` hands the plugin its dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dtinterp.cli import main
from dtinterp.data.collect import collect
from dtinterp.data.dataset import save_dataset
from dtinterp.interp.activation_store import harvest
from dtinterp.interp.directions import DirectionLibrary, SavedDirection
from dtinterp.interp.probes import train_probes
from dtinterp.model.checkpoint import Checkpoint, save_checkpoint
from dtinterp.plugins.api import AnalysisContext, ParameterError, PluginError
from dtinterp.plugins.run import run_analysis
from envs import EnvSpec
from tests.plugins.helpers import assert_labelled

ENV = EnvSpec("MiniGrid-DoorKey-5x5-v0")
RESID = ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_mid", "blocks.0.hook_resid_post"]


@pytest.fixture(scope="module")
def ds():
    """16 DoorKey-5x5 episodes with facts (the tiny model's env); the agent faces every direction."""
    data = collect(ENV, 16, "mixed", seed=1, progress=False)
    assert set(np.unique(data.facts["agent_dir"])) == {0, 1, 2, 3}
    return data


@pytest.fixture
def ckpt(tiny_model, tiny_meta) -> Checkpoint:
    return Checkpoint.from_model(tiny_model, tiny_meta)


def test_agent_dir_is_read_from_the_embeddings_and_shuffled_labels_stay_at_chance(ckpt, ds, many_windows):
    # The state token's embedding adds a learned vector per direction: the observation determines the
    # fact, so a linear probe reads it perfectly before any attention; labels shuffled across tokens
    # carry nothing a probe could learn.
    params = {
        "variable": "agent_dir",
        "hooks": "hook_embed, blocks.0.hook_resid_pre",
        "control": "shuffle",
        "test_fraction": 0.4,
    }
    run = run_analysis(ckpt, many_windows, "probes", params, dataset=ds)
    d = run.result.data
    score, control, chance = (np.asarray(d[k], dtype=float) for k in ("score", "control", "chance"))
    assert d["metric"] == "accuracy" and d["hooks"] == ["hook_embed", "blocks.0.hook_resid_pre"]
    assert d["labels"] == ["S1", "S2", "S3", "S4"] and min(d["n_test"]) >= 20
    assert score.min() >= 0.95, score
    assert control.mean() <= chance.mean() + 0.1 and control.max() < 0.5, (control, chance)
    assert d["best"]["score"] == pytest.approx(score.max()) and "control task (shuffle)" in run.summary
    assert_labelled(run.figures)
    assert len(run.figures) == 2 and not run.result.interventions  # nothing saved, nothing suggested


def test_numbers_are_train_probes_on_the_same_store(ckpt, ds, many_windows, tmp_path):
    params = {"variable": "agent_dir", "max_windows": 300, "seed": 3, "test_fraction": 0.3}
    d = run_analysis(ckpt, many_windows, "probes", params, dataset=ds).result.data
    assert d["hooks"] == [*RESID, "blocks.1.hook_resid_mid", "blocks.1.hook_resid_post"]
    store = harvest(ckpt, ds, d["hooks"], tmp_path, token_kind="S", max_windows=300, progress=False)
    grid = train_probes(store, ds, "agent_dir", d["hooks"], test_fraction=0.3, seed=3, control="type")
    for key in ("score", "train_score", "control", "chance"):
        torch.testing.assert_close(
            torch.as_tensor(d[key]), getattr(grid, key), rtol=0, atol=0, equal_nan=True, msg=key
        )
    assert d["n_test"] == grid.n_test and d["n_windows"] == store.n_windows == 300
    assert d["test_episodes"] == len(grid.test_episodes)
    # The best cell is the highest held-out score (ties: more held-out tokens, then the earliest).
    best = max(
        (float(grid.score[h, p]), grid.n_test[p], -h, -p)
        for h in range(len(grid.hooks))
        for p in range(len(grid.labels))
    )
    assert (d["best"]["hook"], d["best"]["position"]) == (grid.hooks[-best[2]], grid.labels[-best[3]])


def test_a_linear_probe_scores_r2_and_chance_is_the_training_mean(ckpt, ds, many_windows):
    params = {"variable": "agent_x", "kind": "linear", "hooks": "blocks.0.hook_resid_post"}
    d = run_analysis(ckpt, many_windows, "probes", params, dataset=ds).result.data
    assert d["kind"] == "scalar" and d["metric"] == "r2" and d["direction"]["basis"] == "weights"
    assert np.all(np.asarray(d["chance"], dtype=float) <= 0.05)  # R² of predicting the training mean


@pytest.mark.parametrize(
    "params, needle",
    [
        ({"variable": "cue_object"}, "has no fact 'cue_object'; it has agent_dir, agent_x"),
        ({"hooks": "blocks.9.hook_resid_post"}, "unknown hook 'blocks.9.hook_resid_post'"),
        ({"at": "door_open"}, "'door_open' is not FACT=VALUE"),
        ({"at": "door_open=maybe"}, "'maybe' is not a number"),
        ({"at": "agent_x=99"}, "no step of the 16 episodes has agent_x=99"),
        ({"seen": "cue_visible"}, "has no fact 'cue_visible'"),
        ({"variable": "agent_x", "kind": "logistic", "position": 9, "hooks": "hook_embed"}, "beyond the 4"),
    ],
)
def test_bad_parameters_are_one_line(ckpt, ds, many_windows, registry, params, needle):
    with pytest.raises(ParameterError, match="plugin 'probes'") as info:
        registry.run("probes", AnalysisContext(ckpt, many_windows, dataset=ds), params)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_a_saved_probe_suggests_play_lines_that_parse_and_the_causal_check_plays(
    ckpt, ds, many_windows, tmp_path, monkeypatch
):
    monkeypatch.setenv("DTINTERP_DIRECTIONS_DIR", str(tmp_path))
    params = {
        "variable": "door_open",
        "hooks": "blocks.0.hook_resid_post",
        "save": "door-probe",
        "episodes": 2,
        "edit": "ablate",
    }
    run = run_analysis(ckpt, many_windows, "probes", params, dataset=ds)  # checks that every line parses
    d = run.result.data
    saved = DirectionLibrary().load("door-probe")
    assert saved.metadata["source"] == "probe" and saved.metadata["hook"] == "blocks.0.hook_resid_post"
    torch.testing.assert_close(saved.vector, torch.as_tensor(d["direction"]["vector"]))
    texts = [s.text for s in run.result.interventions]
    c = float(f"{abs(d['direction']['class_step']):.3g}")
    assert texts == [
        f"steer: saved:door-probe @ blocks.0.hook_resid_post x {c:g}",
        f"steer: saved:door-probe @ blocks.0.hook_resid_post x {-c:g}",
        "zero: saved:door-probe @ blocks.0.hook_resid_post",
    ]
    causal = d["causal"]
    assert causal["episodes"] == 2 and causal["seeds"] == [100_000, 100_001]
    assert 0 <= causal["success_edited"] <= 1 and set(causal["facts_changed"]) >= {"agent_x", "door_open"}
    assert len(run.figures) == 3 and "Causal check (ablate" in run.summary
    # Saving again under the same name replaces the earlier probe; another kind of direction is kept.
    run_analysis(ckpt, many_windows, "probes", {**params, "episodes": 0}, dataset=ds)
    DirectionLibrary().save(SavedDirection("mine", torch.ones(32), "custom"))
    with pytest.raises(PluginError, match="'mine' that is not a probe's"):
        run_analysis(ckpt, many_windows, "probes", {**params, "save": "mine", "episodes": 0}, dataset=ds)


def test_without_a_dataset_it_collects_episodes_to_probe(ckpt, one_window):
    run = run_analysis(ckpt, one_window, "probes", {"collect": 4, "hooks": "hook_embed"})
    d = run.result.data
    assert d["n_episodes"] == 4 and "4 episodes collected with the mixed policy" in d["source"]
    assert "(env seeds 100000..100003)" in run.summary


def test_analyze_data_gives_the_plugin_the_first_n_episodes(ckpt, ds, tmp_path, capsys):
    save_checkpoint(tmp_path / "model", ckpt.model, ckpt.meta)
    save_dataset(ds, tmp_path / "data.npz")
    out, js = tmp_path / "probes.html", tmp_path / "probes.json"
    argv = ["analyze", str(tmp_path / "model"), "--analysis", "probes", "--data", str(tmp_path / "data.npz")]
    argv += ["--episodes", "10", "--param", "hooks=hook_embed", "--out", str(out), "--json", str(js)]
    assert main(argv) == 0, capsys.readouterr().err
    doc = json.loads(js.read_text())
    assert doc["data"]["n_episodes"] == 10 and doc["data"]["source"] == "the dataset (10 episodes)"
    assert doc["provenance"]["params"]["variable"] == "agent_dir" and "Linear probes" in out.read_text()
