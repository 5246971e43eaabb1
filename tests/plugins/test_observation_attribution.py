"""Observation attribution: the cells of the view add up to the state embedding's total contribution."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dtinterp.plugins.api import AnalysisContext
from tests.plugins.helpers import assert_labelled

PLUGIN = "observation-attribution"


@pytest.mark.parametrize("direction", ["top-vs-runner-up", "pickup-right"])
def test_cells_sum_to_the_state_embeddings_contribution(
    registry, tiny_model, tiny_meta, many_windows, direction
):
    ctx = AnalysisContext(tiny_model, many_windows, tiny_meta)
    for window in range(many_windows.batch_size):
        params = {"direction": direction, "window": window}
        d = registry.run(PLUGIN, ctx, params).data
        dla = registry.run("dla", ctx, params).data  # the state embedding's share of the direct attribution
        share = dla["components"]["mean"][dla["components"]["labels"].index("state_embed")]
        direct = d["direct"]
        cells = np.asarray(direct["cells"]["mean"]).sum()
        total = cells + direct["direction_row"]["mean"] + direct["b_state"]["mean"]
        assert total == pytest.approx(share, abs=1e-4) and direct["total"]["mean"] == pytest.approx(
            share, abs=1e-4
        )
        groups = sum(np.asarray(direct[g]["mean"]) for g in ("object", "colour", "state"))
        np.testing.assert_allclose(groups, direct["cells"]["mean"], atol=1e-6)  # channels split each cell
        assert d["cells_error"] <= 1e-4
    mean = registry.run(PLUGIN, ctx, {"direction": direction}).data["direct"]
    shares = registry.run("dla", ctx, {"direction": direction}).data["components"]
    assert mean["total"]["mean"] == pytest.approx(
        shares["mean"][shares["labels"].index("state_embed")], abs=1e-4
    )


def test_figures_are_labelled_and_drawn_over_the_view(
    registry, tiny_model, tiny_meta, one_window, many_windows
):
    for inputs, params in (
        (one_window, {}),
        (many_windows, {"source": 2}),
        (many_windows, {"window": 1, "source": 4}),
    ):
        result = registry.run(PLUGIN, AnalysisContext(tiny_model, inputs, tiny_meta), params)
        json.dumps(result.to_json())
        figs = registry.figures(PLUGIN, result)
        assert_labelled(figs)
        assert all((f.layout.height or 450) <= 900 for f in figs)
        one = inputs.batch_size == 1 or params.get("window", -1) >= 0
        assert any(t.type == "image" for t in figs[0].data) == one  # the rendered view under one window
        heat = [t for t in figs[0].data if t.type == "heatmap"][0]
        np.testing.assert_allclose(heat.z, np.asarray(result.data["direct"]["cells"]["mean"]).T)  # [y, x]
