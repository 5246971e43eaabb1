"""Model inputs from trajectory files, dataset episodes and recorded rollouts."""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import pytest
import torch

from dtinterp.data.dataset import load_dataset, save_dataset
from dtinterp.data.windows import window_at
from dtinterp.interp.trajectory import (
    TrajectoryError,
    episode_window,
    episode_windows,
    extract_episode,
    model_env_spec,
    recorded_target_rtg,
    rollout_trajectory,
    window_ends,
)
from dtinterp.model import DTConfig, DTInputs, HookedDecisionTransformer
from dtinterp.train.rollout import episodes_dataset, rollout
from envs import EnvSpec

K = 4
SPEC = EnvSpec("MiniGrid-Empty-5x5-v0")  # the env of the shared ``tiny_dataset``
SHORT = EnvSpec(
    "MiniGrid-Empty-5x5-v0", max_steps=12
)  # rollouts of an untrained model time out: keep them short
META = {"env_spec": SHORT.to_dict(), "rtg_scale": 2.0}


@pytest.fixture(scope="module")
def model() -> HookedDecisionTransformer:
    cfg = DTConfig(context_len=K, n_layers=1, n_heads=2, d_model=32, d_mlp=64, max_timestep=100, seed=2)
    return HookedDecisionTransformer(cfg).eval()


def assert_same(a: DTInputs, b: DTInputs) -> None:
    for f in fields(DTInputs):
        x, y = getattr(a, f.name), getattr(b, f.name)
        assert x.shape == y.shape and x.dtype == y.dtype, f.name
        torch.testing.assert_close(x, y, atol=1e-6, rtol=0, msg=f.name)


def test_episode_window_is_the_training_window(tiny_dataset, model):
    ds = tiny_dataset
    e = 2
    length = int(ds.episode_lengths()[e])
    for t in (0, 1, K - 1, length - 1):
        w = episode_window(ds, e, t, model, 2.0, SPEC)
        assert_same(w, window_at(ds, e, t, K, 2.0, 7, 100))
        n_pad = max(0, K - 1 - t)
        assert w.pad_mask[0].tolist() == [False] * n_pad + [True] * (K - n_pad)
        assert int(w.timesteps[0, -1]) == t
        rows = ds.episode_slice(e)
        assert torch.equal(w.obs[0, -1], torch.from_numpy(ds.obs[rows][t]))  # the window ends at step t
    assert recorded_target_rtg(ds, e) is None  # demonstrations use their achieved return-to-go


@pytest.mark.parametrize(
    "episode, step, match",
    [
        (0, 10_000, "step 10000 out of range for episode 0 of"),
        (0, -1, "step -1 out of range"),
        (8, 0, "episode 8 out of range \\(it has 8 episodes\\)"),
        (-1, 0, "episode -1 out of range"),
    ],
)
def test_out_of_range_episode_or_step_is_a_one_line_error(tiny_dataset, model, episode, step, match):
    with pytest.raises(TrajectoryError, match=match) as err:
        episode_window(tiny_dataset, episode, step, model, 1.0, where="trajectory 'x.npz'")
    assert str(err.value).startswith("trajectory 'x.npz': ") and "\n" not in str(err.value)


def test_a_trajectory_from_another_env_is_refused(tiny_dataset, model):
    other = EnvSpec("MiniGrid-DoorKey-5x5-v0")  # same 7x7 view: only the spec tells them apart
    with pytest.raises(
        TrajectoryError, match="MiniGrid-Empty-5x5-v0.*but the model plays.*DoorKey-5x5"
    ) as err:
        episode_window(tiny_dataset, 0, 0, model, 1.0, other)
    assert "\n" not in str(err.value)
    small = HookedDecisionTransformer(
        DTConfig(obs_shape=(5, 5), context_len=K, n_layers=1, d_model=32, n_heads=2)
    )
    with pytest.raises(TrajectoryError, match=r"\(7, 7\) observation grids but the model reads \(5, 5\)"):
        episode_window(tiny_dataset, 0, 0, small, 1.0)
    with pytest.raises(TrajectoryError, match="records no env_spec"):
        model_env_spec({"rtg_scale": 1.0})


