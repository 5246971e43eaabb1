"""Backends: results in input order, identical on a process pool and on Ray, exact after a worker dies."""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import pytest

from dtinterp.data.collect import collect
from dtinterp.data.dataset import save_dataset
from dtinterp.errors import ConfigError, DtinterpError
from dtinterp.scale.backend import (
    RAY_INSTALL_HINT,
    Combiner,
    LocalBackend,
    RayBackend,
    calibrate_parallel,
    chunk_bounds,
    collect_parallel,
    evaluate_parallel,
    make_backend,
    map_windows,
    top_k,
)
from dtinterp.train.calibrate import calibrate
from dtinterp.train.config import TrainConfig
from dtinterp.train.evaluate import evaluate
from dtinterp.train.trainer import train
from envs.spec import EnvSpec

# Short episodes keep every rollout cheap; DoorKey exercises the mixed policy's modes.
EMPTY = EnvSpec("MiniGrid-Empty-5x5-v0", max_steps=16)
DOORKEY = EnvSpec("MiniGrid-DoorKey-5x5-v0")
TINY = TrainConfig(
    model={"n_layers": 1, "n_heads": 2, "d_model": 32, "d_mlp": 64},
    context_len=4,
    batch_size=16,
    steps=3,
    warmup_steps=1,
    log_every=3,
)


def ray_or_skip():
    """The ray module; a skip when it is not installed (a failure under CI, which must test it)."""
    try:
        import ray
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the Ray tests: {RAY_INSTALL_HINT}")
        pytest.skip(RAY_INSTALL_HINT)
    return ray


@pytest.fixture(scope="module")
def ray_instance():
    """One local Ray instance with 2 CPUs for the whole module (starting Ray takes seconds)."""
    ray = ray_or_skip()
    # Ray workers cannot import this test module: its task functions travel by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def pool():
    """A 2-worker process pool shared by the module's tests (spawning workers takes seconds)."""
    with LocalBackend(2) as backend:
        yield backend


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory):
    """A tiny model trained for a few steps on short Empty-5x5 episodes."""
    data = collect(EMPTY, 6, "mixed", seed=0, progress=False)
    out = tmp_path_factory.mktemp("ckpt") / "run"
    train(TINY, data, out, progress=False)
    return out


def file_bytes(ds, path) -> bytes:
    save_dataset(ds, path)
    return path.read_bytes()


def double(x: int) -> int:
    return 2 * x


def add(shared: int, x: int) -> int:
    return shared + x


def die_once(marker_dir: str, x: int) -> int:
    """Kill this worker process the first time item 1 runs (a marker file remembers the attempt)."""
    marker = os.path.join(marker_dir, f"attempt-{x}")
    if x == 1 and not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)
    return x * x


def user_error(x: int) -> int:
    raise ConfigError(f"item {x} is not acceptable")


def user_error_or_sleep(x: int) -> int:
    """Item 5 fails at once; any other item runs until it is cancelled."""
    if x == 5:
        raise ConfigError(f"item {x} is not acceptable")
    time.sleep(120)
    return x


def window_scores(chunk: np.ndarray) -> np.ndarray:
    """A deterministic per-window output: [n, 3] rows derived from the window ids."""
    chunk = np.asarray(chunk, dtype=np.float64)
    return np.stack([np.sin(chunk), np.cos(chunk) ** 2, (chunk % 7) - 3.0], axis=-1)


def first_column(chunk: np.ndarray) -> np.ndarray:
    return np.round(np.sin(np.asarray(chunk, dtype=np.float64)), 1)  # rounded: many ties


# ------------------------------------------------------------------ the local backend


@pytest.mark.parametrize("workers", [1, 2])
def test_local_map_keeps_input_order(workers, pool):
    backend = pool if workers == 2 else LocalBackend(1)
    assert backend.map(double, range(7)) == [0, 2, 4, 6, 8, 10, 12]
    assert backend.map(add, [1, 2, 3], shared=10) == [11, 12, 13]
    assert backend.map(double, []) == []


def test_chunk_bounds_cover_everything_once():
    assert chunk_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert chunk_bounds(3, 8) == [(0, 3)]
    with pytest.raises(ValueError):
        chunk_bounds(3, 0)


