"""Sweeps: grid parsing, one resumable run per configuration, a ranked summary, the same rows on Ray."""

from __future__ import annotations

import csv
import json
import os

import pytest
import torch

from dtinterp.data.collect import collect
from dtinterp.data.dataset import save_dataset
from dtinterp.errors import ConfigError
from dtinterp.model.checkpoint import load_checkpoint, read_checkpoint_config
from dtinterp.scale.backend import RAY_INSTALL_HINT, LocalBackend, RayBackend
from dtinterp.scale.sweep import (
    EVAL_FILE,
    SUMMARY_CSV,
    SUMMARY_HTML,
    SUMMARY_JSON,
    EvalSettings,
    expand_grid,
    parse_grid,
    run_sweep,
    run_trial,
    trial_name,
)
from dtinterp.train.config import TrainConfig
from dtinterp.train.trainer import train
from envs.spec import EnvSpec

BASE = {
    "model": {"n_layers": 1, "n_heads": 2, "d_model": 32, "d_mlp": 64},
    "context_len": 4,
    "batch_size": 16,
    "steps": 4,
    "warmup_steps": 1,
    "log_every": 2,
    "eval_rtg": [1.0],
    "eval_episodes": 2,
}
VOLATILE = ("wall_time_s",)


@pytest.fixture(scope="module")
def data_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "empty.npz"
    save_dataset(
        collect(EnvSpec("MiniGrid-Empty-5x5-v0", max_steps=16), 6, "mixed", seed=0, progress=False), path
    )
    return path


@pytest.fixture(scope="module")
def ray_instance():
    try:
        import ray
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the Ray tests: {RAY_INSTALL_HINT}")
        pytest.skip(RAY_INSTALL_HINT)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def stable(table) -> list[dict]:
    """The summary rows without the columns that depend on the machine's speed."""
    return [{k: v for k, v in row.items() if k not in VOLATILE} for row in table.to_dict(orient="records")]


# ------------------------------------------------------------------ grids


def test_parse_grid_reads_json_values_and_dotted_keys():
    grid = parse_grid(
        [
            "lr=1e-3,3e-3",
            "model.n_layers=1,2",
            "model.attn_only=true,false",
            "betas=[0.9,0.95],[0.8,0.99]",
            "model.normalization_type=LN,LNPre,null",
            "model.act_fn=relu",
        ]
    )
    assert grid == {
        "lr": [0.001, 0.003],
        "model.n_layers": [1, 2],
        "model.attn_only": [True, False],
        "betas": [[0.9, 0.95], [0.8, 0.99]],
        "model.normalization_type": ["LN", "LNPre", None],
        "model.act_fn": ["relu"],
    }
    for bad, expect in [
        ("lr", "expected KEY=VALUE"),
        ("lr=", "expected KEY=VALUE"),
        ("lr=1,,2", "empty value"),
    ]:
        with pytest.raises(ConfigError, match=expect):
            parse_grid([bad])
    with pytest.raises(ConfigError, match="given twice"):
        parse_grid(["lr=1", "lr=2"])


def test_expand_grid_sets_nested_keys_and_sample_seeds():
    trials = expand_grid({**BASE, "seed": 5}, {"lr": [0.001, 0.01], "model.n_layers": [2]}, samples=2)
    assert [t.name for t in trials] == [
        "lr=0.001_model.n_layers=2_s0",
        "lr=0.001_model.n_layers=2_s1",
        "lr=0.01_model.n_layers=2_s0",
        "lr=0.01_model.n_layers=2_s1",
    ]
    assert [t.config["seed"] for t in trials] == [5, 6, 5, 6]
    assert trials[3].params == {"lr": 0.01, "model.n_layers": 2, "seed": 6}
    assert trials[3].config["model"] == {**BASE["model"], "n_layers": 2} and BASE["model"]["n_layers"] == 1
    assert expand_grid(BASE, {}, 1)[0].name == "base"
    with pytest.raises(ConfigError, match="sweep run model.n_layer=2: unknown key 'model.n_layer'"):
        expand_grid(BASE, {"model.n_layer": [2]})
    with pytest.raises(ConfigError, match="'lr' must be a number > 0"):
        expand_grid(BASE, {"lr": [-1]})
    long = trial_name({"a_very_long_key_name": "x" * 200})
    assert len(long) <= 80 and long != trial_name({"a_very_long_key_name": "x" * 199})


# ------------------------------------------------------------------ local sweeps


