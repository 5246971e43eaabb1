"""Rollouts: deterministic per seed, vectorized == one-at-a-time, and fed exactly the training windows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dtinterp.data.windows import window_at
from dtinterp.model import DTConfig, DTInputs, HookedDecisionTransformer
from dtinterp.train.rollout import EpisodeResult, episodes_dataset, rollout, rollout_reference
from envs import EnvSpec

# LavaGap ends early when the agent walks into lava, so episodes have different lengths and slots are
# refilled at different steps. max_steps > max_timestep exercises the timestep clipping.
SPEC = EnvSpec("MiniGrid-LavaGapS5-v0", max_steps=30)
SEEDS = [3, 0, 7, 1, 12, 5, 9]


@pytest.fixture(scope="module")
def model() -> HookedDecisionTransformer:
    """A tiny untrained DT whose large init makes its greedy actions depend on its inputs."""
    cfg = DTConfig(
        obs_shape=(7, 7), context_len=4, max_timestep=16, n_layers=1, n_heads=2, d_model=32, d_mlp=64,
        init_range=0.5, seed=0,
    )  # fmt: skip
    m = HookedDecisionTransformer(cfg)
    with torch.no_grad():
        m.b_U[2] += 2.0  # lean towards "forward" so some greedy episodes end in lava before the limit
    return m.eval()


def _key(results: list[EpisodeResult]) -> list[tuple]:
    return [(r.seed, r.episode_return, r.length, r.trajectory.actions.tolist()) for r in results]


@pytest.mark.parametrize("sample", [False, True])
def test_rollout_deterministic_for_any_num_envs(model, sample):
    runs = {n: rollout(model, SPEC, 1.0, SEEDS, n, sample=sample, sample_seed=5, record=True, progress=False)
            for n in (1, 3, 16)}  # fmt: skip
    first = _key(runs[1])
    assert [r.seed for r in runs[1]] == SEEDS
    assert len({r.length for r in runs[1]}) > 1, "episodes must end at different steps to test refills"
    assert _key(runs[3]) == first
    assert _key(runs[16]) == first
    rerun = rollout(model, SPEC, 1.0, SEEDS, 3, sample=sample, sample_seed=5, record=True, progress=False)
    assert _key(rerun) == first


@pytest.mark.parametrize("sample", [False, True])
def test_vectorized_rollout_equals_reference(model, sample):
    vec = rollout(model, SPEC, 0.8, SEEDS, 3, sample=sample, sample_seed=1, record=True, progress=False)
    ref = rollout_reference(model, SPEC, 0.8, SEEDS, sample=sample, sample_seed=1, record=True)
    assert _key(vec) == _key(ref)
    for a, b in zip(vec, ref):
        for f in ("obs", "directions", "rewards", "rtg", "terminated", "truncated"):
            np.testing.assert_array_equal(getattr(a.trajectory, f), getattr(b.trajectory, f))


def test_sample_seed_changes_sampled_episodes(model):
    a = rollout(model, SPEC, 1.0, SEEDS, 4, sample=True, sample_seed=0, record=True, progress=False)
    b = rollout(model, SPEC, 1.0, SEEDS, 4, sample=True, sample_seed=1, record=True, progress=False)
    assert _key(a) != _key(b)


def test_rollout_inputs_equal_training_windows(model):
    """What the model sees at step t of a played episode is window_at(recorded episode, t)."""
    seen: dict[tuple[int, int], DTInputs] = {}

    def inspect(episodes, steps, inputs):
        for row, (e, t) in enumerate(zip(episodes, steps)):
            seen[(e, t)] = inputs[row].clone()

    target, scale = 0.9, 2.0
    results = rollout(
        model,
        SPEC,
        target,
        SEEDS,
        3,
        rtg_scale=scale,
        sample=True,
        record=True,
        progress=False,
        inspect=inspect,
    )
    ds = episodes_dataset(results, SPEC)
    assert ds.n_episodes == len(SEEDS) and len(seen) == ds.n_transitions
    cfg = model.cfg
    for (e, t), inp in seen.items():
        w = window_at(ds, e, t, cfg.context_len, scale, cfg.n_actions, cfg.max_timestep, rtg_override=target)
        for f in ("obs", "directions", "rtg", "timesteps", "pad_mask"):
            assert torch.equal(getattr(inp, f), getattr(w, f)), (e, t, f)
        # the last action is the one being predicted: the window has the label, the rollout a pad
        assert torch.equal(inp.actions[:, :-1], w.actions[:, :-1]), (e, t)
        assert int(inp.actions[0, -1]) == model.pad_action
    assert max(t for _, t in seen) >= cfg.max_timestep  # the clipped timesteps were compared too


def test_recorded_episode_layout(model):
    (r,) = rollout(model, SPEC, 0.5, [4], 1, sample=True, record=True, progress=False)
    tr = r.trajectory
    assert tr.obs.shape == (r.length, 7, 7, 3) and tr.obs.dtype == np.uint8
    assert tr.actions.dtype == np.uint8 and tr.directions.dtype == np.uint8
    assert tr.rtg[0] == np.float32(0.5)
    np.testing.assert_allclose(tr.rtg[1:], 0.5 - np.cumsum(tr.rewards)[:-1], rtol=0, atol=1e-6)
    assert (tr.terminated | tr.truncated).nonzero()[0].tolist() == [r.length - 1]
    assert r.episode_return == pytest.approx(float(tr.rewards.sum()))


def test_rollout_restores_training_mode(model):
    model.train()
    try:
        rollout(model, SPEC, 1.0, [0], 1, progress=False)
        assert model.training
    finally:
        model.eval()


def test_rollout_rejects_empty_seed_list(model):
    with pytest.raises(ValueError, match="no seeds"):
        rollout(model, SPEC, 1.0, [], 4, progress=False)
