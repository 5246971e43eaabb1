"""Minari in and out: .npz -> Minari -> .npz is the identity, and Minari's own datasets train a DT."""

from __future__ import annotations

import json
import os
import sys
import warnings

import numpy as np
import pytest

from dtinterp.data.collect import collect
from dtinterp.data.dataset import save_dataset
from dtinterp.data.episode import Episode
from dtinterp.data.minari_io import export_minari, import_minari, load_training_data
from dtinterp.errors import DatasetError, DtinterpError
from envs.spec import EnvSpec

DOORKEY = EnvSpec("MiniGrid-DoorKey-5x5-v0")
EMPTY = "MiniGrid-Empty-5x5-v0"


def needs(module: str, hint: str):
    """``module``, or a skip naming ``hint`` when it is not installed (a failure under CI)."""
    try:
        return __import__(module)
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the Minari tests: {hint}")
        pytest.skip(hint)


@pytest.fixture
def minari():
    return needs("minari", "Minari is not installed: pip install dtinterp[minari]")


def file_bytes(ds, path) -> bytes:
    save_dataset(ds, path)
    return path.read_bytes()


@pytest.mark.parametrize(
    "spec",
    [
        DOORKEY,
        EnvSpec("MiniGrid-Dynamic-Obstacles-5x5-v0"),  # a float32 fact (goal_distance)
        EnvSpec("MiniGrid-Empty-6x6-v0", fully_observed=True, max_steps=30),
        EnvSpec(EMPTY, view_size=5),
    ],
    ids=["doorkey", "dynamic-obstacles", "fully-observed", "view-5"],
)
def test_npz_minari_npz_is_the_identity(tmp_path, minari, spec):
    ds = collect(spec, 5, "mixed", seed=7, progress=False)
    path = export_minari(ds, "dtinterp/roundtrip-v0", root=tmp_path / "root")
    back = import_minari("dtinterp/roundtrip-v0", root=tmp_path / "root")
    assert back.metadata == ds.metadata
    assert ds.facts and sorted(back.facts) == sorted(ds.facts)  # ground-truth facts travel too
    assert file_bytes(back, tmp_path / "back.npz") == file_bytes(ds, tmp_path / "orig.npz")
    assert path == tmp_path / "root" / "dtinterp" / "roundtrip-v0"

    # What another Minari user sees: compact uint8 grids, T + 1 observations, the env it can rebuild.
    seen = minari.MinariDataset(path / "data")
    assert seen.total_episodes == 5 and seen.total_steps == ds.n_transitions
    assert seen.storage.metadata["jpeg_encoding"] is False
    episode = next(iter(seen.iterate_episodes([0])))
    t = ds.episode_lengths()[0]
    assert episode.observations["image"].dtype == np.uint8
    assert episode.observations["image"].shape == (t + 1, *ds.obs.shape[1:])
    np.testing.assert_array_equal(episode.observations["image"][-1], ds.obs[t - 1])  # the repeated last one
    raw = json.loads((path / "data" / "metadata.json").read_text())
    assert raw["dtinterp"]["final_observation"] == "repeat"
    seeds = [m["seed"] for m in seen.storage.get_episode_metadata(range(5))]
    assert seeds == [7 + i for i in range(5)]  # collect seeds episode i with seed + i
    env = seen.recover_environment()
    assert env.observation_space["image"].shape == ds.obs.shape[1:]
    assert env.unwrapped.max_steps == (spec.max_steps or env.unwrapped.max_steps)
    env.close()


def test_missing_or_malformed_ids_are_one_line(tmp_path, minari):
    with pytest.raises(DatasetError) as info:
        import_minari("dtinterp/absent-v0", root=tmp_path)
    msg = str(info.value)
    assert "'dtinterp/absent-v0'" in msg and "not found" in msg and "\n" not in msg
    with pytest.raises(DatasetError, match="malformed"):
        import_minari("no version", root=tmp_path)
    with pytest.raises(DatasetError, match="'minari:dtinterp/absent-v0'|'dtinterp/absent-v0'"):
        load_training_data("minari:dtinterp/absent-v0", root=tmp_path)


def test_existing_id_is_refused_and_a_failed_export_leaves_nothing(tmp_path, minari, monkeypatch):
    ds = collect(DOORKEY, 2, "mixed", seed=0, progress=False)
    export_minari(ds, "dtinterp/once-v0", root=tmp_path)
    with pytest.raises(DatasetError, match="already exists"):
        export_minari(ds, "dtinterp/once-v0", root=tmp_path)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(minari, "create_dataset_from_buffers", broken)
    with pytest.raises(OSError, match="disk full"):
        export_minari(ds, "dtinterp/broken-v0", root=tmp_path)
    assert not (tmp_path / "dtinterp" / "broken-v0").exists()


