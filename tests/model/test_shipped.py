"""Every shipped agent loads and still succeeds at its best target (catches a broken checkpoint,
loader or env change), and its folder carries what a researcher needs."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dtinterp.model.checkpoint import load_checkpoint
from dtinterp.model.shipped import list_models
from dtinterp.play.rollout import rollout

SHIPPED = list_models()
EXPECTED = {"doorkey-6x6", "dynamic-obstacles-8x8", "memory-s7"}


def test_the_three_agents_are_shipped():
    assert {m.name for m in SHIPPED} >= EXPECTED


@pytest.mark.parametrize("shipped", SHIPPED, ids=lambda m: m.name)
def test_shipped_agent_succeeds_at_its_best_target(shipped):
    ckpt = load_checkpoint(shipped.path)
    target = ckpt.meta["results"]["headline"]["target_rtg"]
    results = rollout(ckpt, target, seeds=list(range(1000, 1008)), num_envs=8, progress=False)
    successes = sum(r.success for r in results)
    assert successes >= 7, f"{shipped.name}: {successes}/8 successes at target {target}"


@pytest.mark.parametrize("shipped", SHIPPED, ids=lambda m: m.name)
def test_shipped_folder_is_complete_and_small(shipped):
    names = {p.name for p in shipped.path.iterdir()}
    assert {
        "model.safetensors",
        "config.json",
        "model_card.md",
        "recipe.json",
        "calibration.svg",
        "episode.gif",
    } <= names
    assert sum(p.stat().st_size for p in shipped.path.iterdir()) < 10 * 2**20
    card = (shipped.path / "model_card.md").read_text()
    for section in (
        "## Training data",
        "## Architecture",
        "## Results",
        "## Reproduce",
        "calibration.svg",
        "episode.gif",
    ):
        assert section in card, f"{shipped.name}: model card lacks {section!r}"
    headline = shipped.config["results"]["headline"]
    assert headline["episodes"] == 200 and 0.0 <= headline["success_rate"] <= 1.0


def test_models_command_lists_every_agent():
    out = subprocess.run(
        [sys.executable, "-m", "dtinterp.cli", "models"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == len(SHIPPED)
    for m in SHIPPED:
        line = next(ln for ln in lines if ln.startswith(m.name))
        assert m.env_id in line and "success" in line
