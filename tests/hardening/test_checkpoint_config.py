"""Class 1: a checkpoint's config.json is validated completely when it is read, one line naming file and key.

Before, a float where an int belongs, a missing ``d_mlp`` or a non-numeric recorded result passed the
loader and crashed later (``dtinterp models`` formatting the headline, the model's constructor, ...).
"""

from __future__ import annotations

import json
import shutil

import pytest

from dtinterp.cli import main
from dtinterp.errors import CheckpointError
from dtinterp.model.checkpoint import load_checkpoint, read_checkpoint_config
from tests.hardening.helpers import assert_cli_refuses, assert_one_line, run_cli, snapshot

HEADLINE = {
    "target_rtg": 1.0,
    "episodes": 10,
    "mean_return": 0.9,
    "return_ci": [0.8, 0.95],
    "success_rate": 1.0,
    "success_ci": [0.7, 1.0],
    "mean_length": 5.0,
}


def _set(path: str, value):
    """An edit of config.json: set the dotted ``path`` (a missing last key is deleted with ``...``)."""

    def edit(cfg: dict) -> None:
        *parents, last = path.split(".")
        node = cfg
        for key in parents:
            node = node.setdefault(key, {})
        if value is ...:
            node.pop(last, None)
        else:
            node[last] = value

    return edit


# (edit, the key the one-line error must name)
BAD_CONFIGS = {
    "float n_layers": (_set("model.n_layers", 1.5), "n_layers"),
    "float d_model": (_set("model.d_model", 8.0), "d_model"),
    "missing d_mlp": (_set("model.d_mlp", ...), "d_mlp"),
    "missing context_len": (_set("model.context_len", ...), "context_len"),
    "string n_heads": (_set("model.n_heads", "4"), "n_heads"),
    "bool attn_only as string": (_set("model.attn_only", "yes"), "attn_only"),
    "n_actions beyond MiniGrid": (_set("model.n_actions", 9), "n_actions"),
    "obs_shape of 3": (_set("model.obs_shape", [7, 7, 3]), "obs_shape"),
    "obs_shape of text": (_set("model.obs_shape", "7x7"), "obs_shape"),
    "huge d_model": (_set("model.d_model", 10**9), "d_model"),
    "negative seed": (_set("model.seed", -1), "seed"),
    "nan init_range": (_set("model.init_range", float("nan")), "init_range"),
    "model not an object": (_set("model", [1, 2]), "model"),
    "env_spec not an object": (_set("env_spec", "MiniGrid-Empty-5x5-v0"), "env_spec"),
    "env_spec max_steps beyond limit": (_set("env_spec.max_steps", 10**9), "max_steps"),
    "env_spec view_size not the model's": (_set("env_spec.view_size", 9), "view_size"),
    "rtg_scale text": (_set("rtg_scale", "one"), "rtg_scale"),
    "rtg_scale zero": (_set("rtg_scale", 0), "rtg_scale"),
    "step negative": (_set("step", -3), "step"),
    "weights digest not hex": (_set("weights_sha256", "abc"), "weights_sha256"),
    "headline success text": (_set("results.headline", {**HEADLINE, "success_rate": "high"}), "success_rate"),
    "headline return nan": (
        _set("results.headline", {**HEADLINE, "mean_return": float("nan")}),
        "mean_return",
    ),
    "headline episodes float": (_set("results.headline", {**HEADLINE, "episodes": 10.5}), "episodes"),
    "headline missing target": (
        _set("results.headline", {k: v for k, v in HEADLINE.items() if k != "target_rtg"}),
        "target_rtg",
    ),
    "headline success above 1": (_set("results.headline", {**HEADLINE, "success_rate": 3}), "success_rate"),
    "headline CI reversed": (_set("results.headline", {**HEADLINE, "return_ci": [0.9, 0.1]}), "return_ci"),
    "evaluation not a list": (_set("results.evaluation", {"a": 1}), "results.evaluation"),
    "results a number": (_set("results", 3), "results"),
    "calibration points text": (_set("results.calibration", {"points": "21"}), "points"),
    "dataset not an object": (_set("dataset", "data.npz"), "dataset"),
}


def _broken(src, dst, edit):
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    edit(cfg)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_config_is_one_line_naming_file_and_key(ckpt, tmp_path, case):
    edit, key = BAD_CONFIGS[case]
    path = _broken(ckpt, tmp_path / "m", edit)
    for load in (read_checkpoint_config, load_checkpoint):
        with pytest.raises(CheckpointError) as info:
            load(path)
        message = str(info.value)
        assert "\n" not in message and "config.json" in message and key in message, message


def test_a_sound_config_with_results_loads(ckpt, tmp_path):
    results = {
        "headline": HEADLINE,
        "evaluation": [HEADLINE],
        "calibration": {"points": 21, "figure": "c.svg"},
    }
    path = _broken(ckpt, tmp_path / "m", _set("results", results))
    assert read_checkpoint_config(path)["results"]["headline"]["episodes"] == 10
    assert load_checkpoint(path).meta["results"] == results


def test_models_names_the_bad_checkpoint_and_still_lists_the_good(ckpt, tmp_path):
    """Through the CLI: the non-numeric result no longer reaches the listing's number formatting."""
    root = tmp_path / "models"
    shutil.copytree(ckpt, root / "good")
    _broken(ckpt, root / "bad", _set("results.headline", {**HEADLINE, "success_rate": "high"}))
    before = snapshot(root)
    proc = run_cli("models", "--dir", str(root))
    assert_cli_refuses(proc, str(root / "bad" / "config.json"), "results.headline.success_rate")
    assert proc.stdout.startswith("good ") and "bad" not in proc.stdout
    assert snapshot(root) == before


def test_evaluate_refuses_a_config_with_a_float_layer_count(ckpt, tmp_path, capsys):
    path = _broken(ckpt, tmp_path / "m", _set("model.n_layers", 1.0))
    out = tmp_path / "r.json"
    code = main(["evaluate", str(path), "--rtg", "1", "--episodes", "1", "--json", str(out)])
    assert_one_line(code, capsys.readouterr().err, "config.json", "n_layers")
    assert not out.exists()
