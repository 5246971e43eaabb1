"""Data-collection policies: the interface the dataset collector drives.

A policy is reset after every ``env.reset`` with a numpy Generator that is its *only* source of
randomness (same seeds => same actions), then asked for one action per step; it reads the env's full
state through ``env.unwrapped``. Three policies exist:

- ``"random"``: uniform over the env's action space.
- ``"expert"``: the family's scripted expert (:mod:`envs.experts`), optionally taking a uniformly
  random action with probability ``epsilon``.
- ``"mixed"`` (the dataset default): draws one behaviour *mode* per episode from a fixed mixture,
  so a dataset's returns span deliberate failures, random play, noisy and optimal play. A decision
  transformer only learns to condition on return if the returns in its data vary.

Every policy names the mode of the current episode (``current_mode``, one of its ``MODES``) so
datasets can record it per episode, and ``describe()`` returns its parameters as plain JSON.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Protocol

import gymnasium as gym
import numpy as np

from envs.errors import EnvSpecError
from envs.experts import Expert, make_expert

POLICY_NAMES: tuple[str, ...] = ("expert", "mixed", "random")

#: Behaviour modes of the mixed policy, in the order datasets index them.
MODES: tuple[str, ...] = (
    "expert",
    "expert_eps0.1",
    "expert_eps0.25",
    "expert_eps0.5",
    "delayed_expert",
    "random",
    "failure",
)

#: Exploration rate of each epsilon-expert mode.
MODE_EPSILON: dict[str, float] = {
    "expert": 0.0,
    "expert_eps0.1": 0.1,
    "expert_eps0.25": 0.25,
    "expert_eps0.5": 0.5,
}

#: Default mixture: ~60% (near-)optimal, ~15% spread over all returns, ~25% failures or random play.
DEFAULT_WEIGHTS: dict[str, float] = {
    "expert": 0.25,
    "expert_eps0.1": 0.15,
    "expert_eps0.25": 0.1,
    "expert_eps0.5": 0.1,
    "delayed_expert": 0.15,
    "random": 0.1,
    "failure": 0.15,
}


class Policy(Protocol):
    """What the collector drives: reset per episode, one action per step, self-description."""

    name: str
    MODES: tuple[str, ...]
    """Every mode this policy can be in; ``current_mode`` is one of them."""
    current_mode: str
    """Behaviour mode of the current episode (set by ``reset``)."""

    def reset(self, env: gym.Env, rng: np.random.Generator) -> None:
        """Start an episode; called after ``env.reset``. ``rng`` is the only randomness used."""
        ...

    def act(self, env: gym.Env) -> int:
        """The action for the env's current state (reads ``env.unwrapped``)."""
        ...

    def describe(self) -> dict:
        """JSON-able parameters, stored in dataset metadata."""
        ...


class _Base:
    """Holds the per-episode generator; ``act`` before ``reset`` is a programming error."""

    name = "base"
    MODES: tuple[str, ...] = ()
    current_mode = ""

    def __init__(self) -> None:
        self._rng: np.random.Generator | None = None

    @property
    def rng(self) -> np.random.Generator:
        if self._rng is None:
            raise RuntimeError(f"{type(self).__name__}.act called before reset")
        return self._rng


class RandomPolicy(_Base):
    """Uniformly random actions over ``env.action_space.n``."""

    name = "random"
    MODES = ("random",)
    current_mode = "random"

    def __init__(self, n_actions: int) -> None:
        super().__init__()
        self.n_actions = n_actions

    def reset(self, env: gym.Env, rng: np.random.Generator) -> None:
        self._rng = rng

    def act(self, env: gym.Env) -> int:
        return int(self.rng.integers(self.n_actions))

    def describe(self) -> dict:
        return {"name": self.name, "n_actions": self.n_actions}


class ExpertPolicy(_Base):
    """The scripted expert; with probability ``epsilon`` a uniformly random action instead."""

    name = "expert"

    def __init__(self, expert: Expert, n_actions: int, epsilon: float = 0.0) -> None:
        super().__init__()
        self.expert = expert
        self.n_actions = n_actions
        self.epsilon = epsilon
        self.current_mode = "expert" if epsilon == 0 else f"expert_eps{epsilon:g}"
        self.MODES = (self.current_mode,)

    def reset(self, env: gym.Env, rng: np.random.Generator) -> None:
        self._rng = rng

    def act(self, env: gym.Env) -> int:
        if self.epsilon > 0 and self.rng.random() < self.epsilon:
            return int(self.rng.integers(self.n_actions))
        return int(self.expert.act(env.unwrapped))

    def describe(self) -> dict:
        return {"name": self.name, "expert": self.expert.name, "epsilon": self.epsilon}


