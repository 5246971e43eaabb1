"""Neuron congruence tables: exact up to the LN scale against real norms, labelled, sortable."""

from __future__ import annotations

import pytest
import torch

from dtinterp.interp.attribution import centred_unembed
from dtinterp.interp.congruence import (
    mlp_to_mlp_congruence,
    neuron_input_congruence,
    neuron_output_congruence,
)
from dtinterp.interp.embedding_geometry import embedding_rows
from tests.plugins.conftest import _random_model


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


@pytest.fixture(scope="module")
def model():
    return _random_model(max_timestep=20)


def _inv_scale(x: torch.Tensor, eps: float) -> torch.Tensor:
    c = x - x.mean(-1, keepdim=True)
    return 1 / (c.pow(2).mean(-1, keepdim=True) + eps).sqrt()


@pytest.mark.parametrize("kind", ["state", "time", "action", "rtg"])
def test_input_congruence_is_the_pre_activation_of_a_lone_row_up_to_its_scale(model, kind):
    table = neuron_input_congruence(model, 1, kind)
    x = embedding_rows(model, kind).vectors
    block = model.blocks[1]
    pre = block.ln2(x) @ block.mlp.W_in + block.mlp.b_in  # as if the residual stream were this one row
    const = block.ln2.b @ block.mlp.W_in + block.mlp.b_in
    torch.testing.assert_close(table.values * _inv_scale(x, block.ln2.eps) + const, pre, atol=1e-5, rtol=0)
    assert table.values.shape == (len(x), model.cfg.d_mlp) and table.cols[3] == "L1N3"
    assert table.rows == embedding_rows(model, kind).labels


def test_output_and_mlp_to_mlp_congruence(model):
    out = neuron_output_congruence(model, 0)
    torch.testing.assert_close(out.values, model.blocks[0].mlp.W_out @ centred_unembed(model))
    assert out.cols[:3] == ["left", "right", "forward"] and out.rows[-1] == "L0N63"
    m2m = mlp_to_mlp_congruence(model, 0, 1)
    W_out, ln2, W_in = model.blocks[0].mlp.W_out, model.blocks[1].ln2, model.blocks[1].mlp.W_in
    pre = ln2(W_out) @ W_in - ln2.b @ W_in  # neuron outputs as lone residual streams, bias removed
    torch.testing.assert_close(m2m.values * _inv_scale(W_out, ln2.eps), pre, atol=1e-5, rtol=0)
    cos = mlp_to_mlp_congruence(model, 0, 1, normalize=True).values
    assert float(cos.abs().max()) <= 1 + 1e-6
    with pytest.raises(ValueError, match="before"):
        mlp_to_mlp_congruence(model, 1, 0)


def test_tables_sort_and_reshape(model):
    table = neuron_input_congruence(model, 0, "state")
    top = table.top(5)
    assert len(top) == 5 and [abs(v) for *_, v in top] == sorted((abs(v) for *_, v in top), reverse=True)
    assert abs(top[0][2]) == pytest.approx(float(table.values.abs().max()))
    row, col, value = table.top(1, by="min")[0]
    assert value == pytest.approx(float(table.values.min()))
    assert value == pytest.approx(float(table.values[table.rows.index(row), table.cols.index(col)]))
    order = table.order(axis=1)
    peaks = table.values.abs().amax(0)[order]
    assert bool((peaks[:-1] >= peaks[1:]).all())
    grid = table.gridmap(model.cfg.obs_shape)  # [m, 20, W, H]
    i = table.rows.index("door@(2,5)")
    torch.testing.assert_close(grid[:, 4, 2, 5], table.values[i])
