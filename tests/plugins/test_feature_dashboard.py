"""The feature-dashboard plugin: one feature's numbers, its sorted and searched list, its report and the
Play-tab interventions it suggests (checked by ``run_analysis``)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

from dtinterp.interp.directions import DirectionLibrary, SavedDirection
from dtinterp.interp.sae import SAEConfig, TopKSAE, feature_ref
from dtinterp.model.checkpoint import Checkpoint
from dtinterp.plugins.api import Analysis, AnalysisResult, ParameterError, PlayIntervention, PluginError
from dtinterp.plugins.registry import Registry
from dtinterp.plugins.run import run_analysis
from tests.plugins.helpers import assert_labelled

HOOK = "blocks.1.hook_resid_post"


@pytest.fixture
def ckpt(tiny_model, tiny_meta) -> Checkpoint:
    return Checkpoint.from_model(tiny_model, tiny_meta)


@pytest.fixture
def library(tmp_path, monkeypatch) -> DirectionLibrary:
    monkeypatch.setenv("DTINTERP_DIRECTIONS_DIR", str(tmp_path / "directions"))
    lib = DirectionLibrary()
    v = torch.randn(32, generator=torch.Generator().manual_seed(0))
    lib.save(
        SavedDirection("cue", v, "custom", metadata={"hook": "blocks.0.hook_resid_mid", "boundary": 0.25})
    )
    return lib


@pytest.fixture
def sae_dir(ckpt, many_windows, tmp_path) -> str:
    sae = TopKSAE(SAEConfig(d_in=32, n_latents=24, k=4, hook=HOOK, positions=[1, 4, 7, 10]))
    with torch.inference_mode():
        _, cache = ckpt.model.run_with_cache(many_windows)
    sae.init_from(cache[HOOK][:, 1::3].reshape(-1, 32), seed=1)
    with torch.no_grad():
        sae.b_enc.fill_(0.3)
    return str(sae.save(tmp_path / "sae"))


def test_sae_dashboard_lists_sorts_searches_and_suggests_lines_that_parse(
    ckpt, many_windows, sae_dir, registry
):
    params = {"feature": feature_ref(sae_dir, 7), "sort": "logit-effect", "list_size": 10, "top_k": 4}
    run = run_analysis(ckpt, many_windows, "feature-dashboard", params, registry=registry)
    d = run.result.data
    assert d["kind"] == "sae" and d["hook"] == HOOK and d["n_read"] == int(many_windows.pad_mask.sum())
    assert int(d["hist_counts"].sum()) == d["n_read"] and d["n_features"] == len(d["features"]) == 24
    sizes = [abs(r["top_logit_effect"]) for r in d["features"]]
    assert sizes == sorted(sizes, reverse=True)
    assert len(d["top"]) <= 4 and all(t["value"] > 0 for t in d["top"])
    assert [t["value"] for t in d["top"]] == sorted((t["value"] for t in d["top"]), reverse=True)
    texts = [i.text for i in run.result.interventions]
    assert (
        texts[0].startswith(f"steer: sae:{sae_dir}#7 @ {HOOK} x ") and texts[-1] == f"zero: sae:{sae_dir}#7"
    )
    assert_labelled(run.figures)
    assert len(run.figures) == 4 - (not d["top"])

    out = json.loads(run.json_text())
    assert [i["text"] for i in out["interventions"]] == texts
    html = run.report_html()
    assert "Try it while the model plays" in html and f"zero: sae:{sae_dir}#7" in html

    searched = run_analysis(
        ckpt, many_windows, "feature-dashboard", {**params, "search": "f7 f11"}, registry=registry
    )
    assert sorted(r["id"] for r in searched.result.data["features"]) == ["f11", "f7"]
    freq = run_analysis(
        ckpt, many_windows, "feature-dashboard", {**params, "sort": "frequency"}, registry=registry
    )
    f = [r["frequency"] for r in freq.result.data["features"]]
    assert f == sorted(f, reverse=True)


def test_probe_direction_dashboard_reads_its_hook_and_shows_its_boundary(
    ckpt, many_windows, library, registry
):
    run = run_analysis(ckpt, many_windows, "feature-dashboard", {"feature": "saved:cue"}, registry=registry)
    d = run.result.data
    assert d["hook"] == "blocks.0.hook_resid_mid" and d["boundary"] == 0.25 and d["kind"] == "direction"
    assert {r["id"] for r in d["features"]} == {"cue", *(f"readout:{a}" for a in ckpt.action_names)}
    assert "probe's boundary 0.25" in run.summary
    assert [i.text.split(":")[0] for i in run.result.interventions] == ["steer", "steer", "zero"]
    assert_labelled(run.figures)


@pytest.mark.parametrize(
    "params, fragment",
    [
        ({"feature": "saved:missing"}, "missing"),
        ({"feature": "jump"}, "direction 'jump'"),
        ({"hook": "blocks.0.attn.hook_z"}, "not a residual-stream hook"),
    ],
)
def test_bad_features_are_one_line_parameter_errors(ckpt, one_window, library, registry, params, fragment):
    with pytest.raises(ParameterError, match=fragment) as err:
        run_analysis(ckpt, one_window, "feature-dashboard", params, registry=registry)
    assert "\n" not in str(err.value) and "feature-dashboard" in str(err.value)


class _Suggests(Analysis):
    id = "suggests"
    title = "Suggests"
    category = "dynamic"
    line = ""

    def compute(self, ctx, params) -> AnalysisResult:
        return AnalysisResult(self.id, params, {}, "done", [PlayIntervention("try", self.line)])

    def figures(self, result) -> list[Any]:
        import plotly.graph_objects as go

        return [go.Figure()]


def test_run_analysis_refuses_a_suggested_line_the_play_tab_would_refuse(ckpt, one_window):
    registry = Registry()
    plugin = _Suggests()
    registry.add(plugin, "suggests")
    plugin.line = "steer: forward @ blocks.1.hook_resid_post x 2"
    assert (
        run_analysis(ckpt, one_window, "suggests", registry=registry).result.interventions[0].label == "try"
    )
    plugin.line = "steer: forward @ blocks.7.hook_resid_post x 2"
    with pytest.raises(PluginError, match="suggested an intervention that does not parse"):
        run_analysis(ckpt, one_window, "suggests", registry=registry)
