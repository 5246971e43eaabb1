"""OV and QK circuits: the SVD reconstructs each head's matrix and matches FactoredMatrix; the OV matrix
applied to the first token (which attends only to itself) is the head's output there."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformer_lens.FactoredMatrix import FactoredMatrix

from dtinterp.plugins.api import AnalysisContext
from tests.plugins.helpers import assert_labelled

PLUGIN = "ov-qk-circuits"


def _factors(model, layer: int, head: int, circuit: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The head's matrix as two factors, ln1's weight and centring folded into the input side(s) by hand."""
    d = model.cfg.d_model
    fold = (torch.eye(d) - torch.ones(d, d) / d) @ torch.diag(model.blocks[layer].ln1.w.detach())
    W_Q, W_K, W_V, W_O = (x[layer, head].detach() for x in (model.W_Q, model.W_K, model.W_V, model.W_O))
    return (fold @ W_V, W_O) if circuit == "OV" else (fold @ W_Q, (fold @ W_K).T)


@pytest.mark.parametrize("circuit", ["OV", "QK"])
def test_svd_reconstructs_matches_factored_matrix_and_ov_is_the_head_output(
    registry, tiny_model, tiny_meta, one_window, circuit
):
    ctx = AnalysisContext(tiny_model, None, tiny_meta)
    d = registry.run(PLUGIN, ctx, {"circuit": circuit, "layer": 1, "head": 1}).data
    U, V, S = (torch.as_tensor(np.asarray(d[k])) for k in ("U", "V", "S"))  # U, V of L1H1; S [L, H, r]
    A, B = _factors(tiny_model, 1, 1, circuit)
    M = (U * S[1, 1]) @ V.T
    torch.testing.assert_close(M, A @ B, atol=1e-5, rtol=0)
    for layer in range(tiny_model.cfg.n_layers):
        for head in range(tiny_model.cfg.n_heads):
            tl = FactoredMatrix(*_factors(tiny_model, layer, head, circuit)).S  # TransformerLens' own SVD
            torch.testing.assert_close(S[layer, head], tl, atol=1e-5, rtol=1e-4)
    if circuit == "OV":  # the first token attends only to itself: the head writes OV(ln1(x)) + bias there
        run = AnalysisContext(tiny_model, one_window, tiny_meta)
        x = run.cache["blocks.1.hook_resid_pre"][0, 0]
        s = run.cache["blocks.1.ln1.hook_scale"][0, 0]
        attn = tiny_model.blocks[1].attn
        W_V, W_O = attn.W_V[1].detach(), attn.W_O[1].detach()
        bias = (tiny_model.blocks[1].ln1.b.detach() @ W_V + attn.b_V[1].detach()) @ W_O
        out = run.cache["blocks.1.attn.hook_z"][0, 0, 1] @ W_O
        torch.testing.assert_close((x / s) @ M + bias, out, atol=1e-5, rtol=0)


def test_figures_are_labelled_for_every_kind(registry, tiny_model, tiny_meta):
    ctx = AnalysisContext(tiny_model, None, tiny_meta)
    for params in ({}, {"source": "action", "k": 2}, {"circuit": "QK", "query": "time", "source": "state"}):
        result = registry.run(PLUGIN, ctx, params)
        json.dumps(result.to_json())
        figs = registry.figures(PLUGIN, result)
        assert_labelled(figs)
        assert all((f.layout.height or 450) <= 900 for f in figs)
    d = registry.run(PLUGIN, ctx, {"direction": "forward"}).data
    S = np.asarray(d["S"])
    assert d["head"] == "L{}H{}".format(*np.unravel_index(int(S[..., 0].argmax()), S.shape[:2]))
