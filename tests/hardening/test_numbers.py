"""Class 4: numbers float32 and the model's RTG scale cannot represent are refused; NaN is never reported.

Before, a target return or an edited RTG of 1e300 (``inf`` in float32) or 1e30 (finite, but the first
LayerNorm's variance overflows) played whole episodes on NaN logits and reported a return, or wrote a
report with NaN. One check (:func:`dtinterp.limits.check_rtg`) now guards every way in.
"""

from __future__ import annotations

import pytest
import torch

from dash_app.inputs import InputError, parse_target
from dtinterp.cli import main
from dtinterp.data.episode import Episode
from dtinterp.errors import ConfigError, EpisodeError
from dtinterp.interp.edits import EditError, SetRTG, apply_edits, parse_edit
from dtinterp.limits import MAX_MODEL_RTG, check_rtg
from dtinterp.model.checkpoint import load_checkpoint
from dtinterp.play.rollout import play_episode
from dtinterp.plugins.api import PluginError
from dtinterp.plugins.run import run_analysis
from dtinterp.train.evaluate import evaluate
from tests.hardening.helpers import KEEP, assert_cli_refuses, assert_one_line, run_cli, snapshot


@pytest.fixture(scope="module")
def model(ckpt):
    return load_checkpoint(ckpt)


@pytest.fixture(scope="module")
def episode(model) -> Episode:
    return play_episode(model, 1.0, seed=0)


def test_evaluate_at_1e300_is_refused_before_any_episode(ckpt, tmp_path):
    """Through the CLI: 1e300 is already inf in float32 (1e30, finite there, is refused in process below)."""
    out = tmp_path / "r.json"
    out.write_bytes(KEEP)
    proc = run_cli("evaluate", str(ckpt), "--rtg", "1e300", "--episodes", "1", "--json", str(out))
    assert_cli_refuses(proc, "--rtg", "1e+300", "float32")
    assert "return" not in proc.stdout  # no results table
    assert out.read_bytes() == KEEP


CLI_CASES = {
    "evaluate --rtg 1e300": (["evaluate", "{ckpt}", "--rtg", "1e300"], "--rtg"),
    "evaluate --rtg 1e30": (["evaluate", "{ckpt}", "--rtg", "1", "--rtg", "-1e30"], "--rtg"),
    "evaluate --rtg nan": (["evaluate", "{ckpt}", "--rtg", "nan"], "--rtg"),
    "evaluate --rtg inf": (["evaluate", "{ckpt}", "--rtg", "-inf"], "--rtg"),
    "evaluate --rtg 1e999": (["evaluate", "{ckpt}", "--rtg", "1e999"], "--rtg"),
    "calibrate --max 1e30": (["calibrate", "{ckpt}", "--max", "1e30", "--out", "{tmp}/keep.html"], "--max"),
    "calibrate --min -1e300": (["calibrate", "{ckpt}", "--min", "-1e300", "--out", "{tmp}/keep.html"], "--min"),
    "analyze --rtg 1e30": (
        ["analyze", "{ckpt}", "--analysis", "residual-norms", "--rollout", "--rtg", "1e30", "--out", "{tmp}/keep.html"],
        "--rtg",
    ),
    "analyze --edit R1=1e30": (
        ["analyze", "{ckpt}", "--analysis", "residual-norms", "--rollout", "--rtg", "1", "--edit", "R1=1e30",
         "--out", "{tmp}/keep.html"],
        "R1=1e+30",
    ),
    "analyze --edit R*=1e300": (
        ["analyze", "{ckpt}", "--analysis", "residual-norms", "--rollout", "--rtg", "1", "--edit", "R*=1e300",
         "--out", "{tmp}/keep.html"],
        "R*=1e300",
    ),
    "analyze --edit R2=nan": (
        ["analyze", "{ckpt}", "--analysis", "residual-norms", "--rollout", "--rtg", "1", "--edit", "R2=nan",
         "--out", "{tmp}/keep.html"],
        "R2=nan",
    ),
    "analyze --edit T1 beyond any embedding": (
        ["analyze", "{ckpt}", "--analysis", "residual-norms", "--rollout", "--rtg", "1", "--edit",
         "T1=99999999999999999999", "--out", "{tmp}/keep.html"],
        "T1=",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_unrepresentable_numbers_are_one_line(ckpt, tmp_path, capsys, case):
    argv, needle = CLI_CASES[case]
    (tmp_path / "keep.html").write_bytes(KEEP)
    before = snapshot(tmp_path)
    code = main([a.format(ckpt=ckpt, tmp=tmp_path) for a in argv])
    assert_one_line(code, capsys.readouterr().err, needle)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("value", [1e30, -1e5, 1e300, float("nan"), float("inf"), "1", True, None])
def test_every_way_in_refuses_the_same_values(model, episode, value):
    """The library entry points, each with its own error type, all through the one check."""
    with pytest.raises(ConfigError):
        check_rtg(value, "target", model.rtg_scale)
    with pytest.raises(ConfigError):
        evaluate(model, [value], episodes=1, seed=0, progress=False)
    with pytest.raises(EditError):
        apply_edits(episode.window(model), [SetRTG(1, value)], model.rtg_scale)
    with pytest.raises((EpisodeError, ConfigError)):
        episode.with_target(value).window(model)


@pytest.mark.parametrize("text", ["1e300", "1e30", "-11", "nan", "inf", "-inf", "", "one", None])
def test_the_apps_target_box_refuses_them_too(model, text):
    with pytest.raises(InputError, match="target return"):
        parse_target(text, model.rtg_scale)


def test_float32_and_finiteness_hold_without_a_model(episode):
    for bad in ("R1=1e300", "R*=-1e39", "R1=inf", "R1=nan"):
        with pytest.raises(EditError, match="RTG value"):
            parse_edit(bad)
    with pytest.raises(EpisodeError, match="target return"):
        episode.with_target(1e300)
    data = episode.to_json()
    data["target_return"] = 1e300
    with pytest.raises(EpisodeError, match="target_return"):
        Episode.from_json(data)
    assert check_rtg(-MAX_MODEL_RTG, "target", rtg_scale=1.0) == -MAX_MODEL_RTG  # the bound itself is fine


def test_a_result_computed_from_nan_logits_is_never_reported(model, episode):
    """Windows that reach the model with an RTG of 1e30 (bypassing every check) give NaN logits."""
    inputs = episode.window(model)
    inputs.rtg[:] = 1e30
    with torch.inference_mode():
        assert not torch.isfinite(model.model(inputs)).all()
    with pytest.raises(PluginError, match="NaN or infinite"):
        run_analysis(model, inputs, "residual-norms")
