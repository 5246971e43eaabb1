"""Episodes: one validated record from datasets, rollouts, trajectory files and the browser's JSON."""

from __future__ import annotations

import json
from dataclasses import fields, replace

import numpy as np
import pytest
import torch

from dtinterp.data.collect import collect
from dtinterp.data.dataset import load_dataset, save_dataset
from dtinterp.data.episode import Episode, dataset_targets, dataset_windows, episodes_to_dataset, window_ends
from dtinterp.data.windows import WindowSampler
from dtinterp.errors import CheckpointError, EpisodeError
from dtinterp.model import DTConfig, DTInputs, HookedDecisionTransformer
from dtinterp.model.checkpoint import Checkpoint
from dtinterp.play.rollout import play_episode, rollout
from envs import EnvSpec

K = 4
SPEC = EnvSpec("MiniGrid-Empty-5x5-v0")  # the env of the shared ``tiny_dataset``
SHORT = EnvSpec("MiniGrid-Empty-5x5-v0", max_steps=12)  # rollouts of an untrained model time out


@pytest.fixture(scope="module")
def model() -> HookedDecisionTransformer:
    cfg = DTConfig(context_len=K, n_layers=1, n_heads=2, d_model=32, d_mlp=64, max_timestep=100, seed=2)
    return HookedDecisionTransformer(cfg).eval()


@pytest.fixture(scope="module")
def ckpt(model) -> Checkpoint:
    return Checkpoint.from_model(model, {"env_spec": SPEC.to_dict(), "rtg_scale": 2.0})


@pytest.fixture(scope="module")
def short(model) -> Checkpoint:
    return Checkpoint.from_model(model, {"env_spec": SHORT.to_dict(), "rtg_scale": 2.0})


def assert_same(a: DTInputs, b: DTInputs) -> None:
    for f in fields(DTInputs):
        x, y = getattr(a, f.name), getattr(b, f.name)
        assert x.shape == y.shape and x.dtype == y.dtype, f.name
        torch.testing.assert_close(x, y, atol=1e-6, rtol=0, msg=f.name)


def test_episode_windows_are_the_training_windows(tiny_dataset, ckpt):
    ds, e = tiny_dataset, 2
    episode = Episode.from_dataset(ds, e)
    assert episode.target_return is None  # a demonstration: conditioned on its achieved return-to-go
    sampler = WindowSampler(ds, K, 2.0, 7, 100)
    rows = ds.episode_slice(e)
    for t in (0, 1, K - 1, episode.length - 1):
        w = episode.window(ckpt, t)
        assert_same(w, sampler.batch_at(np.array([rows.start + t])))
        n_pad = max(0, K - 1 - t)
        assert w.pad_mask[0].tolist() == [False] * n_pad + [True] * (K - n_pad)
        assert int(w.timesteps[0, -1]) == t
    assert_same(episode.windows(ckpt), sampler.batch_at(np.arange(rows.start, rows.stop)))


@pytest.mark.parametrize("step, match", [(10_000, "step 10000 is outside"), (-1, "step -1 is outside")])
def test_out_of_range_step_is_a_one_line_error(tiny_dataset, ckpt, step, match):
    with pytest.raises(EpisodeError, match=match) as err:
        Episode.from_dataset(tiny_dataset, 0).window(ckpt, step)
    assert "\n" not in str(err.value)
    with pytest.raises(EpisodeError, match="episode 8 does not exist"):
        Episode.from_dataset(tiny_dataset, 8, where="trajectory 'x.npz'")


