"""Evaluation statistics, calibration output, episode export, and the evaluate/calibrate CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest

from dtinterp.cli import main
from dtinterp.errors import ConfigError
from dtinterp.model import DTConfig, HookedDecisionTransformer
from dtinterp.model.checkpoint import load_checkpoint, save_checkpoint
from dtinterp.play.rollout import rollout
from dtinterp.train.calibrate import calibrate, calibration_figure
from dtinterp.train.evaluate import bootstrap_ci, evaluate, wilson_ci
from dtinterp.train.export import export_episode, replay_frames
from envs import EnvSpec, make_env

SPEC = EnvSpec("MiniGrid-LavaGapS5-v0", max_steps=12)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A tiny untrained DT saved as a real checkpoint."""
    cfg = DTConfig(
        obs_shape=(7, 7), context_len=3, max_timestep=16, n_layers=1, n_heads=2, d_model=16, d_mlp=32
    )
    d = tmp_path_factory.mktemp("ckpt")
    save_checkpoint(d, HookedDecisionTransformer(cfg), {"env_spec": SPEC.to_dict(), "rtg_scale": 1.0})
    return d


def _cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dtinterp.cli", *argv], capture_output=True, text=True, timeout=120
    )


def _assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dtinterp: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for n in needles:
        assert n in lines[0]


# --- statistics


def test_bootstrap_ci_contains_mean_and_is_deterministic():
    x = np.random.default_rng(1).normal(0.5, 0.2, size=50)
    lo, hi = bootstrap_ci(x)
    assert lo < x.mean() < hi
    assert (lo, hi) == bootstrap_ci(x)
    # a 95% CI of the mean is about +-1.96 standard errors wide
    se = x.std(ddof=1) / np.sqrt(x.size)
    assert 0.8 * 3.92 * se < hi - lo < 1.2 * 3.92 * se


def test_bootstrap_ci_collapses_for_constant_returns():
    lo, hi = bootstrap_ci([0.7] * 20)
    assert lo == hi == pytest.approx(0.7)
    assert bootstrap_ci([0.0] * 7) == (0.0, 0.0)


