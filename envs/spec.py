"""Environment specification and construction.

An :class:`EnvSpec` names everything that decides what a DT sees: the MiniGrid env id, whether the
agent sees the whole grid or an egocentric window, the window size, and an optional episode-length
override. ``make_env`` builds a gymnasium env from a spec for *any* registered MiniGrid id (custom
envs of this package are registered on ``import envs``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from minigrid.minigrid_env import MiniGridEnv
from minigrid.wrappers import FullyObsWrapper

from envs.errors import EnvSpecError


@dataclass(frozen=True)
class EnvSpec:
    """What environment a DT acts in and what it observes."""

    env_id: str
    """A registered gymnasium id of a MiniGrid env, e.g. ``MiniGrid-DoorKey-8x8-v0``."""
    view_size: int = 7
    """Side of the agent's egocentric view (odd, >= 3). Ignored when ``fully_observed``."""
    fully_observed: bool = False
    """Observe the whole grid (agent encoded in it) instead of the egocentric view."""
    max_steps: int | None = None
    """Episode length limit; ``None`` keeps the env's own default."""

    def __post_init__(self) -> None:
        if not isinstance(self.view_size, int) or self.view_size < 3 or self.view_size % 2 == 0:
            raise EnvSpecError(f"invalid view size {self.view_size!r}: must be an odd integer >= 3")
        if self.max_steps is not None and (not isinstance(self.max_steps, int) or self.max_steps < 1):
            raise EnvSpecError(f"invalid max_steps {self.max_steps!r}: must be a positive integer")
        check_env_id(self.env_id)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form, stored in dataset and checkpoint metadata."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EnvSpec:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise EnvSpecError(f"unknown env spec keys: {sorted(unknown)}")
        if "env_id" not in d:
            raise EnvSpecError("env spec has no env_id")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def check_env_id(env_id: str) -> None:
    """Raise :class:`EnvSpecError` unless ``env_id`` is a registered MiniGrid env."""
    import envs.custom  # noqa: F401  (registers the custom envs)

    if not isinstance(env_id, str) or env_id not in gym.registry:
        raise EnvSpecError(f"unknown env id {env_id!r}: not a registered gymnasium environment")
    entry = gym.registry[env_id]
    ep = entry.entry_point
    ep_str = ep if isinstance(ep, str) else f"{ep.__module__}:{ep.__qualname__}"
    if not (ep_str.startswith("minigrid") or ep_str.startswith("envs.")):
        raise EnvSpecError(f"env id {env_id!r} is not a MiniGrid environment (entry point {ep_str})")


def make_env(spec: EnvSpec, seed: int | None = None, render_mode: str | None = None) -> gym.Env:
    """Build the env described by ``spec``; its observations are MiniGrid dicts (image, direction, mission).

    ``seed`` seeds the first ``reset``; pass seeds to later ``reset`` calls yourself for seeded episodes.
    """
    check_env_id(spec.env_id)
    env = gym.make(spec.env_id, render_mode=render_mode)
    base = env.unwrapped
    if not isinstance(base, MiniGridEnv):
        raise EnvSpecError(f"env id {spec.env_id!r} is not a MiniGrid environment")
    if spec.max_steps is not None:
        base.max_steps = spec.max_steps
        # gymnasium's TimeLimit wrapper (if the registration set one) must agree.
        w = env
        while isinstance(w, gym.Wrapper):
            if isinstance(w, gym.wrappers.TimeLimit):
                w._max_episode_steps = spec.max_steps
            w = w.env
    if spec.fully_observed:
        env = FullyObsWrapper(env)
    elif spec.view_size != base.agent_view_size:
        # What minigrid's ``agent_view_size`` constructor argument does, for any env class: the base
        # env then emits views of this size, and its POV render and the field of view highlighted
        # in world renders agree with them (minigrid's ViewSizeWrapper leaves those at the default).
        base.agent_view_size = spec.view_size
        image_space = gym.spaces.Box(0, 255, (spec.view_size, spec.view_size, 3), dtype=np.uint8)
        base.observation_space = gym.spaces.Dict({**base.observation_space.spaces, "image": image_space})
    if seed is not None:
        env.reset(seed=seed)
    return env


def env_thunk(spec: EnvSpec, render_mode: str | None = None) -> Callable[[], gym.Env]:
    """A zero-argument constructor, the shape gymnasium's vector envs take."""
    return lambda: make_env(spec, render_mode=render_mode)


def make_vector_env(spec: EnvSpec, num_envs: int, asynchronous: bool = False) -> gym.vector.VectorEnv:
    """``num_envs`` copies of the env as a gymnasium vector env (sync by default)."""
    if num_envs < 1:
        raise EnvSpecError(f"invalid num_envs {num_envs!r}: must be >= 1")
    fns = [env_thunk(spec) for _ in range(num_envs)]
    return gym.vector.AsyncVectorEnv(fns) if asynchronous else gym.vector.SyncVectorEnv(fns)


def obs_shape(spec: EnvSpec) -> tuple[int, int, int]:
    """(W, H, 3) of the compact observation grid for ``spec`` (indexed [x, y, channel])."""
    if not spec.fully_observed:
        return (spec.view_size, spec.view_size, 3)
    return env_facts(spec).obs_shape


@dataclass(frozen=True)
class EnvFacts:
    """What a model needs to know about an env: its observation grid, actions and episode length."""

    obs_shape: tuple[int, int, int]
    """(W, H, 3) of the compact observation grid."""
    n_actions: int
    """Size of the action space (MiniGrid has 7; Dynamic-Obstacles 3)."""
    max_steps: int
    """Episode step limit (the spec's override, else the env's own)."""


@functools.lru_cache(maxsize=64)
def env_facts(spec: EnvSpec) -> EnvFacts:
    """The :class:`EnvFacts` of ``spec``, read once from a constructed env and cached per spec."""
    env = make_env(spec)
    try:
        grid = env.observation_space["image"].shape
        max_steps = spec.max_steps if spec.max_steps is not None else int(env.unwrapped.max_steps)
        return EnvFacts(tuple(int(v) for v in grid), int(env.action_space.n), int(max_steps))
    finally:
        env.close()
