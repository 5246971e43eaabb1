"""Property: whatever malformed config or array reaches a loader, only a clean one-line error comes out.

A seeded random fuzz loop (no extra dependency): valid documents are mutated at random paths (keys
deleted; values replaced by values of the wrong type, NaN, infinities, huge or negative numbers, deep
nesting, text) and fed to the loaders that take files and browser data: ``read_checkpoint_config``,
``load_checkpoint``, ``DTConfig.from_dict``, ``Episode.from_json`` and ``load_dataset``. Each either
accepts the input or raises a :class:`~dtinterp.errors.DtinterpError` whose message is one line; any
other exception (a ``KeyError``, ``TypeError``, ``MemoryError``, ...) fails the test with the seed that
reproduces it.
"""

from __future__ import annotations

import base64
import copy
import json
import random
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dtinterp.data.dataset import load_dataset, save_dataset
from dtinterp.data.episode import Episode
from dtinterp.errors import DtinterpError
from dtinterp.model.checkpoint import load_checkpoint, read_checkpoint_config
from dtinterp.model.config import DTConfig
from dtinterp.model.shipped import list_models

#: Cases per loader; the suite counts them in its report.
N_CONFIGS, N_MODEL_CONFIGS, N_LOADS, N_EPISODES, N_DATASETS = 400, 300, 40, 300, 60


def wrong_value(rng: random.Random, depth: int = 0) -> Any:
    """A JSON value of a random kind, biased towards the ones loaders get wrong."""
    kinds = [
        lambda: None,
        lambda: rng.choice([True, False]),
        lambda: rng.choice([0, -1, 1, 2, 3, 7, 10**9, 10**30, -(10**12)]),
        lambda: rng.choice([0.5, -2.5, 1e300, -1e30, float("nan"), float("inf"), 1e-320, 3.0]),
        lambda: rng.choice(["", "7", "LN", "nan", "x" * 200, "MiniGrid-Empty-5x5-v0", "\n"]),
        lambda: [wrong_value(rng, depth + 1) for _ in range(rng.randint(0, 3))] if depth < 3 else [],
        lambda: (
            {rng.choice(["a", "env_id", "headline", "0"]): wrong_value(rng, depth + 1)} if depth < 3 else {}
        ),
    ]
    return rng.choice(kinds)()


def paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path of a nested JSON document."""
    out = [prefix] if prefix else []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc[:4]):
            out += paths(v, (*prefix, i))
    return out


def mutate(doc: Any, rng: random.Random, n: int) -> Any:
    """``doc`` with ``n`` random deletions or replacements."""
    doc = copy.deepcopy(doc)
    for _ in range(n):
        all_paths = paths(doc)
        if not all_paths:
            return wrong_value(rng)
        *parents, last = rng.choice(all_paths)
        node = doc
        for key in parents:
            node = node[key]
        if isinstance(node, dict) and rng.random() < 0.3:
            del node[last]
        else:
            node[last] = wrong_value(rng)
    return doc


def assert_clean(fn: Callable[[], Any], seed: int) -> None:
    """``fn()`` returns, or raises a one-line DtinterpError; anything else names the seed."""
    try:
        fn()
    except DtinterpError as exc:
        assert "\n" not in str(exc) and str(exc).strip(), f"seed {seed}: {exc!r}"
    except Exception as exc:  # noqa: BLE001 - the property under test
        pytest.fail(f"seed {seed}: {type(exc).__name__}: {exc}")


@pytest.fixture(scope="module")
def valid_config(ckpt) -> dict:
    config = json.loads((ckpt / "config.json").read_text())
    headline = {
        "target_rtg": 1.0, "episodes": 4, "mean_return": 0.5, "return_ci": [0.4, 0.6], "success_rate": 0.5,
        "success_ci": [0.2, 0.8], "mean_length": 6.0,
    }  # fmt: skip
    config["results"] = {"headline": headline, "evaluation": [headline], "calibration": {"points": 3}}
    config.update(step=4, dataset={"n_episodes": 2, "sha256": "0" * 64}, description="tiny")
    return config


def test_random_checkpoint_configs(valid_config, tmp_path):
    root = tmp_path / "models"
    for seed in range(N_CONFIGS):
        rng = random.Random(seed)
        d = root / f"m{seed}"
        d.mkdir(parents=True)
        if rng.random() < 0.1:  # not even JSON, or JSON of the wrong shape
            text = rng.choice(
                ["{", "[]", "null", '{"model": ', "\x00\xff", "[" * 5000, json.dumps(wrong_value(rng))]
            )
        else:
            text = json.dumps(mutate(valid_config, rng, rng.randint(1, 4)))
        (d / "config.json").write_text(text, errors="surrogateescape")
        assert_clean(lambda d=d: read_checkpoint_config(d), seed)
    bad: list[str] = []
    listed = list_models(root, on_error=lambda _p, exc: bad.append(str(exc)))
    assert len(listed) + len(bad) == N_CONFIGS  # every directory either listed or named once
    for m in listed:  # what passed validation formats without error
        assert m.env_id and m.architecture() and m.headline()


def test_random_model_configs(valid_config):
    for seed in range(N_MODEL_CONFIGS):
        rng = random.Random(seed)
        model = mutate(valid_config["model"], rng, rng.randint(1, 3))
        assert_clean(lambda model=model: DTConfig.from_dict(model), seed)


def test_random_configs_against_real_weights(ckpt, valid_config, tmp_path):
    """The weights are real; the config around them is not: no allocation of a bogus size, no crash."""
    for seed in range(N_LOADS):
        rng = random.Random(10_000 + seed)
        d = tmp_path / f"m{seed}"
        shutil.copytree(ckpt, d)
        config = mutate(valid_config, rng, rng.randint(1, 2))
        if isinstance(config, dict):
            config.pop("weights_sha256", None)  # let the mutated config reach the weights
        (d / "config.json").write_text(json.dumps(config))
        assert_clean(lambda d=d: load_checkpoint(d), seed)


@pytest.fixture(scope="module")
def valid_episode(tiny_dataset) -> dict:
    return Episode.from_dataset(tiny_dataset, 0).with_target(1.0).to_json()


def test_random_episode_json(valid_episode):
    for seed in range(N_EPISODES):
        rng = random.Random(seed)
        data = mutate(valid_episode, rng, rng.randint(1, 3))
        if isinstance(data, dict) and rng.random() < 0.3:  # random bytes for the observations
            n = rng.choice([0, 1, 48, 49 * 3, 49 * 3 * 2 + 1, 10_000])
            data["obs_b64"] = base64.b64encode(rng.randbytes(n)).decode()
            if rng.random() < 0.5:
                data["obs_shape"] = [rng.choice([1, 7, 10**6]), rng.choice([7, 10**6]), rng.choice([3, 0])]
        assert_clean(lambda data=data: Episode.from_json(data), seed)


def _random_array(rng: random.Random, like: np.ndarray) -> np.ndarray:
    """An array shaped, typed or valued unlike ``like``."""
    choice = rng.randrange(5)
    if choice == 0:
        return like.astype(rng.choice([np.float64, np.int16, np.bool_, np.uint8]))
    if choice == 1:
        return like.reshape(-1) if like.ndim > 1 else like.reshape(-1, 1)
    if choice == 2:
        return like[: rng.randint(0, max(0, len(like) - 1))]
    if choice == 3 and like.dtype.kind == "f":
        out = like.copy()
        out[rng.randrange(len(out))] = rng.choice([np.nan, np.inf, -1e38])
        return out
    out = like.copy()
    flat = out.reshape(-1)
    if flat.size:
        flat[rng.randrange(flat.size)] = rng.choice([255, 200, 11, 0]) if like.dtype != np.bool_ else True
    return out


def test_random_dataset_arrays(tiny_dataset, tmp_path):
    base = tmp_path / "base.npz"
    save_dataset(tiny_dataset, base)
    with np.load(base, allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    meta = json.loads(str(arrays["metadata"][()]))
    for seed in range(N_DATASETS):
        rng = random.Random(seed)
        bad = dict(arrays)
        for name in rng.sample(sorted(n for n in arrays if n != "metadata"), rng.randint(1, 2)):
            bad[name] = _random_array(rng, arrays[name])
        if rng.random() < 0.4:
            bad["metadata"] = np.array(json.dumps(mutate(meta, rng, rng.randint(1, 3))))
        if rng.random() < 0.1:
            del bad[rng.choice(sorted(bad))]
        path = tmp_path / f"d{seed}.npz"
        np.savez(path, **bad)
        if rng.random() < 0.1:  # a damaged archive
            path.write_bytes(path.read_bytes()[: rng.randint(0, path.stat().st_size)])
        assert_clean(lambda path=path: load_dataset(path), seed)
    with zipfile.ZipFile(tmp_path / "not-npy.npz", "w") as zf:
        zf.writestr("obs.npy", b"not an array")
    assert_clean(lambda: load_dataset(tmp_path / "not-npy.npz"), -1)
    assert Path(base).is_file()
