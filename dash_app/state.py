"""The app's state: trajectories in the browser, models, envs and analysis contexts on the server.

**Trajectories live in the browser** (``dcc.Store(id=ids.TRAJ_STORE)``) as plain JSON::

    {"version": 1, "source": "play"|"file"|"dataset"|"rollout", "model": <model key>,
     "env_spec": {...}, "seed": int|null, "target_rtg": float, "actions": [int], "rewards": [float],
     "obs_shape": [W, H, 3], "obs_b64": str, "directions": [int], "done": bool, "terminated": bool}

``obs_b64`` is base64 of the uint8 ``[n_obs, W, H, 3]`` observation bytes: the observation before every
action, plus, while the episode is live (``done`` false), the current observation as the last row, so
``n_obs == len(actions) + (0 if done else 1)``. The model is always conditioned on
``target_rtg - sum(rewards[:t])`` at step ``t``, as in an evaluation rollout; an episode taken from a
demonstration dataset gets its achieved return as ``target_rtg``, which gives the same windows as
conditioning on its return-to-go.

**Everything else is server-side, bounded and keyed so sessions never meet:**

- models: :func:`get_model` / :func:`model_entry`, an LRU keyed by model key (a shipped model's name or
  a checkpoint directory path), each model with the ``threading.Lock`` that every forward pass on it
  holds (hooks live on the shared model object, so computations on one model are serialized);
- live envs: :class:`EnvCache`, an LRU keyed by (session id, model key, env spec, seed, digest of the
  actions): on a miss the env is re-simulated from the seed and the actions (MiniGrid envs are
  deterministic given the seed) and checked against the trajectory's observations;
- analysis contexts: :class:`ContextCache`, an LRU keyed by (model key, digest of the inputs, edits).

The session id is a uuid made per page load (one per browser tab) into ``ids.SESSION_STORE``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import math
import os
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Generic, TypeVar

import gymnasium as gym
import numpy as np
import torch

from dtinterp.data.dataset import N_ACTIONS, TrajectoryDataset, make_metadata
from dtinterp.data.windows import window_at
from dtinterp.errors import CheckpointError, DtinterpError
from dtinterp.interp.edits import Edit
from dtinterp.interp.trajectory import (
    ROLLOUT_POLICY,
    TrajectoryError,
    model_env_spec,
    recorded_target_rtg,
)
from dtinterp.model.checkpoint import load_checkpoint
from dtinterp.model.hooked_dt import HookedDecisionTransformer
from dtinterp.model.inputs import DTInputs
from dtinterp.model.shipped import list_models, models_dir, resolve_model
from dtinterp.plugins.api import AnalysisContext
from dtinterp.train.rollout import check_model_env
from envs.encoding import compact_obs
from envs.errors import EnvSpecError
from envs.spec import EnvSpec, make_env

TRAJ_VERSION = 1
#: Where a trajectory came from: played in the app, an uploaded file, a dataset episode, a DT rollout.
SOURCES = ("play", "file", "dataset", "rollout")
#: Default bounds of the server-side LRUs.
MAX_MODELS = 4
MAX_ENVS = 256
#: A context holds whole activation caches: ~160 MB for 256 windows of the shipped 3-layer DoorKey agent.
MAX_CONTEXTS = 8
#: The shipped model the app opens with when none is named.
DEFAULT_MODEL = "memory-s7"

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class InputError(DtinterpError):
    """A bad value typed or uploaded into the app; its message is shown on the page."""


def new_session_id() -> str:
    """A fresh per-tab session id (uuid4 hex)."""
    return uuid.uuid4().hex


# ------------------------------------------------------------------ bounded, thread-safe LRU


class LRU(Generic[K, V]):
    """A thread-safe least-recently-used map holding at most ``maxsize`` entries.

    ``on_evict(key, value)`` is called for entries pushed out (e.g. to close an env).
    """

    def __init__(self, maxsize: int, on_evict: Callable[[K, V], None] | None = None) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be >= 1, got {maxsize}")
        self.maxsize = maxsize
        self.on_evict = on_evict
        self._data: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            if key not in self._data:
                return None
            self._data.move_to_end(key)
            return self._data[key]

    def pop(self, key: K) -> V | None:
        with self._lock:
            return self._data.pop(key, None)

    def put(self, key: K, value: V) -> None:
        evicted = []
        with self._lock:
            old = self._data.get(key)
            if old is not None and old is not value:
                evicted.append((key, old))
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                evicted.append(self._data.popitem(last=False))
        if self.on_evict is not None:
            for k, v in evicted:
                self.on_evict(k, v)

    def keys(self) -> list[K]:
        with self._lock:
            return list(self._data)

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._data


# ------------------------------------------------------------------ observations and trajectories


def encode_obs(obs: np.ndarray) -> str:
    """uint8 observations ``[n, W, H, 3]`` -> base64 text (the bytes in C order)."""
    return base64.b64encode(np.ascontiguousarray(obs, dtype=np.uint8).tobytes()).decode("ascii")


def decode_obs(b64: str, grid_shape: Sequence[int]) -> np.ndarray:
    """Inverse of :func:`encode_obs`: uint8 ``[n, *grid_shape]``; bad data is a :class:`TrajectoryError`."""
    try:
        raw = base64.b64decode(b64, validate=True)
    except (ValueError, TypeError):
        raise TrajectoryError("trajectory: obs_b64 is not valid base64") from None
    shape = tuple(int(s) for s in grid_shape)
    size = math.prod(shape)
    if size == 0 or len(raw) % size:
        raise TrajectoryError(
            f"trajectory: obs_b64 holds {len(raw)} bytes, not a whole number of {shape} grids"
        )
    return np.frombuffer(raw, dtype=np.uint8).reshape(-1, *shape).copy()


def new_traj(
    model_key: str,
    spec: EnvSpec,
    seed: int | None,
    target_rtg: float,
    obs: np.ndarray,
    direction: int,
    source: str = "play",
) -> dict[str, Any]:
    """A live trajectory with no actions yet, at its first observation ``obs`` [W, H, 3]."""
    return {
        "version": TRAJ_VERSION,
        "source": source,
        "model": model_key,
        "env_spec": spec.to_dict(),
        "seed": seed,
        "target_rtg": float(target_rtg),
        "actions": [],
        "rewards": [],
        "obs_shape": list(obs.shape),
        "obs_b64": encode_obs(obs[None]),
        "directions": [int(direction)],
        "done": False,
        "terminated": False,
    }


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def check_traj(traj: Any) -> np.ndarray:
    """Validate a trajectory JSON (it comes from the browser) and return its observations ``[n_obs, W, H, 3]``.

    Any problem is a one-line :class:`TrajectoryError`.
    """

    def fail(msg: str) -> None:
        raise TrajectoryError(f"trajectory: {msg}")

    if not isinstance(traj, dict):
        fail("not a JSON object")
    if traj.get("version") != TRAJ_VERSION:
        fail(f"unknown version {traj.get('version')!r} (expected {TRAJ_VERSION})")
    if traj.get("source") not in SOURCES:
        fail(f"unknown source {traj.get('source')!r} (expected one of {', '.join(SOURCES)})")
    try:
        EnvSpec.from_dict(traj.get("env_spec"))
    except (EnvSpecError, TypeError, AttributeError) as exc:
        fail(f"bad env_spec ({exc})")
    seed = traj.get("seed")
    if seed is not None and not (_is_int(seed) and seed >= 0):
        fail(f"seed must be a non-negative integer or null, got {seed!r}")
    target = traj.get("target_rtg")
    if not (isinstance(target, (int, float)) and not isinstance(target, bool) and math.isfinite(target)):
        fail(f"target_rtg must be a finite number, got {target!r}")
    actions, rewards = traj.get("actions"), traj.get("rewards")
    if not (isinstance(actions, list) and all(_is_int(a) and 0 <= a < N_ACTIONS for a in actions)):
        fail(f"actions must be a list of action ids 0..{N_ACTIONS - 1}")
    if not (
        isinstance(rewards, list)
        and len(rewards) == len(actions)
        and all(isinstance(r, (int, float)) and not isinstance(r, bool) and math.isfinite(r) for r in rewards)
    ):
        fail("rewards must be a list of finite numbers, one per action")
    done, terminated = traj.get("done"), traj.get("terminated")
    if not (isinstance(done, bool) and isinstance(terminated, bool)) or (terminated and not done):
        fail("done and terminated must be booleans (terminated implies done)")
    shape = traj.get("obs_shape")
    if not (isinstance(shape, list) and len(shape) == 3 and all(_is_int(s) and s > 0 for s in shape)):
        fail(f"obs_shape must be [W, H, 3], got {shape!r}")
    if not isinstance(traj.get("obs_b64"), str):
        fail("obs_b64 must be a string")
    obs = decode_obs(traj["obs_b64"], shape)
    n_obs = len(actions) + (0 if done else 1)
    if len(obs) != n_obs:
        fail(f"holds {len(obs)} observations for {len(actions)} actions (expected {n_obs})")
    if n_obs == 0:
        fail("has no observations")
    dirs = traj.get("directions")
    if not (isinstance(dirs, list) and len(dirs) == n_obs and all(_is_int(d) and 0 <= d < 4 for d in dirs)):
        fail(f"directions must be {n_obs} integers 0..3")
    return obs


def traj_spec(traj: dict[str, Any]) -> EnvSpec:
    """The trajectory's env spec."""
    return EnvSpec.from_dict(traj["env_spec"])