def test_root_defaults_to_minari_datasets_path(tmp_path, minari, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    ds = collect(DOORKEY, 2, "mixed", seed=1, progress=False)
    assert export_minari(ds, "dtinterp/env-v0") == tmp_path / "dtinterp" / "env-v0"
    assert import_minari("dtinterp/env-v0").fingerprint() == ds.fingerprint()
    assert os.environ["MINARI_DATASETS_PATH"] == str(tmp_path)  # a given root does not leak into it
    import_minari("dtinterp/env-v0", root=tmp_path)
    assert os.environ["MINARI_DATASETS_PATH"] == str(tmp_path)


def test_missing_minari_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "minari", None)
    with pytest.raises(DtinterpError, match=r"^Minari is not installed: pip install dtinterp\[minari\]$"):
        import_minari("dtinterp/any-v0", root=tmp_path)


def test_data_collector_dataset_imports_and_trains(tmp_path, minari, monkeypatch):
    """A dataset written by Minari's own DataCollector (random actions) is a valid training set."""
    needs("jax", "Minari's DataCollector needs jax: pip install 'minari[create]'")
    import gymnasium as gym

    import envs  # noqa: F401  (registers the MiniGrid ids)
    from dtinterp.model.checkpoint import load_checkpoint
    from dtinterp.train.config import TrainConfig
    from dtinterp.train.trainer import train

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    base = gym.make(EMPTY)
    # MiniGrid's mission space has no Minari serializer: record the mission as plain text.
    space = gym.spaces.Dict(
        {
            "direction": base.observation_space["direction"],
            "image": base.observation_space["image"],
            "mission": gym.spaces.Text(64, charset="abcdefghijklmnopqrstuvwxyz "),
        }
    )
    env = minari.DataCollector(base, observation_space=space, data_format="arrow")
    rng = np.random.default_rng(0)
    for i in range(3):
        env.reset(seed=20 + i)
        done = False
        while not done:
            _, _, terminated, truncated, _ = env.step(int(rng.integers(3)))
            done = terminated or truncated
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        env.create_dataset("test/collector-v0", algorithm_name="random")
    env.close()

    ds = load_training_data("minari:test/collector-v0", root=tmp_path)
    ds.validate()
    assert ds.n_episodes == 3 and ds.env_spec == EnvSpec(EMPTY)
    assert ds.obs.dtype == np.uint8 and ds.obs.shape[1:] == (7, 7, 3)
    assert ds.metadata["policy"]["name"] == "random"
    assert ds.metadata["policy"]["params"]["seeds"] == [20, 21, 22]
    assert Episode.from_dataset(ds, 2).seed == 22  # the recorded seed re-simulates the episode

    cfg = TrainConfig(
        model={"n_layers": 1, "n_heads": 2, "d_model": 32, "d_mlp": 64},
        context_len=4,
        batch_size=8,
        steps=3,
        warmup_steps=1,
        log_every=3,
    )
    result = train(cfg, ds, tmp_path / "run", progress=False, data_path="minari:test/collector-v0")
    assert result.step == 3 and np.isfinite(result.loss)
    assert load_checkpoint(tmp_path / "run").meta["dataset"] == ds.fingerprint()


def test_cli_commands_round_trip(tmp_path, minari, capsys):
    from argparse import Namespace

    from dtinterp.data.minari_io import cmd_export_minari, cmd_import_minari

    ds = collect(DOORKEY, 3, "mixed", seed=4, progress=False)
    save_dataset(ds, tmp_path / "in.npz")
    root = str(tmp_path / "root")
    assert (
        cmd_export_minari(Namespace(file=str(tmp_path / "in.npz"), dataset_id="cli/doorkey-v0", root=root))
        == 0
    )
    assert (
        cmd_import_minari(Namespace(dataset_id="cli/doorkey-v0", out=str(tmp_path / "out.npz"), root=root))
        == 0
    )
    assert (tmp_path / "out.npz").read_bytes() == (tmp_path / "in.npz").read_bytes()
    out = capsys.readouterr().out
    assert "wrote Minari dataset cli/doorkey-v0" in out and f"wrote {tmp_path / 'out.npz'}" in out
