"""EnvSpec validation and make_env: bad input is one clear EnvSpecError; overrides are honoured."""

from __future__ import annotations

import numpy as np
import pytest
from minigrid.wrappers import ViewSizeWrapper

from envs import EnvSpec, EnvSpecError, make_env, make_vector_env, obs_shape
from envs.experts import LEFT, make_expert
from tests.envs.helpers import run_episode


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"env_id": "MiniGrid-NoSuchEnv-v0"}, "unknown env id 'MiniGrid-NoSuchEnv-v0'"),
        ({"env_id": "CartPole-v1"}, "'CartPole-v1' is not a MiniGrid environment"),
        ({"env_id": "MiniGrid-Empty-5x5-v0", "view_size": 4}, "invalid view size 4"),
        ({"env_id": "MiniGrid-Empty-5x5-v0", "view_size": 1}, "invalid view size 1"),
        ({"env_id": "MiniGrid-Empty-5x5-v0", "view_size": 5.0}, "invalid view size 5.0"),
        ({"env_id": "MiniGrid-Empty-5x5-v0", "max_steps": 0}, "invalid max_steps 0"),
    ],
)
def test_bad_spec_raises_one_clear_error(kwargs, match):
    with pytest.raises(EnvSpecError, match=match) as info:
        EnvSpec(**kwargs)
    assert "\n" not in str(info.value)


def test_from_dict_rejects_unknown_keys_and_round_trips():
    spec = EnvSpec("MiniGrid-DoorKey-8x8-v0", view_size=5, max_steps=50)
    assert EnvSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(EnvSpecError, match="unknown env spec keys: \\['colour'\\]"):
        EnvSpec.from_dict({**spec.to_dict(), "colour": "red"})
    with pytest.raises(EnvSpecError, match="no env_id"):
        EnvSpec.from_dict({"view_size": 7})


def test_max_steps_override_truncates_and_scales_reward():
    env = make_env(EnvSpec("MiniGrid-Empty-8x8-v0", max_steps=9))
    ret, n, terminated, truncated = run_episode(env, 0, lambda e: LEFT)  # turning never ends it
    assert (n, terminated, truncated, ret) == (9, False, True, 0.0)
    # The expert needs 12 steps in Empty-8x8: with max_steps=100 the reward uses 100, not 256.
    env = make_env(EnvSpec("MiniGrid-Empty-8x8-v0", max_steps=100))
    expert = make_expert(env)
    ret, n, terminated, _ = run_episode(env, 0, lambda e: expert.act(e.unwrapped))
    assert terminated and ret == pytest.approx(1 - 0.9 * n / 100)


@pytest.mark.parametrize("env_id", ["MiniGrid-DoorKey-8x8-v0", "MiniGrid-MemoryS9FixedStart-v0"])
def test_fully_observed_shape_matches_observations(env_id):
    spec = EnvSpec(env_id, fully_observed=True)
    env = make_env(spec)
    obs, _ = env.reset(seed=0)
    base = env.unwrapped
    assert obs["image"].shape == obs_shape(spec) == (base.width, base.height, 3)
    # The agent is encoded in the grid at its position, with its direction as state.
    x, y = base.agent_pos
    assert tuple(obs["image"][x, y]) == (10, 0, base.agent_dir)


@pytest.mark.parametrize("view_size", [3, 5, 9])
def test_view_size_matches_minigrid_view_size_wrapper(view_size):
    spec = EnvSpec("MiniGrid-DoorKey-8x8-v0", view_size=view_size)
    env = make_env(spec)
    ref = ViewSizeWrapper(make_env(EnvSpec("MiniGrid-DoorKey-8x8-v0")), agent_view_size=view_size)
    obs, _ = env.reset(seed=3)
    ref_obs, _ = ref.reset(seed=3)
    rng = np.random.default_rng(0)
    for _ in range(30):
        assert obs["image"].shape == obs_shape(spec) == env.observation_space["image"].shape
        np.testing.assert_array_equal(obs["image"], ref_obs["image"])
        action = int(rng.integers(7))
        obs, *_ = env.step(action)
        ref_obs, *_ = ref.step(action)


def test_vector_env_steps_copies_in_lockstep():
    """gymnasium's vector env over EnvSpec: N copies, batched observations, seeded like single envs."""
    spec = EnvSpec("MiniGrid-DoorKey-5x5-v0")
    venv = make_vector_env(spec, 3)
    try:
        obs, _ = venv.reset(seed=[10, 11, 12])
        assert obs["image"].shape == (3, 7, 7, 3)
        for i, seed in enumerate([10, 11, 12]):
            single, _ = make_env(spec).reset(seed=seed)
            assert np.array_equal(obs["image"][i], single["image"])
        obs, rewards, term, trunc, _ = venv.step(np.array([0, 1, 2]))
        assert rewards.shape == (3,) and obs["direction"].shape == (3,)
    finally:
        venv.close()
    with pytest.raises(EnvSpecError, match="num_envs"):
        make_vector_env(spec, 0)