def traj_return(traj: dict[str, Any]) -> float:
    """Sum of the rewards so far."""
    return float(sum(traj["rewards"]))


def traj_rtg(traj: dict[str, Any], step: int) -> float:
    """The return-to-go the model is conditioned on at ``step``: target minus the rewards before it."""
    return float(traj["target_rtg"]) - float(sum(traj["rewards"][:step]))


def traj_to_dataset(traj: dict[str, Any]) -> TrajectoryDataset:
    """The trajectory's taken steps as a validated one-episode dataset (a trajectory file).

    The episode is recorded as conditioned on ``target_rtg`` (policy ``ROLLOUT_POLICY``, the name
    :func:`dtinterp.interp.trajectory.episode_window` reads a target from), so ``episode_window`` on it
    rebuilds the app's windows; ``policy.params.source`` keeps where the actions came from. A live
    episode's current observation (no action yet) is not a step and is left out.
    """
    obs = check_traj(traj)
    t = len(traj["actions"])
    if t == 0:
        raise TrajectoryError("trajectory: no steps taken yet")
    last = np.zeros(t, dtype=bool)
    last[-1] = True
    terminated = bool(traj["terminated"])
    spec = traj_spec(traj)
    policy = {
        "name": ROLLOUT_POLICY,
        "params": {
            "seeds": [traj["seed"]],
            "target_rtg": [float(traj["target_rtg"])],
            "source": traj["source"],
        },
        "modes": [traj["source"]],
    }
    meta = make_metadata(spec, policy, seed=traj["seed"] if traj["seed"] is not None else 0, episodes=1)
    meta["created_by"] = f"dtinterp app ({traj['source']})"
    meta["model"] = traj["model"]
    ds = TrajectoryDataset(
        obs=obs[:t],
        directions=np.asarray(traj["directions"][:t], dtype=np.uint8),
        actions=np.asarray(traj["actions"], dtype=np.uint8),
        rewards=np.asarray(traj["rewards"], dtype=np.float32),
        terminated=last & terminated,
        truncated=last & (not terminated),
        episode_starts=np.array([0, t], dtype=np.int64),
        episode_modes=np.zeros(1, dtype=np.uint8),
        metadata=meta,
    )
    ds.validate("trajectory")
    return ds


