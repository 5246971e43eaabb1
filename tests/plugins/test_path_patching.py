"""Path patching: every form is the library function on the same pair, and a head that writes nothing has no
path effect."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dtinterp.interp.causal import build_metric
from dtinterp.interp.edits import apply_edits, parse_edit
from dtinterp.interp.path_patching import path_patch, path_patch_to_heads, path_patch_to_logits
from dtinterp.model.checkpoint import Checkpoint
from dtinterp.plugins.api import AnalysisContext, ParameterError
from tests.plugins.conftest import _random_model
from tests.plugins.helpers import assert_labelled

PLUGIN = "path-patching"
EDITS = [parse_edit("R*=0.1"), parse_edit("S2[3,5].object=ball")]


def _setup(model, meta, windows):
    ckpt = Checkpoint.from_model(model, meta)
    corrupted = apply_edits(windows, EDITS)
    with torch.inference_mode():
        chosen = build_metric("logit-diff", model(windows), model(corrupted), -1)
    return AnalysisContext(ckpt, windows, edits=EDITS), corrupted, chosen.metric


def test_every_form_equals_the_library(tiny_model, tiny_meta, many_windows, registry):
    ctx, corrupted, metric = _setup(tiny_model, tiny_meta, many_windows)
    cases = [
        ({}, path_patch_to_logits(tiny_model, many_windows, corrupted, metric)),
        (
            {"mode": "senders-to-heads", "senders": "blocks.0.attn.hook_z:h1", "receiver_input": "k"},
            path_patch_to_heads(
                tiny_model, many_windows, corrupted, ["blocks.0.attn.hook_z:h1"], metric, "k"
            ),
        ),
        (
            {"mode": "explicit", "senders": "blocks.0.hook_mlp_out", "receivers": "blocks.1.attn.hook_v:h0",
             "direction": "denoise"},
            path_patch(tiny_model, many_windows, corrupted, ["blocks.0.hook_mlp_out"],
                       ["blocks.1.attn.hook_v:h0"], metric, direction="denoise"),
        ),
    ]  # fmt: skip
    for params, expected in cases:
        result = registry.run(PLUGIN, ctx, params)
        np.testing.assert_allclose(result.data["values"], expected.values.double().numpy(), atol=1e-5, rtol=0)
        assert result.data["axis_names"] == list(expected.axis_names)
        figs = registry.figures(PLUGIN, result)
        assert_labelled(figs)
        assert "clean" in figs[0].layout.title.text and "corrupted" in figs[0].layout.title.text


def test_a_head_with_zero_output_weights_has_no_path_effect(tiny_meta, many_windows, registry):
    model = _random_model()
    with torch.no_grad():
        model.blocks[0].attn.W_O[1] = 0.0
    ctx, _, _ = _setup(model, tiny_meta, many_windows)
    grid = registry.run(PLUGIN, ctx, {"show": "metric"}).data
    clean = np.mean(grid["clean_metric"])  # noise: the base run is the clean run
    assert grid["values"][0, 1] == pytest.approx(clean, abs=1e-6)
    assert abs(grid["values"][0, 0] - clean) > 1e-4  # a head that writes does have an effect
    one = registry.run(PLUGIN, ctx, {"mode": "explicit", "senders": "blocks.0.attn.hook_z:h1"}).data
    assert float(one["values"]) == pytest.approx(clean, abs=1e-6) and float(one["score"]) == pytest.approx(
        1.0
    )


def test_bad_senders_and_receivers_are_one_line(tiny_model, tiny_meta, many_windows, registry):
    ctx, _, _ = _setup(tiny_model, tiny_meta, many_windows)
    for params, needle in (
        ({"mode": "explicit"}, "needs senders"),
        ({"mode": "explicit", "senders": "blocks.4.attn.hook_z:h0"}, "layer 4 out of range"),
        ({"mode": "senders-to-heads", "senders": "blocks.0.attn.hook_q:h0"}, "sender"),
        (
            {"mode": "explicit", "senders": "blocks.0.attn.hook_z:h0", "receivers": "blocks.1.hook_attn_out"},
            "receiver",
        ),
        ({"mode": "explicit", "senders": "blocks.0.attn.hook_z:h0", "receivers": " "}, "receivers"),
    ):
        with pytest.raises(ParameterError, match=needle) as err:
            registry.run(PLUGIN, ctx, params)
        assert "\n" not in str(err.value)