def test_wilson_ci_known_values():
    lo, hi = wilson_ci(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    lo, hi = wilson_ci(0, 20)
    assert lo == 0.0 and 0.1 < hi < 0.2  # no successes is still uncertain, unlike a bootstrap
    lo, hi = wilson_ci(20, 20)
    assert hi == 1.0 and 0.8 < lo < 0.9


# --- evaluate / calibrate (library)


def test_evaluate_summarises_the_rollouts(ckpt):
    checkpoint = load_checkpoint(ckpt)
    res = evaluate(checkpoint, [0.5, 1.0], episodes=5, seed=10, num_envs=2, sample=True, progress=False)
    assert [r["target_rtg"] for r in res["results"]] == [0.5, 1.0]
    for r in res["results"]:
        direct = rollout(
            checkpoint, r["target_rtg"], range(10, 15), 5, sample=True, sample_seed=10, progress=False
        )
        assert r["returns"] == [d.episode_return for d in direct]
        assert r["lengths"] == [d.length for d in direct]
        assert r["mean_return"] == pytest.approx(np.mean(r["returns"]))
        assert r["success_rate"] == np.mean([x > 0 for x in r["returns"]])
        assert r["return_ci"][0] <= r["mean_return"] <= r["return_ci"][1]
        assert r["success_ci"][0] <= r["success_rate"] <= r["success_ci"][1]


def test_calibration_result_and_figure(ckpt):
    res = calibrate(
        load_checkpoint(ckpt), -1.0, 1.0, points=3, episodes=2, seed=0, num_envs=2, progress=False
    )
    assert [r["target_rtg"] for r in res["results"]] == [-1.0, 0.0, 1.0]
    fig = calibration_figure(res)
    names = [t.name for t in fig.data]
    assert "mean return" in names and "95% CI" in names
    ident = fig.data[names.index("y = x")]
    assert list(ident.x) == list(ident.y) == [-1.0, 1.0]
    mean = fig.data[names.index("mean return")]
    assert list(mean.y) == [r["mean_return"] for r in res["results"]]


# --- export


def test_export_gif_replays_the_seeded_episode(tmp_path):
    actions = [0, 1, 1, 0, 0]  # turns only: never walks into the lava, every frame differs
    frames = replay_frames(SPEC, 3, actions, tile_size=8)
    env = make_env(SPEC)
    env.reset(seed=3)
    np.testing.assert_array_equal(frames[0], env.unwrapped.get_frame(highlight=True, tile_size=8))
    env.close()
    out = export_episode((SPEC, 3, actions), tmp_path / "ep.gif", tile_size=8)
    back = iio.imread(out, index=None)
    assert back.shape == frames.shape == (len(actions) + 1, 5 * 8, 5 * 8, 3)
    np.testing.assert_array_equal(back, frames)  # few colours: the GIF palette loses nothing
    assert [p.name for p in tmp_path.iterdir()] == ["ep.gif"]  # no temp file left behind


def test_replay_rejects_actions_past_the_episode_end():
    ep_len = 12  # max_steps: turning in place, the 13th action cannot be played
    with pytest.raises(ValueError, match="ended at step"):
        replay_frames(SPEC, 0, [0] * (ep_len + 1), tile_size=8)
    assert replay_frames(SPEC, 0, [0] * ep_len, tile_size=8).shape[0] == ep_len + 1


def test_mp4_without_ffmpeg_is_a_clear_error(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "imageio_ffmpeg" else real(n, *a)
    )
    with pytest.raises(ConfigError, match="imageio-ffmpeg"):
        export_episode(np.zeros((2, 8, 8, 3), np.uint8), tmp_path / "ep.mp4")
    assert list(tmp_path.iterdir()) == []


def test_mp4_export_when_ffmpeg_is_installed(tmp_path):
    pytest.importorskip("imageio_ffmpeg")
    frames = np.random.default_rng(0).integers(0, 255, (4, 15, 17, 3), dtype=np.uint8)  # odd sizes get padded
    out = export_episode(frames, tmp_path / "ep.mp4")
    assert iio.imread(out, plugin="FFMPEG", index=None).shape == (4, 16, 18, 3)


# --- CLI (in process for the happy paths, subprocess for the error contract)


def test_cli_evaluate_writes_json_and_gif(ckpt, tmp_path, capsys):
    out_json, out_gif = tmp_path / "eval.json", tmp_path / "ep.gif"
    argv = [str(ckpt), "--rtg", "1", "--rtg", "0.5", "--episodes", "3", "--num-envs", "2", "--seed", "4"]
    assert main(["evaluate", *argv, "--json", str(out_json), "--gif", str(out_gif)]) == 0
    res = json.loads(out_json.read_text())
    assert [r["target_rtg"] for r in res["results"]] == [1.0, 0.5]
    assert res["env_spec"] == SPEC.to_dict() and res["episodes"] == 3
    # the GIF is the first episode (seed 4) at the first target, replayed from its recorded actions
    (first,) = rollout(load_checkpoint(ckpt), 1.0, [4], 1, sample=False, record=True, progress=False)
    assert (first.episode_return, first.length) == (
        res["results"][0]["returns"][0],
        res["results"][0]["lengths"][0],
    )
    expected = export_episode((SPEC, 4, first.episode.actions), tmp_path / "expected.gif")
    assert out_gif.read_bytes() == expected.read_bytes()
    assert "95% CI" in capsys.readouterr().out


def test_cli_calibrate_writes_html_and_json(ckpt, tmp_path):
    out = tmp_path / "calib.html"
    argv = ["calibrate", str(ckpt), "--min", "0", "--max", "1", "--points", "2", "--episodes", "2"]
    assert main([*argv, "--num-envs", "2", "--out", str(out)]) == 0
    html = out.read_text()
    assert "y = x" in html and len(html) > 1_000_000  # plotly.js embedded: opens offline
    res = json.loads((tmp_path / "calib.json").read_text())
    assert [r["target_rtg"] for r in res["results"]] == [0.0, 1.0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib.html", "calib.json"]


def test_cli_missing_model_dir_is_one_line_error(tmp_path):
    _assert_one_line_error(_cli("evaluate", str(tmp_path / "nope"), "--rtg", "1"), "nope")


def test_cli_malformed_checkpoint_is_one_line_error(tmp_path, capsys):
    # in process (a second subprocess would only re-pay the torch import): same main(), same contract
    (tmp_path / "config.json").write_text("{not json")
    out = tmp_path / "res.json"
    assert main(["evaluate", str(tmp_path), "--rtg", "1", "--json", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dtinterp: error: ") and "config.json" in err[0]
    assert not out.exists()


def test_cli_calibrate_min_not_below_max_is_one_line_error(ckpt, tmp_path):
    out = tmp_path / "c.html"
    proc = _cli("calibrate", str(ckpt), "--min", "1", "--max", "1", "--out", str(out))
    _assert_one_line_error(proc, "--min")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--points", "1"], "--points"),
        (["--out", "missing_dir/c.html"], "does not exist"),
        (["--out", "c.txt"], ".html"),
    ],
)
def test_calibrate_validates_arguments_before_work(ckpt, tmp_path, monkeypatch, capsys, extra, needle):
    monkeypatch.chdir(tmp_path)
    assert main(["calibrate", str(ckpt), "--out", "c.html", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dtinterp: error:") and needle in err[0]
    assert list(tmp_path.iterdir()) == []


def test_evaluate_checkpoint_without_env_spec_is_an_error(tmp_path, capsys):
    cfg = DTConfig(context_len=2, n_layers=1, n_heads=1, d_model=8, d_mlp=8)
    save_checkpoint(tmp_path, HookedDecisionTransformer(cfg), {"rtg_scale": 1.0})
    assert main(["evaluate", str(tmp_path), "--rtg", "1"]) == 2
    assert "env_spec" in capsys.readouterr().err


def test_evaluate_checkpoint_for_another_view_size_is_an_error(tmp_path, capsys):
    cfg = DTConfig(obs_shape=(5, 5), context_len=2, n_layers=1, n_heads=1, d_model=8, d_mlp=8)
    save_checkpoint(tmp_path, HookedDecisionTransformer(cfg), {"env_spec": SPEC.to_dict(), "rtg_scale": 1.0})
    assert main(["evaluate", str(tmp_path), "--rtg", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(tmp_path) in err[0] and "5x5 observations" in err[0]