def episode_seed(ds: TrajectoryDataset, episode: int) -> int | None:
    """The env seed that reproduces ``episode`` of ``ds``, if the metadata names one and replay confirms it.

    Recorded rollouts list their seeds; collected datasets reset episode ``i`` with ``seed + i``. The
    candidate is accepted only if resetting with it and replaying the actions gives the stored observations.
    """
    meta = ds.metadata
    params = meta.get("policy", {}).get("params", {})
    candidate = None
    seeds = params.get("seeds")
    if isinstance(seeds, list) and len(seeds) == ds.n_episodes and _is_int(seeds[episode]):
        candidate = seeds[episode]
    elif meta.get("created_by") == "dtinterp collect" and _is_int(meta.get("seed")):
        candidate = meta["seed"] + int(meta.get("source_episode", episode))
    if candidate is None or candidate < 0:
        return None
    sl = ds.episode_slice(episode)
    ok = replay_matches(ds.env_spec, candidate, ds.obs[sl], ds.directions[sl], ds.actions[sl])
    return int(candidate) if ok else None


def replay_matches(
    spec: EnvSpec, seed: int, obs: np.ndarray, directions: np.ndarray, actions: Sequence[int]
) -> bool:
    """Whether resetting ``spec``'s env with ``seed`` and taking ``actions`` reproduces ``obs``/``directions``.

    ``obs`` holds the observation before each action (and may hold one more, the state after the last).
    """
    env = make_env(spec)
    try:
        o, _ = env.reset(seed=int(seed))
        for i in range(len(obs)):
            grid, d = compact_obs(o)
            if not (np.array_equal(grid, obs[i]) and d == int(directions[i])):
                return False
            if i < len(actions):
                o, _, term, trunc, _ = env.step(int(actions[i]))
                if (term or trunc) and i + 1 < len(obs):
                    return False
        return True
    finally:
        env.close()


