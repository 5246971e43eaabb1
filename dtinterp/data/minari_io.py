"""Datasets in and out of Minari, the Farama standard for offline-RL data (``pip install dtinterp[minari]``).

Everything is offline: datasets are read from and written to a local Minari root (``root``, else
``MINARI_DATASETS_PATH``, else ``~/.minari/datasets``) and nothing is ever downloaded.

How a :class:`~dtinterp.data.dataset.TrajectoryDataset` maps onto a Minari dataset:

================================  ===================================================================
ours                              Minari
================================  ===================================================================
``obs [N, W, H, 3]`` uint8        ``observations["image"]``: MiniGrid's own compact grid, stored raw
                                  in Arrow (never JPEG)
``directions [N]``                ``observations["direction"]``, ``Discrete(4)``
``actions`` / ``rewards``         ``actions`` (the env's ``Discrete`` space) / ``rewards``
``terminated`` / ``truncated``    ``terminations`` / ``truncations``
``facts`` (``fact_<name> [N]``)   ``infos["fact_<name>"]``, one per observation (as ``[T + 1, 1]``)
``metadata`` (JSON)               the dataset metadata key ``"dtinterp"`` (with ``episode_modes``)
``env_spec``                      Minari's gymnasium ``env_spec``: the env id, ``max_steps`` and
                                  ``agent_view_size`` as kwargs, ``FullyObsWrapper`` as a wrapper
================================  ===================================================================

**The final observation.** Our format keeps the observation *before* each action; a Minari episode of
``T`` steps holds ``T + 1`` observations, the last one seen after the final action. Our datasets do not
have it, so the export repeats the last stored observation and says so in the metadata
(``dtinterp.final_observation == "repeat"``): a Minari consumer that bootstraps from the final
observation of a truncated episode must re-simulate it from the episode's ``seed`` (recorded per episode
when known). Re-simulating it on export would cost a full replay of every episode and is impossible for
data without seeds; training a decision transformer never reads it. The facts of the state after the
last action are missing the same way and are repeated the same way (Minari's ``infos`` hold one entry
per observation: the reset's, then each step's). Imports drop the final observation and final facts of
every episode, so ``.npz -> Minari -> .npz`` gives back the same arrays, facts and metadata.

Datasets made by other tools (Minari's ``DataCollector`` on a MiniGrid env) import as long as their
observations are MiniGrid dicts (``image`` and ``direction``); their env spec is read from Minari's, the
behaviour policy is named by the dataset's ``algorithm_name``, and recorded reset seeds are kept as the
per-episode ``seeds`` policy parameter (so :meth:`Episode.from_dataset` can re-simulate them).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import os
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from dtinterp.data.dataset import FACT_PREFIX, TrajectoryDataset, load_dataset, make_metadata, save_dataset
from dtinterp.errors import DatasetError, DtinterpError
from envs.encoding import N_DIRECTIONS
from envs.errors import EnvSpecError
from envs.spec import EnvSpec, make_env, obs_shape

#: Prefix of a ``--data`` argument that names a Minari dataset instead of an ``.npz`` file.
MINARI_PREFIX = "minari:"
#: Storage format of exported datasets: Arrow keeps uint8 grids raw and needs no extra package.
DATA_FORMAT = "arrow"
#: Dataset metadata key that holds our metadata (and what the export had to make up).
META_KEY = "dtinterp"
_FULLY_OBS = "minigrid.wrappers:FullyObsWrapper"
_VIEW_SIZE = "minigrid.wrappers:ViewSizeWrapper"


def export_minari(
    ds: TrajectoryDataset,
    dataset_id: str,
    root: str | os.PathLike | None = None,
    description: str | None = None,
) -> Path:
    """Write ``ds`` as the Minari dataset ``dataset_id`` (``namespace/name-v0``); returns its directory.

    The id must be new under the root. A failed export leaves nothing behind.
    """
    minari = _import_minari()
    from minari.data_collector.episode_buffer import EpisodeBuffer

    ds.validate("dataset to export")
    _check_id(dataset_id)
    spec = ds.env_spec
    with _datasets_root(root) as base:
        target = base / dataset_id
        if target.exists():
            raise DatasetError(
                f"Minari dataset {dataset_id!r} already exists in {base} (choose a new id or version)"
            )
        env = make_env(spec)
        try:
            action_space = env.action_space
        finally:
            env.close()
        W, H, _ = ds.obs.shape[1:]
        obs_space = gym.spaces.Dict(
            {
                "direction": gym.spaces.Discrete(N_DIRECTIONS),
                "image": gym.spaces.Box(0, 255, (W, H, 3), dtype=np.uint8),
            }
        )
        seeds = episode_seeds(ds)
        buffers = []
        for e in range(ds.n_episodes):
            sl = ds.episode_slice(e)
            # T + 1 observations: the last stored one stands in for the unrecorded final observation.
            image = np.concatenate([ds.obs[sl], ds.obs[sl][-1:]])  # (T + 1, W, H, 3)
            direction = np.concatenate([ds.directions[sl], ds.directions[sl][-1:]]).astype(np.int64)
            # [T + 1, 1]: Minari's Arrow storage cannot read back 1-d info arrays.
            infos = {
                FACT_PREFIX + k: np.concatenate([v[sl], v[sl][-1:]])[:, None] for k, v in ds.facts.items()
            }
            buffers.append(
                EpisodeBuffer(
                    seed=seeds[e],
                    observations={"direction": direction, "image": image},
                    actions=ds.actions[sl].astype(np.int64),
                    rewards=ds.rewards[sl],
                    terminations=ds.terminated[sl],
                    truncations=ds.truncated[sl],
                    infos=infos or None,
                )
            )
        policy = ds.metadata["policy"]["name"]
        summary = f"{ds.n_episodes} episodes of {spec.env_id} by the {policy!r} policy (dtinterp export)"
        kwargs: dict[str, Any] = {}
        if "jpeg_encoding" in inspect.signature(minari.create_dataset_from_buffers).parameters:
            kwargs["jpeg_encoding"] = False  # grids are categorical: lossless only
        try:
            with warnings.catch_warnings():
                # Minari warns about every optional field left empty (author, e-mail, permalink, ...).
                warnings.simplefilter("ignore", UserWarning)
                dataset = minari.create_dataset_from_buffers(
                    dataset_id,
                    [],
                    env=_gym_spec(spec),
                    algorithm_name=f"dtinterp/{policy}",
                    description=description or summary,
                    observation_space=obs_space,
                    action_space=action_space,
                    data_format=DATA_FORMAT,
                    **kwargs,
                )
                _write_episodes(dataset.storage, buffers)
                dataset.storage.update_metadata(
                    {
                        META_KEY: {
                            "metadata": ds.metadata,
                            "episode_modes": ds.episode_modes.tolist(),
                            "facts": sorted(ds.facts),
                            "final_observation": "repeat",
                        }
                    }
                )
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
    return target


def import_minari(dataset_id: str, root: str | os.PathLike | None = None) -> TrajectoryDataset:
    """Read the local Minari dataset ``dataset_id`` as a validated dataset (never downloads)."""
    _import_minari()
    from minari.dataset.minari_dataset import MinariDataset
    from minari.dataset.minari_storage import MinariStorage

    _check_id(dataset_id)
    where = f"Minari dataset {dataset_id!r}"
    with _datasets_root(root) as base:
        data_path = base / dataset_id / "data"
        if not data_path.is_dir():
            raise DatasetError(f"{where} not found in {base} (offline: nothing is downloaded)")
        try:
            dataset = MinariDataset(data_path)
            raw = MinariStorage.read_raw_metadata(data_path)
        except (ValueError, OSError, KeyError, AssertionError) as exc:
            raise DatasetError(f"{where} in {base} cannot be read ({_one_line(exc)})") from None
        ours = raw.get(META_KEY)
        fact_names = ours.get("facts", []) if isinstance(ours, dict) else []
        columns = _read_episodes(dataset, where, fact_names)

    facts = {name: columns.pop(FACT_PREFIX + name) for name in fact_names}
    if isinstance(ours, dict):
        metadata, modes = ours["metadata"], np.asarray(ours["episode_modes"], dtype=np.uint8)
    else:
        metadata, modes = (
            _foreign_metadata(dataset, raw, columns, where),
            np.zeros(len(columns["lengths"]), np.uint8),
        )
    starts = np.zeros(len(columns["lengths"]) + 1, dtype=np.int64)
    np.cumsum(columns["lengths"], out=starts[1:])
    ds = TrajectoryDataset(
        obs=columns["obs"],
        directions=columns["directions"],
        actions=columns["actions"],
        rewards=columns["rewards"],
        terminated=columns["terminated"],
        truncated=columns["truncated"],
        episode_starts=starts,
        episode_modes=modes,
        metadata=metadata,
        facts=facts,
    )
    ds.validate(where)
    return ds


def load_training_data(source: str | os.PathLike, root: str | os.PathLike | None = None) -> TrajectoryDataset:
    """The dataset ``--data`` names: ``minari:NAMESPACE/NAME-v0`` (local Minari) or an ``.npz`` path."""
    text = str(source)
    if text.startswith(MINARI_PREFIX):
        return import_minari(text[len(MINARI_PREFIX) :], root=root)
    return load_dataset(source)


def episode_seeds(ds: TrajectoryDataset) -> list[int | None]:
    """The env reset seed of each episode where the metadata records it, else None.

    Rollout and recorded datasets list them (policy parameter ``seeds``); ``dtinterp collect`` seeds
    episode ``i`` with ``seed + i``.
    """
    meta = ds.metadata
    listed = meta["policy"].get("params", {}).get("seeds")
    if isinstance(listed, list) and len(listed) == ds.n_episodes:
        return [s if _is_seed(s) else None for s in listed]
    if meta.get("created_by") == "dtinterp collect" and _is_seed(meta.get("seed")):
        return [meta["seed"] + i for i in range(ds.n_episodes)]
    return [None] * ds.n_episodes


# ------------------------------------------------------------------ CLI


def cmd_export_minari(args: argparse.Namespace) -> int:
    """``dtinterp data export-minari FILE.npz --id NS/NAME-v0 [--root DIR]``."""
    ds = load_dataset(args.file)
    path = export_minari(ds, args.dataset_id, root=args.root)
    print(f"wrote Minari dataset {args.dataset_id} to {path}")
    print(f"  episodes      {ds.n_episodes}")
    print(f"  transitions   {ds.n_transitions}")
    return 0


def cmd_import_minari(args: argparse.Namespace) -> int:
    """``dtinterp data import-minari NS/NAME-v0 --out FILE.npz [--root DIR]``."""
    from dtinterp.data.commands import format_info
    from dtinterp.outputs import check_output, write_outputs

    out = check_output("--out", args.out, (".npz",))
    ds = import_minari(args.dataset_id, root=args.root)
    write_outputs([("--out", out, lambda tmp: save_dataset(ds, tmp))])
    print(format_info(ds, title=f"wrote {out} (from Minari dataset {args.dataset_id})"))
    return 0


# ------------------------------------------------------------------ helpers


def _import_minari() -> Any:
    try:
        import minari
    except ImportError:
        raise DtinterpError("Minari is not installed: pip install dtinterp[minari]") from None
    return minari


def _check_id(dataset_id: str) -> None:
    from minari.dataset.minari_dataset import parse_dataset_id

    try:
        parse_dataset_id(dataset_id)
    except (ValueError, TypeError):
        raise DatasetError(
            f"Minari dataset id {dataset_id!r} is malformed "
            "(expected NAMESPACE/NAME-vVERSION, e.g. dtinterp/doorkey-v0)"
        ) from None


@contextlib.contextmanager
def _datasets_root(root: str | os.PathLike | None) -> Iterator[Path]:
    """Minari reads its root from ``MINARI_DATASETS_PATH``: point it at ``root`` for the duration."""
    from minari.storage.datasets_root_dir import get_dataset_path

    if root is None:
        yield Path(get_dataset_path())
        return
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(Path(root).resolve())
    try:
        yield Path(get_dataset_path())
    finally:
        if old is None:
            del os.environ["MINARI_DATASETS_PATH"]
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


def _write_episodes(storage: Any, buffers: list) -> None:
    """``storage.update_episodes(buffers)``, in linear time.

    Minari re-measures the size of the whole dataset directory after writing each episode, which makes a
    plain write quadratic in the number of episodes (minutes for a few thousand); the size is measured
    once at the end instead.
    """
    storage.get_size = lambda: 0.0
    try:
        storage.update_episodes(buffers)
    finally:
        del storage.get_size
    storage.update_metadata({"dataset_size": storage.get_size()})


def _gym_spec(spec: EnvSpec) -> gym.envs.registration.EnvSpec:
    """Minari's env spec for ``spec``: ``gym.make`` on it builds the env that ``make_env(spec)`` builds."""
    base = gym.spec(spec.env_id)
    kwargs = dict(base.kwargs)
    if spec.max_steps is not None:
        kwargs["max_steps"] = spec.max_steps
    wrappers: tuple = ()
    if spec.fully_observed:
        wrappers = (gym.envs.registration.WrapperSpec("FullyObsWrapper", _FULLY_OBS, {}),)
    else:
        default = gym.make(spec.env_id)
        try:
            if spec.view_size != default.unwrapped.agent_view_size:
                kwargs["agent_view_size"] = spec.view_size
        finally:
            default.close()
    return dataclasses.replace(base, kwargs=kwargs, additional_wrappers=wrappers)


