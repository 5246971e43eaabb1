"""Ablations played out: an ablation that changes nothing plays the unablated episodes, the numbers are the
evaluation's with the ablation hooked in, and ``ablation_hooks_for`` does what its line names."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dtinterp.interp.ablation import ablated, ablation_values
from dtinterp.interp.causal import ablation_hooks_for
from dtinterp.model.checkpoint import Checkpoint, load_checkpoint
from dtinterp.model.shipped import resolve_model
from dtinterp.play import play_episode
from dtinterp.plugins.api import AnalysisContext, ParameterError
from dtinterp.train.evaluate import evaluate
from tests.plugins.conftest import META, _cached_windows, _random_model
from tests.plugins.helpers import assert_labelled

PLUGIN = "ablation-rollout"
HEAD = "blocks.1.attn.hook_z:h3"  # the memory-s7 head that reads the cue (docs/patching.md)
FAST = {"episodes": 6, "points": 2, "rtg_min": 0.9, "rtg_max": 1.0}


@pytest.fixture(scope="module")
def memory():
    """memory-s7 (a fresh copy: the tests change its weights) and the windows of one episode."""
    ckpt = load_checkpoint(resolve_model("memory-s7"))
    return ckpt, play_episode(ckpt, target_rtg=1.0, seed=0).windows(ckpt)


def _logits(model, inputs, hooks=()):
    with torch.inference_mode(), model.hooks(fwd_hooks=list(hooks)):
        return model(inputs)


def test_an_ablation_that_changes_nothing_plays_the_unablated_episodes(memory, registry):
    ckpt, windows = memory
    saved = ckpt.model.blocks[1].attn.W_O[3].clone()
    try:
        with torch.no_grad():
            ckpt.model.blocks[1].attn.W_O[3] = 0.0  # the head writes nothing: zeroing it changes nothing
        result = registry.run(PLUGIN, AnalysisContext(ckpt, windows), {"components": HEAD, **FAST})
        plain = evaluate(ckpt, [0.9, 1.0], 6, 1000, progress=False)
    finally:
        with torch.no_grad():
            ckpt.model.blocks[1].attn.W_O[3] = saved
    a, u = result.data["ablated"], result.data["unablated"]
    for key in ("returns", "lengths", "success_rate", "mean_return", "return_ci"):
        np.testing.assert_array_equal(a[key], u[key])
    np.testing.assert_array_equal(u["returns"], [r["returns"] for r in plain["results"]])
    assert "every episode unchanged" in result.summary


def test_the_ablated_agent_is_the_evaluation_with_the_ablation_hooked_in(memory, registry):
    ckpt, windows = memory
    result = registry.run(
        PLUGIN, AnalysisContext(ckpt, windows), {"components": f"{HEAD} blocks.1.attn.hook_z:h1", **FAST}
    )
    hooks = ablation_hooks_for(ckpt, f"zero: {HEAD}, blocks.1.attn.hook_z:h1")
    want = evaluate(ckpt, [0.9, 1.0], 6, 1000, progress=False, hooks=hooks)
    np.testing.assert_array_equal(result.data["ablated"]["returns"], [r["returns"] for r in want["results"]])
    assert result.data["unablated"]["success_rate"].tolist() == [1.0, 1.0]
    assert result.data["ablated"]["success_rate"][-1] < 1.0  # without the cue heads it guesses the side
    figs = registry.figures(PLUGIN, result)
    assert_labelled(figs)
    assert len(figs[0].data) == 5 and figs[0].data[-1].name == "y = x"  # two bands, two curves, identity
    assert all(f.layout.height <= 900 for f in figs)


def test_hooks_for_a_line_do_what_it_names():
    ckpt = Checkpoint.from_model(_random_model(init_range=0.3), dict(META))
    model, inputs = ckpt.model, _cached_windows(4, 4, 1, 0)
    comps = ["blocks.0.attn.hook_z:h1", "blocks.1.mlp.hook_post:n3"]
    with torch.inference_mode(), ablated(model, comps, "zero"):
        zero = model(inputs)
    torch.testing.assert_close(
        _logits(model, inputs, ablation_hooks_for(ckpt, "zero: " + ", ".join(comps))), zero
    )
    torch.testing.assert_close(_logits(model, inputs, ablation_hooks_for(ckpt, " ".join(comps))), zero)
    ref = inputs[2]
    with (
        torch.inference_mode(),
        ablated(model, comps, "resample", ablation_values(model, comps, "resample", ref)),
    ):
        fixed = model(inputs)  # every window gets window 2's activations
    patched = _logits(model, inputs, ablation_hooks_for(ckpt, "patch: " + ", ".join(comps), ref))
    torch.testing.assert_close(patched, fixed)
    torch.testing.assert_close(patched[2:3], _logits(model, ref), atol=1e-5, rtol=0)  # its own: no change
    values = ablation_values(model, comps, "mean", inputs)
    with torch.inference_mode(), ablated(model, comps, "mean", values):
        mean = model(inputs)
    torch.testing.assert_close(
        _logits(model, inputs, ablation_hooks_for(ckpt, "mean: " + ", ".join(comps), inputs)), mean
    )


@pytest.mark.parametrize(
    "line, reference, needle",
    [
        ("zap: blocks.0.hook_attn_out", None, "unknown kind 'zap'"),
        ("zero:  ", None, "no components given"),
        ("mean: blocks.0.hook_attn_out", None, "needs reference windows"),
        ("patch: blocks.0.hook_attn_out", "two", "one window; got 2"),
        ("mean: blocks.0.hook_attn_out", "short", "3 timesteps"),
        ("resample: blocks.0.attn.hook_z:h5", "two", "head 5 out of range"),
    ],
)
def test_bad_lines_are_one_line_errors(line, reference, needle):
    from dtinterp.errors import DtinterpError

    ckpt = Checkpoint.from_model(_random_model(), dict(META))
    windows = _cached_windows(2, 4, 1, 0)
    ref = {None: None, "two": windows, "short": _cached_windows(2, 3, 1, 0)}[reference]
    with pytest.raises(DtinterpError, match=needle) as err:
        ablation_hooks_for(ckpt, line, ref)
    assert "\n" not in str(err.value)


def test_bad_parameters_are_one_line(memory, registry):
    ckpt, windows = memory
    ctx = AnalysisContext(ckpt, windows)
    for params, needle in (
        ({"components": ""}, "no components given"),
        ({"kind": "patch", "patch_window": 99}, "outside the batch"),
        ({"kind": "patch", "patch_from": "edited"}, "needs edits"),
        ({"rtg_min": 1.0, "rtg_max": 0.5}, "must be below"),
    ):
        with pytest.raises(ParameterError, match=needle) as err:
            registry.run(
                PLUGIN, ctx, {**params, "episodes": 1, "points": 1} if "rtg_min" not in params else params
            )
        assert "\n" not in str(err.value)
