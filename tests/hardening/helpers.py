"""Helpers of the bad-input suite: tiny checkpoints, the CLI in a subprocess, and the contract every bad
input must keep (exit 2, exactly one ``dtinterp: error:`` line naming the input, no traceback, nothing
written or overwritten)."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

from dtinterp.model import DTConfig, HookedDecisionTransformer
from dtinterp.model.checkpoint import save_checkpoint
from envs import EnvSpec

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
#: What a user's file must still hold after a refused command.
KEEP = b"user data that must survive"


def tiny_checkpoint(directory: Path, env_id: str = "MiniGrid-Empty-5x5-v0", n_actions: int = 7) -> Path:
    """A tiny untrained DT saved as a real checkpoint (``max_steps`` 8: its episodes are short)."""
    cfg = DTConfig(
        context_len=2, max_timestep=8, n_layers=1, n_heads=1, d_model=8, d_mlp=8, n_actions=n_actions, seed=0
    )
    spec = EnvSpec(env_id, max_steps=8)
    save_checkpoint(directory, HookedDecisionTransformer(cfg), {"env_spec": spec.to_dict(), "rtg_scale": 1.0})
    return directory


def run_cli(
    *args: str, cwd: Path | None = None, memory_gib: float | None = None
) -> subprocess.CompletedProcess:
    """``dtinterp ARGS`` as a user runs it: a fresh interpreter (its address space capped at ``memory_gib``)."""

    def cap() -> None:
        limit = int(memory_gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return subprocess.run(
        [sys.executable, "-m", "dtinterp.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
        cwd=cwd,
        preexec_fn=cap if memory_gib is not None else None,
    )


def assert_one_line(code: int, stderr: str, *needles: str) -> str:
    """Exit code 2 and exactly one ``dtinterp: error:`` line on stderr holding every needle; no traceback.

    Status lines (``dtinterp analyze: ...``) and progress bars (``\r``-redrawn lines of work that ran)
    are not errors and are left out.
    """
    lines = [
        line
        for line in stderr.splitlines()
        if line.strip() and not line.startswith("dtinterp analyze: ") and "%|" not in line
    ]
    assert code == 2, stderr
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1 and lines[0].startswith("dtinterp: error: "), stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def assert_cli_refuses(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """:func:`assert_one_line` for a subprocess run."""
    return assert_one_line(proc.returncode, proc.stderr, *needles)


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file and directory under ``root``, with its bytes (None for a directory)."""
    return {str(p.relative_to(root)): None if p.is_dir() else p.read_bytes() for p in sorted(root.rglob("*"))}
