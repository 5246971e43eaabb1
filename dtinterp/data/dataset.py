"""Trajectory datasets: the on-disk format, its validation, and per-episode statistics.

A dataset is one ``.npz`` file (a zip of ``.npy`` arrays, read with ``allow_pickle=False``):

=================  =======  ==============  ===============================================================
array              dtype    shape           meaning
=================  =======  ==============  ===============================================================
``obs``            uint8    [N, W, H, 3]    compact grid observed *before* action t ([x, y, (obj, col, st)])
``directions``     uint8    [N]             agent direction (0..3) before action t
``actions``        uint8    [N]             action taken at t
``rewards``        float32  [N]             reward received after action t
``terminated``     bool     [N]             the env terminated after action t (goal, lava, ...)
``truncated``      bool     [N]             the episode hit its step limit after action t
``episode_starts`` int64    [E + 1]         row offsets: episode e is rows ``starts[e]:starts[e + 1]``
``episode_modes``  uint8    [E]             index into ``metadata["policy"]["modes"]`` (behaviour mode)
``fact_<name>``    int16    [N]             optional (format 2): a categorical fact of the env state before
                   /float32                 action t (:mod:`envs.facts`), e.g. ``fact_cue_object``; float32
                                            for a scalar fact (``fact_goal_distance``)
``metadata``       unicode  []              JSON: format/package version, env spec, policy, seed, episodes
=================  =======  ==============  ===============================================================

Files are written atomically and byte-deterministically (fixed zip timestamps, sorted members, no
wall-clock time in the metadata), so the same collection arguments give the same bytes on disk.
Return-to-go is not stored: it is computed from ``rewards`` when training windows are cut.

**Versions.** Format 2 added the optional ``fact_<name>`` arrays; nothing else changed, so version-1
files load as they are (with no facts) and a version-1 dataset saved again keeps its version and bytes.
Facts describe the env, not the behaviour: :meth:`TrajectoryDataset.fingerprint` leaves them out, so a
dataset re-collected with facts keeps the fingerprint its checkpoints record.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from minigrid.core.actions import Actions

import dtinterp
from dtinterp.errors import DatasetError
from envs.encoding import N_COLORS, N_DIRECTIONS, N_OBJECTS
from envs.errors import EnvSpecError
from envs.facts import FACT_DTYPES as FACT_KIND_DTYPES
from envs.spec import EnvSpec, obs_shape

FORMAT_VERSION = 2
#: Versions this dtinterp reads (version 1 has no facts).
READABLE_VERSIONS = (1, 2)
N_ACTIONS = len(Actions)  # 7
#: Keys every dataset's metadata carries.
METADATA_KEYS = ("format_version", "package_version", "env_spec", "policy", "seed", "episodes")

# name -> (dtype, ndim) of every stored array except the metadata string.
_ARRAYS: dict[str, tuple[np.dtype, int]] = {
    "obs": (np.dtype(np.uint8), 4),
    "directions": (np.dtype(np.uint8), 1),
    "actions": (np.dtype(np.uint8), 1),
    "rewards": (np.dtype(np.float32), 1),
    "terminated": (np.dtype(np.bool_), 1),
    "truncated": (np.dtype(np.bool_), 1),
    "episode_starts": (np.dtype(np.int64), 1),
    "episode_modes": (np.dtype(np.uint8), 1),
}
_PER_STEP = ("obs", "directions", "actions", "rewards", "terminated", "truncated")
_FIXED_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # zip's epoch: no wall-clock time in the file
#: Prefix of the archive members that hold facts, and the dtypes a fact may have.
FACT_PREFIX = "fact_"
FACT_DTYPES = tuple(FACT_KIND_DTYPES.values())  # int16 (categorical), float32 (scalar)
_FACT_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")


@dataclass
class TrajectoryDataset:
    """Episodes of one env and one behaviour policy, stored as flat per-step arrays."""

    obs: np.ndarray
    """uint8 [N, W, H, 3]: compact grid observed before action t."""
    directions: np.ndarray
    """uint8 [N]: agent direction before action t."""
    actions: np.ndarray
    """uint8 [N]: action taken at step t."""
    rewards: np.ndarray
    """float32 [N]: reward received after action t."""
    terminated: np.ndarray
    """bool [N]: episode ended by the env after action t."""
    truncated: np.ndarray
    """bool [N]: episode cut by the step limit after action t."""
    episode_starts: np.ndarray
    """int64 [E + 1]: episode e is rows ``episode_starts[e]:episode_starts[e + 1]``."""
    episode_modes: np.ndarray
    """uint8 [E]: index into ``metadata["policy"]["modes"]`` of each episode's behaviour mode."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """JSON-able provenance: format/package version, env spec, policy, seed, episodes."""
    facts: dict[str, np.ndarray] = field(default_factory=dict)
    """Ground truth per step (format 2, optional): name -> int16 (categorical) or float32 (scalar) [N]."""

    @property
    def env_spec(self) -> EnvSpec:
        """The :class:`~envs.spec.EnvSpec` the episodes were collected in."""
        return EnvSpec.from_dict(self.metadata["env_spec"])

    @property
    def n_episodes(self) -> int:
        return len(self.episode_starts) - 1

    @property
    def n_transitions(self) -> int:
        return len(self.actions)

    @property
    def modes(self) -> tuple[str, ...]:
        """Names of the behaviour modes ``episode_modes`` indexes into."""
        return tuple(self.metadata["policy"]["modes"])

    def episode_slice(self, e: int) -> slice:
        """Rows of episode ``e`` (negative indices count from the end)."""
        n = self.n_episodes
        if not -n <= e < n:
            raise IndexError(f"episode {e} out of range for {n} episodes")
        e %= n
        return slice(int(self.episode_starts[e]), int(self.episode_starts[e + 1]))

    def episode_lengths(self) -> np.ndarray:
        """int64 [E]: steps per episode."""
        return np.diff(self.episode_starts)

    def episode_returns(self) -> np.ndarray:
        """float64 [E]: undiscounted sum of rewards per episode."""
        if self.n_episodes == 0:
            return np.zeros(0, dtype=np.float64)
        # Every episode has >= 1 step (validated), so reduceat never sees an empty segment.
        return np.add.reduceat(self.rewards.astype(np.float64), self.episode_starts[:-1])

    def success_mask(self) -> np.ndarray:
        """bool [E]: episodes with a positive return (MiniGrid pays only on success)."""
        return self.episode_returns() > 0

    def fingerprint(self) -> dict[str, Any]:
        """Identity of the data (not its metadata, nor its facts): checkpoints record it to name their
        training set."""
        h = hashlib.sha256()
        for name in sorted(_ARRAYS):
            arr = np.ascontiguousarray(getattr(self, name))
            h.update(f"{name}:{arr.dtype.str}:{arr.shape};".encode())
            h.update(arr.tobytes())
        return {
            "sha256": h.hexdigest(),
            "n_episodes": self.n_episodes,
            "n_transitions": self.n_transitions,
            "env_id": self.metadata["env_spec"]["env_id"],
        }

    def select_episodes(self, idx: np.ndarray | list[int]) -> TrajectoryDataset:
        """A new dataset holding episodes ``idx`` (in that order), e.g. a train/validation split."""
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < -self.n_episodes or idx.max() >= self.n_episodes):
            raise IndexError(f"episode indices out of range for {self.n_episodes} episodes")
        idx %= max(self.n_episodes, 1)
        lengths = self.episode_lengths()[idx]
        starts = np.zeros(len(idx) + 1, dtype=np.int64)
        np.cumsum(lengths, out=starts[1:])
        # Row indices of the selected episodes, concatenated in order.
        rows = np.repeat(self.episode_starts[idx] - starts[:-1], lengths) + np.arange(starts[-1])
        per_step = {k: getattr(self, k)[rows] for k in _PER_STEP}
        return replace(
            self,
            **per_step,
            facts={name: values[rows] for name, values in self.facts.items()},
            episode_starts=starts,
            episode_modes=self.episode_modes[idx],
            metadata={**self.metadata, "episodes": len(idx)},
        )

    def validate(self, where: str = "dataset") -> None:
        """Raise :class:`DatasetError` (prefixed with ``where``) unless every invariant of the format holds."""
        _validate(self, where)