def test_an_episode_of_another_env_is_refused(tiny_dataset, model):
    other = Checkpoint.from_model(model, {"env_spec": EnvSpec("MiniGrid-DoorKey-5x5-v0").to_dict()})
    episode = Episode.from_dataset(tiny_dataset, 0)
    with pytest.raises(
        CheckpointError, match="MiniGrid-Empty-5x5-v0.*but the model.*plays.*DoorKey-5x5"
    ) as err:
        episode.window(other, 0)
    assert "\n" not in str(err.value)
    small = HookedDecisionTransformer(
        DTConfig(obs_shape=(5, 5), context_len=K, n_layers=1, d_model=32, n_heads=2)
    )
    with pytest.raises(CheckpointError, match="7x7 observations but the model.*reads 5x5"):
        Checkpoint.from_model(small, {"env_spec": SPEC.to_dict()})
    with pytest.raises(CheckpointError, match="no 'env_spec'"):
        Checkpoint.from_model(small, {"rtg_scale": 1.0})


def test_dataset_windows_cover_every_step_in_order_and_cap_deterministically(tiny_dataset, ckpt):
    ds = tiny_dataset
    lengths = ds.episode_lengths()
    full, ends = dataset_windows(ds, [3, 1], ckpt, max_windows=10_000)
    assert full.batch_size == lengths[3] + lengths[1]
    assert ends == [(3, t) for t in range(lengths[3])] + [(1, t) for t in range(lengths[1])]
    for i in (0, int(lengths[3]) - 1, int(lengths[3]), full.batch_size - 1):
        assert_same(full[i], Episode.from_dataset(ds, ends[i][0]).window(ckpt, ends[i][1]))
    assert full.pad_mask[:, -1].all()  # every window ends at a real step

    capped, picked = dataset_windows(ds, [3, 1], ckpt, max_windows=10)
    assert capped.batch_size == 10 and picked == window_ends(ds, [3, 1], 10)
    assert picked[0] == ends[0] and picked[-1] == ends[-1]
    assert len(set(picked)) == 10 and [ends.index(p) for p in picked] == sorted(ends.index(p) for p in picked)
    with pytest.raises(EpisodeError, match="episode 99 out of range"):
        dataset_windows(ds, [0, 99], ckpt)
    with pytest.raises(EpisodeError, match="no episodes chosen"):
        dataset_windows(ds, [], ckpt)


def test_trajectory_file_round_trip_keeps_steps_seed_and_windows(model, tmp_path):
    doorkey = EnvSpec("MiniGrid-DoorKey-5x5-v0")  # random layouts: only the right seed replays
    ckpt = Checkpoint.from_model(model, {"env_spec": doorkey.to_dict()})
    ds = collect(doorkey, 3, "expert", seed=40, progress=False)
    assert [Episode.from_dataset(ds, e).seed for e in range(3)] == [40, 41, 42]  # confirmed by replay
    wrong = replace(ds, metadata={**ds.metadata, "seed": 7})
    assert [Episode.from_dataset(wrong, e).seed for e in range(3)] == [None] * 3  # replay refutes it
    episode = Episode.from_dataset(ds, 2)
    save_dataset(episode.to_dataset(), tmp_path / "episode.npz")
    back = Episode.from_dataset(load_dataset(tmp_path / "episode.npz"), 0)
    assert back.seed == 42 and back.target_return is None
    for name in ("obs", "directions", "actions", "rewards"):
        assert np.array_equal(getattr(back, name), getattr(episode, name)), name
    assert (back.terminated, back.truncated) == (episode.terminated, episode.truncated)
    assert_same(back.windows(ckpt), episode.windows(ckpt))


