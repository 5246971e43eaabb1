"""The dataset file format: round trips, determinism, statistics and rejection of bad files."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from dtinterp.data.dataset import TrajectoryDataset, load_dataset, save_dataset
from dtinterp.errors import DatasetError

ARRAYS = (
    "obs",
    "directions",
    "actions",
    "rewards",
    "terminated",
    "truncated",
    "episode_starts",
    "episode_modes",
)


def _members(ds: TrajectoryDataset) -> dict[str, np.ndarray]:
    return {k: getattr(ds, k) for k in ARRAYS} | {"metadata": np.array(json.dumps(ds.metadata))}


def test_round_trip_preserves_every_array_and_metadata(tiny_dataset, tmp_path):
    path = tmp_path / "d.npz"
    save_dataset(tiny_dataset, path)
    back = load_dataset(path)
    for name in ARRAYS:
        a, b = getattr(tiny_dataset, name), getattr(back, name)
        assert a.dtype == b.dtype and a.shape == b.shape, name
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert back.metadata == tiny_dataset.metadata
    assert back.env_spec == tiny_dataset.env_spec
    assert back.fingerprint() == tiny_dataset.fingerprint()


def test_file_is_a_plain_npz_with_fixed_timestamps(tiny_dataset, tmp_path):
    path = tmp_path / "d.npz"
    save_dataset(tiny_dataset, path)
    with np.load(path, allow_pickle=False) as npz:
        assert sorted(npz.files) == sorted([*ARRAYS, "metadata"])
        assert json.loads(str(npz["metadata"][()])) == tiny_dataset.metadata
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
    assert [i.filename for i in infos] == sorted(i.filename for i in infos)
    assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)}
    assert {i.compress_type for i in infos} == {zipfile.ZIP_DEFLATED}


def test_save_is_byte_deterministic(tiny_dataset, tmp_path):
    save_dataset(tiny_dataset, tmp_path / "a.npz")
    save_dataset(tiny_dataset, tmp_path / "b.npz")
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()


def test_failed_save_leaves_existing_file_and_no_temp(tiny_dataset, tmp_path):
    path = tmp_path / "d.npz"
    path.write_bytes(b"precious")
    bad = tiny_dataset.select_episodes([0, 1])
    bad.actions = bad.actions[:-1]  # inconsistent lengths: rejected before anything is written
    with pytest.raises(DatasetError, match="rows"):
        save_dataset(bad, path)
    assert path.read_bytes() == b"precious"
    save_dataset(tiny_dataset, path)  # a valid save replaces it
    assert load_dataset(path).n_transitions == tiny_dataset.n_transitions
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.npz"]


def test_episode_statistics_match_per_episode_sums(tiny_dataset):
    ds = tiny_dataset
    rets = ds.episode_returns()
    assert rets.dtype == np.float64 and rets.shape == (ds.n_episodes,)
    for e in range(ds.n_episodes):
        sl = ds.episode_slice(e)
        assert rets[e] == pytest.approx(sum(float(r) for r in ds.rewards[sl]))
        assert ds.episode_lengths()[e] == sl.stop - sl.start
        # MiniGrid pays only on reaching the goal, which terminates the episode.
        assert bool(ds.success_mask()[e]) == bool(ds.terminated[sl.stop - 1])
    assert ds.episode_lengths().sum() == ds.n_transitions
    assert 0 < ds.success_mask().sum() < ds.n_episodes  # the fixture has both outcomes
    assert ds.episode_slice(-1) == ds.episode_slice(ds.n_episodes - 1)
    with pytest.raises(IndexError):
        ds.episode_slice(ds.n_episodes)


def test_select_episodes_reorders_whole_episodes(tiny_dataset):
    ds = tiny_dataset
    ds = TrajectoryDataset(
        **{k: getattr(ds, k) for k in ARRAYS if k != "episode_modes"},
        episode_modes=(np.arange(ds.n_episodes) % 2).astype(np.uint8),
        metadata={**ds.metadata, "policy": {**ds.metadata["policy"], "modes": ["a", "b"]}},
    )
    idx = [5, 0, 5, 2]
    sub = ds.select_episodes(idx)
    sub.validate()
    assert sub.n_episodes == 4 and sub.metadata["episodes"] == 4
    np.testing.assert_array_equal(sub.episode_modes, ds.episode_modes[idx])
    np.testing.assert_array_equal(sub.episode_returns(), ds.episode_returns()[idx])
    for j, e in enumerate(idx):
        for name in ("obs", "directions", "actions", "rewards", "terminated", "truncated"):
            np.testing.assert_array_equal(
                getattr(sub, name)[sub.episode_slice(j)], getattr(ds, name)[ds.episode_slice(e)]
            )
    assert ds.n_episodes == 8  # the source is untouched


def test_fingerprint_tracks_data_not_metadata(tiny_dataset):
    fp = tiny_dataset.fingerprint()
    assert fp["n_episodes"] == 8 and fp["n_transitions"] == tiny_dataset.n_transitions
    assert fp["env_id"] == "MiniGrid-Empty-5x5-v0" and len(fp["sha256"]) == 64
    relabelled = tiny_dataset.select_episodes(range(8))
    relabelled.metadata["package_version"] = "9.9.9"
    assert relabelled.fingerprint() == fp
    changed = tiny_dataset.select_episodes(range(8))
    changed.rewards[0] += 0.5
    assert changed.fingerprint()["sha256"] != fp["sha256"]
    assert tiny_dataset.select_episodes([1, 0] + list(range(2, 8))).fingerprint()["sha256"] != fp["sha256"]


# ---------------------------------------------------------------- rejection of bad files


def _write_npz(path: Path, members: dict[str, np.ndarray]) -> None:
    np.savez(path, **members)  # allows object arrays: exactly what load must refuse


def _edit(ds: TrajectoryDataset, **changes) -> dict[str, np.ndarray]:
    m = _members(ds)
    for k, v in changes.items():
        if v is None:
            del m[k]
        else:
            m[k] = v
    return m


def _meta(ds: TrajectoryDataset, **changes) -> np.ndarray:
    meta = dict(ds.metadata)
    for k, v in changes.items():
        if v is None:
            del meta[k]
        else:
            meta[k] = v
    return np.array(json.dumps(meta))


def _bad_members(ds: TrajectoryDataset, case: str) -> dict[str, np.ndarray]:
    n = ds.n_transitions
    starts = ds.episode_starts
    actions_obj = np.empty(n, dtype=object)
    actions_obj[:] = [int(a) for a in ds.actions]
    cases = {
        "missing array": lambda: _edit(ds, rewards=None),
        "missing metadata": lambda: _edit(ds, metadata=None),
        "wrong dtype": lambda: _edit(ds, rewards=ds.rewards.astype(np.float64)),
        "wrong ndim": lambda: _edit(ds, actions=ds.actions[:, None]),
        "object array": lambda: _edit(ds, actions=actions_obj),
        "inconsistent lengths": lambda: _edit(ds, actions=ds.actions[:-1]),
        "starts not monotone": lambda: _edit(ds, episode_starts=starts[[0, 2, 1, *range(3, len(starts))]]),
        "starts not covering": lambda: _edit(ds, episode_starts=np.append(starts[:-1], n - 1)),
        "modes length": lambda: _edit(ds, episode_modes=ds.episode_modes[:-1]),
        "mode out of range": lambda: _edit(ds, episode_modes=np.full(ds.n_episodes, 3, dtype=np.uint8)),
        "done mid-episode": lambda: _edit(ds, terminated=np.roll(ds.terminated, -1)),
        "action out of range": lambda: _edit(
            ds, actions=np.where(np.arange(n) == 3, 7, ds.actions).astype(np.uint8)
        ),
        "direction out of range": lambda: _edit(ds, directions=np.full(n, 4, dtype=np.uint8)),
        "obs wrong shape": lambda: _edit(ds, obs=ds.obs[:, :5, :5]),
        "obs vs env spec": lambda: _edit(
            ds, metadata=_meta(ds, env_spec={**ds.metadata["env_spec"], "view_size": 9})
        ),
        "unknown env in spec": lambda: _edit(ds, metadata=_meta(ds, env_spec={"env_id": "MiniGrid-Nope-v0"})),
        "metadata not json": lambda: _edit(ds, metadata=np.array("{not json")),
        "metadata not object": lambda: _edit(ds, metadata=np.array("[1, 2]")),
        "metadata bytes": lambda: _edit(ds, metadata=np.frombuffer(b"{}", dtype=np.uint8)),
        "metadata missing key": lambda: _edit(ds, metadata=_meta(ds, env_spec=None)),
        "unknown format version": lambda: _edit(ds, metadata=_meta(ds, format_version=3)),
        "episodes count": lambda: _edit(ds, metadata=_meta(ds, episodes=ds.n_episodes + 1)),
        "nan reward": lambda: _edit(ds, rewards=np.full(n, np.nan, dtype=np.float32)),
    }
    return cases[case]()


# case -> a fragment the error message must contain (so each case fails for its own reason)
BAD_MEMBER_CASES = {
    "missing array": "no 'rewards' array",
    "missing metadata": "no 'metadata' array",
    "wrong dtype": "'rewards' must be a 1-d float32 array",
    "wrong ndim": "'actions' must be a 1-d uint8 array",
    "object array": "Object arrays cannot be loaded",
    "inconsistent lengths": "'actions' has",
    "starts not monotone": "strictly increasing",
    "starts not covering": "must run from 0 to",
    "modes length": "'episode_modes' has 7 entries",
    "mode out of range": "'episode_modes' value 3",
    "done mid-episode": "terminated/truncated flags",
    "action out of range": "action 7 out of range",
    "direction out of range": "direction 4 out of range",
    "obs wrong shape": "observations have shape (5, 5, 3)",
    "obs vs env spec": "gives (9, 9, 3)",
    "unknown env in spec": "unknown env id 'MiniGrid-Nope-v0'",
    "metadata not json": "not valid JSON",
    "metadata not object": "must be a JSON object",
    "metadata bytes": "0-d unicode array",
    "metadata missing key": "lacks env_spec",
    "unknown format version": "unknown format_version 3",
    "episodes count": "metadata says 9 episodes",
    "nan reward": "NaN",
}


def _assert_rejected(path: Path, match: str | None = None) -> str:
    with pytest.raises(DatasetError) as info:
        load_dataset(path)
    msg = str(info.value)
    assert str(path) in msg and "\n" not in msg, msg
    if match:
        assert match in msg, msg
    return msg


@pytest.mark.parametrize("case", sorted(BAD_MEMBER_CASES))
def test_load_rejects_bad_contents(tiny_dataset, tmp_path, case):
    path = tmp_path / "bad.npz"
    _write_npz(path, _bad_members(tiny_dataset, case))
    _assert_rejected(path, BAD_MEMBER_CASES[case])


def test_load_rejects_bad_files(tiny_dataset, tmp_path):
    good = tmp_path / "good.npz"
    save_dataset(tiny_dataset, good)
    data = good.read_bytes()
    rng = np.random.default_rng(0)

    _assert_rejected(tmp_path / "missing.npz", "does not exist")
    _assert_rejected(tmp_path, "not a file")
    for name, content in {
        "empty.npz": b"",
        "truncated.npz": data[: len(data) // 2],
        "random.npz": rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "text.npz": b"hello, this is not a dataset\n",
    }.items():
        (tmp_path / name).write_bytes(content)
        _assert_rejected(tmp_path / name, "corrupt")
    np.save(tmp_path / "single.npy", tiny_dataset.actions)
    _assert_rejected(tmp_path / "single.npy", ".npy")

    # Flip bytes inside the compressed obs member: zlib or CRC failure, never garbage data.
    with zipfile.ZipFile(good) as zf:
        info = zf.getinfo("obs.npy")
    corrupt = bytearray(data)
    body = info.header_offset + 30 + len(info.filename) + len(info.extra)
    for k in range(body + 20, body + 60):
        corrupt[k] ^= 0xFF
    (tmp_path / "flipped.npz").write_bytes(bytes(corrupt))
    _assert_rejected(tmp_path / "flipped.npz", "corrupt")