@pytest.mark.parametrize("workers", [1, 2])
def test_collect_parallel_gives_the_same_bytes(tmp_path, workers, pool):
    backend = pool if workers == 2 else LocalBackend(1)
    reference = file_bytes(collect(DOORKEY, 7, "mixed", seed=3, progress=False), tmp_path / "ref.npz")
    ds = collect_parallel(DOORKEY, 7, "mixed", 3, backend=backend, chunk_size=2, progress=False)
    assert file_bytes(ds, tmp_path / "par.npz") == reference


@pytest.mark.parametrize("workers", [1, 2])
def test_evaluate_parallel_gives_the_same_numbers(checkpoint_dir, workers, pool):
    from dtinterp.model.checkpoint import load_checkpoint

    backend = pool if workers == 2 else LocalBackend(1)
    reference = evaluate(load_checkpoint(checkpoint_dir), [1.0, 0.5], 5, 100, num_envs=2, progress=False)
    result = evaluate_parallel(
        checkpoint_dir, [1.0, 0.5], 5, 100, num_envs=2, backend=backend, progress=False
    )
    assert result == reference
    sampled = evaluate(load_checkpoint(checkpoint_dir), [1.0], 4, 7, num_envs=3, sample=True, progress=False)
    assert evaluate_parallel(checkpoint_dir, [1.0], 4, 7, 3, True, backend=backend, progress=False) == sampled


def test_calibrate_parallel_matches_calibrate(checkpoint_dir):
    from dtinterp.model.checkpoint import load_checkpoint

    reference = calibrate(load_checkpoint(checkpoint_dir), 0.0, 1.0, 3, 2, 50, num_envs=2, progress=False)
    assert calibrate_parallel(checkpoint_dir, 0.0, 1.0, 3, 2, 50, num_envs=2, progress=False) == reference


def test_bad_inputs_fail_before_any_task(tmp_path, checkpoint_dir):
    from dtinterp.errors import CheckpointError, DatasetError

    with pytest.raises(CheckpointError, match="nope"):
        evaluate_parallel(tmp_path / "nope", [1.0], 2, 0, progress=False)
    with pytest.raises(ConfigError, match="target return"):
        evaluate_parallel(checkpoint_dir, [1.0, float("inf")], 2, 0, progress=False)
    with pytest.raises(DatasetError, match="max steps"):
        collect_parallel(EnvSpec("MiniGrid-Empty-5x5-v0", max_steps=10**9), 2, "mixed", 0, progress=False)


# ------------------------------------------------------------------ windows and combiners


def test_map_windows_combiners_equal_the_unchunked_computation(pool):
    windows = np.arange(23)
    chunks = [windows[lo:hi] for lo, hi in chunk_bounds(len(windows), 5)]
    full = window_scores(windows)
    for backend in (LocalBackend(1), pool):
        np.testing.assert_array_equal(map_windows(window_scores, chunks, "concat", backend), full)
        np.testing.assert_allclose(
            map_windows(window_scores, chunks, "mean", backend), full.mean(0), rtol=1e-12
        )
        np.testing.assert_allclose(
            map_windows(window_scores, chunks, "sum", backend), full.sum(0), rtol=1e-12
        )
    scores = first_column(windows)
    for largest in (True, False):
        idx, vals = map_windows(first_column, chunks, top_k(6, largest), pool)
        order = np.lexsort((np.arange(len(scores)), -scores if largest else scores))[:6]
        np.testing.assert_array_equal(idx, order)  # ties go to the earlier window
        np.testing.assert_array_equal(vals, scores[order])


def test_map_windows_is_identical_for_any_worker_count(pool):
    chunks = [np.arange(lo, hi) for lo, hi in chunk_bounds(40, 7)]
    for fn, combine in [(window_scores, "mean"), (window_scores, "sum"), (window_scores, "concat")]:
        a = map_windows(fn, chunks, combine, LocalBackend(1))
        assert map_windows(fn, chunks, combine, pool).tobytes() == a.tobytes()
    idx, vals = map_windows(first_column, chunks, top_k(5), LocalBackend(1))
    idx2, vals2 = map_windows(first_column, chunks, top_k(5), pool)
    assert idx.tobytes() == idx2.tobytes() and vals.tobytes() == vals2.tobytes()


