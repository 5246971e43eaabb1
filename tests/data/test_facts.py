"""Ground-truth facts: recorded per step, true to the env, stored in format 2; version-1 files still load."""

from __future__ import annotations

import json
import zipfile
from dataclasses import replace

import numpy as np
import pytest
from minigrid.core.constants import OBJECT_TO_IDX

from dtinterp.data.collect import add_facts, collect
from dtinterp.data.dataset import FORMAT_VERSION, load_dataset, save_dataset
from dtinterp.errors import DatasetError
from envs.experts import MemoryExpert
from envs.facts import FACTS, GENERIC_FACTS, MEMORY_FACTS, read_facts
from envs.spec import EnvSpec, make_env

MEMORY = EnvSpec("MiniGrid-MemoryS7FixedStart-v0")
DOORKEY = EnvSpec("MiniGrid-DoorKey-5x5-v0")
OBSTACLES = EnvSpec("MiniGrid-Dynamic-Obstacles-5x5-v0")
FRONT = (3, 5)  # the cell in front of the agent in a 7x7 egocentric view ([x, y])


@pytest.fixture(scope="module")
def memory_ds():
    return collect(MEMORY, 8, "mixed", seed=3, progress=False)


def test_every_step_has_every_fact_of_its_family(memory_ds):
    ds = memory_ds
    assert ds.metadata["format_version"] == FORMAT_VERSION == 2
    assert list(ds.facts) == [f.name for f in GENERIC_FACTS + MEMORY_FACTS]
    for name, values in ds.facts.items():
        assert values.shape == (ds.n_transitions,) and values.dtype == FACTS[name].dtype
    # Episode-level facts are constant within an episode; the cue is in view at step 0 (fixed start).
    for e in range(ds.n_episodes):
        sl = ds.episode_slice(e)
        for name in ("cue_object", "correct_side"):
            assert len(np.unique(ds.facts[name][sl])) == 1
        cue = ("key", "ball")[int(ds.facts["cue_object"][sl.start])]
        assert ds.obs[sl.start][FRONT][0] == OBJECT_TO_IDX[cue] and ds.facts["cue_visible"][sl.start] == 1
    # The cue leaves the view once the agent turns away from it.
    visible = ds.facts["cue_visible"] == 1
    assert visible.any() and not visible.all()


def test_facts_do_not_change_the_episodes(memory_ds):
    plain = collect(MEMORY, 8, "mixed", seed=3, progress=False, facts=False)
    assert plain.facts == {} and plain.fingerprint() == memory_ds.fingerprint()


def test_memory_agent_ends_on_the_correct_side_exactly_when_it_succeeds():
    env = make_env(MEMORY)
    expert = MemoryExpert()
    rng = np.random.default_rng(0)
    for seed in range(6):
        env.reset(seed=seed)
        start = read_facts(env)
        fail = seed % 2 == 1
        reward, done = 0.0, False
        while not done:
            action = expert.fail_act(env.unwrapped, rng) if fail else expert.act(env.unwrapped)
            _, reward, term, trunc, _ = env.step(action)
            done = term or trunc
        end = read_facts(env)
        assert (end["agent_side"] == start["correct_side"]) == (reward > 0) == (not fail)
    env.close()


def test_doorkey_and_obstacle_facts_agree_with_the_observations():
    ds = collect(DOORKEY, 6, "mixed", seed=1, progress=False)
    carried = ds.facts["carrying_key"] == 1
    assert carried.any() and not carried.all()
    np.testing.assert_array_equal(carried, ds.facts["key_x"] == -1)
    np.testing.assert_array_equal(carried, ds.facts["carrying"] == OBJECT_TO_IDX["key"])
    opened = ds.facts["door_open"] == 1
    assert opened.any()
    ds = collect(OBSTACLES, 6, "mixed", seed=1, progress=False)
    ahead = ds.facts["obstacle_ahead"] == 1
    np.testing.assert_array_equal(ahead, ds.obs[:, FRONT[0], FRONT[1], 0] == OBJECT_TO_IDX["ball"])
    assert ds.facts["goal_distance"].dtype == np.float32 and ds.facts["goal_distance"].min() >= 1


