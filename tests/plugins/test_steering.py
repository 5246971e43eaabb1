"""Steering as a plugin: its numbers are ``steering_scan``'s, coefficient 0 leaves the logits exactly as they
are, the Play tab's line it prints steers exactly as the scan's hooks, and a vector saved with ``save_as``
steers as the original when taken back as ``saved:NAME``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dtinterp.interp.causal import build_metric
from dtinterp.interp.directions import SavedDirection, from_unembed
from dtinterp.interp.interventions import parse_intervention
from dtinterp.interp.steering import SteeringVector, steering_scan
from dtinterp.model.checkpoint import Checkpoint
from dtinterp.plugins.api import AnalysisContext, ParameterError
from tests.plugins.helpers import assert_labelled

PLUGIN = "steering"
HOOK = "blocks.1.hook_resid_mid"


@pytest.fixture(scope="module")
def ckpt(tiny_model, tiny_meta) -> Checkpoint:
    return Checkpoint.from_model(tiny_model, tiny_meta)


@pytest.fixture(autouse=True)
def library(tmp_path, monkeypatch):
    """An empty saved-direction library per test, never the user's."""
    monkeypatch.setenv("DTINTERP_DIRECTIONS_DIR", str(tmp_path / "directions"))


def test_coefficient_zero_changes_nothing(ckpt, many_windows, registry):
    params = {"coefficients": "0, 3", "metric": "kl", "hook": HOOK}
    d = registry.run(PLUGIN, AnalysisContext(ckpt, many_windows), params).data
    assert d["metric_mean"][0] == 0.0 and d["kl"][0] == 0.0  # KL of the unsteered run from itself
    assert d["flips"][0] == 0.0 and d["agreement"][0] == 1.0
    assert d["kl"][1] > 0
    vector = SteeringVector(SavedDirection("v", torch.ones(ckpt.model.cfg.d_model), "custom"), HOOK)
    assert vector.hooks(ckpt.model, 0.0) == []
    with torch.no_grad(), ckpt.model.hooks(fwd_hooks=vector.hooks(ckpt.model, 0.0)):
        assert torch.equal(ckpt.model(many_windows), ckpt.model(many_windows.clone()))


def test_the_plugin_is_the_library_scan_and_the_play_line_steers_alike(ckpt, many_windows, registry):
    params = {"direction": "forward-left", "hook": HOOK, "coefficients": "-2,0,2,5"}
    result = registry.run(PLUGIN, AnalysisContext(ckpt, many_windows), params)
    d, model = result.data, ckpt.model
    raw = from_unembed(model, "forward", minus="left")
    vector = SteeringVector(SavedDirection("forward-left", raw.vector / raw.vector.norm(), "unembed"), HOOK)
    with torch.no_grad(), model.hooks(fwd_hooks=vector.hooks(model, 5.0)):
        steered = model(many_windows)
    with torch.no_grad():
        chosen = build_metric("logit-diff", model(many_windows), steered, -1)
    scan = steering_scan(ckpt, vector, [-2, 0, 2, 5], windows=many_windows, metric=chosen.metric)
    np.testing.assert_allclose(d["metric_mean"], scan.metric, atol=1e-6, rtol=0)
    np.testing.assert_allclose(d["loss"], scan.loss, atol=1e-9, rtol=0)
    np.testing.assert_allclose(d["kl"], scan.kl, atol=1e-9, rtol=0)
    assert d["norm"] == pytest.approx(1.0)
    line = d["play_line"]
    assert line.startswith(f"steer: forward-left @ {HOOK} x ") and f"`{line}`" in result.summary
    coefficient = float(line.rsplit(" ", 1)[1])
    play = parse_intervention(line, ckpt)
    with torch.no_grad():
        with model.hooks(fwd_hooks=play.hooks):
            by_line = model(many_windows)
        with model.hooks(fwd_hooks=vector.hooks(model, coefficient)):
            by_scan = model(many_windows)
    torch.testing.assert_close(by_line, by_scan, atol=1e-5, rtol=0)
    assert_labelled(registry.figures(PLUGIN, result))