def test_combiner_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown combiner"):
        Combiner("median")
    with pytest.raises(ValueError, match="k >= 1"):
        top_k(0)


# ------------------------------------------------------------------ choosing a backend, user errors


def test_missing_ray_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(DtinterpError) as info:
        RayBackend()
    assert str(info.value) == RAY_INSTALL_HINT and "pip install dtinterp[ray]" in str(info.value)
    with pytest.raises(DtinterpError, match=r"dtinterp\[ray\]"):
        make_backend("ray")


def test_make_backend_checks_its_arguments():
    assert isinstance(make_backend("local", workers=3), LocalBackend)
    with pytest.raises(ConfigError, match="--backend 'dask'"):
        make_backend("dask")
    with pytest.raises(ConfigError, match="--ray-address needs --backend ray"):
        make_backend("local", ray_address="ray://head:10001")
    with pytest.raises(ConfigError, match="workers"):
        LocalBackend(0)


# ------------------------------------------------------------------ Ray


@pytest.mark.ray
def test_ray_collect_gives_the_same_bytes(ray_instance, tmp_path):
    reference = file_bytes(collect(DOORKEY, 7, "mixed", seed=3, progress=False), tmp_path / "ref.npz")
    for cpus_per_task in (2, 1):  # one task at a time, then two side by side
        backend = RayBackend(cpus_per_task=cpus_per_task)
        assert backend.workers == 2 // cpus_per_task
        ds = collect_parallel(DOORKEY, 7, "mixed", 3, backend=backend, chunk_size=2, progress=False)
        assert file_bytes(ds, tmp_path / f"ray{cpus_per_task}.npz") == reference


@pytest.mark.ray
def test_ray_evaluate_and_windows_give_the_same_numbers(ray_instance, checkpoint_dir):
    backend = RayBackend()
    local = evaluate_parallel(checkpoint_dir, [1.0, 0.5], 5, 100, num_envs=2, progress=False)
    assert evaluate_parallel(checkpoint_dir, [1.0, 0.5], 5, 100, num_envs=2, backend=backend) == local
    chunks = [np.arange(lo, hi) for lo, hi in chunk_bounds(30, 4)]
    for combine in ("mean", "concat"):
        a = map_windows(window_scores, chunks, combine, LocalBackend(1))
        assert map_windows(window_scores, chunks, combine, backend).tobytes() == a.tobytes()


@pytest.mark.ray
def test_ray_retries_a_task_whose_worker_died(ray_instance, tmp_path):
    backend = RayBackend(max_retries=2)
    assert backend.map(die_once, [0, 1, 2, 3], shared=str(tmp_path)) == [0, 1, 4, 9]
    assert (tmp_path / "attempt-1").exists()  # the first attempt really died


@pytest.mark.ray
@pytest.mark.parametrize("items", [[5], [0, 5, 1]], ids=["alone", "beside-running-tasks"])
def test_ray_task_user_error_stays_one_line(ray_instance, items):
    # beside other tasks the failure takes the cancel path (only unfinished tasks are cancelled: cancelling
    # one whose result is in can abort the driver in Ray 2.x); this checks the error, not the cancelling
    with pytest.raises(ConfigError) as info:
        RayBackend().map(user_error_or_sleep if len(items) > 1 else user_error, items)
    assert str(info.value) == "item 5 is not acceptable"


@pytest.mark.ray
def test_unreachable_ray_address_is_one_line(monkeypatch):
    ray_or_skip()
    t0 = time.perf_counter()
    with pytest.raises(DtinterpError) as info:
        RayBackend(address="ray://127.0.0.1:1", connect_timeout_s=2)
    msg = str(info.value)
    assert "ray://127.0.0.1:1" in msg and "\n" not in msg
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")  # the environment variable is honoured
    with pytest.raises(DtinterpError, match="127.0.0.1:1"):
        make_backend("ray")
    assert time.perf_counter() - t0 < 10
