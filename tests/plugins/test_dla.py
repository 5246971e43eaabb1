"""Direct logit attribution: the parts sum to the direction's value, each head's sources sum to the head."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dtinterp.plugins.api import AnalysisContext, ParameterError
from tests.plugins.helpers import assert_labelled

PLUGIN = "dla"


@pytest.mark.parametrize("direction", ["top-vs-runner-up", "forward", "forward-left"])
@pytest.mark.parametrize("window", [-1, 3])
def test_parts_sum_to_the_value_and_sources_to_each_head(
    registry, tiny_model, tiny_meta, many_windows, direction, window
):
    ctx = AnalysisContext(tiny_model, many_windows, tiny_meta)
    d = registry.run(PLUGIN, ctx, {"direction": direction, "window": window}).data
    # The value is read off the model's own logits at the last state token (independently of the plugin).
    logits = ctx.logits[:, -1].double()
    if direction == "forward":
        expected = logits[:, 2]
    elif direction == "forward-left":
        expected = logits[:, 2] - logits[:, 0]
    else:
        top2 = logits.topk(2, dim=-1).values
        expected = top2[:, 0] - top2[:, 1]
    rows = np.arange(len(logits)) if window < 0 else [window]
    np.testing.assert_allclose(d["value"], expected[rows].numpy(), atol=1e-4)
    # Every part sums to the value, in every window and in the mean over windows.
    assert d["decomposition_error"] <= 1e-4 and d["source_error"] <= 1e-4
    assert abs(np.sum(d["components"]["mean"]) - d["value_mean"]) <= 1e-4
    assert abs(d["layers"]["accumulated"]["mean"][-1] - d["value_mean"]) <= 1e-4
    assert abs(d["layers"]["logit_lens"]["mean"][-1] - d["value_mean"]) <= 1e-4
    np.testing.assert_allclose(d["by_source"]["mean"].sum(-1), d["heads"]["mean"], atol=1e-4)
    heads = [i for i, lab in enumerate(d["components"]["labels"]) if "H" in lab]
    np.testing.assert_allclose(d["components"]["mean"][heads], d["heads"]["mean"], atol=1e-6)


def test_figures_are_labelled_and_bad_directions_are_one_line(registry, tiny_model, tiny_meta, many_windows):
    ctx = AnalysisContext(tiny_model, many_windows, tiny_meta)
    result = registry.run(PLUGIN, ctx, {})
    json.dumps(result.to_json())
    figs = registry.figures(PLUGIN, result)
    assert_labelled(figs)
    assert all((f.layout.height or 450) <= 900 for f in figs)
    by_source = figs[3].data[0]
    assert "R1" in by_source.x  # window 0 is padded at its first timestep, the others are not
    padded = registry.run(PLUGIN, ctx, {"window": 0})
    assert "R1" not in registry.figures(PLUGIN, padded)[3].data[0].x  # window 0 alone: padding left out
    for params, match in [
        ({"direction": "jump"}, "unknown action 'jump'"),
        ({"direction": "forward-jump"}, "unknown action 'jump'"),
        ({"direction": "forward-left-right"}, "is not top-vs-runner-up"),
        ({"direction": "left-left"}, "with itself"),
        ({"direction": "saved:nothing-here"}, "no direction named"),
        ({"position": 9}, "outside the window"),
        ({"window": 6}, "outside the batch"),
        ({"window": 0, "position": 1}, "padding"),
    ]:
        with pytest.raises(ParameterError, match=match):
            registry.run(PLUGIN, ctx, params)