def test_rollout_episode_replays_the_inputs_the_model_acted_on(short):
    seen = []
    (result,) = rollout(short, 0.9, [7], num_envs=1, record=True, progress=False,
                        inspect=lambda _e, _t, inputs: seen.append(inputs.clone()))  # fmt: skip
    episode = result.episode
    assert episode.target_return == pytest.approx(0.9) and episode.seed == 7 and episode.source == "rollout"
    rewards_before = np.concatenate([[0.0], np.cumsum(episode.rewards, dtype=np.float64)[:-1]])
    windows = episode.windows(short)
    with torch.no_grad():
        for t in range(episode.length):
            w = windows[t]
            # Conditioned on the target minus the rewards so far, scaled, as while playing ...
            assert float(w.rtg[0, -1]) == pytest.approx((0.9 - rewards_before[t]) / 2.0, abs=1e-6)
            # ... exactly the batch the rollout fed the model (whose last action is the pad action) ...
            live = replace(w, actions=w.actions.clone())
            live.actions[0, -1] = short.model.pad_action
            assert_same(live, seen[t])
            # ... so the greedy action recorded at step t is the model's argmax on this window.
            assert int(short.model(w)[0, -1].argmax()) == int(episode.actions[t]), f"step {t}"
    again = play_episode(short, 0.9, 7)
    assert np.array_equal(again.actions, episode.actions) and np.array_equal(again.obs, episode.obs)


def test_recorded_rollouts_keep_their_targets_through_a_dataset(short):
    episodes = [play_episode(short, 0.9, 3), play_episode(short, 0.2, 4)]
    ds = episodes_to_dataset(episodes)
    assert dataset_targets(ds) == [pytest.approx(0.9), pytest.approx(0.2)]
    one = Episode.from_dataset(ds, 1)
    assert one.seed == 4 and one.target_return == pytest.approx(0.2)
    assert one.to_dataset().metadata["policy"]["params"]["target_rtg"] == [pytest.approx(0.2)]
    assert_same(one.windows(short), episodes[1].windows(short))
    inputs, _ = dataset_windows(ds, [0, 1], short)
    assert_same(inputs, DTInputs.cat([episodes[0].windows(short), episodes[1].windows(short)]))


def test_json_round_trip_is_exact_and_validated_once(short, monkeypatch):
    episode = play_episode(short, 0.9, 5)
    data = json.loads(json.dumps(episode.to_json()))  # what the browser store hands back
    calls = []
    original = Episode._validate
    monkeypatch.setattr(Episode, "_validate", lambda self: (calls.append(1), original(self))[1])
    back = Episode.from_json(data)
    assert len(calls) == 1
    for name in ("obs", "directions", "actions", "rewards"):
        assert np.array_equal(getattr(back, name), getattr(episode, name)), name
    assert (back.seed, back.target_return, back.source, back.terminated) == (
        5,
        0.9,
        "rollout",
        episode.terminated,
    )
    # Growing a live episode trusts what was already checked: no second validation.
    live = Episode.from_json({**data, "terminated": False, "truncated": False,
                              "obs_b64": data["obs_b64"], "actions": data["actions"][:-1],
                              "rewards": data["rewards"][:-1]})  # fmt: skip
    calls.clear()
    grown = live.step(int(episode.actions[-1]), float(episode.rewards[-1]), episode.obs[-1], 0, True, False)
    assert calls == [] and grown.length == episode.length and grown.done


@pytest.mark.parametrize(
    "change, match",
    [
        ({"version": 1}, "version"),
        ({"source": "magic"}, "source"),
        ({"target_return": float("nan")}, "target_return"),
        (lambda d: {"actions": [9] * len(d["actions"])}, "action 9"),
        ({"obs_b64": "!!"}, "base64"),
        ({"directions": []}, "directions"),
        ({"env_spec": {"env_id": "NoSuchEnv-v0"}}, "env_spec"),
        ({"terminated": False, "truncated": False}, "observations"),
        ({"seed": -3}, "seed"),
        ({"rewards": [1.0]}, "rewards"),
        (lambda d: {"rewards": [float("inf")] * len(d["rewards"])}, "finite"),
    ],
)
def test_bad_episode_json_is_a_one_line_error(short, change, match):
    data = play_episode(short, 0.9, 5).to_json()
    with pytest.raises(EpisodeError, match=match) as err:
        Episode.from_json({**data, **(change(data) if callable(change) else change)})
    assert "\n" not in str(err.value)
