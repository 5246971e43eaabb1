"""Model inputs from trajectories: the bridge between saved episodes and analyses.

A *trajectory file* is a one-episode dataset ``.npz`` in the standard dataset format
(:func:`~dtinterp.data.dataset.save_dataset` / :func:`~dtinterp.data.dataset.load_dataset`), so an episode
saved from the app, a recorded rollout and an episode cut out of a collected dataset are one format.

The window at step ``t`` is the exact input the model sees when it predicts the action of step ``t``
(:func:`~dtinterp.data.windows.window_at`). Its return-to-go depends on where the episode came from:

- a recorded rollout (``policy.name == "decision_transformer"``, written by
  :func:`~dtinterp.train.rollout.episodes_dataset`) keeps the target return it was played at, and the
  window is conditioned on ``target - rewards so far``, exactly as while playing;
- any other episode (collected demonstrations) is conditioned on its achieved return-to-go, as in training.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from dtinterp.data.dataset import TrajectoryDataset
from dtinterp.data.windows import window_at
from dtinterp.errors import DtinterpError
from dtinterp.model.hooked_dt import HookedDecisionTransformer
from dtinterp.model.inputs import DTInputs
from dtinterp.train.rollout import episodes_dataset, rollout
from envs.errors import EnvSpecError
from envs.spec import EnvSpec

#: ``metadata["policy"]["name"]`` of episodes recorded from a decision transformer's rollouts.
ROLLOUT_POLICY = "decision_transformer"
#: Per-episode lists a recorded rollout keeps in ``metadata["policy"]["params"]``.
_PER_EPISODE_PARAMS = ("seeds", "target_rtg")


class TrajectoryError(DtinterpError):
    """A trajectory, episode or step that cannot be turned into inputs for a model."""


def recorded_target_rtg(ds: TrajectoryDataset, episode: int) -> float | None:
    """The target return episode ``episode`` was played at, if ``ds`` holds recorded rollouts; else None."""
    policy = ds.metadata.get("policy", {})
    if policy.get("name") != ROLLOUT_POLICY:
        return None
    targets = policy.get("params", {}).get("target_rtg")
    if not isinstance(targets, list) or len(targets) != ds.n_episodes:
        return None
    return float(targets[episode])


def model_env_spec(meta: Mapping[str, Any], where: str = "checkpoint") -> EnvSpec:
    """The env spec a checkpoint's ``meta`` records; a missing or bad one is a :class:`TrajectoryError`."""
    if not isinstance(meta.get("env_spec"), dict):
        raise TrajectoryError(f"{where} records no env_spec: cannot tell which env the model plays")
    try:
        return EnvSpec.from_dict(meta["env_spec"])
    except (EnvSpecError, TypeError) as exc:
        raise TrajectoryError(f"{where} has a bad env_spec: {exc}") from None


def check_compatible(
    ds: TrajectoryDataset,
    model: HookedDecisionTransformer,
    env_spec: EnvSpec | None = None,
    where: str = "trajectory",
) -> None:
    """Raise :class:`TrajectoryError` unless ``ds`` was recorded in the model's env with its grid shape."""
    if env_spec is not None and ds.env_spec != env_spec:
        raise TrajectoryError(
            f"{where} was recorded in {ds.env_spec.to_json()} but the model plays {env_spec.to_json()}"
        )
    grid = tuple(ds.obs.shape[1:3])
    if grid != tuple(model.cfg.obs_shape):
        raise TrajectoryError(
            f"{where} has {grid} observation grids but the model reads {model.cfg.obs_shape}"
        )


def _check_episode(ds: TrajectoryDataset, episode: int, where: str) -> int:
    if not 0 <= episode < ds.n_episodes:
        raise TrajectoryError(f"{where}: episode {episode} out of range (it has {ds.n_episodes} episodes)")
    return int(ds.episode_lengths()[episode])