def dataset_to_traj(
    ds: TrajectoryDataset, episode: int, model_key: str, source: str = "dataset"
) -> dict[str, Any]:
    """Episode ``episode`` of ``ds`` as a (finished) trajectory JSON for the browser store.

    The target return is the recorded one for DT rollouts, else the episode's achieved return; the seed is
    kept only when replay confirms it (:func:`episode_seed`), so the world view can be rebuilt.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}")
    if not 0 <= episode < ds.n_episodes:
        raise TrajectoryError(f"episode {episode} out of range (the dataset has {ds.n_episodes} episodes)")
    sl = ds.episode_slice(episode)
    rewards = [float(r) for r in ds.rewards[sl]]
    target = recorded_target_rtg(ds, episode)
    if target is None:
        target = float(np.sum(np.asarray(rewards, dtype=np.float64)))
    obs = ds.obs[sl]
    return {
        "version": TRAJ_VERSION,
        "source": source,
        "model": model_key,
        "env_spec": ds.env_spec.to_dict(),
        "seed": episode_seed(ds, episode),
        "target_rtg": float(target),
        "actions": [int(a) for a in ds.actions[sl]],
        "rewards": rewards,
        "obs_shape": list(obs.shape[1:]),
        "obs_b64": encode_obs(obs),
        "directions": [int(d) for d in ds.directions[sl]],
        "done": True,
        "terminated": bool(ds.terminated[sl][-1]),
    }


# ------------------------------------------------------------------ models


@dataclass
class ModelEntry:
    """A loaded model with everything the app needs about it."""

    key: str
    """Model key: a shipped model's name or a checkpoint directory's absolute path."""
    path: Path
    model: HookedDecisionTransformer
    meta: dict[str, Any]
    spec: EnvSpec
    """The env the model plays (from its checkpoint)."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    """Held around every forward pass or cache run on ``model``."""

    @property
    def rtg_scale(self) -> float:
        return float(self.meta.get("rtg_scale", 1.0))

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def summary(self) -> str:
        """One line: env, architecture and size."""
        c = self.model.cfg
        kind = "attn-only" if c.attn_only else f"d_mlp={c.d_mlp}"
        return (
            f"{self.spec.env_id} · {c.n_layers} layers, {c.n_heads} heads, d_model={c.d_model}, {kind}, "
            f"context {c.context_len} · {self.n_params:,} parameters · RTG scale {self.rtg_scale:g}"
        )

    def card(self) -> str:
        """The checkpoint's ``model_card.md`` text, or an empty string."""
        p = self.path / "model_card.md"
        return p.read_text(encoding="utf-8") if p.is_file() else ""