def _our_spec(gym_spec: gym.envs.registration.EnvSpec | None, grid: tuple[int, ...], where: str) -> EnvSpec:
    """Our :class:`EnvSpec` for a foreign dataset's gymnasium spec and observation grid ``(W, H, 3)``."""
    if gym_spec is None:
        raise DatasetError(f"{where} records no env spec: cannot tell which MiniGrid env it comes from")
    kwargs = gym_spec.kwargs or {}
    entry_points = {w.entry_point: (w.kwargs or {}) for w in gym_spec.additional_wrappers}
    view = kwargs.get("agent_view_size", entry_points.get(_VIEW_SIZE, {}).get("agent_view_size", 7))
    max_steps = kwargs.get("max_steps")
    try:
        spec = EnvSpec(
            env_id=gym_spec.id,
            view_size=int(view),
            fully_observed=_FULLY_OBS in entry_points,
            max_steps=None if max_steps is None else int(max_steps),
        )
        expected = obs_shape(spec)
    except (EnvSpecError, TypeError, ValueError) as exc:
        raise DatasetError(f"{where}: its env is not one dtinterp can play ({_one_line(exc)})") from None
    if tuple(grid) != expected:
        raise DatasetError(
            f"{where}: observations are {tuple(grid)} grids but {spec.to_json()} gives {expected}"
        )
    return spec


