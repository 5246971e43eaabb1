"""Headless rendering: POV images from stored observations equal minigrid's own renders, pixel for pixel."""

from __future__ import annotations

import numpy as np
import pytest

from envs import EnvSpec, compact_obs, from_one_hot, make_env, one_hot, render_pov, render_world
from envs.experts import make_expert

TS = 16  # small tiles keep the tests fast; the equalities hold at any tile size


def observations(spec: EnvSpec, seed: int, steps: int = 25):
    """(obs, base env) along an episode that mixes expert and random actions (keys get carried)."""
    env = make_env(spec)
    expert = make_expert(env)
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    for _ in range(steps):
        yield obs, env.unwrapped
        action = expert.act(env.unwrapped) if rng.random() < 0.7 else int(rng.integers(env.action_space.n))
        obs, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            return


@pytest.mark.parametrize(
    "spec",
    [
        EnvSpec("MiniGrid-DoorKey-8x8-v0"),  # opaque walls: occluded cells, carried key
        EnvSpec("MiniGrid-MemoryS7FixedStart-v0"),
        EnvSpec("MiniGrid-Dynamic-Obstacles-8x8-v0"),  # see-through walls
        EnvSpec("MiniGrid-DoorKey-8x8-v0", view_size=5),
    ],
    ids=["doorkey", "memory", "dynobs", "doorkey-view5"],
)
def test_pov_from_stored_obs_equals_minigrid_pov_render(spec):
    n = carried = 0
    for seed in range(3):
        for obs, base in observations(spec, seed):
            grid, _ = compact_obs(obs)
            carried += base.carrying is not None
            stored = grid.copy()  # what a dataset keeps; the env is not consulted below
            np.testing.assert_array_equal(
                render_pov(stored, highlight=True, tile_size=TS), base.get_pov_render(TS)
            )
            np.testing.assert_array_equal(
                render_pov(stored, highlight=True, tile_size=TS), base.get_frame(tile_size=TS, agent_pov=True)
            )
            n += 1
    assert n > 30
    if spec.env_id.startswith("MiniGrid-DoorKey"):
        assert carried > 0  # the carried key is drawn in the agent's cell


def test_pov_without_highlight_differs_only_by_the_highlight():
    obs, base = next(observations(EnvSpec("MiniGrid-MemoryS7FixedStart-v0"), 0))
    plain = render_pov(obs["image"], tile_size=TS)
    lit = render_pov(obs["image"], tile_size=TS, highlight=True)
    assert plain.shape == lit.shape == (7 * TS, 7 * TS, 3) and plain.dtype == np.uint8
    seen = (obs["image"][..., 0] != 0).T  # [H, W] as the image is laid out
    tile_differs = (plain != lit).reshape(7, TS, 7, TS, 3).any(axis=(1, 3, 4))
    np.testing.assert_array_equal(tile_differs, seen)


@pytest.mark.parametrize("env_id", ["MiniGrid-DoorKey-8x8-v0", "MiniGrid-MemoryS9FixedStart-v0"])
def test_fully_observed_pov_equals_world_render_without_highlight(env_id):
    for obs, base in observations(EnvSpec(env_id, fully_observed=True), 1, steps=15):
        img = render_pov(obs["image"], tile_size=TS)
        np.testing.assert_array_equal(img, base.get_frame(highlight=False, tile_size=TS))
        np.testing.assert_array_equal(img, render_world(base, tile_size=TS, highlight=False))
        assert img.shape == (base.height * TS, base.width * TS, 3)


def test_fully_observed_direction_argument_overrides_stored_heading():
    obs, base = next(observations(EnvSpec("MiniGrid-Empty-5x5-v0", fully_observed=True), 0))
    turned = (base.agent_dir + 1) % 4
    img = render_pov(obs["image"], direction=turned, tile_size=TS)
    base.agent_dir = turned
    np.testing.assert_array_equal(img, base.get_frame(highlight=False, tile_size=TS))


@pytest.mark.parametrize("fully_observed", [False, True])
def test_one_hot_round_trip_renders_identically(fully_observed):
    for obs, _ in observations(
        EnvSpec("MiniGrid-DoorKey-6x6-v0", fully_observed=fully_observed), 2, steps=12
    ):
        grid, direction = compact_obs(obs)
        back = from_one_hot(one_hot(grid), direction=direction)
        np.testing.assert_array_equal(render_pov(back, tile_size=TS), render_pov(grid, tile_size=TS))


def test_render_world_highlights_the_field_of_view():
    env = make_env(EnvSpec("MiniGrid-DoorKey-8x8-v0"), seed=0)
    lit, plain = render_world(env, tile_size=TS), render_world(env, tile_size=TS, highlight=False)
    assert lit.shape == plain.shape == (8 * TS, 8 * TS, 3) and lit.dtype == np.uint8
    assert (lit >= plain).all() and (lit > plain).any()


def test_render_pov_rejects_bad_grids():
    with pytest.raises(ValueError, match="shape \\[W, H, 3\\]"):
        render_pov(np.zeros((7, 7), dtype=np.uint8))
    bad = np.zeros((7, 7, 3), dtype=np.uint8)
    bad[0, 0, 0] = 11
    with pytest.raises(ValueError, match="out of range"):
        render_pov(bad)
    two = np.ones((5, 5, 3), dtype=np.uint8)
    two[1, 1], two[2, 2] = (10, 0, 0), (10, 0, 1)
    with pytest.raises(ValueError, match="2 agent cells"):
        render_pov(two)
