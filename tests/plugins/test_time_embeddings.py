"""Time-embedding similarities: exact matrices, clustered orderings, unembedding projections."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dtinterp.interp.embeddings import cluster_order, cosine_matrix
from dtinterp.plugins.api import AnalysisContext, AnalysisResult, ParameterError
from envs.encoding import ACTION_NAMES
from tests.plugins.helpers import assert_labelled


def test_registered_and_runs_through_registry(registry, tiny_model, tiny_meta, one_window):
    plugin = registry.plugins["time-embeddings"]
    assert plugin.category == "static"
    result = registry.run(
        "time-embeddings", AnalysisContext(tiny_model, one_window, tiny_meta), {"max_t": 20}
    )
    assert result.plugin_id == "time-embeddings" and result.summary
    json.dumps(result.to_json())
    assert_labelled(plugin.figures(result))
    with pytest.raises(ParameterError):
        registry.run(
            "time-embeddings", AnalysisContext(tiny_model, one_window, tiny_meta), {"order": "random"}
        )


def test_matrices_are_exact(registry, tiny_model, tiny_meta, one_window):
    result = registry.run(
        "time-embeddings", AnalysisContext(tiny_model, one_window, tiny_meta), {"max_t": 30}
    )
    d = result.data
    E = tiny_model.time_embed.weight[:30].detach()
    cos, dot = d["cosine"], d["dot"]
    assert cos.shape == dot.shape == (30, 30)
    np.testing.assert_allclose(np.diag(cos), 1.0, atol=1e-5)
    np.testing.assert_allclose(cos, cos.T, atol=1e-6)
    np.testing.assert_allclose(dot, (E @ E.T).numpy(), atol=1e-6)
    # The final LayerNorm centres the residual: the projection reads the centred unembedding.
    W_U = tiny_model.W_U.detach()
    np.testing.assert_allclose(d["projections"], (E @ (W_U - W_U.mean(0))).numpy(), atol=1e-6)
    assert np.abs(d["projections"] - (E @ W_U).numpy()).max() > 1e-4  # not the raw W_U
    assert d["action_names"] == list(ACTION_NAMES[: tiny_model.cfg.n_actions])
    # Row 0 is the RTG direction, rows 1.. the real actions (the padding action is left out).
    others = torch.cat([tiny_model.W_rtg[None], tiny_model.action_embed.weight[:-1]]).detach()
    np.testing.assert_allclose(d["input_dot"], (others @ E.T).numpy(), atol=1e-6)
    np.testing.assert_allclose(d["input_cosine"], cosine_matrix(others, E).numpy(), atol=1e-6)
    assert d["input_labels"][0] == "RTG" and len(d["input_labels"]) == 1 + tiny_model.cfg.n_actions
    np.testing.assert_array_equal(d["order"], np.arange(30))


def test_max_t_defaults_to_training_lengths_else_env_steps_and_is_capped(
    registry, tiny_model, tiny_meta, one_window
):
    run = registry.plugins["time-embeddings"].run
    cap = tiny_model.cfg.max_timestep
    assert run(AnalysisContext(tiny_model, one_window, tiny_meta)).data["cosine"].shape == (cap, cap)
    meta = {**tiny_meta, "env_spec": {**tiny_meta["env_spec"], "max_steps": 12}}
    assert run(AnalysisContext(tiny_model, one_window, meta)).data["cosine"].shape == (12, 12)
    big = run(AnalysisContext(tiny_model, one_window, tiny_meta), {"max_t": 10 * cap})
    assert big.data["cosine"].shape == (cap, cap)
    # With the training data's episode lengths recorded, the default covers those episodes and says so.
    trained = {**tiny_meta, "dataset_lengths": {"min": 3, "mean": 9.5, "p95": 13.0, "max": 14}}
    result = run(AnalysisContext(tiny_model, one_window, trained))
    assert result.data["cosine"].shape == (14, 14) and "training episodes" in result.summary
    assert "step limit" in run(AnalysisContext(tiny_model, one_window, meta)).summary


def test_clustered_order_is_a_permutation_that_groups_clusters(registry, tiny_model, tiny_meta, one_window):
    result = registry.run(
        "time-embeddings",
        AnalysisContext(tiny_model, one_window, tiny_meta),
        {"max_t": 40, "order": "clustered"},
    )
    assert sorted(result.data["order"].tolist()) == list(range(40))
    # Two planted clusters, interleaved in time (even vs odd t): the ordering puts each one contiguously.
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(2, 16, generator=g)
    E = centres[torch.arange(20) % 2] + 0.05 * torch.randn(20, 16, generator=g)
    order = cluster_order(cosine_matrix(E, E).numpy())
    assert sorted(order.tolist()) == list(range(20))
    parity = order % 2
    assert (parity[:10] == parity[0]).all() and (parity[10:] != parity[0]).all()


def test_figures_from_json_round_trip(registry, tiny_model, tiny_meta, one_window):
    """Figures need only the result, also after a trip through JSON (as the app stores it)."""
    plugin = registry.plugins["time-embeddings"]
    result = plugin.run(
        AnalysisContext(tiny_model, one_window, tiny_meta), {"max_t": 15, "order": "clustered"}
    )
    back = json.loads(json.dumps(result.to_json()))
    figs = plugin.figures(AnalysisResult(back["plugin_id"], back["params"], back["data"], back["summary"]))
    assert_labelled(figs)
    order = result.data["order"]
    # The similarity heatmap shows the matrix permuted by the clustered order, labelled by timestep.
    np.testing.assert_allclose(figs[0].data[0].z, result.data["cosine"][np.ix_(order, order)], atol=1e-6)
    assert list(figs[0].data[0].x) == [str(t) for t in order]
    assert len(figs[-1].data) == tiny_model.cfg.n_actions
