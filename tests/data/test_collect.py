"""Collection: episodes are faithful to the env, deterministic, and independent of the worker count."""

from __future__ import annotations

import numpy as np
import pytest

from dtinterp.data.collect import collect
from dtinterp.data.dataset import FORMAT_VERSION, load_dataset, save_dataset
from envs.encoding import compact_obs
from envs.errors import EnvSpecError
from envs.spec import EnvSpec, make_env

DOORKEY = EnvSpec("MiniGrid-DoorKey-5x5-v0")


def test_episodes_replay_exactly_in_the_env():
    """Replaying the stored actions from ``reset(seed=seed + e)`` reproduces every stored step."""
    seed = 11
    ds = collect(DOORKEY, 4, "mixed", seed=seed, progress=False)
    env = make_env(DOORKEY)
    for e in range(ds.n_episodes):
        obs, _ = env.reset(seed=seed + e)
        for t in range(*ds.episode_slice(e).indices(ds.n_transitions)):
            grid, direction = compact_obs(obs)
            np.testing.assert_array_equal(ds.obs[t], grid)
            assert ds.directions[t] == direction
            obs, reward, terminated, truncated, _ = env.step(int(ds.actions[t]))
            assert (ds.rewards[t], ds.terminated[t], ds.truncated[t]) == (
                np.float32(reward),
                terminated,
                truncated,
            )
    env.close()


def test_workers_do_not_change_the_file(tmp_path):
    """Same arguments -> byte-identical files for 1 and 2 worker processes (and across runs)."""
    paths = []
    for workers in (1, 2):
        ds = collect(DOORKEY, 6, "mixed", seed=5, workers=workers, progress=False)
        paths.append(tmp_path / f"w{workers}.npz")
        save_dataset(ds, paths[-1])
    assert paths[0].read_bytes() == paths[1].read_bytes()
    again = collect(DOORKEY, 6, "mixed", seed=5, progress=False)
    assert again.fingerprint() == load_dataset(paths[0]).fingerprint()
    other = collect(DOORKEY, 6, "mixed", seed=6, progress=False)
    assert other.fingerprint()["sha256"] != again.fingerprint()["sha256"]


def test_metadata_describes_the_collection():
    ds = collect(DOORKEY, 3, "mixed", seed=2, progress=False)
    meta = ds.metadata
    assert meta["format_version"] == FORMAT_VERSION
    assert meta["env_spec"] == DOORKEY.to_dict() and ds.env_spec == DOORKEY
    assert meta["seed"] == 2 and meta["episodes"] == 3
    assert meta["created_by"] == "dtinterp collect"
    assert meta["policy"]["name"] == "mixed" and isinstance(meta["policy"]["params"], dict)
    assert len(meta["policy"]["modes"]) > 1
    assert np.all(ds.episode_modes < len(meta["policy"]["modes"]))
    assert "workers" not in meta and not any("time" in k or "date" in k for k in meta)


def test_mixed_policy_modes_label_outcomes():
    """The mixed policy's episodes carry their behaviour mode; expert-mode episodes succeed."""
    ds = collect(DOORKEY, 24, "mixed", seed=0, progress=False)
    modes = ds.metadata["policy"]["modes"]
    assert len(np.unique(ds.episode_modes)) > 1  # 24 episodes draw more than one mode
    expert = ds.episode_modes == modes.index("expert")
    assert expert.any() and ds.success_mask()[expert].all()


@pytest.mark.parametrize(
    "spec",
    [EnvSpec("MiniGrid-Empty-5x5-v0"), EnvSpec("MiniGrid-Empty-5x5-v0", view_size=3, max_steps=30)],
    ids=["default", "view3-max30"],
)
def test_expert_solves_and_spec_shapes_the_data(spec):
    ds = collect(spec, 3, "expert", seed=0, progress=False)
    assert ds.obs.shape[1:] == (spec.view_size, spec.view_size, 3)
    assert ds.success_mask().all()
    assert ds.episode_lengths().max() <= (spec.max_steps or 100)
    assert np.all(ds.episode_modes == 0)


def test_fully_observed_and_random_policy():
    spec = EnvSpec("MiniGrid-Empty-5x5-v0", fully_observed=True, max_steps=10)
    ds = collect(spec, 3, "random", seed=0, progress=False)
    assert ds.obs.shape[1:] == (5, 5, 3)
    assert ds.truncated.sum() + ds.terminated.sum() >= 3
    assert ds.episode_lengths().max() <= 10


def test_policy_params_are_recorded_and_checked_before_collection():
    ds = collect(DOORKEY, 2, "expert", seed=0, policy_params={"epsilon": 0.5}, progress=False)
    assert ds.metadata["policy"]["params"]["epsilon"] == 0.5
    assert ds.metadata["policy"]["modes"] == ["expert_eps0.5"]
    with pytest.raises(EnvSpecError, match="epsilon"):
        collect(DOORKEY, 2, "expert", seed=0, policy_params={"epsilon": 2.0}, workers=2, progress=False)