def episode_window(
    ds: TrajectoryDataset,
    episode: int,
    step: int,
    model: HookedDecisionTransformer,
    rtg_scale: float,
    env_spec: EnvSpec | None = None,
    where: str = "trajectory",
) -> DTInputs:
    """The input (batch 1) the model sees when predicting the action at ``step`` of ``episode``.

    ``step`` counts from 0 within the episode. With ``env_spec`` (the model's), a trajectory from
    another env is refused.
    """
    check_compatible(ds, model, env_spec, where)
    length = _check_episode(ds, episode, where)
    if not 0 <= step < length:
        raise TrajectoryError(f"{where}: step {step} out of range for episode {episode} of {length} steps")
    cfg = model.cfg
    return window_at(
        ds,
        episode,
        step,
        cfg.context_len,
        rtg_scale,
        cfg.n_actions,
        cfg.max_timestep,
        rtg_override=recorded_target_rtg(ds, episode),
    )


def window_ends(ds: TrajectoryDataset, episodes: Sequence[int], max_windows: int) -> list[tuple[int, int]]:
    """``(episode, step)`` of every step of ``episodes``, thinned evenly to at most ``max_windows``.

    Deterministic: the same arguments always give the same ends, always including the first step of the
    first episode and the last step of the last one.
    """
    if max_windows < 1:
        raise TrajectoryError(f"max_windows must be >= 1, got {max_windows}")
    lengths = ds.episode_lengths()
    ends = [(int(e), t) for e in episodes for t in range(int(lengths[e]))]
    if len(ends) > max_windows:
        keep = np.unique(np.round(np.linspace(0, len(ends) - 1, max_windows)).astype(np.int64))
        ends = [ends[i] for i in keep]
    return ends


def episode_windows(
    ds: TrajectoryDataset,
    episodes: Sequence[int],
    model: HookedDecisionTransformer,
    rtg_scale: float,
    max_windows: int = 256,
    env_spec: EnvSpec | None = None,
    where: str = "dataset",
) -> DTInputs:
    """A batch of windows ending at every step of ``episodes`` (in order), capped by :func:`window_ends`."""
    check_compatible(ds, model, env_spec, where)
    if len(episodes) == 0:
        raise TrajectoryError(f"{where}: no episodes chosen")
    for e in episodes:
        _check_episode(ds, int(e), where)
    windows = [
        episode_window(ds, e, t, model, rtg_scale, where=where)
        for e, t in window_ends(ds, episodes, max_windows)
    ]
    return DTInputs.cat(windows)


def extract_episode(ds: TrajectoryDataset, e: int) -> TrajectoryDataset:
    """Episode ``e`` of ``ds`` as a one-episode dataset (a trajectory file), keeping its provenance.

    Per-episode metadata of recorded rollouts (env seed, target return) is cut down to that episode, and
    ``metadata["source_episode"]`` records which episode of the original it was.
    """
    _check_episode(ds, e, "dataset")
    one = ds.select_episodes([e])
    meta = dict(one.metadata)
    policy = dict(meta.get("policy", {}))
    params = dict(policy.get("params", {}))
    for key in _PER_EPISODE_PARAMS:
        if isinstance(params.get(key), list) and len(params[key]) == ds.n_episodes:
            params[key] = [params[key][e]]
    policy["params"] = params
    meta["policy"] = policy
    meta["source_episode"] = int(e)
    one = replace(one, metadata=meta)
    one.validate(f"episode {e} of the dataset")
    return one


def rollout_trajectory(
    model: HookedDecisionTransformer, meta: Mapping[str, Any], rtg: float, seed: int, progress: bool = False
) -> TrajectoryDataset:
    """Play one greedy episode of the model in its env at target return ``rtg`` and record it.

    The result is a trajectory file's dataset; :func:`episode_window` on it rebuilds exactly the inputs
    the model saw at each step.
    """
    spec = model_env_spec(meta)
    rtg_scale = float(meta.get("rtg_scale", 1.0))
    results = rollout(
        model, spec, float(rtg), [int(seed)], num_envs=1, rtg_scale=rtg_scale, record=True, progress=progress
    )
    return episodes_dataset(results, spec)


__all__ = [
    "TrajectoryError",
    "check_compatible",
    "episode_window",
    "episode_windows",
    "extract_episode",
    "model_env_spec",
    "recorded_target_rtg",
    "rollout_trajectory",
    "window_ends",
]
