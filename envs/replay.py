"""Re-simulation: rebuild an env at any step of a recorded episode from its seed and actions.

MiniGrid envs are deterministic given the reset seed, so ``(spec, seed, actions)`` names a state
exactly. :func:`resimulate` is the one place that replays an episode; given the recorded observations
it also checks, step by step, that the replay reproduces them (a wrong seed, a different env version
or an edited file shows up as a :class:`ReplayMismatch` naming the first step that differs).
"""

from __future__ import annotations

from collections.abc import Sequence

import gymnasium as gym
import numpy as np

from envs.encoding import compact_obs
from envs.errors import EnvSpecError
from envs.spec import EnvSpec, make_env


class ReplayMismatch(EnvSpecError):
    """Replaying an episode's actions from its seed does not reproduce its recorded observations."""

    def __init__(self, seed: int, step: int, why: str = "differs") -> None:
        super().__init__(f"the episode does not replay from seed {seed}: step {step} {why}")
        self.step = step


def resimulate(
    spec: EnvSpec,
    seed: int,
    actions: Sequence[int],
    obs: np.ndarray | None = None,
    directions: Sequence[int] | None = None,
) -> gym.Env:
    """The env reset with ``seed`` after taking ``actions``; the caller closes it.

    With ``obs`` ``[n, W, H, 3]`` and ``directions`` ``[n]`` (the observation before each action, and
    optionally one more: the state after the last action), every observation the replay passes through
    is compared with them; the first difference, or an episode that ends before its last action, raises
    :class:`ReplayMismatch` (the env is closed first).
    """
    env = make_env(spec)
    try:
        o, _ = env.reset(seed=int(seed))
        n_check = 0 if obs is None else len(obs)
        for i in range(len(actions) + 1):
            if i < n_check:
                grid, d = compact_obs(o)
                if not (np.array_equal(grid, obs[i]) and d == int(directions[i])):
                    raise ReplayMismatch(seed, i)
            if i == len(actions):
                break
            o, _, terminated, truncated, _ = env.step(int(actions[i]))
            if (terminated or truncated) and i + 1 < max(len(actions), n_check):
                raise ReplayMismatch(seed, i + 1, "comes after the env ended the episode")
        return env
    except BaseException:
        env.close()
        raise


def replays(
    spec: EnvSpec, seed: int, obs: np.ndarray, directions: Sequence[int], actions: Sequence[int]
) -> bool:
    """Whether resetting with ``seed`` and taking ``actions`` reproduces ``obs`` and ``directions``."""
    try:
        resimulate(spec, seed, actions, obs, directions).close()
    except ReplayMismatch:
        return False
    return True


__all__ = ["ReplayMismatch", "replays", "resimulate"]