def _read_episodes(dataset: Any, where: str, fact_names: list[str]) -> dict[str, Any]:
    """Every episode's steps as flat arrays in our layout (the final observation of each dropped)."""
    keys = ("obs", "directions", "actions", "rewards", "terminated", "truncated")
    parts: dict[str, list] = {k: [] for k in (*keys, *(FACT_PREFIX + name for name in fact_names))}
    lengths, cut = [], []
    for e, ep in enumerate(dataset.iterate_episodes()):
        obs = ep.observations
        if not (isinstance(obs, dict) and "image" in obs and "direction" in obs):
            raise DatasetError(f"{where}: observations are not MiniGrid dicts with 'image' and 'direction'")
        t = len(ep.rewards)
        if t == 0:
            raise DatasetError(f"{where}: episode {e} has no steps")
        image, direction = np.asarray(obs["image"]), np.asarray(obs["direction"]).reshape(-1)
        if len(image) != t + 1 or len(direction) != t + 1:
            raise DatasetError(
                f"{where}: episode {e} has {len(image)} observations for {t} steps (expected {t + 1})"
            )
        if image.ndim != 4 or image.shape[-1] != 3:
            raise DatasetError(
                f"{where}: 'image' observations must be [W, H, 3] grids, got {image.shape[1:]}"
            )
        terminated = np.asarray(ep.terminations, dtype=bool).copy()
        truncated = np.asarray(ep.truncations, dtype=bool).copy()
        if not (terminated[-1] or truncated[-1]):
            truncated[-1] = True  # an episode cut off by the end of collection: truncated, and said so
            cut.append(e)
        parts["obs"].append(image[:-1].astype(np.uint8))
        parts["directions"].append(direction[:-1].astype(np.uint8))
        parts["actions"].append(np.asarray(ep.actions).reshape(-1).astype(np.uint8))
        parts["rewards"].append(np.asarray(ep.rewards, dtype=np.float32).reshape(-1))
        parts["terminated"].append(terminated)
        parts["truncated"].append(truncated)
        for name in fact_names:
            values = ep.infos.get(FACT_PREFIX + name) if isinstance(ep.infos, dict) else None
            if values is None or len(values) != t + 1:
                raise DatasetError(f"{where}: episode {e} lacks the fact {name!r} its metadata lists")
            parts[FACT_PREFIX + name].append(np.asarray(values).reshape(t + 1)[:-1])
        lengths.append(t)
    if not lengths:
        raise DatasetError(f"{where} holds no episodes")
    columns: dict[str, Any] = {k: np.concatenate(v) for k, v in parts.items()}
    columns["lengths"] = np.asarray(lengths, dtype=np.int64)
    columns["cut_episodes"] = cut
    return columns


