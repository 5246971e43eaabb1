"""Shared rollout helper for the envs tests."""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym


def run_episode(env: gym.Env, seed: int, act: Callable[[gym.Env], int]) -> tuple[float, int, bool, bool]:
    """Play one seeded episode with ``act(env) -> action``: (return, length, terminated, truncated)."""
    env.reset(seed=seed)
    ret, n = 0.0, 0
    while True:
        _, reward, terminated, truncated, _ = env.step(act(env))
        ret += float(reward)
        n += 1
        if terminated or truncated:
            return ret, n, terminated, truncated
