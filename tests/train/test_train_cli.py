"""``dtinterp train`` end to end, in a subprocess like a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from dtinterp.cli import main
from dtinterp.data.dataset import save_dataset
from dtinterp.model.checkpoint import load_checkpoint

CONFIG = {
    "model": {"n_layers": 1, "n_heads": 2, "d_model": 32, "d_mlp": 64},
    "context_len": 4,
    "batch_size": 16,
    "steps": 6,
    "warmup_steps": 2,
    "log_every": 2,
    "checkpoint_every": 3,
}


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dtinterp.cli", *args], capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_dataset):
    root = tmp_path_factory.mktemp("train_cli")
    save_dataset(tiny_dataset, root / "tiny.npz")
    (root / "run.json").write_text(json.dumps(CONFIG))
    return root


def test_train_writes_a_loadable_run_and_resume_of_a_finished_run_changes_nothing(
    files, tmp_path, tiny_dataset
):
    out = tmp_path / "run"
    res = run_cli(
        "train",
        "--data",
        str(files / "tiny.npz"),
        "--out",
        str(out),
        "--config",
        str(files / "run.json"),
        "--seed",
        "5",
    )
    assert res.returncode == 0, res.stderr
    assert "steps           6 / 6" in res.stdout and "final loss" in res.stdout
    names = {p.name for p in out.iterdir()}
    expected = {"model.safetensors", "config.json", "model_card.md", "metrics.jsonl"}
    assert expected | {"train_state.json", "train_state.safetensors"} == names  # no temp files left
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4, 6]
    ck = load_checkpoint(out)
    model, meta = ck.model, ck.meta
    assert meta["step"] == 6 and meta["train"]["seed"] == 5 and meta["dataset"] == tiny_dataset.fingerprint()
    assert model.cfg.context_len == 4 and model.cfg.obs_shape == (7, 7)
    assert "MiniGrid-Empty-5x5-v0" in (out / "model_card.md").read_text()

    # --resume without --config takes the saved run's config; a finished run stays as it is.
    before = (out / "model.safetensors").read_bytes()
    res = run_cli("train", "--data", str(files / "tiny.npz"), "--out", str(out), "--resume")
    assert res.returncode == 0, res.stderr
    assert "steps           6 / 6" in res.stdout
    assert (out / "model.safetensors").read_bytes() == before


def test_bad_data_file_is_one_line_exit_2_no_traceback(tmp_path):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a dataset")
    out = tmp_path / "out"
    res = run_cli("train", "--data", str(junk), "--out", str(out))
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dtinterp: error:") and "corrupt" in lines[0], res.stderr
    assert str(junk) in lines[0] and "Traceback" not in res.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    "case", ["missing data", "out not empty", "unknown key", "resume nothing", "bad override"]
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(files, tmp_path, capsys, case):
    """The same contract as above, through ``main`` in-process (cheaper than one subprocess per case)."""
    bad_cfg = tmp_path / "bad.json"
    bad_cfg.write_text(json.dumps({**CONFIG, "learning_rate": 1e-3}))
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("keep me")
    out = tmp_path / "out"
    data = str(files / "tiny.npz")
    args, expect = {
        "missing data": (["--data", str(tmp_path / "nope.npz"), "--out", str(out)], "does not exist"),
        "out not empty": (["--data", data, "--out", str(taken)], "not empty"),
        "unknown key": (["--data", data, "--out", str(out), "--config", str(bad_cfg)], "'learning_rate'"),
        "resume nothing": (["--data", data, "--out", str(out), "--resume"], "no training run to resume"),
        "bad override": (
            ["--data", data, "--out", str(out), "--device", "gpu"],
            "override: 'device' must be",
        ),
    }[case]
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dtinterp: error:") and expect in lines[0], err
    assert not out.exists()
    assert sorted(p.name for p in taken.iterdir()) == ["notes.txt"]


def test_unavailable_device_is_refused_before_writing(files, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is available here")
    out = tmp_path / "out"
    assert main(["train", "--data", str(files / "tiny.npz"), "--out", str(out), "--device", "cuda"]) == 2
    assert "device 'cuda' is not available" in capsys.readouterr().err
    assert not out.exists()
