"""RTG scan: the sweep is exact at the actual RTG, decomposes the logits, and batching changes nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dtinterp.interp.attribution import GRANULARITIES
from dtinterp.interp.rtg_scan import correlation_clustering, rtg_scan, sweep_rtg
from dtinterp.plugins.api import AnalysisContext, ParameterError
from dtinterp.plugins.registry import load_registry


def test_sweep_rtg_modes(many_windows):
    window = many_windows[0]  # first timestep padded
    values = torch.tensor([0.0, 2.0])
    shifted = sweep_rtg(window, values, rtg_scale=2.0, mode="shift")
    const = sweep_rtg(window, values, rtg_scale=2.0, mode="constant")
    real = window.pad_mask[0]
    for out in (shifted, const):
        torch.testing.assert_close(out.rtg[:, -1], values / 2.0)
        assert torch.equal(out.rtg[:, ~real], window.rtg[:, ~real].expand(2, -1))  # padding untouched
        assert torch.equal(out.obs, window.obs.expand_as(out.obs))
    # shift keeps the offsets between real RTGs (the rewards inside the window); constant flattens them.
    torch.testing.assert_close(
        shifted.rtg[:, real].diff(dim=1), window.rtg[:, real].diff(dim=1).expand(2, -1)
    )
    assert torch.all(const.rtg[:, real] == (values / 2.0)[:, None])


@pytest.mark.parametrize("position", [-1, 1])
def test_scan_at_actual_rtg_reproduces_logits(tiny_model, many_windows, position):
    window = many_windows[0]
    k = position % window.context_len
    actual = float(window.rtg[0, k])
    scan = rtg_scan(tiny_model, window, torch.tensor([actual - 1.0, actual, 3.0]), position=position)
    with torch.inference_mode():
        expected = tiny_model(window)[0, k]
    torch.testing.assert_close(scan.logits[1], expected, atol=1e-5, rtol=0)
    assert (scan.logits[0] - expected).abs().max() > 1e-4  # the RTG does reach the prediction
    torch.testing.assert_close(scan.probs.sum(-1), torch.ones(3))


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_contributions_sum_to_logits_at_every_point(tiny_model, one_window, granularity):
    scan = rtg_scan(tiny_model, one_window, torch.linspace(-2, 2, 9), granularity=granularity)
    assert scan.contributions.shape == (len(scan.labels), 9, tiny_model.cfg.n_actions)
    torch.testing.assert_close(scan.contributions.sum(0) + scan.b_U, scan.logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize("mode", ["shift", "constant"])
def test_batched_sweep_equals_points_one_at_a_time(tiny_model, one_window, mode):
    values = torch.tensor([-1.0, 0.25, 0.5, 2.0])
    batched = rtg_scan(tiny_model, one_window, values, mode=mode, position=2, granularity="head")
    for i, v in enumerate(values):
        single = rtg_scan(tiny_model, one_window, v[None], mode=mode, position=2, granularity="head")
        torch.testing.assert_close(single.logits[0], batched.logits[i], atol=1e-5, rtol=0)
        torch.testing.assert_close(single.contributions[:, 0], batched.contributions[:, i], atol=1e-5, rtol=0)


def test_correlation_clustering_invariants():
    t = np.linspace(0, 1, 50)
    series = np.stack([t, 2 * t + 1, -t, np.sin(7 * t), np.full(50, 3.0), np.zeros(50), t**2])
    clus = correlation_clustering(series)
    C = len(series)
    assert not np.isnan(clus.corr).any()
    np.testing.assert_allclose(clus.corr, clus.corr.T)
    np.testing.assert_allclose(np.diag(clus.corr), 1.0)
    assert sorted(clus.order.tolist()) == list(range(C))
    assert clus.constant.tolist() == [False, False, False, False, True, True, False]
    np.testing.assert_allclose(clus.corr[0, 1], 1.0)
    np.testing.assert_allclose(clus.corr[0, 2], -1.0)
    assert clus.corr[4, 0] == 0 and clus.corr[4, 5] == 0  # constant: uncorrelated with everything
    # The perfectly correlated pair merges first, at distance 0; scipy's tree has C-1 links.
    assert set(clus.linkage[0, :2].astype(int)) == {0, 1} and clus.linkage[0, 2] == pytest.approx(0.0)
    assert len(clus.dendrogram["icoord"]) == len(clus.dendrogram["dcoord"]) == C - 1
    assert correlation_clustering(series[:1]).order.tolist() == [0]


def axis_titles(fig, letter: str) -> list[str]:
    """Titles of every x (or y) axis of ``fig``, subplots included."""
    axes = [fig.layout[k] for k in fig.layout if k.startswith(f"{letter}axis")]
    return [a.title.text for a in axes if a.title.text]


def _ctx(model, inputs, meta):
    return AnalysisContext(model, inputs, meta)


def test_plugin_runs_through_registry(tiny_model, tiny_meta, many_windows):
    reg = load_registry(include_entry_points=False)
    assert reg.plugins["rtg-scan"].category == "causal"
    ctx = _ctx(tiny_model, many_windows, tiny_meta)
    actual = float(many_windows.rtg[2, -1])
    params = dict(rtg_min=actual - 0.5, rtg_max=actual + 0.5, n_points=3, window=2, granularity="layer")
    result = reg.run("rtg-scan", ctx, params)
    d = result.data
    json.dumps(result.to_json())
    logits = np.asarray(d["logits"])
    assert logits.shape == (3, tiny_model.cfg.n_actions)
    np.testing.assert_allclose(logits[1], d["actual_logits"], atol=1e-5)  # the middle point is the actual RTG
    assert d["action"] == int(np.argmax(d["actual_logits"]))
    contrib = np.asarray(d["contributions"])
    np.testing.assert_allclose(contrib.sum(0) + d["b_U"], logits[:, d["action"]], atol=1e-4)
    c = d["cluster"]
    assert sorted(c["order"].tolist()) == list(range(len(c["labels"])))
    np.testing.assert_allclose(c["corr"], np.asarray(c["corr"]).T)
    assert d["actual_rtg"] == pytest.approx(actual)

    figs = reg.figures("rtg-scan", result)
    assert len(figs) == 3
    heat = figs[2].data[0]  # the clustergram's matrix, rows and columns in dendrogram order
    order = np.asarray(c["order"])
    assert list(heat.x) == list(heat.y) == [c["labels"][i] for i in order]
    np.testing.assert_allclose(heat.z, np.asarray(c["corr"])[np.ix_(order, order)])
    for fig in figs:
        assert fig.layout.title.text and fig.data and axis_titles(fig, "x") and axis_titles(fig, "y")


def test_plugin_named_action_neuron_granularity_and_cluster_limit(tiny_model, tiny_meta, one_window):
    ctx = _ctx(tiny_model, one_window, tiny_meta)
    params = dict(granularity="neuron", action="forward", n_points=16, max_cluster=10, position=3)
    d = load_registry(include_entry_points=False).run("rtg-scan", ctx, params).data
    assert d["action"] == 2 and d["state_label"] == "S3"
    assert len(d["labels"]) > 2 * tiny_model.cfg.d_mlp
    c = d["cluster"]
    assert len(c["labels"]) == 10 and np.asarray(c["corr"]).shape == (10, 10)
    variance = np.asarray(d["variance"])
    assert variance[c["components"]].min() >= np.delete(variance, c["components"]).max()
    # Without a cap, every varying component is clustered and no constant one (dead neurons, biases) is.
    every = (
        load_registry(include_entry_points=False).run("rtg-scan", ctx, {**params, "max_cluster": 512}).data
    )
    contrib, chosen = np.asarray(every["contributions"]), np.asarray(every["cluster"]["components"])
    constant = contrib.std(1) <= 1e-6 * np.abs(contrib).max(1)
    assert every["cluster"]["n_constant"] == constant.sum() > 0
    assert not constant[chosen].any() and len(chosen) == (~constant).sum()


def test_plugin_rejects_bad_parameters(tiny_model, tiny_meta, many_windows):
    reg = load_registry(include_entry_points=False)
    ctx = _ctx(tiny_model, many_windows, tiny_meta)
    for params, match in [
        (dict(rtg_min=1.0, rtg_max=0.0), "rtg_min"),
        (dict(position=1), "padded"),  # window 0 is padded at timestep 1
        (dict(position=9), "outside"),
        (dict(window=6), "outside the batch"),
        (dict(n_points=1), "minimum"),
        (dict(granularity="block"), "not one of"),
    ]:
        with pytest.raises(ParameterError, match=match):
            reg.run("rtg-scan", ctx, params)