def _foreign_metadata(dataset: Any, raw: dict, columns: dict, where: str) -> dict[str, Any]:
    """Our metadata for a dataset that another tool wrote: env spec, policy, seeds, provenance."""
    spec = _our_spec(dataset.env_spec, columns["obs"].shape[1:], where)
    n = len(columns["lengths"])
    seeds = [m.get("seed") for m in dataset.storage.get_episode_metadata(range(n))]
    seeds = [int(s) if _is_seed(s) else None for s in seeds]
    params: dict[str, Any] = {"minari_dataset": dataset.id}
    if any(s is not None for s in seeds):
        params["seeds"] = seeds
    name = raw.get("algorithm_name") or "minari"
    policy = {"name": str(name), "params": params, "modes": [str(name)]}
    meta = make_metadata(spec, policy, seed=next((s for s in seeds if s is not None), 0), episodes=n)
    meta["created_by"] = "dtinterp import-minari"
    meta["minari"] = {
        "dataset_id": dataset.id,
        "minari_version": raw.get("minari_version"),
        "final_observation": "dropped",
        **({"truncated_on_import": columns["cut_episodes"]} if columns["cut_episodes"] else {}),
    }
    return meta


def _is_seed(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


__all__ = [
    "MINARI_PREFIX",
    "cmd_export_minari",
    "cmd_import_minari",
    "episode_seeds",
    "export_minari",
    "import_minari",
    "load_training_data",
]