def test_local_sweep_trains_evaluates_ranks_and_resumes(tmp_path, data_path):
    out = tmp_path / "sweep"
    grid = {"lr": [0.001, 0.01]}
    # One run was stopped half-way by an earlier sweep: the sweep resumes it instead of starting over.
    half = expand_grid({**BASE, "data": str(data_path)}, grid)[1]
    from dtinterp.data.dataset import load_dataset

    data = load_dataset(data_path)
    train(
        TrainConfig.from_dict(half.config),
        data,
        out / half.name,
        progress=False,
        should_stop=lambda s: s >= 2,
    )
    assert read_checkpoint_config(out / half.name)["step"] == 2

    table = run_sweep(
        {**BASE, "data": str(data_path)}, grid, backend=LocalBackend(1), out_dir=out, metric="loss"
    )
    assert list(table.columns[:4]) == ["rank", "run", "status", "lr"]
    assert {"final_loss", "success", "return", "wall_time_s", "step"} <= set(table.columns)
    assert list(table["rank"]) == [1, 2] and set(table["status"]) == {"done"}
    assert list(table["final_loss"]) == sorted(table["final_loss"])  # ranked by loss, best first
    for name in table["run"]:
        assert read_checkpoint_config(out / name)["step"] == 4 and (out / name / EVAL_FILE).is_file()
    straight = tmp_path / "straight"
    train(TrainConfig.from_dict(half.config), data, straight, progress=False)
    a, b = load_checkpoint(out / half.name).model.state_dict(), load_checkpoint(straight).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # the resumed run ends at the uninterrupted weights

    with open(out / SUMMARY_CSV, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == list(table["run"])
    assert "<table" in (out / SUMMARY_HTML).read_text()
    saved = json.loads((out / SUMMARY_JSON).read_text())
    assert saved["metric"] == "loss" and saved["grid"] == grid and len(saved["rows"]) == 2

    # Rerunning the finished sweep trains nothing and reuses every evaluation.
    stamps = {n: (out / n / "model.safetensors").stat().st_mtime_ns for n in table["run"]}
    evals = {n: (out / n / EVAL_FILE).read_text() for n in table["run"]}
    again = run_sweep(
        {**BASE, "data": str(data_path)}, grid, backend=LocalBackend(1), out_dir=out, metric="loss"
    )
    assert stable(again) == stable(table)
    assert stamps == {n: (out / n / "model.safetensors").stat().st_mtime_ns for n in table["run"]}
    assert evals == {n: (out / n / EVAL_FILE).read_text() for n in table["run"]}


def test_sweep_checks_everything_before_training(tmp_path, data_path):
    out = tmp_path / "sweep"
    with pytest.raises(ConfigError, match="--metric 'accuracy'"):
        run_sweep(BASE, {}, out_dir=out, metric="accuracy", data=data_path)
    with pytest.raises(ConfigError, match="needs a dataset"):
        run_sweep(BASE, {}, out_dir=out)
    with pytest.raises(ConfigError, match="ASHA"):
        run_sweep(BASE, {}, out_dir=out, data=data_path, early_stop=True)
    with pytest.raises(ConfigError, match="unknown key 'stepz'"):
        run_sweep(BASE, {"stepz": [1]}, out_dir=out, data=data_path)
    from dtinterp.errors import DatasetError

    with pytest.raises(DatasetError, match="does not exist"):
        run_sweep(BASE, {}, out_dir=out, data=tmp_path / "missing.npz")
    assert not out.exists()


def test_early_stopping_trains_in_reported_segments(tmp_path, data_path):
    """With a report callback (ASHA), a run reports its loss at each segment and still ends complete."""
    from dtinterp.data.dataset import load_dataset

    trial = expand_grid(BASE, {})[0]
    reports = []
    settings = EvalSettings(targets=[1.0], episodes=2, seed=1000, num_envs=2)
    row = run_trial(trial, load_dataset(data_path), tmp_path, settings, report=reports.append)
    assert [r["step"] for r in reports] == [1, 2, 3] and all(r["loss"] > 0 for r in reports)
    assert row["status"] == "done" and row["step"] == 4 and 0 <= row["success"] <= 1


def test_cmd_sweep_reads_data_relative_to_its_config(tmp_path, data_path, monkeypatch, capsys):
    from argparse import Namespace

    from dtinterp.scale.sweep import cmd_sweep

    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "data.npz").write_bytes(data_path.read_bytes())
    (tmp_path / "cfg" / "base.json").write_text(json.dumps({**BASE, "data": "data.npz"}))
    monkeypatch.chdir(tmp_path)  # not the config's directory
    args = Namespace(
        base_config=str(tmp_path / "cfg" / "base.json"),
        grid=["lr=0.002"],
        samples=1,
        backend="local",
        workers=1,
        ray_address=None,
        out="out",
        metric="success",
        data=None,
        rtg=None,
        episodes=None,
        early_stop=False,
    )
    assert cmd_sweep(args) == 0
    assert (tmp_path / "out" / "lr=0.002" / "model.safetensors").is_file()
    assert "lr=0.002" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="--grid 'lr'"):
        cmd_sweep(Namespace(**{**vars(args), "grid": ["lr"]}))


# ------------------------------------------------------------------ Ray Tune


@pytest.mark.ray
def test_ray_tune_sweep_gives_the_local_rows(tmp_path, data_path, ray_instance):
    grid = {"lr": [0.001, 0.01], "model.n_layers": [1]}
    local = run_sweep(BASE, grid, backend=LocalBackend(1), out_dir=tmp_path / "local", data=data_path)
    on_ray = run_sweep(BASE, grid, backend=RayBackend(), out_dir=tmp_path / "ray", data=data_path)
    # Same configs, same seeds, one CPU thread each: the same losses and evaluation numbers.
    assert stable(on_ray) == stable(local)
    assert (tmp_path / "ray" / SUMMARY_CSV).is_file()

    asha = run_sweep(
        BASE,
        grid,
        backend=RayBackend(),
        out_dir=tmp_path / "asha",
        data=data_path,
        early_stop=True,
    )
    assert set(asha["status"]) <= {"done", "stopped"} and "done" in set(asha["status"])
    for _, row in asha.iterrows():
        step = read_checkpoint_config(tmp_path / "asha" / row["run"])["step"]
        assert step == row["step"] and (row["status"] == "done") == (step == BASE["steps"])