class MixedPolicy(_Base):
    """One behaviour mode per episode, drawn from ``weights`` over :data:`MODES`.

    Modes: ``expert`` (epsilon 0), ``expert_eps{0.1,0.25,0.5}`` (expert with that exploration rate),
    ``delayed_expert`` (wanders without ending the episode for a delay drawn uniformly from
    ``[0, max_steps)``, then, once :meth:`Expert.ready_to_take_over` agrees, plays the expert to the
    end: returns spread over the whole range), ``random``
    (uniform actions) and ``failure`` (the expert's scripted failure: wrong Memory object, collision
    with a dynamic obstacle, key fetched but door never opened, goal avoided).
    """

    name = "mixed"
    MODES = MODES

    def __init__(self, expert: Expert, n_actions: int, weights: Mapping[str, float]) -> None:
        super().__init__()
        self.expert = expert
        self.n_actions = n_actions
        self.weights = {m: float(weights.get(m, 0.0)) for m in MODES}
        total = sum(self.weights.values())
        self._p = np.array([self.weights[m] / total for m in MODES])
        self.current_mode = MODES[0]
        self.delay = 0
        """Steps the ``delayed_expert`` mode wanders at least before the expert takes over."""
        self.took_over = False
        """Whether the expert has taken over this ``delayed_expert`` episode (it keeps playing)."""

    def reset(self, env: gym.Env, rng: np.random.Generator) -> None:
        self._rng = rng
        self.current_mode = MODES[int(rng.choice(len(MODES), p=self._p))]
        self.delay = (
            int(rng.integers(env.unwrapped.max_steps)) if self.current_mode == "delayed_expert" else 0
        )
        self.took_over = False

    def act(self, env: gym.Env) -> int:
        mode, rng, base = self.current_mode, self.rng, env.unwrapped
        if mode == "delayed_expert":
            if not self.took_over and base.step_count >= self.delay:
                self.took_over = self.expert.ready_to_take_over(base)
            return int(self.expert.act(base) if self.took_over else self.expert.wander_act(base, rng))
        if mode == "random":
            return int(rng.integers(self.n_actions))
        if mode == "failure":
            return int(self.expert.fail_act(base, rng))
        eps = MODE_EPSILON[mode]
        if eps > 0 and rng.random() < eps:
            return int(rng.integers(self.n_actions))
        return int(self.expert.act(base))

    def describe(self) -> dict:
        return {
            "name": self.name,
            "expert": self.expert.name,
            "weights": dict(self.weights),
            "epsilon": {m: MODE_EPSILON[m] for m in MODE_EPSILON},
        }


def _check_params(name: str, params: dict[str, Any], allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        expected = ", ".join(allowed) if allowed else "none"
        raise EnvSpecError(f"unknown parameter(s) {unknown} for policy {name!r}: expected {expected}")


def _check_epsilon(epsilon: Any) -> float:
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not 0 <= epsilon <= 1:
        raise EnvSpecError(f"invalid epsilon {epsilon!r}: must be a number in [0, 1]")
    return float(epsilon)


def _check_weights(weights: Any) -> dict[str, float]:
    if not isinstance(weights, Mapping):
        raise EnvSpecError(f"invalid weights {weights!r}: must map modes ({', '.join(MODES)}) to numbers")
    unknown = sorted(set(weights) - set(MODES))
    if unknown:
        raise EnvSpecError(f"unknown mode(s) {unknown} in weights: expected some of {', '.join(MODES)}")
    out = {}
    for mode, w in weights.items():
        ok = not isinstance(w, bool) and isinstance(w, (int, float)) and math.isfinite(w) and w >= 0
        if not ok:
            raise EnvSpecError(f"invalid weight {w!r} for mode {mode!r}: must be a finite number >= 0")
        out[mode] = float(w)
    if sum(out.values()) <= 0:
        raise EnvSpecError("invalid weights: at least one mode needs a weight > 0")
    return out


def make_policy(name: str, env: gym.Env, **params: Any) -> Policy:
    """Build policy ``name`` (one of :data:`POLICY_NAMES`) for ``env``.

    Parameters: ``expert`` takes ``epsilon`` (default 0); ``mixed`` takes ``weights`` (a mapping
    from :data:`MODES` to non-negative numbers, missing modes weigh 0; default
    :data:`DEFAULT_WEIGHTS`); ``random`` takes none. Bad names, parameters or an env without a
    scripted expert raise :class:`EnvSpecError` with one line naming the culprit.
    """
    n_actions = int(env.action_space.n)
    if name == "random":
        _check_params(name, params, ())
        return RandomPolicy(n_actions)
    if name == "expert":
        _check_params(name, params, ("epsilon",))
        epsilon = _check_epsilon(params.get("epsilon", 0.0))
        return ExpertPolicy(make_expert(env), n_actions, epsilon)
    if name == "mixed":
        _check_params(name, params, ("weights",))
        weights = _check_weights(params.get("weights", DEFAULT_WEIGHTS))
        return MixedPolicy(make_expert(env), n_actions, weights)
    raise EnvSpecError(f"unknown policy {name!r}: expected one of {', '.join(POLICY_NAMES)}")