def test_facts_round_trip_select_and_stay_byte_deterministic(memory_ds, tmp_path):
    save_dataset(memory_ds, tmp_path / "a.npz")
    save_dataset(memory_ds, tmp_path / "b.npz")
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    with zipfile.ZipFile(tmp_path / "a.npz") as zf:
        assert "fact_cue_object.npy" in zf.namelist()
    back = load_dataset(tmp_path / "a.npz")
    assert back.facts.keys() == memory_ds.facts.keys()
    for name, values in memory_ds.facts.items():
        np.testing.assert_array_equal(back.facts[name], values)
        assert back.facts[name].dtype == values.dtype
    sub = memory_ds.select_episodes([3, 1])
    np.testing.assert_array_equal(
        sub.facts["agent_x"][sub.episode_slice(0)], memory_ds.facts["agent_x"][memory_ds.episode_slice(3)]
    )


def test_version_1_files_still_load_and_keep_their_bytes(tiny_dataset, tmp_path):
    v1 = replace(tiny_dataset, metadata={**tiny_dataset.metadata, "format_version": 1}, facts={})
    path = tmp_path / "v1.npz"
    save_dataset(v1, path)
    with np.load(path, allow_pickle=False) as npz:
        assert not any(m.startswith("fact_") for m in npz.files)
        assert json.loads(str(npz["metadata"][()]))["format_version"] == 1
    back = load_dataset(path)
    assert back.facts == {} and back.metadata["format_version"] == 1
    save_dataset(back, tmp_path / "again.npz")
    assert (tmp_path / "again.npz").read_bytes() == path.read_bytes()


def test_add_facts_replays_old_datasets(memory_ds):
    plain = collect(MEMORY, 8, "mixed", seed=3, progress=False, facts=False)
    old = replace(plain, metadata={**plain.metadata, "format_version": 1})
    new = add_facts(old, progress=False)
    assert new.metadata["format_version"] == 2 and new.fingerprint() == memory_ds.fingerprint()
    for name, values in memory_ds.facts.items():
        np.testing.assert_array_equal(new.facts[name], values)
    tampered = replace(old, obs=old.obs.copy())
    tampered.obs[old.episode_slice(2).start + 1, 0, 0, 0] ^= 1
    with pytest.raises(DatasetError, match="episode 2: the episode does not replay from seed 5: step 1"):
        add_facts(tampered, progress=False)


BAD_FACTS = {
    "int64 fact": (lambda n: {"agent_x": np.zeros(n, dtype=np.int64)}, "'fact_agent_x' must be a 1-d int16"),
    "short fact": (lambda n: {"agent_x": np.zeros(n - 1, dtype=np.int16)}, "'fact_agent_x' has"),
    "nan fact": (lambda n: {"goal_distance": np.full(n, np.nan, dtype=np.float32)}, "NaN"),
    "bad name": (lambda n: {"Agent-X": np.zeros(n, dtype=np.int16)}, "fact name 'Agent-X'"),
}


@pytest.mark.parametrize("case", sorted(BAD_FACTS))
def test_bad_facts_are_rejected_on_load(tiny_dataset, tmp_path, case):
    make, match = BAD_FACTS[case]
    members = {k: getattr(tiny_dataset, k) for k in ("obs", "directions", "actions", "rewards")}
    members |= {k: getattr(tiny_dataset, k) for k in ("terminated", "truncated", "episode_starts")}
    members |= {
        "episode_modes": tiny_dataset.episode_modes,
        "metadata": np.array(json.dumps(tiny_dataset.metadata)),
    }
    members |= {f"fact_{k}": v for k, v in make(tiny_dataset.n_transitions).items()}
    np.savez(tmp_path / "bad.npz", **members)
    with pytest.raises(DatasetError, match=match):
        load_dataset(tmp_path / "bad.npz")


def test_facts_need_format_2_and_unknown_versions_fail(tiny_dataset, tmp_path):
    facts = {"agent_x": np.zeros(tiny_dataset.n_transitions, dtype=np.int16)}
    v1 = replace(tiny_dataset, metadata={**tiny_dataset.metadata, "format_version": 1}, facts=facts)
    with pytest.raises(DatasetError, match="format_version 1 has no facts"):
        v1.validate()
    v3 = replace(tiny_dataset, metadata={**tiny_dataset.metadata, "format_version": 3})
    with pytest.raises(DatasetError, match="unknown format_version 3"):
        v3.validate()
