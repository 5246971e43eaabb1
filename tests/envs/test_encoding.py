"""Compact <-> one-hot encodings: exact round trips on real observations, batches equal per-item."""

from __future__ import annotations

import numpy as np
import pytest

from envs import N_CHANNELS, N_COLORS, N_OBJECTS, EnvSpec, compact_obs, from_one_hot, make_env, one_hot
from envs.encoding import describe_cell


def collect_grids(env_id: str, fully_observed: bool, n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """``n`` compact grids and directions from random play (several episodes)."""
    env = make_env(EnvSpec(env_id, fully_observed=fully_observed))
    rng = np.random.default_rng(0)
    grids, dirs = [], []
    obs, _ = env.reset(seed=0)
    while len(grids) < n:
        grid, direction = compact_obs(obs)
        grids.append(grid)
        dirs.append(direction)
        obs, _, terminated, truncated, _ = env.step(int(rng.integers(env.action_space.n)))
        if terminated or truncated:
            obs, _ = env.reset(seed=len(grids))
    return np.stack(grids), np.array(dirs)


@pytest.mark.parametrize("env_id", ["MiniGrid-DoorKey-8x8-v0", "MiniGrid-MemoryS7FixedStart-v0"])
def test_partial_view_round_trip_is_exact(env_id):
    grids, _ = collect_grids(env_id, fully_observed=False)
    x = one_hot(grids)
    assert x.shape == (*grids.shape[:-1], N_CHANNELS) and x.dtype == np.float32
    # Exactly one object and one colour per cell; at most one state (agent cells have none).
    np.testing.assert_array_equal(x[..., :N_OBJECTS].sum(-1), 1)
    np.testing.assert_array_equal(x[..., N_OBJECTS : N_OBJECTS + N_COLORS].sum(-1), 1)
    np.testing.assert_array_equal(from_one_hot(x), grids)


def test_fully_observed_round_trip_restores_agent_direction():
    grids, dirs = collect_grids("MiniGrid-DoorKey-8x8-v0", fully_observed=True)
    x = one_hot(grids)
    agent = grids[..., 0] == 10
    assert agent.sum() == len(grids)  # one agent cell per grid
    assert np.all(x[agent][:, N_OBJECTS + N_COLORS :] == 0)  # direction is not a door state
    for g, xi, d in zip(grids, x, dirs):
        np.testing.assert_array_equal(from_one_hot(xi, direction=int(d)), g)


def test_one_hot_over_a_batch_equals_per_item():
    grids, _ = collect_grids("MiniGrid-DoorKey-8x8-v0", fully_observed=False, n=12)
    batch = grids.reshape(3, 4, *grids.shape[1:])
    stacked = np.stack([np.stack([one_hot(g) for g in row]) for row in batch])
    np.testing.assert_array_equal(one_hot(batch), stacked)


def test_one_hot_rejects_bad_input():
    with pytest.raises(ValueError, match="3 channels"):
        one_hot(np.zeros((7, 7, 2), dtype=np.uint8))
    bad = np.zeros((7, 7, 3), dtype=np.uint8)
    bad[0, 0, 0] = N_OBJECTS
    with pytest.raises(ValueError, match="out of range"):
        one_hot(bad)


def test_describe_cell_names():
    assert describe_cell(np.array([5, 4, 0])) == "yellow key"
    assert describe_cell(np.array([4, 4, 2])) == "locked yellow door"
    assert describe_cell(np.array([2, 5, 0])) == "wall"
    assert describe_cell(np.array([10, 0, 3])) == "agent facing up"
