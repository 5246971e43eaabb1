"""Class 3: every size-like argument is bounded by what the env and the model can use.

Before, ``collect --view-size 99999`` asked numpy for tens of GB (MiniGrid allocates the view's
observation space up front). Now each size is refused with one line before anything is allocated.
"""

from __future__ import annotations

import json
import shutil

import pytest

from dtinterp.cli import main
from dtinterp.data.collect import collect
from dtinterp.errors import CheckpointError, ConfigError, DatasetError
from dtinterp.limits import (
    MAX_CACHE_BYTES,
    MAX_EPISODE_STEPS,
    cache_bytes_per_window,
    max_view_size,
    max_windows,
)
from dtinterp.model import DTConfig
from dtinterp.model.checkpoint import load_checkpoint
from envs import EnvSpec
from tests.hardening.helpers import assert_cli_refuses, assert_one_line, run_cli, snapshot

COLLECT = ["collect", "--env", "MiniGrid-Empty-5x5-v0", "--episodes", "1"]


def test_a_huge_view_is_refused_before_numpy_sees_it(tmp_path):
    """Through the CLI, in a process whose memory is capped at 2 GiB: one line, no MemoryError."""
    out = tmp_path / "d.npz"
    proc = run_cli(*COLLECT, "--view-size", "99999", "--out", str(out), memory_gib=2)
    assert_cli_refuses(proc, "view size 99999", "at most 9")
    assert not out.exists()


def test_the_view_bound_is_what_the_grid_can_show():
    assert max_view_size("MiniGrid-Empty-5x5-v0") == 9  # 2 * 5 - 1: the whole grid from a corner
    assert max_view_size("MiniGrid-DoorKey-8x8-v0") == 15
    spec = EnvSpec("MiniGrid-Empty-5x5-v0", view_size=11)
    with pytest.raises(DatasetError, match="view size 11"):
        collect(spec, 1, "random", seed=0, progress=False)


# argv after the command -> what the one line names
ARG_CASES = {
    "collect --episodes too many": (["collect", "--env", "MiniGrid-Empty-5x5-v0", "--episodes", "10000000000"], "--episodes"),
    "collect --max-steps beyond limit": ([*COLLECT, "--max-steps", str(MAX_EPISODE_STEPS + 1)], "--max-steps"),
    "collect --view-size beyond grid": ([*COLLECT, "--view-size", "11"], "view size 11"),
    "collect --workers too many": ([*COLLECT, "--workers", "100000"], "--workers"),
    "evaluate --episodes too many": (["evaluate", "{ckpt}", "--rtg", "1", "--episodes", "10000000"], "--episodes"),
    "evaluate --num-envs too many": (["evaluate", "{ckpt}", "--rtg", "1", "--num-envs", "1000000000"], "--num-envs"),
    "calibrate --points too many": (["calibrate", "{ckpt}", "--points", "1000000000", "--out", "{tmp}/c.html"], "--points"),
    "calibrate --episodes too many": (["calibrate", "{ckpt}", "--episodes", "10000000", "--out", "{tmp}/c.html"], "--episodes"),
    "analyze --max-windows beyond the cache": (
        ["analyze", "{ckpt}", "--analysis", "residual-norms", "--data", "{tmp}/d.npz", "--episodes", "1",
         "--max-windows", "1000000000000", "--out", "{tmp}/r.html"],
        "--max-windows",
    ),
    "analyze --step beyond the episode": (
        ["analyze", "{ckpt}", "--analysis", "residual-norms", "--rollout", "--rtg", "1", "--step", "99999",
         "--out", "{tmp}/r.html"],
        "--step 99999",
    ),
    "analyze --episodes beyond the dataset": (
        ["analyze", "{ckpt}", "--analysis", "residual-norms", "--data", "{tmp}/d.npz", "--episodes", "99",
         "--out", "{tmp}/r.html"],
        "--episodes 99",
    ),
}  # fmt: skip


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, tiny_dataset):
    from dtinterp.data.dataset import save_dataset

    path = tmp_path_factory.mktemp("sizes") / "d.npz"
    save_dataset(tiny_dataset, path)
    return path


@pytest.mark.parametrize("case", list(ARG_CASES))
def test_size_arguments_are_bounded(ckpt, dataset, tmp_path, capsys, case):
    argv, needle = ARG_CASES[case]
    shutil.copy(dataset, tmp_path / "d.npz")
    before = snapshot(tmp_path)
    argv = [a.format(ckpt=ckpt, tmp=tmp_path) for a in argv]
    if argv[0] == "collect":
        argv += ["--out", str(tmp_path / "out.npz")]
    assert_one_line(main(argv), capsys.readouterr().err, needle)
    assert snapshot(tmp_path) == before


ARCH_CASES = {
    "d_model": {"d_model": 10**7},
    "d_mlp": {"d_mlp": 10**7},
    "n_layers": {"n_layers": 10**5},
    "context_len": {"context_len": 10**6},
    "max_timestep": {"max_timestep": 10**9},
    "obs_shape": {"obs_shape": (10**5, 10**5)},
}


@pytest.mark.parametrize("key", list(ARCH_CASES))
def test_architecture_sizes_are_bounded(key):
    with pytest.raises(ConfigError, match=key):
        DTConfig(**ARCH_CASES[key])


def test_a_config_that_disagrees_with_its_weights_allocates_nothing(ckpt, tmp_path):
    """d_mlp 65536 (within bounds) against 8-wide weights: refused from the file header, not by building it."""
    path = tmp_path / "m"
    shutil.copytree(ckpt, path)
    cfg = json.loads((path / "config.json").read_text())
    cfg["model"]["d_mlp"] = 65536
    cfg["model"]["max_timestep"] = 1_000_000
    cfg.pop("weights_sha256")
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_checkpoint(path)


def test_the_window_cap_follows_the_model():
    small, big = (
        DTConfig(d_model=16, d_mlp=16, n_heads=1),
        DTConfig(d_model=4096, d_mlp=16384, context_len=64),
    )
    assert max_windows(small) > max_windows(big) >= 1
    assert max_windows(big) * cache_bytes_per_window(big) <= MAX_CACHE_BYTES