def make_metadata(spec: EnvSpec, policy: dict[str, Any], seed: int, episodes: int) -> dict[str, Any]:
    """Metadata of a collected dataset; ``policy`` is ``{"name", "params", "modes"}``."""
    return {
        "format_version": FORMAT_VERSION,
        "package_version": dtinterp.__version__,
        "env_spec": spec.to_dict(),
        "policy": policy,
        "seed": seed,
        "episodes": episodes,
        "created_by": "dtinterp collect",
    }


def save_dataset(ds: TrajectoryDataset, path: str | os.PathLike) -> None:
    """Validate ``ds`` and write it to ``path`` atomically; same data -> byte-identical file."""
    path = Path(path)
    ds.validate(f"dataset for {path}")
    meta = json.dumps(ds.metadata, sort_keys=True, separators=(",", ":"))
    members = {name: getattr(ds, name) for name in _ARRAYS} | {"metadata": np.array(meta)}
    members |= {FACT_PREFIX + name: values for name, values in ds.facts.items()}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f, zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name in sorted(members):
                info = zipfile.ZipInfo(f"{name}.npy", date_time=_FIXED_ZIP_TIME)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.create_system = 3  # unix, whatever the host
                info.external_attr = 0o644 << 16
                with zf.open(info, "w", force_zip64=True) as member:
                    np.lib.format.write_array(
                        member, np.require(members[name], requirements="C"), allow_pickle=False
                    )
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_dataset(path: str | os.PathLike) -> TrajectoryDataset:
    """Read and fully validate a dataset; any problem is a one-line :class:`DatasetError` naming the file."""
    path = Path(path)
    where = f"dataset {str(path)!r}"
    if not path.exists():
        raise DatasetError(f"{where} does not exist")
    if not path.is_file():
        raise DatasetError(f"{where} is not a file")
    arrays: dict[str, np.ndarray] = {}
    try:
        npz = np.load(path, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise DatasetError(f"{where} is a single .npy array, not an .npz dataset archive")
        with npz:
            for name in [*_ARRAYS, "metadata"]:
                if name not in npz.files:
                    raise DatasetError(f"{where} has no {name!r} array")
                arrays[name] = npz[name]
            facts = {m[len(FACT_PREFIX) :]: npz[m] for m in sorted(npz.files) if m.startswith(FACT_PREFIX)}
    except DatasetError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError, KeyError) as exc:
        raise DatasetError(f"{where} is corrupt or not a dataset file ({_one_line(exc)})") from None

    meta_arr = arrays.pop("metadata")
    if meta_arr.ndim != 0 or meta_arr.dtype.kind != "U":
        raise DatasetError(
            f"{where}: 'metadata' must be a 0-d unicode array, got {meta_arr.dtype} {meta_arr.shape}"
        )
    try:
        metadata = json.loads(str(meta_arr[()]))
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{where}: metadata is not valid JSON ({exc.msg})") from None
    for name, (dtype, ndim) in _ARRAYS.items():
        arr = arrays[name]
        if arr.dtype != dtype or arr.ndim != ndim:
            raise DatasetError(
                f"{where}: {name!r} must be a {ndim}-d {dtype} array, got {arr.dtype} with shape {arr.shape}"
            )
    ds = TrajectoryDataset(**arrays, metadata=metadata, facts=facts)
    ds.validate(where)
    return ds


