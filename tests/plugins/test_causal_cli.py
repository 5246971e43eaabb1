"""The causal analyses from the command line: a bad component name stops ``dtinterp analyze`` in a real
process with exit code 2 and one error line naming it, and writes nothing."""

from __future__ import annotations

import os
import subprocess
import sys

from dtinterp.data.dataset import save_dataset
from dtinterp.model.checkpoint import load_checkpoint
from dtinterp.model.shipped import resolve_model
from dtinterp.play import play_episode


def test_an_unknown_component_is_one_error_line_and_exit_2(tmp_path):
    model = resolve_model("memory-s7")
    save_dataset(play_episode(load_checkpoint(model), 1.0, seed=0).to_dataset(), tmp_path / "traj.npz")
    out = tmp_path / "never.html"
    args = [
        *("analyze", str(model), "--analysis", "ablation", "--trajectory", str(tmp_path / "traj.npz")),
        *("--param", "components=blocks.1.attn.hook_z:h2, blocks.5.mlp.hook_post:n3", "--out", str(out)),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(
        [sys.executable, "-m", "dtinterp.cli", *args], capture_output=True, text=True, timeout=300, env=env
    )
    assert res.returncode == 2, res.stderr
    status = [line for line in res.stderr.splitlines() if line.startswith("dtinterp analyze: ")]
    assert status and res.stderr.splitlines()[len(status) :] == [
        "dtinterp: error: plugin 'ablation' parameter 'components': component 'blocks.5.mlp.hook_post:n3': "
        "layer 5 out of range 0..1"
    ]
    assert not out.exists()
