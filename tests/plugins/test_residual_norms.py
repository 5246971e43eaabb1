"""Residual stream norms and component effects: exact norms, contributions that sum to the logit, padding
excluded."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformer_lens import ActivationCache

from dtinterp.interp.norms import component_effects, head_results
from dtinterp.model import DTConfig, HookedDecisionTransformer
from dtinterp.plugins.api import AnalysisContext
from tests.plugins.helpers import assert_labelled


def run(registry, model, inputs, meta, **params):
    return registry.run("residual-norms", AnalysisContext(model, inputs, meta), params)


def test_registered_and_runs_through_registry(registry, tiny_model, tiny_meta, one_window):
    assert registry.plugins["residual-norms"].category == "dynamic"
    result = run(registry, tiny_model, one_window, tiny_meta)
    assert result.summary
    json.dumps(result.to_json())
    assert_labelled(registry.figures("residual-norms", result))


def test_norms_equal_norms_of_cached_activations(registry, tiny_model, tiny_meta, many_windows):
    ctx = AnalysisContext(tiny_model, many_windows, tiny_meta)
    d = registry.run("residual-norms", ctx, {}).data
    assert d["sites"] == ["resid_pre", "resid_mid", "resid_post"]
    real = many_windows.pad_mask.repeat_interleave(3, 1)[:, :-1]  # [B, P]
    for layer in range(tiny_model.cfg.n_layers):
        for s, site in enumerate(d["sites"]):
            norms = torch.linalg.norm(ctx.cache[f"blocks.{layer}.hook_{site}"], dim=-1)  # [B, P]
            for p in range(real.shape[1]):
                values = norms[real[:, p], p].numpy()
                np.testing.assert_allclose(d["norm_mean"][layer, s, p], values.mean(), rtol=1e-5)
                np.testing.assert_allclose(d["norm_std"][layer, s, p], values.std(), rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(d["n_real"], real.sum(0).numpy())


@pytest.mark.parametrize("position", ["last", "all"])
def test_direct_contributions_sum_to_predicted_logit(registry, tiny_model, tiny_meta, many_windows, position):
    d = run(registry, tiny_model, many_windows, tiny_meta, position=position).data
    tok = d["tokens"]
    logits = tiny_model(many_windows).detach()  # fast path: an independent forward pass
    b, k = tok["batch"], tok["step"]
    expected_n = many_windows.batch_size if position == "last" else int(many_windows.pad_mask.sum())
    assert len(b) == expected_n and many_windows.pad_mask[b, k].all()
    np.testing.assert_array_equal(tok["action"], logits[b, k].argmax(-1).numpy())
    np.testing.assert_allclose(tok["logit"], logits[b, k].max(-1).values.numpy(), atol=1e-5)
    comp = d["components"]
    assert comp["labels"] == ["embed", "pos_embed", "0_attn_out", "0_mlp_out", "1_attn_out", "1_mlp_out"]
    np.testing.assert_allclose(comp["dla"].sum(0) + tok["bias"], tok["logit"], atol=1e-4)
    # Heads + each layer's b_O (through the same LN scale) make up that layer's attn_out contribution.
    heads = d["heads"]
    H = tiny_model.cfg.n_heads
    assert heads["labels"][:H] == [f"L0H{h}" for h in range(H)]
    assert heads["dla"].shape == heads["norm"].shape == (tiny_model.cfg.n_layers * H, expected_n)


def test_head_results_equal_transformer_lens_stack(tiny_model, many_windows):
    logits, raw = tiny_model.run_with_cache(many_windows)
    cache = ActivationCache(raw, tiny_model)
    ours, labels = head_results(tiny_model, cache)
    theirs, tl_labels = ActivationCache(dict(raw), tiny_model).stack_head_results(
        pos_slice=slice(1, None, 3), return_labels=True
    )
    assert labels == tl_labels
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)
    # Adding b_O to each layer's heads reproduces that layer's attn_out at the state tokens.
    H = tiny_model.cfg.n_heads
    for layer in range(tiny_model.cfg.n_layers):
        summed = ours[layer * H : (layer + 1) * H].sum(0) + tiny_model.blocks[layer].attn.b_O
        torch.testing.assert_close(summed, cache["attn_out", layer][:, 1::3], atol=1e-6, rtol=0)
    # And the contributions of heads and biases add up to the attn_out direct contribution.
    eff = component_effects(tiny_model, cache, logits, many_windows.pad_mask, "all")
    ln_scale = cache["ln_final.hook_scale"][:, 1::3][eff["batch"], eff["step"]]  # [N, 1]
    w = tiny_model.W_U.T[eff["action"]]  # [N, d]
    for layer in range(tiny_model.cfg.n_layers):
        b_o = tiny_model.blocks[layer].attn.b_O
        b_o_dla = ((b_o - b_o.mean()) / ln_scale * w).sum(-1)
        recon = eff["head_dla"][layer * H : (layer + 1) * H].sum(0) + b_o_dla
        torch.testing.assert_close(recon, eff["dla"][2 + 2 * layer], atol=1e-5, rtol=0)


def test_padded_positions_are_excluded(registry, tiny_model, tiny_meta, many_windows):
    assert not many_windows.pad_mask[0, 0]
    edited = many_windows.clone()
    edited.obs[0, 0] = torch.randint(0, 6, edited.obs[0, 0].shape, generator=torch.Generator().manual_seed(1))
    edited.rtg[0, 0], edited.actions[0, 0], edited.timesteps[0, 0], edited.directions[0, 0] = 50.0, 5, 40, 3
    for position in ("last", "all"):
        a = run(registry, tiny_model, many_windows, tiny_meta, position=position).to_json()
        b = run(registry, tiny_model, edited, tiny_meta, position=position).to_json()
        np.testing.assert_allclose(a["data"]["norm_mean"], b["data"]["norm_mean"], atol=1e-5)
        np.testing.assert_allclose(a["data"]["norm_std"], b["data"]["norm_std"], atol=1e-5)
        for part in ("components", "heads"):
            for key in ("norm", "dla"):
                np.testing.assert_allclose(a["data"][part][key], b["data"][part][key], atol=1e-5)
    # The same edit at a real timestep does change the result (the comparison above can fail).
    edited.pad_mask[0, 0] = True
    c = run(registry, tiny_model, edited, tiny_meta).data["norm_mean"]
    assert np.abs(c - np.array(a["data"]["norm_mean"])).max() > 1e-3


def test_one_window_of_a_batch_equals_that_window_alone(registry, tiny_model, tiny_meta, many_windows):
    picked = run(registry, tiny_model, many_windows, tiny_meta, window=2, position="all").data
    alone = run(registry, tiny_model, many_windows[2], tiny_meta, position="all").data
    assert picked["windows"] == alone["windows"] == 1
    np.testing.assert_allclose(picked["norm_mean"], alone["norm_mean"], atol=1e-5)
    np.testing.assert_allclose(picked["components"]["dla"], alone["components"]["dla"], atol=1e-5)


def test_attention_only_model(registry, tiny_meta, one_window):
    cfg = DTConfig(context_len=4, n_layers=2, n_heads=2, d_model=32, max_timestep=100, attn_only=True, seed=1)
    model = HookedDecisionTransformer(cfg).eval()
    result = run(registry, model, one_window, tiny_meta, heads=False)
    assert result.data["sites"] == ["resid_pre", "resid_post"]
    assert "heads" not in result.data
    tok, comp = result.data["tokens"], result.data["components"]
    np.testing.assert_allclose(comp["dla"].sum(0) + tok["bias"], tok["logit"], atol=1e-4)
    assert_labelled(registry.figures("residual-norms", result))