def _validate(ds: TrajectoryDataset, where: str) -> None:
    def fail(msg: str) -> None:
        raise DatasetError(f"{where}: {msg}")

    # --- metadata
    meta = ds.metadata
    if not isinstance(meta, dict):
        fail("metadata must be a JSON object")
    missing = [k for k in METADATA_KEYS if k not in meta]
    if missing:
        fail(f"metadata lacks {', '.join(missing)}")
    version = meta["format_version"]
    if type(version) is not int or version not in READABLE_VERSIONS:
        readable = ", ".join(map(str, READABLE_VERSIONS))
        fail(f"unknown format_version {version!r} (this dtinterp reads versions {readable})")
    policy = meta["policy"]
    if not (isinstance(policy, dict) and isinstance(policy.get("name"), str)):
        fail("metadata 'policy' must be an object with a 'name'")
    modes = policy.get("modes")
    if not (isinstance(modes, list) and modes and all(isinstance(m, str) for m in modes)):
        fail("metadata 'policy.modes' must be a non-empty list of names")
    if not isinstance(meta["env_spec"], dict):
        fail("metadata 'env_spec' must be an object")
    try:
        spec = EnvSpec.from_dict(meta["env_spec"])
        expected_obs = obs_shape(spec)
    except (EnvSpecError, TypeError) as exc:
        fail(f"bad env_spec in metadata: {_one_line(exc)}")

    # --- dtypes and shapes
    for name, (dtype, ndim) in _ARRAYS.items():
        arr = getattr(ds, name)
        if not isinstance(arr, np.ndarray) or arr.dtype != dtype or arr.ndim != ndim:
            got = f"{arr.dtype} with shape {arr.shape}" if isinstance(arr, np.ndarray) else type(arr).__name__
            fail(f"{name!r} must be a {ndim}-d {dtype} array, got {got}")
    n = len(ds.obs)
    for name in ("directions", "actions", "rewards", "terminated", "truncated"):
        if len(getattr(ds, name)) != n:
            fail(f"{name!r} has {len(getattr(ds, name))} rows but 'obs' has {n}")
    if ds.obs.shape[1:] != expected_obs:
        fail(f"observations have shape {ds.obs.shape[1:]} but env spec {spec.to_json()} gives {expected_obs}")

    # --- episode boundaries
    starts = ds.episode_starts
    if len(starts) < 2:
        fail("'episode_starts' must hold at least one episode (E + 1 >= 2 offsets)")
    if starts[0] != 0 or starts[-1] != n:
        fail(f"'episode_starts' must run from 0 to {n} (the number of steps), got {starts[0]}..{starts[-1]}")
    if np.any(np.diff(starts) <= 0):
        fail("'episode_starts' must be strictly increasing (every episode has >= 1 step)")
    n_ep = len(starts) - 1
    if len(ds.episode_modes) != n_ep:
        fail(f"'episode_modes' has {len(ds.episode_modes)} entries for {n_ep} episodes")
    if type(meta["episodes"]) is not int or meta["episodes"] != n_ep:
        fail(f"metadata says {meta['episodes']!r} episodes but 'episode_starts' holds {n_ep}")
    done = ds.terminated | ds.truncated
    ends = np.zeros(n, dtype=bool)
    ends[starts[1:] - 1] = True
    if np.any(done != ends):
        e = int(np.searchsorted(starts, np.flatnonzero(done != ends)[0], side="right") - 1)
        fail(f"episode {e}: terminated/truncated flags must be set exactly at its last step")

    # --- value ranges
    if n and int(ds.actions.max()) >= N_ACTIONS:
        fail(f"action {int(ds.actions.max())} out of range (MiniGrid has {N_ACTIONS} actions)")
    if n and int(ds.directions.max()) >= N_DIRECTIONS:
        fail(f"direction {int(ds.directions.max())} out of range 0..{N_DIRECTIONS - 1}")
    if n and (int(ds.obs[..., 0].max()) >= N_OBJECTS or int(ds.obs[..., 1].max()) >= N_COLORS):
        fail("observations hold an object or colour index out of range")
    if not np.all(np.isfinite(ds.rewards)):
        fail("'rewards' holds NaN or infinite values")
    if n_ep and int(ds.episode_modes.max()) >= len(modes):
        fail(f"'episode_modes' value {int(ds.episode_modes.max())} out of range for modes {modes}")

    # --- facts (format 2)
    if not isinstance(ds.facts, dict):
        fail("'facts' must map fact names to arrays")
    if ds.facts and version < 2:
        fail(f"format_version {version} has no facts, but the dataset holds {sorted(ds.facts)}")
    for name, arr in ds.facts.items():
        member = f"{FACT_PREFIX}{name}"
        if not isinstance(name, str) or not _FACT_NAME.fullmatch(name):
            fail(f"fact name {name!r} must be lower-case letters, digits and '_' (a letter first)")
        if not isinstance(arr, np.ndarray) or arr.dtype not in FACT_DTYPES or arr.ndim != 1:
            got = f"{arr.dtype} with shape {arr.shape}" if isinstance(arr, np.ndarray) else type(arr).__name__
            fail(f"{member!r} must be a 1-d int16 or float32 array, got {got}")
        if len(arr) != n:
            fail(f"{member!r} has {len(arr)} rows but 'obs' has {n}")
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
            fail(f"{member!r} holds NaN or infinite values")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


__all__ = [
    "FACT_PREFIX",
    "FORMAT_VERSION",
    "METADATA_KEYS",
    "N_ACTIONS",
    "READABLE_VERSIONS",
    "TrajectoryDataset",
    "load_dataset",
    "make_metadata",
    "save_dataset",
]
