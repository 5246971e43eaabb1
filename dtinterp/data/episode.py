"""``Episode``: one played or recorded episode, validated once where it enters.

An episode is what a rollout produces, what one episode of a dataset is, what a trajectory file holds
(a one-episode dataset ``.npz``) and what the app keeps in the browser (:meth:`Episode.to_json`). It is
checked when it is built (:meth:`Episode.__init__` via ``__post_init__``, :meth:`from_json`,
:meth:`from_dataset`) and trusted afterwards; :meth:`step` extends a live episode with what the env
returned, without re-checking what was already checked.

Layout (``T`` actions taken):

==================  =======  ============  ==========================================================
field               dtype    shape         meaning
==================  =======  ============  ==========================================================
``obs``             uint8    [n, W, H, 3]  the observation before every action; a *live* episode (not
                                           ended) has one more: the current state, ``n == T + 1``
``directions``      uint8    [n]           the agent's direction with each observation
``actions``         uint8    [T]           the action taken at each step
``rewards``         float32  [T]           the reward received after each action
==================  =======  ============  ==========================================================

``terminated`` / ``truncated`` say how a finished episode ended (a finished episode has ``n == T``:
the state after its last action is not stored, as in a dataset). ``target_return`` is the return the
model was asked for (a rollout, an episode played in the app): the window at step ``t`` is then
conditioned on ``target_return - sum(rewards[:t])``. Demonstrations have ``target_return`` None and are
conditioned on their achieved return-to-go, as in training. ``seed`` is the env seed that reproduces the
episode (checked by re-simulation when read from a dataset), or None. ``source`` says where it came from
(:data:`SOURCES`) and ``info`` keeps JSON provenance (the policy that played it, the dataset it was cut
from, the model that played it).
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from dtinterp.data.dataset import N_ACTIONS, TrajectoryDataset, make_metadata
from dtinterp.data.windows import make_batch
from dtinterp.errors import EpisodeError
from dtinterp.limits import check_rtg
from dtinterp.model.inputs import DTInputs
from envs.encoding import N_DIRECTIONS
from envs.errors import EnvSpecError
from envs.replay import replays
from envs.spec import EnvSpec, obs_shape

if TYPE_CHECKING:
    from dtinterp.model.checkpoint import Checkpoint

#: Where an episode came from: played in the app, a decision transformer's rollout, an uploaded
#: trajectory file, a dataset episode.
SOURCES = ("play", "rollout", "file", "dataset")
#: ``metadata["policy"]["name"]`` of episodes conditioned on a target return (rollouts, app play).
ROLLOUT_POLICY = "decision_transformer"
#: Version of :meth:`Episode.to_json`'s format.
JSON_VERSION = 2


@dataclass(eq=False)
class Episode:
    """One episode of one env (see the module docstring for the layout)."""

    env_spec: EnvSpec
    obs: np.ndarray
    """uint8 [n, W, H, 3]: the observation before each action (+ the current one while live)."""
    directions: np.ndarray
    """uint8 [n]: agent direction with each observation."""
    actions: np.ndarray
    """uint8 [T]: action taken at each step."""
    rewards: np.ndarray
    """float32 [T]: reward received after each action."""
    terminated: bool = False
    """The env ended the episode after its last action (goal, lava, ...)."""
    truncated: bool = False
    """The episode hit its step limit after its last action."""
    seed: int | None = None
    """Env seed that reproduces the episode, if known."""
    target_return: float | None = None
    """Return the model was conditioned on at step 0 (None: the achieved return-to-go)."""
    source: str = "dataset"
    """One of :data:`SOURCES`."""
    info: dict[str, Any] = field(default_factory=dict)
    """JSON provenance: ``policy``, ``dataset``, ``episode_index``, ``model``, ..."""

    def __post_init__(self) -> None:
        self._validate()

    # ------------------------------------------------------------------ shape and derived values

    @property
    def length(self) -> int:
        """Actions taken so far (T)."""
        return int(self.actions.shape[0])

    @property
    def done(self) -> bool:
        return self.terminated or self.truncated

    @property
    def live(self) -> bool:
        """Not ended: the last observation is the current state, whose action is still to be chosen."""
        return not self.done

    @property
    def n_obs(self) -> int:
        return int(self.obs.shape[0])

    @property
    def episode_return(self) -> float:
        """Sum of the rewards so far."""
        return float(np.sum(self.rewards, dtype=np.float64))

    @property
    def success(self) -> bool:
        """MiniGrid pays a positive reward only for reaching the goal."""
        return self.done and self.episode_return > 0

    def rtg(self, step: int) -> float:
        """The (unscaled) return-to-go the model is conditioned on at ``step``."""
        self._check_step(step)
        before = float(np.sum(self.rewards[:step], dtype=np.float64))
        if self.target_return is not None:
            return self.target_return - before
        return self.episode_return - before

    def provenance(self) -> dict[str, Any]:
        """JSON that identifies the episode in a result: source, env, seed, target, length, return."""
        out: dict[str, Any] = {
            "source": self.source,
            "env_spec": self.env_spec.to_dict(),
            "seed": self.seed,
            "target_return": self.target_return,
            "length": self.length,
            "return": self.episode_return,
            "finished": self.done,
        }
        for key in ("dataset", "episode_index", "model", "file"):
            if key in self.info:
                out[key] = self.info[key]
        policy = self.info.get("policy")
        if isinstance(policy, dict) and "name" in policy:
            out["policy"] = policy["name"]
        return out

    def conditioning(self) -> str:
        """How the windows are conditioned, in words."""
        if self.target_return is None:
            return "the achieved return-to-go (as in training)"
        return f"target {self.target_return:g} minus the rewards so far"

    # ------------------------------------------------------------------ windows

    def windows(self, checkpoint: Checkpoint, steps: Sequence[int] | None = None) -> DTInputs:
        """The model's input windows ending at ``steps`` (default: every observation), batch ``len(steps)``.

        ``steps`` run over ``0 .. n_obs - 1``: taken steps, and for a live episode its current state,
        whose window is exactly the one a rollout feeds the model (its last action is the pad action).
        The model must fit the episode's env (:meth:`Checkpoint.check_fits`).
        """
        checkpoint.check_fits(self.env_spec, tuple(self.obs.shape[1:3]), where=f"the {self.source} episode")
        if self.target_return is not None:
            check_rtg(self.target_return, "target return", checkpoint.rtg_scale, error=EpisodeError)
        steps = list(range(self.n_obs)) if steps is None else [int(s) for s in steps]
        if not steps:
            raise EpisodeError("no steps chosen: an episode window needs at least one step")
        for s in steps:
            self._check_step(s)
        cfg = checkpoint.config
        pad = self.n_obs - self.length  # 1 for a live episode: its current state has no action yet
        data = _Arrays(
            obs=self.obs,
            directions=self.directions,
            actions=np.concatenate([self.actions.astype(np.int64), np.full(pad, cfg.n_actions)]),
            rewards=np.concatenate([self.rewards, np.zeros(pad, np.float32)]),
            episode_starts=np.array([0, self.n_obs], dtype=np.int64),
        )
        return make_batch(
            data,
            [(0, s) for s in steps],
            cfg.context_len,
            checkpoint.rtg_scale,
            cfg.n_actions,
            cfg.max_timestep,
            targets=[self.target_return],
        )

    def window(self, checkpoint: Checkpoint, step: int | None = None) -> DTInputs:
        """The window (batch 1) ending at ``step`` (default: the last observation)."""
        return self.windows(checkpoint, [self.n_obs - 1 if step is None else step])

    # ------------------------------------------------------------------ growing a live episode

    def step(
        self, action: int, reward: float, obs: np.ndarray, direction: int, terminated: bool, truncated: bool
    ) -> Episode:
        """This live episode after ``action``: the env returned ``reward``, the next ``obs`` / ``direction``
        and the end flags. Only the new values are checked; the episode itself was checked when it entered.
        """
        if self.done:
            raise EpisodeError("the episode is over: no more actions can be taken")
        if not 0 <= int(action) < N_ACTIONS:
            raise EpisodeError(f"action {action!r} is not a MiniGrid action id 0..{N_ACTIONS - 1}")
        reward = float(np.float32(reward))  # dataset precision, so a saved episode reloads identical
        if not math.isfinite(reward):
            raise EpisodeError(f"reward {reward!r} is not finite")
        done = bool(terminated or truncated)
        new_obs, new_dirs = self.obs, self.directions
        if not done:
            new_obs = np.concatenate([self.obs, np.asarray(obs, dtype=np.uint8)[None]])
            new_dirs = np.append(self.directions, np.uint8(direction))
        return _trusted(
            self,
            obs=new_obs,
            directions=new_dirs,
            actions=np.append(self.actions, np.uint8(action)),
            rewards=np.append(self.rewards, np.float32(reward)),
            terminated=bool(terminated),
            truncated=bool(truncated) and not terminated,
        )

    def with_target(self, target_return: float) -> Episode:
        """The same episode conditioned on another target return (a finite float32 number)."""
        return _trusted(self, target_return=check_rtg(target_return, "target return", error=EpisodeError))

    # ------------------------------------------------------------------ datasets and trajectory files

    @classmethod
    def from_dataset(
        cls, ds: TrajectoryDataset, episode: int, source: str = "dataset", where: str = "dataset"
    ) -> Episode:
        """Episode ``episode`` of ``ds`` (a finished episode).

        The target return is the recorded one for rollouts (policy :data:`ROLLOUT_POLICY`), else None. The
        seed is the recorded one (rollouts) or ``seed + episode`` (collected datasets), kept only if
        re-simulating the actions from it reproduces the stored observations.
        """
        if not 0 <= episode < ds.n_episodes:
            raise EpisodeError(f"{where} has {ds.n_episodes} episode(s): episode {episode} does not exist")
        sl = ds.episode_slice(episode)
        meta = ds.metadata
        policy = dict(meta.get("policy", {}))
        params = dict(policy.get("params", {}))
        per_episode = {}
        for key, values in params.items():
            if isinstance(values, list) and len(values) == ds.n_episodes and key in _PER_EPISODE_PARAMS:
                per_episode[key] = values[episode]
                params[key] = [values[episode]]
        mode = int(ds.episode_modes[episode])
        modes = policy.get("modes", [])
        policy.update(params=params, modes=[modes[mode]] if mode < len(modes) else modes)
        target = dataset_targets(ds)[episode]
        candidate = per_episode.get("seeds")
        if candidate is None and meta.get("created_by") == "dtinterp collect" and _is_int(meta.get("seed")):
            candidate = meta["seed"] + int(meta.get("source_episode", episode))
        spec = ds.env_spec
        seed = None
        if _is_int(candidate) and candidate >= 0:
            ok = replays(spec, candidate, ds.obs[sl], ds.directions[sl], ds.actions[sl])
            seed = int(candidate) if ok else None
        info = {"policy": policy, "episode_index": int(meta.get("source_episode", episode))}
        for key in ("created_by", "model"):
            if key in meta:
                info[key] = meta[key]
        return cls(
            env_spec=spec,
            obs=ds.obs[sl],
            directions=ds.directions[sl],
            actions=ds.actions[sl],
            rewards=ds.rewards[sl],
            terminated=bool(ds.terminated[sl][-1]),
            truncated=bool(ds.truncated[sl][-1]),
            seed=seed,
            target_return=target,
            source=source,
            info=info,
        )

    def to_dataset(self) -> TrajectoryDataset:
        """The taken steps as a validated one-episode dataset (what a trajectory file holds).

        :meth:`from_dataset` on it gives back this episode's steps, target return and seed. A live
        episode's current state (no action yet) is not a step and is left out; an episode with no steps
        is an :class:`~dtinterp.errors.EpisodeError`.
        """
        t = self.length
        if t == 0:
            raise EpisodeError("the episode has no steps yet: take an action first")
        last = np.zeros(t, dtype=bool)
        last[-1] = True
        policy = dict(self.info.get("policy") or {"name": self.source, "modes": [self.source]})
        params = dict(policy.get("params", {}))
        if self.seed is not None:
            params["seeds"] = [self.seed]
        if self.target_return is not None:
            policy["name"] = ROLLOUT_POLICY
            params["target_rtg"] = [self.target_return]
        params.setdefault("source", self.source)
        policy["params"] = params
        policy["modes"] = list(policy.get("modes") or [self.source])[:1]
        meta = make_metadata(
            self.env_spec, policy, seed=self.seed if self.seed is not None else 0, episodes=1
        )
        meta["created_by"] = self.info.get("created_by", f"dtinterp ({self.source})")
        meta["source_episode"] = 0
        if "model" in self.info:
            meta["model"] = self.info["model"]
        ds = TrajectoryDataset(
            obs=self.obs[:t],
            directions=self.directions[:t],
            actions=self.actions,
            rewards=self.rewards,
            terminated=last & self.terminated,
            truncated=last & (not self.terminated),
            episode_starts=np.array([0, t], dtype=np.int64),
            episode_modes=np.zeros(1, dtype=np.uint8),
            metadata=meta,
        )
        ds.validate("episode")
        return ds

    # ------------------------------------------------------------------ the browser's JSON

    def to_json(self) -> dict[str, Any]:
        """Plain JSON for the app's browser store (observations as base64 of the uint8 bytes)."""
        return {
            "version": JSON_VERSION,
            "env_spec": self.env_spec.to_dict(),
            "obs_shape": list(self.obs.shape[1:]),
            "obs_b64": base64.b64encode(np.ascontiguousarray(self.obs).tobytes()).decode("ascii"),
            "directions": self.directions.tolist(),
            "actions": self.actions.tolist(),
            "rewards": [float(r) for r in self.rewards],
            "terminated": self.terminated,
            "truncated": self.truncated,
            "seed": self.seed,
            "target_return": self.target_return,
            "source": self.source,
            "info": self.info,
        }

    @classmethod
    def from_json(cls, data: Any) -> Episode:
        """Inverse of :meth:`to_json`; anything malformed is a one-line :class:`EpisodeError`."""
        if not isinstance(data, Mapping):
            raise EpisodeError("episode: not a JSON object")
        if data.get("version") != JSON_VERSION:
            raise EpisodeError(f"episode: unknown version {data.get('version')!r} (expected {JSON_VERSION})")
        try:
            spec = EnvSpec.from_dict(data.get("env_spec"))
        except (EnvSpecError, TypeError, AttributeError) as exc:
            raise EpisodeError(f"episode: bad env_spec ({exc})") from None
        shape = data.get("obs_shape")
        if not (isinstance(shape, list) and len(shape) == 3 and all(_is_int(s) and s > 0 for s in shape)):
            raise EpisodeError(f"episode: obs_shape must be [W, H, 3], got {shape!r}")
        try:
            raw = base64.b64decode(data.get("obs_b64"), validate=True)
        except (binascii.Error, ValueError, TypeError):
            raise EpisodeError("episode: obs_b64 is not valid base64") from None
        size = math.prod(shape)
        if len(raw) % size:
            raise EpisodeError(
                f"episode: obs_b64 holds {len(raw)} bytes, not a whole number of {shape} grids"
            )
        obs = np.frombuffer(raw, dtype=np.uint8).reshape(-1, *shape).copy()
        return cls(
            env_spec=spec,
            obs=obs,
            directions=_int_array(data.get("directions"), "directions"),
            actions=_int_array(data.get("actions"), "actions"),
            rewards=_float_array(data.get("rewards"), "rewards"),
            terminated=data.get("terminated"),
            truncated=data.get("truncated"),
            seed=data.get("seed"),
            target_return=data.get("target_return"),
            source=data.get("source"),
            info=data.get("info", {}),
        )

    # ------------------------------------------------------------------ validation

    def _check_step(self, step: int) -> None:
        if not 0 <= step < self.n_obs:
            raise EpisodeError(f"step {step} is outside the episode's steps 0..{self.n_obs - 1}")

    def _validate(self) -> None:
        def fail(msg: str) -> None:
            raise EpisodeError(f"episode: {msg}")

        if not isinstance(self.env_spec, EnvSpec):
            fail("env_spec must be an EnvSpec")
        for name, dtype, ndim in (
            ("obs", np.uint8, 4),
            ("directions", np.uint8, 1),
            ("actions", np.uint8, 1),
            ("rewards", np.float32, 1),
        ):
            arr = getattr(self, name)
            if not isinstance(arr, np.ndarray):
                fail(f"{name} must be an array")
            if arr.dtype != dtype:
                if arr.dtype.kind not in "iuf" or (dtype != np.float32 and arr.dtype.kind == "f"):
                    fail(f"{name} must hold {np.dtype(dtype).name} values, got {arr.dtype}")
                converted = arr.astype(dtype)
                if dtype != np.float32 and not np.array_equal(converted, arr):
                    fail(f"{name} holds values outside {np.dtype(dtype).name}")
                object.__setattr__(self, name, converted)
            if getattr(self, name).ndim != ndim:
                fail(f"{name} must be {ndim}-d, got shape {arr.shape}")
        for flag in ("terminated", "truncated"):
            if not isinstance(getattr(self, flag), (bool, np.bool_)):
                fail(f"{flag} must be a boolean, got {getattr(self, flag)!r}")
            object.__setattr__(self, flag, bool(getattr(self, flag)))
        if self.terminated and self.truncated:
            self.truncated = False  # gymnasium may report both; the env's own end wins, as in datasets
        t, n = self.length, self.n_obs
        if self.rewards.shape[0] != t:
            fail(f"{self.rewards.shape[0]} rewards for {t} actions")
        expected = t if self.done else t + 1
        if n != expected:
            state = "finished" if self.done else "live"
            fail(f"a {state} episode of {t} actions holds {expected} observations, not {n}")
        if n == 0:
            fail("has no observations")
        if self.directions.shape[0] != n:
            fail(f"{self.directions.shape[0]} directions for {n} observations")
        try:
            expected_grid = obs_shape(self.env_spec)
        except EnvSpecError as exc:
            fail(str(exc))
        if tuple(self.obs.shape[1:]) != tuple(expected_grid):
            fail(
                f"observations are {tuple(self.obs.shape[1:])} but {self.env_spec.env_id} gives {expected_grid}"
            )
        if t and int(self.actions.max()) >= N_ACTIONS:
            fail(f"action {int(self.actions.max())} is not a MiniGrid action id 0..{N_ACTIONS - 1}")
        if n and int(self.directions.max()) >= N_DIRECTIONS:
            fail(f"direction {int(self.directions.max())} out of range 0..{N_DIRECTIONS - 1}")
        if not np.all(np.isfinite(self.rewards)):
            fail("rewards must be finite")
        if self.seed is not None and not (_is_int(self.seed) and self.seed >= 0):
            fail(f"seed must be a non-negative integer or null, got {self.seed!r}")
        if self.target_return is not None:
            self.target_return = check_rtg(self.target_return, "episode: target_return", error=EpisodeError)
        if self.source not in SOURCES:
            fail(f"unknown source {self.source!r} (expected one of {', '.join(SOURCES)})")
        if not isinstance(self.info, dict):
            fail("info must be a JSON object")


