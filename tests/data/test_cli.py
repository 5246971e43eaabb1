"""``dtinterp collect`` and ``dtinterp data info`` end to end, in a subprocess like a user runs them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dtinterp.data.commands import format_info, return_histogram
from dtinterp.data.dataset import load_dataset


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dtinterp.cli", *args], capture_output=True, text=True, timeout=300
    )


def test_collect_then_info(tmp_path):
    out = tmp_path / "demo.npz"
    res = run_cli(
        "collect", "--env", "MiniGrid-DoorKey-5x5-v0", "--episodes", "5", "--out", str(out), "--seed", "3"
    )
    assert res.returncode == 0, res.stderr
    ds = load_dataset(out)
    assert ds.n_episodes == 5 and ds.metadata["policy"]["name"] == "mixed" and ds.metadata["seed"] == 3
    assert f"transitions   {ds.n_transitions}" in res.stdout
    assert "bytes per transition" in res.stdout and "success rate" in res.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.npz"]  # no temp file left

    res = run_cli("data", "info", str(out))
    assert res.returncode == 0, res.stderr
    text = res.stdout
    assert "MiniGrid-DoorKey-5x5-v0" in text and "mixed" in text
    assert f"transitions     {ds.n_transitions}" in text
    hist = [line for line in text.splitlines() if line.strip().startswith("[")]
    assert sum(int(line.split()[-1]) for line in hist) == 5  # every episode lands in one bin
    assert any("#" in line for line in hist)


@pytest.mark.parametrize(
    "case", ["info missing", "info corrupt", "unknown env", "bad view size", "no out dir"]
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, case):
    existing = tmp_path / "existing.npz"
    existing.write_bytes(b"user data that must survive")
    collect_args = ["collect", "--episodes", "2", "--env", "MiniGrid-Empty-5x5-v0"]
    args, expect = {
        "info missing": (["data", "info", str(tmp_path / "nope.npz")], "does not exist"),
        "info corrupt": (["data", "info", str(existing)], "corrupt"),
        "unknown env": ([*collect_args[:-1], "MiniGrid-Nope-v0", "--out", str(existing)], "unknown env id"),
        "bad view size": ([*collect_args, "--view-size", "4", "--out", str(existing)], "view size"),
        "no out dir": ([*collect_args, "--out", str(tmp_path / "missing" / "d.npz")], "does not exist"),
    }[case]
    res = run_cli(*args)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dtinterp: error:") and expect in lines[0], res.stderr
    assert "Traceback" not in res.stderr
    assert existing.read_bytes() == b"user data that must survive"
    assert sorted(p.name for p in Path(tmp_path).iterdir()) == ["existing.npz"]


def test_return_histogram_bins_every_episode():
    returns = np.array([-1.0, -1.0, 0.0, 0.5, 0.9, 0.9, 0.9, 1.0])
    rows = return_histogram(returns, bins=4, width=20)
    counts = [int(r.split()[-1]) for r in rows]
    assert counts == [2, 0, 1, 5]  # [-1, -0.5) [-0.5, 0) [0, 0.5) [0.5, 1]
    assert rows[-1].count("#") == 20 and rows[0].count("#") == 8 and "#" not in rows[1]
    assert rows[-1].rstrip().endswith("5") and "1.000]" in rows[-1]
    (single,) = return_histogram(np.full(3, 0.25))
    assert single.split()[-1] == "3" and "0.250" in single


def test_info_reports_modes_and_statistics(tiny_dataset):
    text = format_info(tiny_dataset, title="tiny")
    assert "MiniGrid-Empty-5x5-v0 (egocentric 7x7" in text
    assert f"transitions     {tiny_dataset.n_transitions}" in text
    assert "success rate    50.0%" in text
    assert re.search(r"\n    random +8 episodes +success +50\.0% +mean return +0\.\d{3}\n", text)
