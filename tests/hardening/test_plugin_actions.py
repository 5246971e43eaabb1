"""Class 8: a parameter whose choices are the model's actions offers only the actions the model has.

Before, the example plugin (logit-lens) offered all seven MiniGrid actions, so on a Dynamic-Obstacles
model (3 actions) ``--param action=toggle`` failed inside ``compute`` with an index error. Choices that
depend on the model now say so (:data:`~dtinterp.plugins.api.MODEL_ACTIONS`) and are resolved against the
checkpoint: in the CLI before any episode is played, in the app's controls, and in ``run_analysis``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from dash import dcc

from dash_app.controls import plugin_controls, values_from_controls
from dtinterp.model.checkpoint import load_checkpoint
from dtinterp.plugins.api import MODEL_ACTIONS, Analysis, AnalysisResult, Param, ParameterError
from dtinterp.plugins.run import run_analysis
from tests.hardening.helpers import assert_cli_refuses, run_cli, snapshot, tiny_checkpoint

needs_example = pytest.mark.skipif(
    importlib.util.find_spec("dtinterp_logit_lens") is None, reason="the example plugin is not installed"
)
DOCS = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"


@pytest.fixture(scope="module")
def dynamic(tmp_path_factory) -> Path:
    """A 3-action checkpoint of Dynamic-Obstacles (left, right, forward)."""
    return tiny_checkpoint(
        tmp_path_factory.mktemp("actions") / "dyn", env_id="MiniGrid-Dynamic-Obstacles-5x5-v0", n_actions=3
    )


class Tracked(Analysis):
    """A minimal analysis with a model-dependent choice and an old-style plain tuple of choices."""

    id = "tracked"
    title = "Tracked action"
    category = "dynamic"
    parameters = (
        Param("action", "choice", "predicted", choices=("predicted", MODEL_ACTIONS)),
        Param("k", "choice", 2, choices=(1, 2, 4)),
    )

    def compute(self, ctx, params):
        logits = ctx.logits[:, -1]  # [B, A]
        index = ctx.action_names.index(params["action"]) if params["action"] != "predicted" else 0
        return AnalysisResult(self.id, params, {"logit": logits[:, index]}, summary="ok")

    def figures(self, result):
        return []


@needs_example
def test_logit_lens_refuses_an_action_the_model_lacks(dynamic, tmp_path):
    """Through the CLI: one line naming the parameter and the model's actions; no report written."""
    proc = run_cli(
        "analyze", str(dynamic), "--analysis", "logit-lens", "--rollout", "--rtg", "1",
        "--param", "action=toggle", "--out", str(tmp_path / "lens.html"), "--json", str(tmp_path / "lens.json"),
    )  # fmt: skip
    line = assert_cli_refuses(proc, "parameter 'action'", "'toggle'", "'forward'")
    assert "for this model" in line and "'pickup'" not in line
    assert "playing one episode" not in proc.stderr  # refused before the rollout
    assert snapshot(tmp_path) == {}


def test_choices_resolve_against_the_checkpoint(dynamic):
    ckpt = load_checkpoint(dynamic)
    plugin = Tracked()
    action = plugin.parameters[0]
    assert action.describe_type() == "choice: predicted | <the model's actions>"
    assert action.describe_type(ckpt.action_names) == "choice: predicted | left | right | forward"
    assert plugin.resolve_params({"action": "toggle"})["action"] == "toggle"  # no model: every action
    with pytest.raises(ParameterError, match="'toggle' is not one of .* for this model"):
        plugin.resolve_params({"action": "toggle"}, ckpt)
    assert plugin.resolve_params({"action": "forward", "k": "4"}, ckpt) == {"action": "forward", "k": 4}
    inputs = None
    with pytest.raises(ParameterError, match="'done'"):
        run_analysis(ckpt, inputs, plugin, {"action": "done"})


def test_the_apps_controls_offer_the_models_actions(dynamic):
    ckpt = load_checkpoint(dynamic)
    plugin = Tracked()
    (row, _) = plugin_controls(plugin, ckpt.action_names)
    dropdown = next(c for c in row.children if isinstance(c, dcc.Dropdown))
    assert [o["value"] for o in dropdown.options] == ["predicted", "left", "right", "forward"]
    assert "left | right | forward" in str(row.children[-1].children)
    (row, _) = plugin_controls(plugin)  # no model known: every MiniGrid action
    dropdown = next(c for c in row.children if isinstance(c, dcc.Dropdown))
    assert len(dropdown.options) == 8
    with pytest.raises(ParameterError, match="parameter 'action'"):
        values_from_controls(plugin, {"action": "toggle"}, ckpt)
    assert values_from_controls(plugin, {"action": "right"}, ckpt)["action"] == "right"


def test_the_guide_covers_what_a_plugin_author_asked():
    text = DOCS.read_text()
    for needle in (
        'cache["pattern", 0]',
        "[B, H, Pq, Pk]",
        "padded query attends only to\nitself",
        "token_pad_mask",
        "py-modules",
        "--no-build-isolation",
        "MODEL_ACTIONS",
        "ctx.action_names",
        '"provenance": {',
    ):
        assert needle in text, needle