@dataclass
class _Arrays:
    obs: np.ndarray
    directions: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    episode_starts: np.ndarray


#: Per-episode lists a recorded rollout keeps in ``metadata["policy"]["params"]``.
_PER_EPISODE_PARAMS = ("seeds", "target_rtg")


def _trusted(ep: Episode, **changes: Any) -> Episode:
    """A copy of ``ep`` with ``changes``, not re-validated (the caller vouches for the new values)."""
    out = Episode.__new__(Episode)
    out.__dict__.update({f.name: getattr(ep, f.name) for f in fields(Episode)} | changes)
    return out


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _int_array(values: Any, name: str) -> np.ndarray:
    if not (isinstance(values, list) and all(_is_int(v) and 0 <= v < 256 for v in values)):
        raise EpisodeError(f"episode: {name} must be a list of small non-negative integers")
    return np.asarray(values, dtype=np.uint8)


def _float_array(values: Any, name: str) -> np.ndarray:
    if not (
        isinstance(values, list)
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)
    ):
        raise EpisodeError(f"episode: {name} must be a list of finite numbers")
    return np.asarray(values, dtype=np.float32)


def dataset_targets(ds: TrajectoryDataset) -> list[float | None]:
    """Each episode's target return: the recorded one for rollouts (:data:`ROLLOUT_POLICY`), else None."""
    policy = ds.metadata.get("policy", {})
    targets = policy.get("params", {}).get("target_rtg")
    if policy.get("name") != ROLLOUT_POLICY or not isinstance(targets, list) or len(targets) != ds.n_episodes:
        return [None] * ds.n_episodes
    ok = all(isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) for t in targets)
    return [float(t) for t in targets] if ok else [None] * ds.n_episodes