def shipped_names() -> list[str]:
    """Names of the shipped models, sorted."""
    return [m.name for m in list_models()]


def default_model_key() -> str:
    """The model the app opens with: ``memory-s7`` if shipped, else the first shipped model."""
    names = shipped_names()
    if DEFAULT_MODEL in names:
        return DEFAULT_MODEL
    if not names:
        raise CheckpointError(f"no shipped models in {models_dir()}: name a checkpoint with --model")
    return names[0]


def model_key(name_or_path: str) -> str:
    """Canonical model key of a shipped name or a checkpoint path; a bad one is a :class:`CheckpointError`."""
    text = str(name_or_path).strip()
    if not text:
        raise CheckpointError("no model given: pick a shipped model or type a checkpoint directory")
    path = resolve_model(text)
    shipped = models_dir() / text
    if path == shipped and text in shipped_names():
        return text
    return str(Path(path).resolve())


def _load_entry(key: str) -> ModelEntry:
    path = resolve_model(key)
    model, meta = load_checkpoint(path)
    model.eval()
    try:
        spec = model_env_spec(meta, where=f"checkpoint {key}")
        check_model_env(model.cfg, spec, where=f"checkpoint {key}")
    except EnvSpecError as exc:
        raise CheckpointError(f"checkpoint {key}: {exc}") from None
    return ModelEntry(key=key, path=Path(path), model=model, meta=meta, spec=spec)


class ModelCache:
    """Loaded models by key, at most ``maxsize`` (least recently used dropped first)."""

    def __init__(self, maxsize: int = MAX_MODELS) -> None:
        self._lru: LRU[str, ModelEntry] = LRU(maxsize)
        self._load_lock = threading.Lock()

    def entry(self, name_or_key: str) -> ModelEntry:
        """The loaded model for a shipped name, checkpoint path or model key (loaded on first use)."""
        key = model_key(name_or_key)
        hit = self._lru.get(key)
        if hit is not None:
            return hit
        with self._load_lock:  # one load at a time: two sessions asking for one model load it once
            hit = self._lru.get(key)
            if hit is None:
                hit = _load_entry(key)
                self._lru.put(key, hit)
            return hit

    def __len__(self) -> int:
        return len(self._lru)


MODELS = ModelCache()


def model_entry(name_or_key: str) -> ModelEntry:
    """The shared :class:`ModelEntry` for a model key (see :data:`MODELS`)."""
    return MODELS.entry(name_or_key)


def get_model(name_or_key: str) -> tuple[HookedDecisionTransformer, dict[str, Any], threading.Lock]:
    """``(model, meta, lock)`` of a model key; hold ``lock`` around every computation on the model."""
    e = model_entry(name_or_key)
    return e.model, e.meta, e.lock


# ------------------------------------------------------------------ windows and predictions


