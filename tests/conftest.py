"""Shared fixtures: small, fast datasets for tests of every layer."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Tiny models run fastest on one thread, and the suite shares 2 cores with its subprocesses.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

from dtinterp.data.dataset import TrajectoryDataset, make_metadata  # noqa: E402
from envs.encoding import compact_obs  # noqa: E402
from envs.spec import EnvSpec, make_env  # noqa: E402


def random_rollouts(spec: EnvSpec, episodes: int, seed: int = 0) -> TrajectoryDataset:
    """Uniform-random episodes built without the collection code (an independent reference)."""
    env = make_env(spec)
    rng = np.random.default_rng(seed)
    obs_l, dir_l, act_l, rew_l, term_l, trunc_l, starts = [], [], [], [], [], [], [0]
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        done = False
        while not done:
            grid, d = compact_obs(obs)
            a = int(rng.integers(env.action_space.n))
            obs_l.append(grid.copy())
            dir_l.append(d)
            act_l.append(a)
            obs, r, term, trunc, _ = env.step(a)
            rew_l.append(r)
            term_l.append(term)
            trunc_l.append(trunc)
            done = term or trunc
        starts.append(len(act_l))
    env.close()
    policy = {"name": "random", "params": {}, "modes": ["random"]}
    return TrajectoryDataset(
        obs=np.stack(obs_l),
        directions=np.asarray(dir_l, dtype=np.uint8),
        actions=np.asarray(act_l, dtype=np.uint8),
        rewards=np.asarray(rew_l, dtype=np.float32),
        terminated=np.asarray(term_l, dtype=bool),
        truncated=np.asarray(trunc_l, dtype=bool),
        episode_starts=np.asarray(starts, dtype=np.int64),
        episode_modes=np.zeros(episodes, dtype=np.uint8),
        metadata=make_metadata(spec, policy, seed=seed, episodes=episodes),
    )


@pytest.fixture(scope="session")
def tiny_dataset() -> TrajectoryDataset:
    """8 random-policy episodes of MiniGrid-Empty-5x5 (4 succeed, 4 time out); do not mutate."""
    return random_rollouts(EnvSpec("MiniGrid-Empty-5x5-v0"), episodes=8, seed=4)


@pytest.fixture
def unwritable_dir(tmp_path) -> Path:
    """A directory in which no file can be created, even by root (then a ``/proc`` directory)."""
    d = tmp_path / "read-only"
    d.mkdir()
    d.chmod(0o555)
    try:
        fd, probe = tempfile.mkstemp(dir=d)
    except OSError:
        yield d
    else:  # root ignores permissions: use a directory of the proc filesystem instead
        os.close(fd)
        os.unlink(probe)
        proc = Path("/proc/self")
        if not proc.is_dir():
            pytest.skip("no directory here refuses new files to this user")
        yield proc
    finally:
        d.chmod(0o755)
