"""Ablation: a head that writes nothing changes nothing when zeroed, mean and resample values come from the
other windows only, and an ablation of nothing is a one-line error."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dtinterp.interp.ablation import ablated, ablation_values
from dtinterp.interp.causal import (
    ablation_effects,
    leave_one_out_means,
    parse_component_list,
    resample_partners,
)
from dtinterp.model.checkpoint import Checkpoint
from dtinterp.plugins.api import AnalysisContext, ParameterError
from tests.plugins.conftest import _random_model
from tests.plugins.helpers import assert_labelled

PLUGIN = "ablation"
HEADS = "blocks.0.attn.hook_z:h1, blocks.1.attn.hook_z:h0"


def test_zero_ablating_a_head_with_zero_output_weights_changes_nothing(tiny_meta, many_windows, registry):
    model = _random_model(init_range=0.3)  # weights large enough for a head to matter
    with torch.no_grad():
        model.blocks[0].attn.W_O[1] = 0.0
    ctx = AnalysisContext(Checkpoint.from_model(model, tiny_meta), many_windows)
    for metric in ("logit-diff", "kl", "logprob"):
        d = registry.run(PLUGIN, ctx, {"components": HEADS, "metric": metric}).data
        assert d["labels"] == ["blocks.0.attn.hook_z:h1", "blocks.1.attn.hook_z:h0", "together"]
        # 0 up to float round-off (a hooked forward takes the model's unfused path: logits differ by ~1e-6)
        assert abs(d["effect_mean"][0]) < 1e-5 and d["effect_std"][0] < 1e-5
        assert abs(d["effect_mean"][1]) > 1e-2  # the head that writes does matter
        np.testing.assert_allclose(d["effect_mean"][2], d["effect_mean"][1], atol=1e-6)
    result = registry.run(PLUGIN, ctx, {"components": HEADS})
    figs = registry.figures(PLUGIN, result)
    assert_labelled(figs)
    assert "unablated →" in figs[0].layout.title.text and "ablated →" in figs[0].layout.title.text


@pytest.mark.parametrize("text", ["", " , ", "\n"])
def test_an_ablation_of_nothing_is_a_one_line_error(tiny_model, tiny_meta, many_windows, registry, text):
    ctx = AnalysisContext(Checkpoint.from_model(tiny_model, tiny_meta), many_windows)
    with pytest.raises(ParameterError, match="parameter 'components': no components given") as err:
        registry.run(PLUGIN, ctx, {"components": text})
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "text, needle",
    [
        ("blocks.0.attn.hook_z:h2", "head 2 out of range 0..1"),
        ("blocks.2.mlp.hook_post:n1", "layer 2 out of range"),
        ("blocks.0.mlp.hook_post:n64", "neuron 64 out of range"),
        ("blocks.0.attn.hook_zed", "unknown component"),
    ],
)
def test_unknown_hooks_and_indices_name_the_input(
    tiny_model, tiny_meta, many_windows, registry, text, needle
):
    ctx = AnalysisContext(Checkpoint.from_model(tiny_model, tiny_meta), many_windows)
    with pytest.raises(ParameterError, match=needle) as err:
        registry.run(PLUGIN, ctx, {"components": text})
    assert text in str(err.value) and "\n" not in str(err.value)


def test_mean_ablation_averages_over_the_other_windows_only(tiny_model, many_windows):
    comps = parse_component_list(HEADS + " blocks.0.mlp.hook_post:n3", tiny_model)
    names = [str(c) for c in comps]
    eff = ablation_effects(tiny_model, many_windows, names, "mean", each=False)
    means = leave_one_out_means(tiny_model, comps, many_windows)
    B = many_windows.batch_size
    for b in range(B):
        others = many_windows[torch.tensor([i for i in range(B) if i != b])]
        values = ablation_values(tiny_model, names, "mean", others)  # the library's mean over those windows
        for name, v in values.items():
            torch.testing.assert_close(means[name][b : b + 1], v, atol=1e-6, rtol=0)
        with torch.inference_mode(), ablated(tiny_model, names, "mean", values):
            want = tiny_model(many_windows[b])
        torch.testing.assert_close(eff.ablated_logits[-1, b : b + 1], want, atol=1e-5, rtol=0)


def test_resample_takes_another_window_real_wherever_this_one_is(tiny_model, many_windows):
    partners = resample_partners(many_windows, seed=3)
    pad = many_windows.pad_mask
    for b, p in enumerate(partners.tolist()):
        assert p != b and bool((pad[p] | ~pad[b]).all())
    assert 0 not in partners.tolist()  # window 0 is padded: no full window may take activations from it
    eff = ablation_effects(tiny_model, many_windows, ["blocks.1.hook_attn_out"], "resample", seed=3)
    assert torch.equal(eff.resample_index, partners)
    values = ablation_values(tiny_model, ["blocks.1.hook_attn_out"], "resample", many_windows)
    with torch.inference_mode(), ablated(tiny_model, ["blocks.1.hook_attn_out"], "resample", values,
                                         resample_index=partners):  # fmt: skip
        want = tiny_model(many_windows)
    torch.testing.assert_close(eff.ablated_logits[-1], want)


def test_one_window_and_mean_over_windows(tiny_model, tiny_meta, many_windows, registry):
    ctx = AnalysisContext(Checkpoint.from_model(tiny_model, tiny_meta), many_windows)
    every = registry.run(PLUGIN, ctx, {"components": HEADS, "kind": "mean", "metric": "kl"}).data
    one = registry.run(PLUGIN, ctx, {"components": HEADS, "kind": "mean", "metric": "kl", "window": 4}).data
    assert every["windows"] == list(range(many_windows.batch_size)) and one["windows"] == [4]
    assert (np.asarray(every["ablated_metric"]) >= -1e-6).all()  # a KL divergence (float32 round-off)
    np.testing.assert_allclose(one["ablated_metric"], np.asarray(every["ablated_metric"])[:, [4]], atol=1e-7)
    with pytest.raises(ParameterError, match="at least 2 windows"):
        registry.run(
            PLUGIN, AnalysisContext(ctx.checkpoint, many_windows[1]), {"components": HEADS, "kind": "mean"}
        )