def test_episode_windows_cover_every_step_in_order_and_cap_deterministically(tiny_dataset, model):
    ds = tiny_dataset
    lengths = ds.episode_lengths()
    full = episode_windows(ds, [3, 1], model, 1.0, max_windows=10_000, env_spec=SPEC)
    assert full.batch_size == lengths[3] + lengths[1]
    ends = [(3, t) for t in range(lengths[3])] + [(1, t) for t in range(lengths[1])]
    for i in (0, int(lengths[3]) - 1, int(lengths[3]), full.batch_size - 1):
        assert_same(full[i], episode_window(ds, *ends[i], model, 1.0))
    assert full.pad_mask[:, -1].all()  # every window ends at a real step

    capped = episode_windows(ds, [3, 1], model, 1.0, max_windows=10)
    assert capped.batch_size == 10
    assert_same(capped, episode_windows(ds, [3, 1], model, 1.0, max_windows=10))
    picked = window_ends(ds, [3, 1], 10)
    assert picked[0] == ends[0] and picked[-1] == ends[-1]
    assert len(set(picked)) == 10 and all(p in ends for p in picked)
    assert [ends.index(p) for p in picked] == sorted(ends.index(p) for p in picked)
    with pytest.raises(TrajectoryError, match="episode 99 out of range"):
        episode_windows(ds, [0, 99], model, 1.0)
    with pytest.raises(TrajectoryError, match="no episodes chosen"):
        episode_windows(ds, [], model, 1.0)


def test_extract_episode_is_a_trajectory_file(tiny_dataset, model, tmp_path):
    ds, e = tiny_dataset, 5
    one = extract_episode(ds, e)
    rows = ds.episode_slice(e)
    assert one.n_episodes == 1 and one.metadata["episodes"] == 1 and one.metadata["source_episode"] == e
    assert one.metadata["env_spec"] == ds.metadata["env_spec"]
    assert one.metadata["policy"] == ds.metadata["policy"]
    for name in ("obs", "directions", "actions", "rewards", "terminated", "truncated"):
        assert np.array_equal(getattr(one, name), getattr(ds, name)[rows]), name
    save_dataset(one, tmp_path / "episode.npz")
    back = load_dataset(tmp_path / "episode.npz")
    for t in (0, one.n_transitions - 1):
        assert_same(episode_window(back, 0, t, model, 2.0, SPEC), episode_window(ds, e, t, model, 2.0, SPEC))
    with pytest.raises(TrajectoryError, match="episode 8 out of range"):
        extract_episode(ds, 8)


def test_rollout_trajectory_replays_the_inputs_the_model_acted_on(model):
    traj = rollout_trajectory(model, META, rtg=0.9, seed=7)
    assert traj.n_episodes == 1 and traj.env_spec == SHORT
    assert recorded_target_rtg(traj, 0) == pytest.approx(0.9)
    rewards_before = np.concatenate([[0.0], np.cumsum(traj.rewards, dtype=np.float64)[:-1]])
    with torch.no_grad():
        for t in range(traj.n_transitions):
            w = episode_window(traj, 0, t, model, META["rtg_scale"], SHORT)
            # Conditioned on the target minus the rewards so far, scaled, as while playing ...
            assert float(w.rtg[0, -1]) == pytest.approx((0.9 - rewards_before[t]) / 2.0, abs=1e-6)
            # ... so the greedy action recorded at step t is the model's argmax on this window.
            assert int(model(w)[0, -1].argmax()) == int(traj.actions[t]), f"step {t}"
    again = rollout_trajectory(model, META, rtg=0.9, seed=7)
    assert np.array_equal(again.actions, traj.actions) and np.array_equal(again.obs, traj.obs)


def test_extracting_a_recorded_rollout_keeps_its_target(model):
    results = [
        *rollout(model, SHORT, 0.9, [3], num_envs=1, rtg_scale=2.0, record=True, progress=False),
        *rollout(model, SHORT, 0.2, [4], num_envs=1, rtg_scale=2.0, record=True, progress=False),
    ]
    ds = episodes_dataset(results, SHORT)
    one = extract_episode(ds, 1)
    assert one.metadata["policy"]["params"] == {"seeds": [4], "target_rtg": [0.2]}
    assert recorded_target_rtg(one, 0) == pytest.approx(0.2)
    last = one.n_transitions - 1
    assert_same(episode_window(one, 0, last, model, 2.0), episode_window(ds, 1, last, model, 2.0))
