"""Kurtosis: the estimator on known distributions, the rotation test, and the plugin on cached activations."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dtinterp.interp.kurtosis import kurtosis, random_rotation, summarize
from dtinterp.plugins.api import AnalysisContext
from tests.plugins.helpers import assert_labelled


def sparse_activations(n: int, d: int, p: float, seed: int) -> torch.Tensor:
    """Mostly-zero activations with rare large spikes, each dimension independent (a basis-aligned code)."""
    g = torch.Generator().manual_seed(seed)
    spikes = torch.rand(n, d, generator=g) < p
    return spikes * (5.0 + torch.rand(n, d, generator=g))


def test_gaussian_kurtosis_is_three():
    x = torch.randn(200_000, 4, generator=torch.Generator().manual_seed(0))
    k = kurtosis(x)
    assert k.shape == (4,)
    assert torch.all((k - 3).abs() < 0.1), k
    # Kurtosis is invariant to shift and scale of each column.
    torch.testing.assert_close(kurtosis(3.0 * x - 7.0), k, atol=1e-5, rtol=0)


def test_sparse_basis_is_heavy_tailed_and_rotation_lowers_it():
    x = sparse_activations(20_000, 64, p=0.01, seed=1)
    k = kurtosis(x)
    assert k.min() > 10  # ~1/p for a rare spike
    rotated = kurtosis(x @ random_rotation(64, torch.Generator().manual_seed(0)).float())
    # A rotated column mixes ~64 independent spikes: excess kurtosis shrinks by sum(w^4) ~ 3 / 66.
    assert rotated.median() < 10 and rotated.max() < k.min() / 4
    s = summarize(k)
    assert s["frac_heavy"] == 1.0 and s["n"] == 64 and s["n_undefined"] == 0
    assert summarize(rotated)["median"] < s["median"] / 8


def test_constant_columns_are_undefined_and_summaries_skip_them():
    x = torch.randn(1000, 3, generator=torch.Generator().manual_seed(2))
    x[:, 1] = 0.0
    x[:, 2] = 4.2
    k = kurtosis(x)
    assert not torch.isnan(k[0]) and torch.isnan(k[1:]).all()
    s = summarize(k)
    assert s["n"] == 1 and s["n_undefined"] == 2 and s["max"] == pytest.approx(k[0].item())


def test_random_rotation_is_orthogonal_and_seeded():
    q = random_rotation(16, torch.Generator().manual_seed(5))
    torch.testing.assert_close(q @ q.T, torch.eye(16, dtype=q.dtype), atol=1e-10, rtol=0)
    torch.testing.assert_close(q, random_rotation(16, torch.Generator().manual_seed(5)), atol=0, rtol=0)
    assert (q - random_rotation(16, torch.Generator().manual_seed(6))).abs().max() > 0.1


def test_registered_and_runs_through_registry(registry, tiny_model, tiny_meta, one_window):
    assert registry.plugins["kurtosis"].category == "dynamic"
    result = registry.run("kurtosis", AnalysisContext(tiny_model, one_window, tiny_meta), {"seed": 3})
    assert result.summary and result.params == {"seed": 3, "window": -1}
    json.dumps(result.to_json())
    assert_labelled(registry.figures("kurtosis", result))


def test_one_window_of_a_batch_equals_that_window_alone(registry, tiny_model, tiny_meta, many_windows):
    picked = registry.run(
        "kurtosis", AnalysisContext(tiny_model, many_windows, tiny_meta), {"window": 0}
    ).data
    alone = registry.run("kurtosis", AnalysisContext(tiny_model, many_windows[0], tiny_meta), {}).data
    assert picked["n_tokens"] == alone["n_tokens"] == 11 - 3  # window 0 has one padded timestep
    for site in alone["sites"]:
        np.testing.assert_allclose(picked["model"][site], alone["model"][site], rtol=1e-4, atol=1e-4)


def test_model_basis_equals_core_on_real_tokens(registry, tiny_model, tiny_meta, many_windows):
    ctx = AnalysisContext(tiny_model, many_windows, tiny_meta)
    d = registry.run("kurtosis", ctx, {}).data
    real = many_windows.pad_mask.repeat_interleave(3, 1)[:, :-1]  # [B, P], padded tokens excluded
    assert d["n_tokens"] == int(real.sum()) == 6 * 11 - 3
    L = tiny_model.cfg.n_layers
    assert d["sites"] == [
        s for l in range(L) for s in (f"blocks.{l}.hook_resid_post", f"blocks.{l}.mlp.hook_post")
    ]
    for site in d["sites"]:
        expected = kurtosis(ctx.cache[site][real]).numpy()
        np.testing.assert_allclose(d["model"][site], expected, rtol=1e-6, equal_nan=True)
        assert d["rotated"][site].shape == expected.shape
        summary, defined = d["summary"][site]["model"], expected[~np.isnan(expected)]
        assert summary["n"] == defined.size and summary["n_undefined"] == expected.size - defined.size
        assert summary["max"] == pytest.approx(defined.max()) and summary["mean"] == pytest.approx(
            defined.mean()
        )
        assert summary["frac_heavy"] == pytest.approx((defined > 10).mean())
    # The seed changes only the rotated basis.
    other = registry.run("kurtosis", ctx, {"seed": 1}).data
    site = d["sites"][0]
    np.testing.assert_array_equal(other["model"][site], d["model"][site])
    assert np.abs(other["rotated"][site] - d["rotated"][site]).max() > 1e-6
