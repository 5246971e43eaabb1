"""Circuit discovery as a plugin: its faithfulness curve is the library's on the same pair and scores, and
the circuit of every edge (or every node) is the full model (faithfulness 1)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dtinterp.interp.attribution_patching import edge_attribution_patching
from dtinterp.interp.causal import build_metric
from dtinterp.interp.circuit_discovery import faithfulness_curve
from dtinterp.interp.edits import apply_edits, parse_edit
from dtinterp.model.checkpoint import Checkpoint
from dtinterp.plugins.api import AnalysisContext, ParameterError
from dtinterp.plugins.builtin.circuit_discovery import circuit_sizes
from tests.plugins.helpers import assert_labelled

PLUGIN = "circuit-discovery"
EDITS = [parse_edit("R*=0.2"), parse_edit("S3[3,5].object=key")]


@pytest.fixture(scope="module")
def ckpt(tiny_model, tiny_meta) -> Checkpoint:
    return Checkpoint.from_model(tiny_model, tiny_meta)


@pytest.fixture
def ctx(ckpt, many_windows) -> AnalysisContext:
    return AnalysisContext(ckpt, many_windows, edits=EDITS)


def test_the_curve_equals_the_library(ckpt, many_windows, ctx, registry):
    result = registry.run(PLUGIN, ctx, {"scores": "eap", "points": 0})
    clean, corrupted = many_windows, apply_edits(many_windows, EDITS)
    with torch.inference_mode():
        metric = build_metric("logit-diff", ckpt.model(clean), ckpt.model(corrupted), -1).metric
    scores = edge_attribution_patching(ckpt.model, clean, corrupted, metric)
    curve = faithfulness_curve(ckpt.model, clean, corrupted, metric, scores)
    d = result.data
    assert d["ks"] == curve.ks == list(range(d["n"] + 1))
    np.testing.assert_allclose(d["faithfulness"], curve.faithfulness, atol=1e-5, rtol=0)
    np.testing.assert_allclose(d["normalised"], curve.normalised, atol=1e-5, rtol=0)
    assert d["minimal_k"] == curve.minimal_k and d["minimal_circuit"] == curve.minimal_circuit
    assert d["ranking"] == curve.ranking
    figs = registry.figures(PLUGIN, result)
    assert_labelled(figs)
    assert len(figs) == 2
    drawn = {f"{s} -> {r}" for s, r, _ in d["drawn_edges"]}
    assert drawn == set(curve.ranking[: d["shown_k"]])


@pytest.mark.parametrize(
    "params",
    [
        {"scores": "eap-ig", "steps": 3},
        {"scores": "exact", "ablation": "mean"},
        {"scores": "eap", "level": "node"},
        {"scores": "exact", "level": "node", "ablation": "mean", "points": 4},
    ],
)
def test_every_edge_kept_is_the_full_model(ctx, registry, params):
    d = registry.run(PLUGIN, ctx, params).data
    assert d["ks"][0] == 0 and d["ks"][-1] == d["n"]
    assert d["faithfulness"][-1] == pytest.approx(1.0, abs=1e-5)
    assert d["circuit_metric"][-1] == pytest.approx(d["metric_full"], abs=1e-5)
    assert d["circuit_metric"][0] == pytest.approx(d["metric_empty"], abs=1e-5)
    minimal = d["minimal_k"]
    if minimal is not None:  # the smallest evaluated k that reaches the threshold
        i = d["ks"].index(minimal)
        assert d["faithfulness"][i] >= d["threshold"] and all(
            f < d["threshold"] for f in d["faithfulness"][:i]
        )


def test_an_unreachable_threshold_draws_the_most_faithful_circuit(ctx, registry):
    result = registry.run(PLUGIN, ctx, {"scores": "eap", "threshold": 1.5, "points": 8})
    d = result.data
    assert d["minimal_k"] is None and "No evaluated circuit reaches" in result.summary
    assert d["shown_faithfulness"] == pytest.approx(np.nanmax(d["faithfulness"]))
    assert "No circuit reaches" in registry.figures(PLUGIN, result)[1].layout.title.text


def test_where_keeps_the_pairs_of_one_situation(ckpt, many_windows, registry):
    rows = np.flatnonzero(many_windows.actions[:, -2].numpy() == 0)  # the previous action was left
    assert 1 < len(rows) < many_windows.batch_size
    params = {"scores": "eap", "points": 6}
    some = registry.run(
        PLUGIN, AnalysisContext(ckpt, many_windows, edits=EDITS), {**params, "where": "prev_action=0"}
    )
    alone = registry.run(
        PLUGIN, AnalysisContext(ckpt, many_windows[torch.as_tensor(rows)], edits=EDITS), params
    )
    assert some.data["windows"] == rows.tolist()
    np.testing.assert_allclose(some.data["faithfulness"], alone.data["faithfulness"], atol=1e-5, rtol=0)
    with pytest.raises(ParameterError, match="'where': none of the 6 window"):
        registry.run(PLUGIN, AnalysisContext(ckpt, many_windows, edits=EDITS), {"where": "timestep=99"})


def test_circuit_sizes_keep_every_small_k():
    assert circuit_sizes(10, 32) == list(range(11))
    ks = circuit_sizes(191, 32)
    assert ks[:9] == list(range(9)) and ks[-1] == 191 and len(ks) <= 33


def test_bad_parameters_are_one_line_errors(ckpt, many_windows, ctx, registry):
    for params, context, needle in (
        ({"threshold": 0}, ctx, "below the minimum"),
        ({"level": "head"}, ctx, "is not one of"),
        ({"pair": "edits"}, AnalysisContext(ckpt, many_windows), "no edits were given"),
        ({"action": "left", "versus": "left"}, ctx, "itself"),
    ):
        with pytest.raises(ParameterError, match=needle) as err:
            registry.run(PLUGIN, context, params)
        assert "\n" not in str(err.value) and PLUGIN in str(err.value)
