"""Return-to-go and training windows: padding, content, sampling, batched == single."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import pytest
import torch

from dtinterp.data.windows import WindowSampler, make_batch, returns_to_go
from dtinterp.errors import DatasetError
from dtinterp.model.inputs import DTInputs

N_ACTIONS = 7


def window_at(data, episode, t, context_len, rtg_scale, n_actions, max_timestep, rtg_override=None):
    """One window (batch 1) through the window builder; ``rtg_override`` conditions on a target return."""
    targets = [None] * (len(data.episode_starts) - 1)
    targets[episode] = rtg_override
    return make_batch(data, [(episode, t)], context_len, rtg_scale, n_actions, max_timestep, targets)


@dataclass
class Arrays:
    """The dataset fields windows read, built from small synthetic arrays."""

    obs: np.ndarray
    directions: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    episode_starts: np.ndarray


def make_arrays(lengths: list[int], seed: int = 0, dense: bool = True) -> Arrays:
    rng = np.random.default_rng(seed)
    n = sum(lengths)
    starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    # Every step's obs is distinct (and never all zero), so a wrong gather shows up.
    obs = rng.integers(1, 11, size=(n, 5, 4, 3), dtype=np.uint8)
    obs[:, 0, 0, 0] = (np.arange(n) % 250 + 1).astype(np.uint8)
    rewards = rng.normal(size=n).astype(np.float32) if dense else np.zeros(n, np.float32)
    if not dense:
        rewards[starts[1:] - 1] = rng.uniform(0.5, 1.0, size=len(lengths))
    return Arrays(
        obs=obs,
        directions=rng.integers(0, 4, size=n, dtype=np.uint8),
        actions=rng.integers(0, N_ACTIONS, size=n, dtype=np.uint8),
        rewards=rewards,
        episode_starts=starts,
    )


def assert_inputs_equal(a: DTInputs, b: DTInputs) -> None:
    for f in fields(DTInputs):
        x, y = getattr(a, f.name), getattr(b, f.name)
        assert x.dtype == y.dtype, f.name
        assert torch.equal(x, y), f.name


def test_returns_to_go_dense_rewards_multiple_episodes():
    data = make_arrays([1, 6, 13, 4], seed=1)
    rtg = returns_to_go(data.rewards, data.episode_starts)
    expected = np.zeros(len(data.rewards), np.float64)
    for s, e in zip(data.episode_starts[:-1], data.episode_starts[1:]):
        for i in range(s, e):
            expected[i] = data.rewards[i:e].astype(np.float64).sum()
    assert rtg.dtype == np.float32 and rtg.shape == data.rewards.shape
    np.testing.assert_allclose(rtg, expected, rtol=1e-6, atol=1e-6)
    # The last step of every episode has RTG equal to its own reward (no leakage from the next episode).
    last = data.episode_starts[1:] - 1
    np.testing.assert_allclose(rtg[last], data.rewards[last], rtol=1e-6)


def test_returns_to_go_sparse_reward_is_constant_within_episode():
    data = make_arrays([3, 5], dense=False)
    rtg = returns_to_go(data.rewards, data.episode_starts)
    s = data.episode_starts
    for e in range(2):
        ep = rtg[s[e] : s[e + 1]]
        np.testing.assert_allclose(ep, data.rewards[s[e + 1] - 1])


def test_returns_to_go_rejects_bad_starts():
    with pytest.raises(DatasetError, match="episode_starts"):
        returns_to_go(np.zeros(5, np.float32), np.array([0, 3]))


def test_window_left_padding():
    data = make_arrays([5, 9])
    k, scale = 8, 2.0
    w = window_at(data, episode=1, t=2, context_len=k, rtg_scale=scale, n_actions=N_ACTIONS, max_timestep=100)
    assert w.obs.shape == (1, k, 5, 4, 3) and w.obs.dtype == torch.uint8
    real = np.array([False] * 5 + [True] * 3)
    assert w.pad_mask[0].numpy().tolist() == real.tolist()
    pad = ~real
    assert (w.actions[0, pad] == N_ACTIONS).all()
    assert (w.obs[0, pad] == 0).all() and (w.directions[0, pad] == 0).all()
    assert (w.rtg[0, pad] == 0).all() and (w.timesteps[0, pad] == 0).all()
    assert w.timesteps[0, real].tolist() == [0, 1, 2]
    s = int(data.episode_starts[1])
    np.testing.assert_array_equal(w.obs[0, real].numpy(), data.obs[s : s + 3])


def test_window_content_equals_episode_slice():
    data = make_arrays([4, 30, 7], seed=3)
    k, scale, t = 6, 4.0, 20
    w = window_at(data, episode=1, t=t, context_len=k, rtg_scale=scale, n_actions=N_ACTIONS, max_timestep=100)
    s = int(data.episode_starts[1])
    rows = slice(s + t - k + 1, s + t + 1)
    rtg = returns_to_go(data.rewards, data.episode_starts)
    assert w.pad_mask.all()
    np.testing.assert_array_equal(w.obs[0].numpy(), data.obs[rows])
    np.testing.assert_array_equal(w.directions[0].numpy(), data.directions[rows])
    np.testing.assert_array_equal(w.actions[0].numpy(), data.actions[rows])
    np.testing.assert_allclose(w.rtg[0].numpy(), rtg[rows] / scale, rtol=1e-6)
    assert w.timesteps[0].tolist() == list(range(t - k + 1, t + 1))
    # Timesteps are clipped to max_timestep - 1.
    w2 = window_at(data, episode=1, t=t, context_len=k, rtg_scale=scale, n_actions=N_ACTIONS, max_timestep=18)
    assert w2.timesteps[0].tolist() == [15, 16, 17, 17, 17, 17]


def test_window_rtg_override_conditions_on_target():
    data = make_arrays([10], seed=4)
    target, scale = 3.0, 2.0
    w = window_at(data, 0, 4, 5, scale, N_ACTIONS, 100, rtg_override=target)
    received = np.concatenate([[0.0], np.cumsum(data.rewards.astype(np.float64))])[:5]
    np.testing.assert_allclose(w.rtg[0].numpy(), (target - received) / scale, rtol=1e-6, atol=1e-6)


def test_batched_equals_single():
    data = make_arrays([3, 12, 1, 9], seed=5)
    ends = [(0, 0), (1, 11), (1, 4), (2, 0), (3, 8), (0, 2)]
    kw = dict(context_len=5, rtg_scale=1.5, n_actions=N_ACTIONS, max_timestep=10)
    batch = make_batch(data, ends, **kw)
    single = DTInputs.cat([window_at(data, e, t, **kw) for e, t in ends])
    assert_inputs_equal(batch, single)
    sampler = WindowSampler(data, **kw)
    flat = np.array([data.episode_starts[e] + t for e, t in ends])
    assert_inputs_equal(sampler.batch_at(flat), batch)


def test_out_of_range_end_is_an_error():
    data = make_arrays([3, 4])
    with pytest.raises(IndexError, match="outside episode 1"):
        window_at(data, 1, 4, 4, 1.0, N_ACTIONS, 10)
    with pytest.raises(IndexError, match="episode index"):
        make_batch(data, [(2, 0)], 4, 1.0, N_ACTIONS, 10)


def test_p_episode_end_one_always_ends_at_episode_end():
    data = make_arrays([3, 12, 1, 9])
    sampler = WindowSampler(data, 4, 1.0, N_ACTIONS, 50, p_episode_end=1.0)
    ends = sampler.sample_ends(500, np.random.default_rng(0))
    last_steps = set((data.episode_starts[1:] - 1).tolist())
    assert set(ends.tolist()) == last_steps  # every episode end is drawn, nothing else
    batch = sampler.sample(64, np.random.default_rng(1))
    # At an episode's last step the RTG is exactly that step's reward.
    last_rtg = batch.rtg[:, -1].numpy()
    assert np.isin(last_rtg, data.rewards[list(last_steps)]).all()


def test_p_episode_end_zero_is_uniform_over_transitions():
    data = make_arrays([2, 5, 3])
    sampler = WindowSampler(data, 4, 1.0, N_ACTIONS, 50, p_episode_end=0.0)
    ends = sampler.sample_ends(20_000, np.random.default_rng(0))
    counts = np.bincount(ends, minlength=10)
    assert counts.min() > 1_700 and counts.max() < 2_300  # expected 2000 each; sd ~42


def test_sampling_is_a_function_of_the_generator_state():
    data = make_arrays([6, 6, 6])
    sampler = WindowSampler(data, 4, 1.0, N_ACTIONS, 50, p_episode_end=0.3)
    a = sampler.sample(16, np.random.default_rng([7, 3]))
    b = sampler.sample(16, np.random.default_rng([7, 3]))
    c = sampler.sample(16, np.random.default_rng([7, 4]))
    assert_inputs_equal(a, b)
    assert not torch.equal(a.obs, c.obs)


def test_sampler_rejects_empty_episode():
    data = make_arrays([3, 4])
    data.episode_starts = np.array([0, 3, 3, 7])
    with pytest.raises(DatasetError, match="empty episode"):
        WindowSampler(data, 4, 1.0, N_ACTIONS, 10)
