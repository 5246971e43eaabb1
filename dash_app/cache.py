"""The app's server-side state: bounded, thread-safe caches keyed so that sessions never meet.

- models: :data:`MODELS`, an LRU of :class:`ModelEntry` keyed by model key (a shipped model's name or a
  checkpoint directory's absolute path); each entry holds the :class:`~dtinterp.model.checkpoint.Checkpoint`
  and the ``threading.Lock`` that every computation on its (shared) model holds;
- live envs: :data:`ENVS`, an LRU keyed by (session id, env spec, seed, digest of the actions); on a miss
  the env is re-simulated from the seed (:func:`envs.replay.resimulate`), checked against the episode's
  observations;
- analysis contexts: :data:`CONTEXTS`, an LRU keyed by (model key, digest of the inputs, edits).

The episode itself lives in the browser (``Episode.to_json()`` in ``ids.TRAJ_STORE``); the session id is
a uuid made per page load (one per browser tab) into ``ids.SESSION_STORE``. After a fork (a background
callback's worker) every lock of these caches starts released (:func:`_fresh_locks_after_fork`).
"""

from __future__ import annotations

import hashlib
import os
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

import gymnasium as gym
import numpy as np
import torch

from dtinterp.data.episode import Episode
from dtinterp.errors import CheckpointError, EpisodeError
from dtinterp.interp.edits import Edit
from dtinterp.model.checkpoint import Checkpoint, load_checkpoint
from dtinterp.model.inputs import DTInputs
from dtinterp.model.shipped import list_models, models_dir, resolve_model
from dtinterp.plugins.api import AnalysisContext
from envs.replay import resimulate

