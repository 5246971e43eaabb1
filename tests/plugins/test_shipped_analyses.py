"""Every built-in analysis runs on every shipped agent, through ``run_analysis`` as the CLI and the app run it,
on one window (static ones on the weights alone; causal scrubbing on every step of the episode), and draws
labelled figures no taller than a screen into a report and JSON."""

from __future__ import annotations

import pytest

from dtinterp.model.checkpoint import load_checkpoint
from dtinterp.model.shipped import resolve_model
from dtinterp.play import play_episode
from dtinterp.plugins.run import run_analysis
from tests.plugins.helpers import assert_labelled

AGENTS = ("memory-s7", "doorkey-6x6", "dynamic-obstacles-8x8")


@pytest.fixture(scope="module", params=AGENTS)
def agent(request):
    ckpt = load_checkpoint(resolve_model(request.param))
    episode = play_episode(ckpt, target_rtg=1.0, seed=0)
    return ckpt, episode.window(ckpt), episode.windows(ckpt)


def test_every_builtin_renders_on_a_shipped_agent(agent, registry, tmp_path, monkeypatch):
    monkeypatch.setenv("DTINTERP_DIRECTIONS_DIR", str(tmp_path))  # an empty library, not the user's
    ckpt, window, every_step = agent
    assert not registry.failures
    assert {"embeddings", "ov-qk-circuits", "composition", "congruence", "saved-directions", "dla"} <= set(
        registry.plugins
    ) and {"observation-attribution", "attention", "neurons"} <= set(registry.plugins)
    circuits = {"attribution-patching", "circuit-discovery", "hypothesis-test", "steering"}
    assert circuits <= set(registry.plugins)
    for pid, plugin in sorted(registry.plugins.items()):
        inputs = None if plugin.category == "static" else every_step if plugin.min_windows > 1 else window
        edits = ["R*=0"] if plugin.needs_counterfactual else []
        run = run_analysis(ckpt, inputs, pid, edits=edits, registry=registry)
        assert run.summary, pid
        assert_labelled(run.figures)
        tall = [(i, f.layout.height) for i, f in enumerate(run.figures) if (f.layout.height or 450) > 900]
        assert not tall, f"{pid} on {ckpt.name}: figures taller than a screen {tall}"
        assert run.json_text() and "<html" in run.report_html().lower()  # the JSON and the report render
