"""Counterfactual attention: a no-op edit changes nothing, a real edit changes something, weights are exact."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dtinterp.interp.attention import action_shift, attention_pattern, output_norms
from dtinterp.interp.edits import parse_edit
from dtinterp.plugins.api import AnalysisContext, ParameterError, PluginError

PLUGIN = "counterfactual-attention"


def run(registry, model, inputs, meta, edits, **params):
    ctx = AnalysisContext(model, inputs, meta, edits=[parse_edit(e) for e in edits])
    return ctx, registry.run(PLUGIN, ctx, params)


@pytest.mark.parametrize("value_weighted", [False, True])
def test_edit_free_counterfactual_changes_nothing(
    registry, tiny_model, tiny_meta, one_window, value_weighted
):
    K = one_window.context_len
    same = f"R{K}={float(one_window.rtg[0, -1]) * tiny_meta['rtg_scale']!r}"  # sets R_K to its own value
    _, result = run(registry, tiny_model, one_window, tiny_meta, [same], value_weighted=value_weighted)
    d = result.data
    assert np.all(d["difference"] == 0)
    np.testing.assert_array_equal(d["clean"], d["counterfactual"])
    np.testing.assert_array_equal(d["probs_clean"], d["probs_counterfactual"])
    assert d["kl"] == 0.0 and d["predicted_clean"] == d["predicted_counterfactual"]


def test_real_edit_changes_attention_and_prediction(registry, tiny_model, tiny_meta, many_windows):
    ctx, result = run(registry, tiny_model, many_windows, tiny_meta, ["R*=-3"], window=1)
    d = result.data
    L, H, P = tiny_model.cfg.n_layers, tiny_model.cfg.n_heads, many_windows.shape[1]
    assert np.asarray(d["clean"]).shape == (L, H, P, P)
    assert np.abs(d["difference"]).max() > 1e-4
    assert np.abs(np.asarray(d["probs_clean"]) - d["probs_counterfactual"]).max() > 1e-5 and d["kl"] > 0
    # Probabilities and KL are those of the context's clean and counterfactual logits at the last state.
    p, q, kl = action_shift(ctx.logits[1, -1], ctx.cf_logits[1, -1])
    np.testing.assert_allclose(d["probs_clean"], p.numpy(), atol=1e-7)
    np.testing.assert_allclose(d["probs_counterfactual"], q.numpy(), atol=1e-7)
    assert d["kl"] == pytest.approx(float(kl)) and d["query_label"] == f"S{many_windows.context_len}"
    # Rows are distributions; the first query row and any key after the query are never attended.
    for key in ("clean", "counterfactual"):
        pattern = np.asarray(d[key])
        np.testing.assert_allclose(pattern.sum(-1), 1.0, atol=1e-6)
        assert np.all(np.triu(pattern, 1) == 0)
    np.testing.assert_allclose(np.asarray(d["difference"]).sum(-1), 0.0, atol=1e-6)
    np.testing.assert_array_equal(
        np.asarray(d["query_rows"]["difference"]), np.asarray(d["difference"])[:, :, -1]
    )


@pytest.mark.parametrize("renormalize", [False, True])
def test_value_weighted_pattern_is_the_norm_of_what_reaches_the_stream(
    registry, tiny_model, tiny_meta, one_window, renormalize
):
    ctx, result = run(
        registry,
        tiny_model,
        one_window,
        tiny_meta,
        ["R1=0"],
        value_weighted=True,
        renormalize=renormalize,
        layer=1,
    )
    d = result.data
    assert d["layers"] == [1]
    pattern = ctx.cache["blocks.1.attn.hook_pattern"][0]  # [H, Pq, Pk]
    v = ctx.cache["blocks.1.attn.hook_v"][0]  # [Pk, H, dh]
    W_O = tiny_model.blocks[1].attn.W_O.detach()  # [H, dh, d]
    # ||pattern[q, k] * v[k] @ W_O[h]|| (Kobayashi et al. 2020), not pattern * ||v[k]||.
    written = torch.stack([pattern[h, :, :, None] * (v[:, h] @ W_O[h])[None] for h in range(len(W_O))])
    by_hand = written.norm(dim=-1)  # [H, Pq, Pk]
    if renormalize:
        by_hand = by_hand / by_hand.sum(-1, keepdim=True)
        np.testing.assert_allclose(np.asarray(d["clean"]).sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(d["clean"])[0], by_hand.numpy(), atol=1e-6)
    torch.testing.assert_close(
        output_norms(ctx.cache, 1)[0], torch.einsum("phe,hed->hpd", v, W_O).norm(dim=-1)
    )
    torch.testing.assert_close(attention_pattern(ctx.cache, 1)[0], pattern)


def test_registry_json_and_figures(registry, tiny_model, tiny_meta, many_windows):
    assert registry.plugins[PLUGIN].needs_counterfactual and registry.plugins[PLUGIN].category == "causal"
    _, result = run(
        registry, tiny_model, many_windows, tiny_meta, ["S4.direction=left", "R2=0.1"], position=3
    )
    assert result.data["query_label"] == "S3"
    json.dumps(result.to_json())
    figs = registry.figures(PLUGIN, result)
    assert len(figs) == 3
    # One layer (the one changed most) by default, its heads as columns; padded tokens are not drawn.
    H = tiny_model.cfg.n_heads
    assert len(figs[0].data) == 3 * H and figs[0].layout.height <= 900
    real = [lab for lab, r in zip(result.data["token_labels"], result.data["real_tokens"]) if r]
    assert list(figs[0].data[0].x) == real and "R1" not in real  # window 0 starts with a padded step
    change = np.asarray(result.data["head_max_abs_difference"]).max(1)
    assert result.data["shown_layer"] == int(change.argmax())
    one = registry.figures(PLUGIN, run(registry, tiny_model, many_windows, tiny_meta, ["R2=0.1"], head=1)[1])
    assert len(one[0].data) == 3
    for fig in figs:
        titled_x = [fig.layout[k].title.text for k in fig.layout if k.startswith("xaxis")]
        titled_y = [fig.layout[k].title.text for k in fig.layout if k.startswith("yaxis")]
        assert fig.layout.title.text and fig.data and any(titled_x) and any(titled_y)


def test_needs_an_edit_and_valid_parameters(registry, tiny_model, tiny_meta, many_windows):
    with pytest.raises(PluginError, match="counterfactual"):
        run(registry, tiny_model, many_windows, tiny_meta, [])
    for params, match in [
        (dict(layer=2), "layer 2"),
        (dict(position=1, window=0), "padded"),
        (dict(position=5), "outside"),
        (dict(window=6), "outside the batch"),
        (dict(layer=-2), "minimum"),
        (dict(head=2), "head 2"),
    ]:
        with pytest.raises(ParameterError, match=match):
            run(registry, tiny_model, many_windows, tiny_meta, ["R2=0.5"], **params)