def step_window(traj: dict[str, Any], entry: ModelEntry, step: int) -> DTInputs:
    """The input (batch 1) the model sees when choosing the action at ``step`` of the trajectory.

    ``step`` runs over every observation: ``0 .. len(actions) - 1`` are taken steps (the same window as
    ``episode_window`` on :func:`traj_to_dataset`), and for a live episode ``len(actions)`` is the current
    state, whose window is exactly the one a rollout feeds the model (last action = the pad action).
    """
    obs = check_traj(traj)
    if traj_spec(traj) != entry.spec:
        raise TrajectoryError(
            f"trajectory was recorded in {traj_spec(traj).to_json()} but the model plays {entry.spec.to_json()}"
        )
    if tuple(obs.shape[1:3]) != tuple(entry.model.cfg.obs_shape):
        raise TrajectoryError(
            f"trajectory has {tuple(obs.shape[1:3])} grids but the model reads {entry.model.cfg.obs_shape}"
        )
    n_obs, n_taken = len(obs), len(traj["actions"])
    if not 0 <= step < n_obs:
        raise TrajectoryError(f"trajectory: step {step} out of range 0..{n_obs - 1}")
    live = step == n_taken
    pad = [0] if n_obs > n_taken else []  # the live state's action is unknown: a placeholder
    data = SimpleNamespace(
        obs=obs,
        directions=np.asarray(traj["directions"], dtype=np.uint8),
        actions=np.asarray(traj["actions"] + pad, dtype=np.uint8),
        rewards=np.asarray(traj["rewards"] + [0.0] * len(pad), dtype=np.float32),
        episode_starts=np.array([0, n_obs], dtype=np.int64),
    )
    cfg = entry.model.cfg
    inputs = window_at(
        data,
        0,
        step,
        cfg.context_len,
        entry.rtg_scale,
        cfg.n_actions,
        cfg.max_timestep,
        rtg_override=float(traj["target_rtg"]),
    )
    if live:
        inputs.actions[:, -1] = entry.model.pad_action
    return inputs


def predict_logits(entry: ModelEntry, inputs: DTInputs) -> torch.Tensor:
    """The model's action logits at the last state of each window, ``[B, n_actions]`` (fast path, locked)."""
    with entry.lock, torch.inference_mode():
        return entry.model(inputs)[:, -1].float().cpu()


def action_probs(entry: ModelEntry, traj: dict[str, Any], step: int | None = None) -> np.ndarray:
    """The model's action distribution ``[n_actions]`` at ``step`` (default: the last observation)."""
    if step is None:
        step = len(check_traj(traj)) - 1
    logits = predict_logits(entry, step_window(traj, entry, step))
    return torch.softmax(logits[0], -1).numpy()


# ------------------------------------------------------------------ live envs


def actions_digest(actions: Sequence[int]) -> str:
    """Short digest of an action sequence (part of env-cache keys)."""
    return hashlib.sha1(bytes(int(a) for a in actions)).hexdigest()[:16]


EnvKey = tuple[str, str, str, int, int, str]


class EnvCache:
    """Envs at the current state of played episodes, per session, at most ``maxsize`` (LRU).

    An env is checked out (removed) while it is stepped or rendered and checked back in under the key of
    its new state, so no two requests ever share an env object. A miss re-simulates from the seed.
    """

    def __init__(self, maxsize: int = MAX_ENVS) -> None:
        self._lru: LRU[EnvKey, gym.Env] = LRU(maxsize, on_evict=lambda _k, env: env.close())

    @staticmethod
    def key(session: str, model: str, spec: EnvSpec, seed: int, actions: Sequence[int]) -> EnvKey:
        return (session, model, spec.to_json(), int(seed), len(actions), actions_digest(actions))

    def checkout(self, session: str, traj: dict[str, Any], n_actions: int | None = None) -> gym.Env:
        """The env after the first ``n_actions`` actions of ``traj`` (default all), removed from the cache.

        Re-simulated on a miss and checked against the trajectory's observation at that step.
        """
        if traj.get("seed") is None:
            raise TrajectoryError("trajectory has no env seed: its world cannot be rebuilt")
        actions = traj["actions"][: len(traj["actions"]) if n_actions is None else n_actions]
        spec = traj_spec(traj)
        env = self._lru.pop(self.key(session, traj["model"], spec, traj["seed"], actions))
        if env is not None:
            return env
        env = make_env(spec)
        o, _ = env.reset(seed=int(traj["seed"]))
        for a in actions:
            o, *_ = env.step(int(a))
        obs = check_traj(traj)
        if len(actions) < len(obs):
            grid, d = compact_obs(o)
            if not (np.array_equal(grid, obs[len(actions)]) and d == traj["directions"][len(actions)]):
                env.close()
                raise TrajectoryError(
                    f"trajectory does not replay from seed {traj['seed']}: step {len(actions)} differs"
                )
        return env

    def checkin(self, session: str, traj: dict[str, Any], env: gym.Env, n_actions: int | None = None) -> None:
        """Store ``env`` as the state after the first ``n_actions`` actions of ``traj`` (default all)."""
        actions = traj["actions"][: len(traj["actions"]) if n_actions is None else n_actions]
        self._lru.put(self.key(session, traj["model"], traj_spec(traj), traj["seed"], actions), env)

    def keys(self) -> list[EnvKey]:
        return self._lru.keys()

    def __len__(self) -> int:
        return len(self._lru)


