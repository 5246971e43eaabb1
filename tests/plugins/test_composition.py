"""Composition scores equal a dense computation; the baseline comes from random models of the same shape."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dtinterp.interp.circuits import composition_baseline
from dtinterp.plugins.api import AnalysisContext
from tests.plugins.helpers import assert_labelled

PLUGIN = "composition"


@pytest.mark.parametrize("fold_ln", [True, False])
def test_scores_equal_dense_frobenius_norms_beside_a_random_baseline(
    registry, tiny_model, tiny_meta, fold_ln
):
    d = registry.run(PLUGIN, AnalysisContext(tiny_model, None, tiny_meta), {"fold_ln": fold_ln}).data
    m = tiny_model
    dm, L, H = m.cfg.d_model, m.cfg.n_layers, m.cfg.n_heads

    def fold(layer: int) -> torch.Tensor:
        if not fold_ln:
            return torch.eye(dm)
        return (torch.eye(dm) - torch.ones(dm, dm) / dm) @ torch.diag(m.blocks[layer].ln1.w.detach())

    W_Q, W_K, W_V, W_O = (w.detach().double() for w in (m.W_Q, m.W_K, m.W_V, m.W_O))
    for i1 in range(L * H):
        for i2 in range(L * H):
            (l1, h1), (l2, h2) = divmod(i1, H), divmod(i2, H)
            for mode in ("Q", "K", "V"):
                score = d["scores"][mode][i1, i2]
                if l1 >= l2:
                    assert score == 0 and not d["valid"][i1, i2]
                    continue
                F = fold(l2).double()
                W_A = W_V[l1, h1] @ W_O[l1, h1]
                QK = F @ W_Q[l2, h2] @ (F @ W_K[l2, h2]).T
                W_B = {"Q": QK, "K": QK.T, "V": F @ W_V[l2, h2] @ W_O[l2, h2]}[mode]
                dense = torch.linalg.norm(W_A @ W_B) / torch.linalg.norm(W_A) / torch.linalg.norm(W_B)
                assert score == pytest.approx(float(dense), abs=1e-5)
    mean, std = composition_baseline(m.cfg, 4, 0)  # freshly initialised models of the same architecture
    assert d["baseline_mean"] == pytest.approx(mean) and d["baseline_std"] == pytest.approx(std)
    assert all(0 < mean[k] < 1 and std[k] > 0 for k in mean)


def test_figures_heatmaps_baseline_and_graph(registry, tiny_model, tiny_meta):
    result = registry.run(PLUGIN, AnalysisContext(tiny_model, None, tiny_meta), {"threshold": 0.05})
    json.dumps(result.to_json())
    figs = registry.figures(PLUGIN, result)
    assert_labelled(figs)
    assert len(figs) == 3 and all((f.layout.height or 450) <= 900 for f in figs)
    edges = result.data["edges"]
    for mode, es in edges.items():
        scores = np.asarray(result.data["scores"][mode])
        valid = np.asarray(result.data["valid"])
        assert len(es) == int((scores[valid] > 0.05).sum())  # every pair above the threshold, no other
