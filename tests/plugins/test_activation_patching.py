"""Activation patching: the plugin is the library sweep, noising a pair that does not differ changes nothing,
and the pairs it runs on are what they claim (resampled at the same step; Memory re-simulated with the
other cue object, as playing the same actions from a seed with that cue gives)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dtinterp.interp.causal import build_metric
from dtinterp.interp.edits import apply_edits, parse_edit
from dtinterp.interp.metrics import normalised_score
from dtinterp.interp.pairs import PairError, check_pair, env_pair, make_pair, resample_pair
from dtinterp.interp.patching import activation_patching
from dtinterp.model.checkpoint import Checkpoint
from dtinterp.model.inputs import DTInputs
from dtinterp.plugins.api import AnalysisContext, ParameterError, PluginError
from dtinterp.plugins.run import run_analysis
from envs import EnvSpec, compact_obs, make_env
from tests.plugins.conftest import _random_model
from tests.plugins.helpers import assert_labelled

PLUGIN = "activation-patching"
MEMORY = EnvSpec("MiniGrid-MemoryS7FixedStart-v0")


@pytest.fixture(scope="module")
def ckpt(tiny_model, tiny_meta) -> Checkpoint:
    return Checkpoint.from_model(tiny_model, tiny_meta)


@pytest.mark.parametrize(
    "sweep, direction, metric",
    [
        ("resid_pre", "denoise", "logit-diff"),
        ("head_by_pos_every", "noise", "kl"),
        ("neuron_all_pos", "denoise", "logprob"),
    ],
)
def test_batched_plugin_result_equals_the_library_sweep(
    ckpt, many_windows, registry, sweep, direction, metric
):
    edits = [parse_edit("R*=0.2"), parse_edit("S3[3,5].object=key")]
    ctx = AnalysisContext(ckpt, many_windows, edits=edits)
    params = {"sweep": sweep, "direction": direction, "metric": metric}
    result = registry.run(PLUGIN, ctx, params)
    clean, corrupted = many_windows, apply_edits(many_windows, edits)
    with torch.inference_mode():
        chosen = build_metric(metric, ckpt.model(clean), ckpt.model(corrupted), -1)
    expected = activation_patching(ckpt.model, clean, corrupted, chosen.metric, sweep, direction=direction)
    np.testing.assert_allclose(result.data["values"], expected.values.double().numpy(), atol=1e-5, rtol=0)
    score = normalised_score(
        expected.values.double(), expected.clean.double().mean(), expected.corrupted.double().mean()
    )
    np.testing.assert_allclose(result.data["score"], score.numpy(), atol=1e-4, rtol=1e-3)
    assert result.data["axis_names"] == list(expected.axis_names)
    assert_labelled(registry.figures(PLUGIN, result))


def test_noising_with_an_identical_corrupted_run_changes_nothing(ckpt, many_windows, registry):
    ctx = AnalysisContext(ckpt, many_windows, edits=[parse_edit("T2=1")])  # every window's T2 is already 1
    assert torch.equal(ctx.counterfactual.timesteps, many_windows.timesteps)
    for metric in ("logit-diff", "kl"):
        params = {"sweep": "block_every", "direction": "noise", "metric": metric, "versus": "left"}
        result = registry.run(PLUGIN, ctx, params)
        clean = np.mean(result.data["clean_metric"])
        np.testing.assert_allclose(result.data["values"], clean, atol=1e-6, rtol=0)
        assert np.isnan(result.data["score"]).all()  # clean == corrupted: no scale to measure recovery on
    assert clean == 0.0  # KL of the clean run from itself


def test_one_window_and_the_mean(ckpt, many_windows, registry):
    ctx = AnalysisContext(ckpt, many_windows, edits=[parse_edit("R*=0.1")])
    mean = registry.run(PLUGIN, ctx, {"sweep": "attn_out", "show": "metric"})
    one = registry.run(PLUGIN, ctx, {"sweep": "attn_out", "window": 2})
    alone = registry.run(
        PLUGIN, AnalysisContext(ckpt, many_windows[2], edits=[parse_edit("R*=0.1")]), {"sweep": "attn_out"}
    )
    np.testing.assert_allclose(one.data["values"], alone.data["values"], atol=1e-6, rtol=0)
    assert one.data["windows"] == [2] and len(mean.data["windows"]) == many_windows.batch_size
    figs = registry.figures(PLUGIN, mean)
    assert "clean" in figs[0].layout.title.text and "corrupted" in figs[0].layout.title.text
    assert list(figs[0].data[0].x) == [
        t for t, r in zip(mean.data["axis_labels"]["pos"], mean.data["real_tokens"]) if r
    ]


def test_pair_errors_are_one_line(ckpt, many_windows, one_window, registry):
    for params, ctx, needle in (
        ({"pair": "edits"}, AnalysisContext(ckpt, many_windows), "no edits were given"),
        ({"pair": "resample"}, AnalysisContext(ckpt, one_window), "same episode step"),
        ({"pair": "env"}, AnalysisContext(ckpt, many_windows), "no env-level counterfactual"),
        ({"window": 9}, AnalysisContext(ckpt, many_windows, edits=[parse_edit("R*=0")]), "outside the batch"),
        (
            {"action": "left", "versus": "left"},
            AnalysisContext(ckpt, many_windows, edits=[parse_edit("R*=0")]),
            "itself",
        ),
    ):
        with pytest.raises(ParameterError, match=needle) as err:
            registry.run(PLUGIN, ctx, params)
        assert "\n" not in str(err.value) and PLUGIN in str(err.value)
    with pytest.raises(PairError, match="window 1 differs in length"):
        shorter = many_windows.clone()
        shorter.pad_mask[1, 0] = False
        check_pair(many_windows, shorter)
    with pytest.raises(PairError, match="different envs"):
        make_pair(many_windows, DTInputs(**{**many_windows.__dict__, "obs": many_windows.obs[:, :, :5, :5]}))


def test_resampled_partners_end_at_the_same_step(many_windows):
    batch = DTInputs.cat([many_windows, many_windows[3:]])  # rows 6..8 share their steps with rows 3..5
    batch.timesteps[:3] += torch.arange(3)[:, None] * 10  # rows 0..2 each at a step no other window has
    pair = resample_pair(batch, seed=1)
    assert pair.rows == [3, 4, 5, 6, 7, 8]  # row 0 is the only padded window, rows 1 and 2 moved away
    for r, p in zip(pair.rows, pair.partners):
        assert r != p and torch.equal(batch.timesteps[r], batch.timesteps[p])
    assert torch.equal(pair.corrupted.obs, batch.obs[pair.partners])


def _memory_episode(seed: int, actions: list[int]) -> tuple[np.ndarray, np.ndarray, object]:
    env = make_env(MEMORY)
    obs, _ = env.reset(seed=seed)
    grids, dirs = [], []
    for a in [*actions, None]:
        g, d = compact_obs(obs)
        grids.append(g), dirs.append(d)
        if a is not None:
            obs, *_ = env.step(a)
    return np.stack(grids), np.asarray(dirs), env.unwrapped


def _layout(base) -> tuple[str, str]:
    mid = base.height // 2
    return base.grid.get(1, mid - 1).type, base.grid.get(base.width - 2, mid - 2).type


def test_env_pair_is_the_episode_replayed_from_a_seed_with_the_other_cue():
    actions = [1, 2, 2, 2, 2]  # turn right, walk the corridor to the split: the cue is seen at steps 0 and 1
    grids, dirs, base = _memory_episode(0, actions)
    cue, upper = _layout(base)
    other_seed = next(s for s in range(1, 100) if _layout(_memory_episode(s, [])[2]) == (
        "ball" if cue == "key" else "key", upper))  # fmt: skip
    want, want_dirs, _ = _memory_episode(other_seed, actions)
    K = 4
    windows = DTInputs(  # the windows ending at steps 1 and 5 (the first one left-padded)
        obs=torch.from_numpy(np.stack([np.concatenate([np.zeros_like(grids[:2]), grids[:2]]), grids[2:6]])),
        directions=torch.from_numpy(np.stack([np.r_[0, 0, dirs[:2]], dirs[2:6]])).long(),
        rtg=torch.ones(2, K),
        actions=torch.tensor([[0, 0, actions[0], 0], [*actions[2:5], 0]]),
        timesteps=torch.tensor([[0, 0, 0, 1], [2, 3, 4, 5]]),
        pad_mask=torch.tensor([[False, False, True, True], [True] * K]),
    )
    pair = env_pair(windows, MEMORY)
    assert pair.rows == [0]  # the window ending at step 5 never shows the cue: left out
    np.testing.assert_array_equal(pair.corrupted.obs[0, 2:].numpy(), want[:2])
    assert not np.array_equal(want[:2], grids[:2])
    assert torch.equal(pair.corrupted.actions, pair.clean.actions) and torch.equal(
        pair.corrupted.rtg, pair.clean.rtg
    )
    back = env_pair(pair.corrupted, MEMORY)  # the other cue's other cue is the episode itself
    assert torch.equal(back.corrupted.obs, pair.clean.obs)
    edited = pair.clean.clone()
    edited.obs[0, 3, 0, 0, 0] = 5  # a key where there is a wall: no Memory episode looks like this
    with pytest.raises(PairError, match="window 0 is not a"):
        env_pair(edited, MEMORY)


def test_env_pair_through_the_plugin_on_a_memory_model(registry):
    model = _random_model(context_len=4, max_timestep=300)
    ckpt = Checkpoint.from_model(model, {"env_spec": MEMORY.to_dict(), "rtg_scale": 1.0})
    grids, dirs, _ = _memory_episode(3, [1, 2])
    inputs = DTInputs(
        obs=torch.from_numpy(np.concatenate([np.zeros_like(grids[:1]), grids])[None]),
        directions=torch.from_numpy(np.r_[0, dirs])[None].long(),
        rtg=torch.ones(1, 4),
        actions=torch.tensor([[0, 1, 2, 0]]),
        timesteps=torch.tensor([[0, 0, 1, 2]]),
        pad_mask=torch.tensor([[False, True, True, True]]),
    )
    run = run_analysis(
        ckpt, inputs, PLUGIN, {"pair": "env", "sweep": "resid_pre"}, ["R*=1"], registry=registry
    )
    d = run.result.data
    assert d["pair"] == "env" and "other cue" in d["pair_description"]
    assert (
        "the edits R*=1.0 are not used" in d["pair_description"]
    )  # the CLI asked for one; env pairs ignore it
    assert not d["real_tokens"][:3].any() and d["real_tokens"][3:].all()
    assert "R1" not in list(run.figures[0].data[0].x)  # padded tokens are left off the axis
    # pair=env builds its own counterfactual: no edit is needed, and the result is the same without one
    bare = run_analysis(ckpt, inputs, PLUGIN, {"pair": "env", "sweep": "resid_pre"}, [], registry=registry)
    np.testing.assert_array_equal(bare.result.data["values"], d["values"])
    assert "not used" not in bare.result.data["pair_description"]
    with pytest.raises(PluginError, match="give at least one edit"):  # pair=edits still needs one
        run_analysis(ckpt, inputs, PLUGIN, {"sweep": "resid_pre"}, [], registry=registry)