ENVS = EnvCache()


# ------------------------------------------------------------------ analysis contexts


def inputs_digest(inputs: DTInputs) -> str:
    """Digest of every tensor of ``inputs`` (dtype, shape and bytes): the cache identity of a window."""
    h = hashlib.sha1()
    for name in ("obs", "directions", "rtg", "actions", "timesteps", "pad_mask"):
        t = getattr(inputs, name).detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


class ContextCache:
    """Analysis contexts keyed by (model key, inputs digest, edits), at most ``maxsize`` (LRU).

    A context memoises its clean and counterfactual caches, so analyses run one after another on the
    same window share one forward pass. Run plugins on it while holding the model entry's lock.
    """

    def __init__(self, maxsize: int = MAX_CONTEXTS) -> None:
        self._lru: LRU[tuple[str, str, tuple[str, ...]], AnalysisContext] = LRU(maxsize)

    def get(
        self, entry: ModelEntry, inputs: DTInputs, edits: Sequence[Edit] = (), description: str = ""
    ) -> AnalysisContext:
        key = (entry.key, inputs_digest(inputs), tuple(str(e) for e in edits))
        ctx = self._lru.get(key)
        if ctx is None:
            ctx = AnalysisContext(entry.model, inputs, entry.meta, edits=list(edits), description=description)
            self._lru.put(key, ctx)
        return ctx

    def __len__(self) -> int:
        return len(self._lru)


CONTEXTS = ContextCache()


def _fresh_locks_after_fork() -> None:
    """In a forked child (a background-callback worker) every lock of these caches starts released.

    A lock held by another server thread at the moment of the fork would otherwise stay held forever in
    the child's copy; each AnalysisContext's own lock is reset the same way.
    """
    for lru in (MODELS._lru, ENVS._lru, CONTEXTS._lru):
        lru._lock = threading.Lock()
    MODELS._load_lock = threading.Lock()
    for entry in MODELS._lru._data.values():  # the child has one thread: no lock needed to read
        entry.lock = threading.Lock()
    for ctx in CONTEXTS._lru._data.values():
        ctx._lock = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_fresh_locks_after_fork)


# ------------------------------------------------------------------ images


def png_data_uri(rgb: np.ndarray) -> str:
    """RGB uint8 image ``[rows, cols, 3]`` -> ``data:image/png;base64,...`` for an ``html.Img``."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(buf, format="PNG", optimize=False)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


__all__ = [
    "CONTEXTS",
    "ENVS",
    "MODELS",
    "ContextCache",
    "EnvCache",
    "InputError",
    "LRU",
    "ModelCache",
    "ModelEntry",
    "TrajectoryError",
    "action_probs",
    "actions_digest",
    "check_traj",
    "dataset_to_traj",
    "decode_obs",
    "default_model_key",
    "encode_obs",
    "episode_seed",
    "get_model",
    "inputs_digest",
    "model_entry",
    "model_key",
    "new_session_id",
    "new_traj",
    "png_data_uri",
    "predict_logits",
    "replay_matches",
    "shipped_names",
    "step_window",
    "traj_return",
    "traj_rtg",
    "traj_spec",
    "traj_to_dataset",
]
