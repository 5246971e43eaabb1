"""Neuron dashboard: the decomposition sums to the pre-activation; the top activations are the largest."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dtinterp.plugins.api import AnalysisContext, ParameterError
from tests.plugins.helpers import assert_labelled

PLUGIN = "neurons"


@pytest.mark.parametrize("window", [-1, 2])
@pytest.mark.parametrize("position", [0, 2])
def test_decomposition_sums_to_the_pre_activation(
    registry, tiny_model, tiny_meta, many_windows, window, position
):
    ctx = AnalysisContext(tiny_model, many_windows, tiny_meta)
    d = registry.run(PLUGIN, ctx, {"layer": 1, "neuron": 5, "window": window, "position": position}).data
    k = (position or many_windows.context_len) - 1
    pre = ctx.cache["blocks.1.mlp.hook_pre"][:, 3 * k + 1, 5]  # the cached pre-activation, independently
    rows = (
        [b for b in range(many_windows.batch_size) if many_windows.pad_mask[b, k]] if window < 0 else [window]
    )
    np.testing.assert_allclose(d["pre"], pre[rows].numpy(), atol=1e-6)
    assert d["decomposition_error"] <= 1e-4
    assert np.sum(d["decomposition"]["mean"]) == pytest.approx(float(pre[rows].mean()), abs=1e-4)
    # The top activations are the largest over every real state token, strongest first.
    post = ctx.cache["blocks.1.mlp.hook_post"][:, 1::3, 5][many_windows.pad_mask]
    top = [t["activation"] for t in d["top"]]
    assert top == sorted(top, reverse=True) and top[0] == pytest.approx(float(post.max()))


def test_dashboard_figures_and_defaults(registry, tiny_model, tiny_meta, many_windows):
    ctx = AnalysisContext(tiny_model, many_windows, tiny_meta)
    result = registry.run(PLUGIN, ctx, {"top_k": 4})
    d = result.data
    post = ctx.cache[f"blocks.{tiny_model.cfg.n_layers - 1}.mlp.hook_post"][:, -1].mean(0)
    assert d["neuron"] == f"L{tiny_model.cfg.n_layers - 1}N{int(post.argmax())}"  # the most active at S_K
    json.dumps(result.to_json())
    figs = registry.figures(PLUGIN, result)
    assert_labelled(figs)
    assert all((f.layout.height or 450) <= 900 for f in figs)
    assert [t.type for t in figs[1].data] == ["image"] * len(d["top"]) == ["image"] * 4  # rendered views
    with pytest.raises(ParameterError, match="outside"):
        registry.run(PLUGIN, ctx, {"neuron": tiny_model.cfg.d_mlp})
