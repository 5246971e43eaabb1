"""Neuron congruence: a neuron's output congruence is its direct logit attribution per unit of activation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dtinterp.interp.attribution import direct_logit_attribution
from dtinterp.plugins.api import AnalysisContext
from tests.plugins.helpers import assert_labelled

PLUGIN = "congruence"


def test_output_congruence_is_the_direct_attribution_per_unit_activation(
    registry, tiny_model, tiny_meta, many_windows
):
    d = registry.run(PLUGIN, AnalysisContext(tiny_model, None, tiny_meta), {}).data
    congruence = np.asarray(d["output"]["values"])  # [L*m, A]
    ctx = AnalysisContext(tiny_model, many_windows, tiny_meta)
    with torch.no_grad():
        contrib, labels = direct_logit_attribution(tiny_model, ctx.cache, "neuron")  # [C, B, K, A]
    scale = ctx.cache["ln_final.hook_scale"][:, 1::3]  # [B, K, 1] at the state tokens
    m = tiny_model.cfg.d_mlp
    for i, name in enumerate(d["neurons"]):
        layer, n = divmod(i, m)
        assert name == f"L{layer}N{n}"
        post = ctx.cache[f"blocks.{layer}.mlp.hook_post"][:, 1::3, n]  # [B, K]
        expected = (
            post[..., None] / scale * torch.from_numpy(congruence[i])
        )  # activation x congruence / scale
        np.testing.assert_allclose(contrib[labels.index(name)].numpy(), expected.numpy(), atol=1e-5)


@pytest.mark.parametrize("sort", ["abs", "max", "min"])
def test_sorted_strips_are_labelled(registry, tiny_model, tiny_meta, sort):
    ctx = AnalysisContext(tiny_model, None, tiny_meta)
    result = registry.run(PLUGIN, ctx, {"sort": sort, "top_k": 5, "kind": "action"})
    d = result.data
    out = np.asarray(d["output"]["values"])
    key = {"abs": np.abs(out).max(0), "max": out.max(0), "min": -out.min(0)}[sort]
    assert d["output"]["order"][0] == d["output"]["actions"][int(key.argmax())]  # sorted by the key
    assert len(d["input"]["rows"]) == 5
    json.dumps(result.to_json())
    figs = registry.figures(PLUGIN, result)
    assert_labelled(figs)
    assert len(figs) == 3 and all((f.layout.height or 450) <= 900 for f in figs)
    assert list(figs[0].layout.xaxis.categoryarray) == d["output"]["order"]
