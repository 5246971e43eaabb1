"""Every rule of the fixed-start Memory env, checked with hand-scripted moves (not the expert)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX

from envs import EnvSpec, make_env
from envs.custom import MEMORY_FIXED_START_SIZES, MemoryFixedStartEnv
from envs.experts import FORWARD, LEFT, PICKUP, RIGHT

SIZES = MEMORY_FIXED_START_SIZES


def memory_env(size: int) -> gym.Env:
    return make_env(EnvSpec(f"MiniGrid-MemoryS{size}FixedStart-v0"))


def route_to(env: gym.Env, upper: bool) -> list[int]:
    """Actions from the start pose to the cell beside the upper (or lower) end object."""
    base = env.unwrapped
    corridor = base.width - 2 - 1  # from x=1 to the end hallway at x = width - 2
    return [RIGHT] + [FORWARD] * corridor + [LEFT if upper else RIGHT, FORWARD]


def upper_matches(env: gym.Env) -> bool:
    """Whether the upper end object has the cue's type (read off the grid)."""
    base = env.unwrapped
    mid = base.height // 2
    cue = base.grid.get(1, mid - 1)
    upper = base.grid.get(base.width - 2, mid - 2)
    return cue.type == upper.type


@pytest.mark.parametrize("size", SIZES)
def test_registered_with_fixed_start_pose_and_cue_in_view(size):
    env = memory_env(size)
    assert isinstance(env.unwrapped, MemoryFixedStartEnv)
    for seed in range(20):
        obs, _ = env.reset(seed=seed)
        base = env.unwrapped
        assert tuple(base.agent_pos) == (1, size // 2) and base.agent_dir == 3
        cue = base.grid.get(1, size // 2 - 1)
        assert cue.type in ("key", "ball") and cue.color == "green"
        # The egocentric view faces up: the cell right in front of the agent is view[3, 5].
        expected = (OBJECT_TO_IDX[cue.type], COLOR_TO_IDX["green"], 0)
        assert tuple(obs["image"][3, 5]) == expected
        assert base.max_steps == 5 * size**2


@pytest.mark.parametrize("size", SIZES)
def test_same_world_as_minigrid_memory_env_for_a_seed(size):
    """Only the start pose differs from minigrid's MemoryEnv(size): same objects, same rule cells."""
    ours = memory_env(size).unwrapped
    theirs = gym.make("MiniGrid-MemoryS7-v0" if size == 7 else f"MiniGrid-MemoryS{size}-v0").unwrapped
    for seed in range(10):
        ours.reset(seed=seed)
        theirs.reset(seed=seed)
        np.testing.assert_array_equal(ours.grid.encode(), theirs.grid.encode())
        assert (ours.success_pos, ours.failure_pos) == (theirs.success_pos, theirs.failure_pos)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("correct", [True, False])
def test_choosing_an_object_ends_the_episode(size, correct):
    env = memory_env(size)
    for seed in range(6):
        env.reset(seed=seed)
        actions = route_to(env, upper=upper_matches(env) == correct)
        for t, action in enumerate(actions):
            _, reward, terminated, truncated, _ = env.step(action)
            if t < len(actions) - 1:
                assert not terminated and reward == 0
        base = env.unwrapped
        assert terminated and not truncated
        if correct:
            assert tuple(base.agent_pos) == base.success_pos
            assert reward == pytest.approx(1 - 0.9 * len(actions) / base.max_steps) and reward > 0
        else:
            assert tuple(base.agent_pos) == base.failure_pos
            assert reward == 0


def test_timeout_truncates_with_zero_reward():
    env = memory_env(7)
    env.reset(seed=0)
    max_steps = env.unwrapped.max_steps
    for t in range(1, max_steps + 1):
        _, reward, terminated, truncated, _ = env.step(LEFT)
        assert reward == 0 and not terminated
        assert truncated == (t == max_steps)


def test_cue_cannot_be_picked_up():
    """MemoryEnv turns pickup into toggle: the cue stays where it is."""
    env = memory_env(7)
    env.reset(seed=0)
    env.step(PICKUP)
    base = env.unwrapped
    assert base.carrying is None and base.grid.get(1, 2) is not None
