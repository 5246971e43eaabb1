"""Embedding geometry: PCA reconstructs the embedding matrix; the cosine matrix is a cosine matrix."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dtinterp.interp.embedding_geometry import embedding_rows
from dtinterp.plugins.api import AnalysisContext, ParameterError
from tests.plugins.helpers import assert_labelled

PLUGIN = "embeddings"


@pytest.mark.parametrize("kind", ["state", "action", "time", "inputs"])
def test_pca_reconstructs_and_cosine_is_symmetric_with_unit_diagonal(registry, tiny_model, tiny_meta, kind):
    ctx = AnalysisContext(tiny_model, None, tiny_meta)
    d = registry.run(PLUGIN, ctx, {"kind": kind, "max_rows": 30}).data
    cos = np.asarray(d["cosine"]["matrix"])
    np.testing.assert_allclose(cos, cos.T, atol=1e-6)
    np.testing.assert_allclose(np.diag(cos), 1.0, atol=1e-6)
    assert len(cos) == min(30, d["n_rows"] - d["n_constant"])
    p = d["pca"]
    assert p["reconstruction_error"] <= 1e-5
    # An independent PCA (numpy SVD of the centred rows) has the same spectrum and the same coordinates.
    if kind == "state":
        x = embedding_rows(tiny_model, "state").vectors.double().numpy()
        labels = embedding_rows(tiny_model, "state").labels
        x = x[[labels.index(lab) for lab in p["labels"]]]
        U, S, _ = np.linalg.svd(x - x.mean(0), full_matrices=False)
        np.testing.assert_allclose(p["ratios"], S**2 / (S**2).sum(), atol=1e-6)
        np.testing.assert_allclose(np.abs(p["coords"]), np.abs(U[:, :3] * S[:3]), atol=1e-4)
        # and the cosines are those of the rows they name
        y = x[[p["labels"].index(lab) for lab in d["cosine"]["labels"]]]
        y = y / np.linalg.norm(y, axis=1, keepdims=True)
        np.testing.assert_allclose(cos, y @ y.T, atol=1e-5)


def test_gridmap_directions_and_figures(registry, tiny_model, tiny_meta):
    ctx = AnalysisContext(tiny_model, None, tiny_meta)
    result = registry.run(PLUGIN, ctx, {"direction": "forward-left"})
    g = np.asarray(result.data["gridmap"]["values"])
    W_U = tiny_model.W_U.detach()
    v = (W_U - W_U.mean(0))[:, 2] - (W_U - W_U.mean(0))[:, 0]  # centred unembedding difference
    W_state = tiny_model.state_embed.W_state.detach()  # [W, H, 20, d]
    np.testing.assert_allclose(g, (W_state @ v).permute(2, 0, 1).numpy(), atol=1e-5)
    json.dumps(result.to_json())
    figs = registry.figures(PLUGIN, result)
    assert_labelled(figs)
    assert len(figs) == 5 and all((f.layout.height or 450) <= 900 for f in figs)
    assert len(figs[-1].data) == 20  # one panel per object, colour and state value
    for params, match in [
        ({"direction": "pc999"}, "components"),
        ({"direction": "top-vs-runner-up"}, "weights only"),
    ]:
        with pytest.raises(ParameterError, match=match):
            registry.run(PLUGIN, ctx, params)