def test_a_mean_difference_saved_steers_as_the_original(ckpt, many_windows, registry):
    ctx = AnalysisContext(ckpt, many_windows)
    params = {"direction": "mean-diff", "feature": "prev_action", "hook": HOOK, "coefficients": "-1,1"}
    first = registry.run(PLUGIN, ctx, {**params, "save_as": "prev-action-diff"})
    assert first.data["saved_as"] == "prev-action-diff"
    assert first.data["play_line"].startswith(f"steer: saved:prev-action-diff @ {HOOK} x ")
    again = registry.run(PLUGIN, ctx, {**params, "direction": "saved:prev-action-diff", "hook": ""})
    assert again.data["hook"] == HOOK  # the saved vector remembers where it steers
    np.testing.assert_allclose(again.data["metric_mean"], first.data["metric_mean"], atol=1e-6, rtol=0)
    unsaved = registry.run(PLUGIN, ctx, params)
    assert "after save_as=NAME" in unsaved.summary and "high (" in unsaved.data["source"]
    with pytest.raises(ParameterError, match="save_as.*already exists"):
        registry.run(PLUGIN, ctx, {**params, "save_as": "prev-action-diff"})


def test_where_keeps_one_situation(ckpt, many_windows, registry):
    params = {"hook": HOOK, "coefficients": "0,2"}
    rows = np.flatnonzero(many_windows.actions[:, -2].numpy() == 0)  # the previous action was left
    assert 0 < len(rows) < many_windows.batch_size
    some = registry.run(PLUGIN, AnalysisContext(ckpt, many_windows), {**params, "where": "prev_action=left"})
    alone = registry.run(PLUGIN, AnalysisContext(ckpt, many_windows[torch.as_tensor(rows)]), params)
    assert some.data["windows"] == rows.tolist() and "where prev_action=left" in some.summary
    np.testing.assert_allclose(some.data["metric_mean"], alone.data["metric_mean"], atol=1e-6, rtol=0)
    with pytest.raises(ParameterError, match="none of the 6 window"):
        registry.run(PLUGIN, AnalysisContext(ckpt, many_windows), {**params, "where": "timestep=99"})


def test_played_out_episodes(ckpt, many_windows, registry):
    params = {"hook": HOOK, "coefficients": "0,8", "episodes": 2, "seed": 3}
    result = registry.run(PLUGIN, AnalysisContext(ckpt, many_windows), params)
    d = result.data
    assert d["episodes"] == 2 and d["seeds"] == [3, 4] and len(d["success"]) == 2
    assert "Played out (2 seeds 3..4" in result.summary
    figs = registry.figures(PLUGIN, result)
    assert_labelled(figs)
    assert len(figs) == 4


def test_bad_parameters_are_one_line_errors(ckpt, many_windows, one_window, registry):
    ctx = AnalysisContext(ckpt, many_windows)
    for params, context, needle in (
        ({"coefficients": "1, x"}, ctx, "'x' is not a number"),
        ({"coefficients": "1e9"}, ctx, "at most 1000"),
        ({"coefficients": " "}, ctx, "at least one coefficient"),
        ({"direction": "top-vs-runner-up"}, ctx, "differs between windows"),
        ({"direction": "jump"}, ctx, "'direction'"),
        ({"direction": "saved:nothing"}, ctx, "no direction named 'nothing'"),
        ({"hook": "blocks.7.hook_resid_post"}, ctx, "'hook'"),
        ({"hook": "blocks.0.attn.hook_z:h0"}, ctx, "residual-stream hook"),
        ({"direction": "mean-diff", "feature": "timestep"}, ctx, "takes one value"),
        ({"direction": "mean-diff", "feature": "cue_object"}, ctx, "Memory windows only"),
        ({"direction": "mean-diff", "feature": "colour"}, ctx, "unknown feature"),
        (
            {"direction": "mean-diff", "feature": "prev_action"},
            AnalysisContext(ckpt, one_window),
            "one value",
        ),
    ):
        with pytest.raises(ParameterError, match=needle) as err:
            registry.run(PLUGIN, context, params)
        assert "\n" not in str(err.value) and PLUGIN in str(err.value)
