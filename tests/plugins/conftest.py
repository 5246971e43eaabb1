"""Shared fixtures for analysis tests: a small random DT and windows of real MiniGrid observations."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from dtinterp.model import DTConfig, DTInputs, HookedDecisionTransformer
from dtinterp.plugins.registry import load_registry
from envs import EnvSpec, compact_obs, make_env

ENV_ID = "MiniGrid-DoorKey-5x5-v0"
META = {"env_spec": EnvSpec(ENV_ID).to_dict(), "rtg_scale": 1.0}


def _random_model(**kw) -> HookedDecisionTransformer:
    base = dict(context_len=4, n_layers=2, n_heads=2, d_model=32, d_mlp=64, max_timestep=100, seed=0)
    base.update(kw)
    model = HookedDecisionTransformer(DTConfig(**base)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.05 * torch.randn_like(p))
    return model


@functools.cache
def _cached_windows(batch: int, K: int, seed: int, n_pad: int) -> DTInputs:
    return _windows(batch, K, seed, n_pad)


def _windows(batch: int, K: int, seed: int = 0, n_pad: int = 1) -> DTInputs:
    """``batch`` windows of K real consecutive observations from random-action episodes."""
    env = make_env(EnvSpec(ENV_ID))
    rng = np.random.default_rng(seed)
    obs, dirs, acts = [], [], []
    for b in range(batch):
        o, _ = env.reset(seed=seed + b)
        row_o, row_d, row_a = [], [], []
        for _ in range(K):
            g, d = compact_obs(o)
            a = int(rng.integers(0, 3))
            row_o.append(g), row_d.append(d), row_a.append(a)
            o, *_ = env.step(a)
        obs.append(row_o), dirs.append(row_d), acts.append(row_a)
    pad = torch.ones(batch, K, dtype=torch.bool)
    pad[0, :n_pad] = False
    return DTInputs(
        obs=torch.from_numpy(np.array(obs, dtype=np.uint8)),
        directions=torch.tensor(dirs),
        rtg=torch.linspace(0.9, 0.6, K).expand(batch, K).clone(),
        actions=torch.tensor(acts),
        timesteps=torch.arange(K).expand(batch, K).clone(),
        pad_mask=pad,
    )


@pytest.fixture(scope="session")
def tiny_model() -> HookedDecisionTransformer:
    return _random_model()


@pytest.fixture(scope="session")
def tiny_meta() -> dict:
    return dict(META)


@pytest.fixture
def one_window() -> DTInputs:
    """A single trajectory window (batch 1, no padding)."""
    return _cached_windows(1, 4, 3, 0).clone()


@pytest.fixture
def many_windows() -> DTInputs:
    """A batch of 6 windows, the first left-padded by one timestep."""
    return _cached_windows(6, 4, 10, 1).clone()


@pytest.fixture(scope="module")
def registry():
    """Built-in analyses only (installed third-party plugins do not change these tests)."""
    return load_registry(include_entry_points=False)