def window_ends(ds: TrajectoryDataset, episodes: Sequence[int], max_windows: int) -> list[tuple[int, int]]:
    """``(episode, step)`` of every step of ``episodes``, thinned evenly to at most ``max_windows``.

    Deterministic: the same arguments always give the same ends, always including the first step of the
    first episode and the last step of the last one.
    """
    if max_windows < 1:
        raise EpisodeError(f"max_windows must be >= 1, got {max_windows}")
    lengths = ds.episode_lengths()
    ends = [(int(e), t) for e in episodes for t in range(int(lengths[e]))]
    if len(ends) > max_windows:
        keep = np.unique(np.round(np.linspace(0, len(ends) - 1, max_windows)).astype(np.int64))
        ends = [ends[i] for i in keep]
    return ends


def dataset_windows(
    ds: TrajectoryDataset,
    episodes: Sequence[int],
    checkpoint: Checkpoint,
    max_windows: int = 256,
    where: str = "dataset",
) -> tuple[DTInputs, list[tuple[int, int]]]:
    """Windows ending at every step of ``episodes`` (in order, thinned by :func:`window_ends`), and their ends.

    Recorded rollouts are conditioned on their target returns, demonstrations on their achieved
    return-to-go (as :meth:`Episode.windows` does for one episode).
    """
    checkpoint.check_fits(ds.env_spec, tuple(ds.obs.shape[1:3]), where=where)
    if len(episodes) == 0:
        raise EpisodeError(f"{where}: no episodes chosen")
    bad = [e for e in episodes if not 0 <= int(e) < ds.n_episodes]
    if bad:
        raise EpisodeError(f"{where}: episode {bad[0]} out of range (it has {ds.n_episodes} episodes)")
    ends = window_ends(ds, [int(e) for e in episodes], max_windows)
    cfg = checkpoint.config
    inputs = make_batch(
        ds, ends, cfg.context_len, checkpoint.rtg_scale, cfg.n_actions, cfg.max_timestep, dataset_targets(ds)
    )
    return inputs, ends


