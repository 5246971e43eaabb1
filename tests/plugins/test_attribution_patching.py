"""Attribution patching as a plugin: its numbers are the library's, and where the metric is linear in every
patched activation the estimates are the exact patches (correlation 1), for node sweeps, edges and EAP-IG."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dtinterp.interp.attribution_patching import attribution_patching, edge_attribution_patching
from dtinterp.interp.causal import build_metric
from dtinterp.interp.edits import apply_edits, parse_edit
from dtinterp.model.checkpoint import Checkpoint
from dtinterp.plugins.api import AnalysisContext, ParameterError
from tests.interp.tiny import linearize
from tests.plugins.conftest import _random_model
from tests.plugins.helpers import assert_labelled

PLUGIN = "attribution-patching"
EDITS = [parse_edit("R*=0.2"), parse_edit("S3[3,5].object=key")]


@pytest.fixture(scope="module")
def ckpt(tiny_model, tiny_meta) -> Checkpoint:
    return Checkpoint.from_model(tiny_model, tiny_meta)


@pytest.fixture(scope="module")
def linear_ckpt(tiny_meta) -> Checkpoint:
    """A model whose logits are affine in every patched activation: no LayerNorm, W_Q = W_K = 0 (every
    pattern uniform whatever the residual stream), tiny MLP input weights and large biases (ReLUs always on)."""
    return Checkpoint.from_model(linearize(_random_model(normalization_type=None, init_range=0.3)), tiny_meta)


def _library_metric(model, windows):
    clean, corrupted = windows, apply_edits(windows, EDITS)
    with torch.inference_mode():
        return clean, corrupted, build_metric("logit-diff", model(clean), model(corrupted), -1).metric


def test_node_sweep_equals_the_library(ckpt, many_windows, registry):
    result = registry.run(PLUGIN, AnalysisContext(ckpt, many_windows, edits=EDITS), {"sweep": "resid_pre"})
    clean, corrupted, metric = _library_metric(ckpt.model, many_windows)
    expected = attribution_patching(ckpt.model, clean, corrupted, metric, ["resid_pre"])["resid_pre"]
    d = result.data
    np.testing.assert_allclose(d["estimate"], expected.values.double().numpy(), atol=1e-6, rtol=0)
    np.testing.assert_allclose(d["exact"], expected.exact.double().numpy(), atol=1e-6, rtol=0)
    assert d["correlation"] == pytest.approx(expected.correlation, abs=1e-6)
    assert d["direction"] == "denoise" and d["axis_names"] == ["layer", "pos"]
    figs = registry.figures(PLUGIN, result)
    assert_labelled(figs)
    assert len(figs) == 3 and "Pearson r" in figs[-1].layout.title.text  # estimate, exact, scatter
    assert f"r = {expected.correlation:.3f}" in result.summary


def test_eap_ig_equals_the_library(ckpt, many_windows, registry):
    ctx = AnalysisContext(ckpt, many_windows, edits=EDITS)
    result = registry.run(PLUGIN, ctx, {"sweep": "edges", "steps": 3})
    clean, corrupted, metric = _library_metric(ckpt.model, many_windows)
    expected = edge_attribution_patching(ckpt.model, clean, corrupted, metric, steps=3, exact=True)
    d = result.data
    np.testing.assert_allclose(d["estimate"], expected.values.double().numpy(), atol=1e-6, rtol=0)
    np.testing.assert_allclose(d["exact"], expected.exact.double().numpy(), atol=1e-6, rtol=0)
    assert d["rank_correlation"] == pytest.approx(expected.rank_correlation, abs=1e-6)
    assert d["direction"] == "noise" and d["method"] == "EAP-IG (3 steps)"
    assert_labelled(registry.figures(PLUGIN, result))


@pytest.mark.parametrize(
    "params",
    [
        {"sweep": "head_out_by_pos"},
        {"sweep": "neuron_by_pos", "direction": "noise"},
        {"sweep": "edges"},
        {"sweep": "edges", "steps": 4},
    ],
)
def test_estimates_are_exact_where_the_metric_is_linear(linear_ckpt, many_windows, registry, params):
    result = registry.run(PLUGIN, AnalysisContext(linear_ckpt, many_windows, edits=EDITS), params)
    est, exact = np.asarray(result.data["estimate"]), np.asarray(result.data["exact"])
    assert np.abs(exact).max() > 1e-2  # not vacuous: some patch moves the metric
    np.testing.assert_allclose(est, exact, atol=5e-4 * max(1.0, np.abs(exact).max()), rtol=0)  # float32
    assert result.data["correlation"] == pytest.approx(1.0, abs=1e-3)


def test_without_exact_patching_there_is_no_comparison(ckpt, many_windows, registry):
    ctx = AnalysisContext(ckpt, many_windows, edits=EDITS)
    result = registry.run(PLUGIN, ctx, {"sweep": "mlp_out", "exact": False, "window": 0})
    assert result.data["exact"] is None and result.data["correlation"] is None
    assert result.data["windows"] == [0] and "exact=false" in result.summary
    figs = registry.figures(PLUGIN, result)
    assert_labelled(figs)
    assert len(figs) == 1
    assert list(figs[0].data[0].x)[:2] == ["R2", "S2"]  # window 0's padded first timestep is on no axis


def test_bad_parameters_are_one_line_errors(ckpt, many_windows, one_window, registry):
    ctx = AnalysisContext(ckpt, many_windows, edits=EDITS)
    for params, context, needle in (
        ({"steps": 0}, ctx, "below the minimum"),
        ({"sweep": "heads"}, ctx, "is not one of"),
        ({"pair": "edits"}, AnalysisContext(ckpt, many_windows), "no edits were given"),
        ({"pair": "resample"}, AnalysisContext(ckpt, one_window, edits=EDITS), "same episode step"),
        ({"action": "left", "versus": "left"}, ctx, "itself"),
    ):
        with pytest.raises(ParameterError, match=needle) as err:
            registry.run(PLUGIN, context, params)
        assert "\n" not in str(err.value) and PLUGIN in str(err.value)
