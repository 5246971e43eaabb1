"""Embedding geometry: PCA is an exact change of basis, cosines are cosines, gridmaps add up to embeddings."""

from __future__ import annotations

import pytest
import torch

from dtinterp.interp.embedding_geometry import (
    CHANNEL_GROUPS,
    EMBEDDING_KINDS,
    EmbeddingRows,
    NoStateEmbeddingError,
    constant_rows,
    cosine_similarity,
    embedding_rows,
    pca,
    state_feature_labels,
    state_feature_usage,
    state_gridmap,
)
from envs.encoding import CHANNEL_NAMES, OBJECT_NAMES
from tests.plugins.conftest import _random_model, _windows


@pytest.fixture(scope="module")
def model():
    return _random_model(max_timestep=30)


@pytest.fixture(scope="module")
def windows():
    return _windows(3, 4, seed=5, n_pad=1)


@pytest.mark.parametrize("kind", EMBEDDING_KINDS)
def test_pca_with_all_components_reconstructs_the_centred_rows(model, kind):
    rows = embedding_rows(model, kind, rtg_values=torch.linspace(0, 1, 5) if kind == "rtg" else None)
    result = pca(rows)
    torch.testing.assert_close(result.reconstruct(), rows.vectors, atol=1e-5, rtol=0)
    torch.testing.assert_close(
        result.coords, (rows.vectors - result.mean) @ result.components.T, atol=1e-5, rtol=0
    )
    k = result.components.shape[0]
    torch.testing.assert_close(result.components @ result.components.T, torch.eye(k), atol=1e-5, rtol=0)
    assert float(result.explained_variance_ratio.sum()) == pytest.approx(1.0, abs=1e-5)
    assert bool((result.explained_variance[:-1] >= result.explained_variance[1:] - 1e-6).all())
    torch.testing.assert_close(result.coords.var(0), result.explained_variance, atol=1e-5, rtol=1e-4)
    assert len(result.labels) == len(rows)


def test_cosine_matrix_is_symmetric_with_unit_diagonal_and_drops_dead_rows(model):
    rows = embedding_rows(model, "state")
    n = len(rows)
    dead = EmbeddingRows(torch.zeros(2, model.cfg.d_model), ["zero", "const"], ["state", "state"])
    dead.vectors[1] = 0.3
    both = EmbeddingRows.cat([rows, dead])
    assert constant_rows(both.vectors).tolist() == [False] * n + [True, True]
    keep = torch.ones(n + 2, dtype=torch.bool)
    keep[:5] = False
    result = cosine_similarity(both, keep=keep)
    assert result.kept.sum() == n - 5 and result.labels == rows.labels[5:]
    cos = result.cosine
    torch.testing.assert_close(cos, cos.T)
    torch.testing.assert_close(cos.diagonal(), torch.ones(n - 5))
    assert float(cos.abs().max()) <= 1 + 1e-6
    assert sorted(result.order.tolist()) == list(range(n - 5))
    ordered, labels = result.ordered()
    i, j = int(result.order[0]), int(result.order[1])
    assert float(ordered[0, 1]) == float(cos[i, j]) and labels[0] == result.labels[i]


def test_state_labels_follow_the_rows_of_W_state(model):
    rows = embedding_rows(model, "state")
    i = rows.labels.index("key@(4,2)")
    key = OBJECT_NAMES.index("key")
    torch.testing.assert_close(rows.vectors[i], model.state_embed.W_state[4, 2, key].detach())
    assert state_feature_labels((7, 7), "long")[i] == "object=key (4,2)"
    assert len(set(rows.labels)) == len(rows) == 7 * 7 * len(CHANNEL_NAMES)


def test_gridmap_adds_up_to_the_state_embedding(model, windows):
    vectors = torch.randn(3, model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    grid = state_gridmap(model, vectors)
    assert grid.values.shape == (3, len(CHANNEL_NAMES), 7, 7)
    obs, direction = windows.obs[1, 2], int(windows.directions[1, 2])
    with torch.no_grad():
        embedding = model.state_embed(obs[None, None], torch.tensor([[direction]]))[0, 0]
    torch.testing.assert_close(grid.of_observation(obs, direction), vectors @ embedding, atol=1e-5, rtol=0)
    panels, names = grid.group("colour")
    assert panels.shape[1] == CHANNEL_GROUPS["colour"][1] - CHANNEL_GROUPS["colour"][0] and names[0] == "red"
    centred = state_gridmap(model, vectors, centre=True)  # what a LayerNorm sees: invariant to a shift
    torch.testing.assert_close(state_gridmap(model, vectors + 1.0, centre=True).values, centred.values)


def test_feature_usage_counts_the_on_features(windows):
    counts, dirs = state_feature_usage(windows.obs[windows.pad_mask], windows.directions[windows.pad_mask])
    n_obs = int(windows.pad_mask.sum())
    assert counts.shape == (7, 7, 20) and int(dirs.sum()) == n_obs
    assert bool((counts[..., :11].sum(-1) == n_obs).all())  # exactly one object per cell
    assert bool((counts <= n_obs).all())


def test_cnn_models_have_no_state_features():
    cnn = _random_model(state_encoder="cnn")
    with pytest.raises(NoStateEmbeddingError, match="state_encoder='cnn'") as err:
        embedding_rows(cnn, "state")
    assert "\n" not in str(err.value)
    assert embedding_rows(cnn, "direction").vectors.shape == (4, cnn.cfg.d_model)