def episodes_to_dataset(episodes: Sequence[Episode]) -> TrajectoryDataset:
    """Finished episodes of one env as one validated dataset, in the given order.

    Rollout episodes (with a target return) keep their seeds and targets in the policy parameters, so
    :meth:`Episode.from_dataset` gives each back with its target.
    """
    if not episodes:
        raise EpisodeError("no episodes to turn into a dataset")
    spec = episodes[0].env_spec
    if any(ep.env_spec != spec for ep in episodes):
        raise EpisodeError("episodes of different envs cannot share a dataset")
    if any(ep.live for ep in episodes):
        raise EpisodeError("only finished episodes can be stored in a dataset")
    starts = np.zeros(len(episodes) + 1, dtype=np.int64)
    np.cumsum([ep.length for ep in episodes], out=starts[1:])
    targeted = all(ep.target_return is not None for ep in episodes)
    policy = {
        "name": ROLLOUT_POLICY if targeted else episodes[0].info.get("policy", {}).get("name", "recorded"),
        "params": {
            "seeds": [ep.seed for ep in episodes],
            **({"target_rtg": [ep.target_return for ep in episodes]} if targeted else {}),
        },
        "modes": [episodes[0].source],
    }
    meta = make_metadata(spec, policy, seed=episodes[0].seed or 0, episodes=len(episodes))
    meta["created_by"] = f"dtinterp {episodes[0].source}"
    for key in ("model",):
        if key in episodes[0].info:
            meta[key] = episodes[0].info[key]
    done = np.zeros(int(starts[-1]), dtype=bool)
    done[starts[1:] - 1] = True
    terminated = np.zeros_like(done)
    terminated[starts[1:] - 1] = [ep.terminated for ep in episodes]
    ds = TrajectoryDataset(
        obs=np.concatenate([ep.obs for ep in episodes]),
        directions=np.concatenate([ep.directions for ep in episodes]),
        actions=np.concatenate([ep.actions for ep in episodes]),
        rewards=np.concatenate([ep.rewards for ep in episodes]),
        terminated=terminated,
        truncated=done & ~terminated,
        episode_starts=starts,
        episode_modes=np.zeros(len(episodes), dtype=np.uint8),
        metadata=meta,
    )
    ds.validate("episodes")
    return ds


__all__ = [
    "JSON_VERSION",
    "ROLLOUT_POLICY",
    "SOURCES",
    "Episode",
    "dataset_targets",
    "dataset_windows",
    "episodes_to_dataset",
    "window_ends",
]
