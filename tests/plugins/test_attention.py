"""Attention: real queries' rows sum to 1 over the real tokens; a full-rank approximation is exact."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dtinterp.plugins.api import AnalysisContext, ParameterError
from tests.plugins.helpers import assert_labelled

PLUGIN = "attention"


@pytest.mark.parametrize("weighting", ["attention", "value-normalised"])
@pytest.mark.parametrize("window", [-1, 0])
def test_rows_sum_to_one_over_real_tokens_and_full_rank_is_exact(
    registry, tiny_model, tiny_meta, many_windows, weighting, window
):
    ctx = AnalysisContext(tiny_model, many_windows, tiny_meta)
    P = many_windows.shape[1]
    d = registry.run(
        PLUGIN, ctx, {"weighting": weighting, "window": window, "layer": 1, "head": 0, "rank": P}
    ).data
    real = np.asarray(d["real"], dtype=bool)
    assert real.all() == (window < 0)  # window 0 starts with a padded timestep: its tokens are left out
    mean = np.asarray(d["mean"], dtype=float)[:, :, real][:, :, :, real]  # [L, H, real q, real k]
    np.testing.assert_allclose(mean.sum(-1), 1.0, atol=1e-5)
    assert d["row_sum_error"] <= 1e-5
    e = d["enlarged"]
    assert e["rank"] == int(real.sum())
    np.testing.assert_allclose(e["approx"], e["pattern"], atol=1e-6)  # full rank: exact
    assert e["error"] <= 1e-6 and e["error_by_rank"][-1] == pytest.approx(0.0, abs=1e-6)
    assert e["error_by_rank"][0] == pytest.approx(1.0)
    # The enlarged head is the mean of the cached pattern over the windows, padding left out.
    pattern = ctx.cache["blocks.1.attn.hook_pattern"][:, 0]  # [B, P, P]
    if weighting == "attention" and window == 0:
        np.testing.assert_allclose(e["pattern"], pattern[0][real][:, real].numpy(), atol=1e-6)


def test_value_weighting_is_the_norm_of_what_reaches_the_stream(registry, tiny_model, tiny_meta, one_window):
    ctx = AnalysisContext(tiny_model, one_window, tiny_meta)
    d = registry.run(PLUGIN, ctx, {"weighting": "value"}).data
    pattern = ctx.cache["blocks.0.attn.hook_pattern"][0]  # [H, P, P]
    v = ctx.cache["blocks.0.attn.hook_v"][0]  # [P, H, dh]
    W_O = tiny_model.blocks[0].attn.W_O.detach()
    written = torch.stack(
        [(pattern[h, :, :, None] * (v[:, h] @ W_O[h])[None]).norm(dim=-1) for h in range(2)]
    )
    np.testing.assert_allclose(np.asarray(d["mean"])[0], written.numpy(), atol=1e-5)


def test_figures_are_labelled_and_fit_a_screen(registry, tiny_model, tiny_meta, many_windows):
    ctx = AnalysisContext(tiny_model, many_windows, tiny_meta)
    result = registry.run(PLUGIN, ctx, {"window": 0, "layer": 0, "head": 1, "rank": 2})
    json.dumps(result.to_json())
    figs = registry.figures(PLUGIN, result)
    assert_labelled(figs)
    assert len(figs) == 4 and all((f.layout.height or 450) <= 900 for f in figs)
    grid = figs[0]
    assert len(grid.data) == tiny_model.cfg.n_layers * tiny_model.cfg.n_heads
    assert "R1" not in grid.data[0].x and grid.data[0].x[0] == "R2"  # padding is not drawn
    types = result.data["head_types"]["mean"]
    np.testing.assert_allclose(np.asarray(types)[..., :3].sum(-1), 1.0, atol=1e-5)  # RTG + state + action
    for params, match in [({"layer": 1}, "both layer and head"), ({"layer": 2, "head": 0}, "outside")]:
        with pytest.raises(ParameterError, match=match):
            registry.run(PLUGIN, ctx, params)