#: Default bounds of the server-side LRUs.
MAX_MODELS = 4
MAX_ENVS = 256
#: A context holds whole activation caches: ~160 MB for 256 windows of the shipped 3-layer DoorKey agent.
MAX_CONTEXTS = 8
#: The shipped model the app opens with when none is named.
DEFAULT_MODEL = "memory-s7"

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def new_session_id() -> str:
    """A fresh per-tab session id (uuid4 hex)."""
    return uuid.uuid4().hex


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

    def values(self) -> list[V]:
        with self._lock:
            return list(self._data.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._data


# ------------------------------------------------------------------ models


@dataclass(eq=False)
class ModelEntry:
    """A loaded model, its checkpoint record, and the lock every computation on it holds."""

    key: str
    """Model key: a shipped model's name or a checkpoint directory's absolute path."""
    checkpoint: Checkpoint
    lock: threading.Lock = field(default_factory=threading.Lock)
    """Held around every forward pass or cache run on the (shared) model."""

    @property
    def model(self):  # noqa: ANN201 - HookedDecisionTransformer (imported by the checkpoint)
        return self.checkpoint.model

    @property
    def path(self) -> Path:
        assert self.checkpoint.path is not None
        return self.checkpoint.path

    def card(self) -> str:
        """The checkpoint's ``model_card.md`` text, or an empty string."""
        p = self.path / "model_card.md"
        return p.read_text(encoding="utf-8") if p.is_file() else ""

    def predict(self, inputs: DTInputs, hooks: Sequence[tuple[str, Callable]] = ()) -> torch.Tensor:
        """Action logits at the last state of each window, ``[B, n_actions]``, under the lock.

        ``hooks`` (an intervention) are attached for this forward pass only; without them the model's
        fused fast path runs.
        """
        with self.lock, torch.inference_mode():
            if not hooks:
                return self.model(inputs)[:, -1].float().cpu()
            with self.model.hooks(fwd_hooks=list(hooks)):
                return self.model(inputs)[:, -1].float().cpu()

    def action_probs(
        self, episode: Episode, steps: Sequence[int] | None = None, hooks: Sequence[tuple[str, Callable]] = ()
    ) -> np.ndarray:
        """The model's action distributions ``[len(steps), n_actions]`` (default steps: every observation)."""
        return torch.softmax(self.predict(episode.windows(self.checkpoint, steps), hooks), -1).numpy()


def shipped_names() -> list[str]:
    """Names of the shipped models, sorted."""
    return [m.name for m in list_models(on_error=lambda _path, _exc: None)]  # a broken one is left out


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
    if path == models_dir() / text and text in shipped_names():
        return text
    return str(Path(path).resolve())


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
                hit = ModelEntry(key, load_checkpoint(resolve_model(key), name=Path(key).name))
                self._lru.put(key, hit)
            return hit

    def __len__(self) -> int:
        return len(self._lru)


MODELS = ModelCache()


def model_entry(name_or_key: str) -> ModelEntry:
    """The shared :class:`ModelEntry` for a model key (see :data:`MODELS`)."""
    return MODELS.entry(name_or_key)


# ------------------------------------------------------------------ live envs


def actions_digest(actions: Sequence[int]) -> str:
    """Short digest of an action sequence (part of env-cache keys)."""
    return hashlib.sha1(bytes(int(a) for a in actions)).hexdigest()[:16]


EnvKey = tuple[str, str, int, int, str]


class EnvCache:
    """Envs at some state of played episodes, per session, at most ``maxsize`` (LRU).

    An env is checked out (removed) while it is stepped or rendered and checked back in under the key of
    its new state, so no two requests ever share an env object. A miss re-simulates from the seed.
    """

    def __init__(self, maxsize: int = MAX_ENVS) -> None:
        self._lru: LRU[EnvKey, gym.Env] = LRU(maxsize, on_evict=lambda _k, env: env.close())

    @staticmethod
    def key(session: str, episode: Episode, n_actions: int) -> EnvKey:
        actions = episode.actions[:n_actions]
        return (session, episode.env_spec.to_json(), int(episode.seed), len(actions), actions_digest(actions))

    def checkout(self, session: str, episode: Episode, n_actions: int | None = None) -> gym.Env:
        """The env after the first ``n_actions`` actions of ``episode`` (default all), removed from the cache.

        Re-simulated on a miss, every step checked against the episode's observations.
        """
        if episode.seed is None:
            raise EpisodeError("the episode has no env seed: its world cannot be rebuilt")
        n = episode.length if n_actions is None else int(n_actions)
        env = self._lru.pop(self.key(session, episode, n))
        if env is not None:
            return env
        return resimulate(
            episode.env_spec,
            episode.seed,
            episode.actions[:n],
            episode.obs[: n + 1],
            episode.directions[: n + 1],
        )

    def checkin(self, session: str, episode: Episode, env: gym.Env, n_actions: int | None = None) -> None:
        """Store ``env`` as the state after the first ``n_actions`` actions of ``episode`` (default all)."""
        n = episode.length if n_actions is None else int(n_actions)
        self._lru.put(self.key(session, episode, n), env)

    def keys(self) -> list[EnvKey]:
        return self._lru.keys()

    def __len__(self) -> int:
        return len(self._lru)


ENVS = EnvCache()


# ------------------------------------------------------------------ analysis contexts


def inputs_digest(inputs: DTInputs | None) -> str:
    """Digest of every tensor of ``inputs`` (dtype, shape and bytes): the cache identity of a window."""
    h = hashlib.sha1()
    if inputs is None:
        return "no-inputs"
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
        self, entry: ModelEntry, inputs: DTInputs | None, edits: Sequence[Edit] = (), description: str = ""
    ) -> AnalysisContext:
        key = (entry.key, inputs_digest(inputs), tuple(str(e) for e in edits))
        ctx = self._lru.get(key)
        if ctx is None:
            ctx = AnalysisContext(entry.checkpoint, inputs, edits=list(edits), description=description)
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


__all__ = [
    "CONTEXTS",
    "DEFAULT_MODEL",
    "ENVS",
    "LRU",
    "MODELS",
    "ContextCache",
    "EnvCache",
    "ModelCache",
    "ModelEntry",
    "actions_digest",
    "default_model_key",
    "inputs_digest",
    "model_entry",
    "model_key",
    "new_session_id",
    "shipped_names",
]
