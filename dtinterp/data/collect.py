"""Collect demonstration datasets by rolling out a scripted policy in a MiniGrid env.

Episode ``i`` is fully determined by ``(seed, i)``: the env is reset with ``seed + i`` and the policy
draws from ``np.random.default_rng([seed, i])``. Episodes are therefore independent of how they are
split across worker processes, and the same arguments give the same dataset for any ``workers``.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from dtinterp.data.dataset import TrajectoryDataset, make_metadata
from envs.encoding import compact_obs
from envs.policies import make_policy
from envs.spec import EnvSpec, make_env

# Work is split into contiguous chunks: at least a few per worker (slow chunks balance out) and at most
# _MAX_CHUNK episodes each (the progress bar moves, results come back in pieces).
_CHUNKS_PER_WORKER = 4
_MAX_CHUNK = 64


def collect(
    spec: EnvSpec,
    episodes: int,
    policy: str,
    seed: int,
    workers: int = 1,
    policy_params: dict[str, Any] | None = None,
    progress: bool = True,
) -> TrajectoryDataset:
    """Roll out ``episodes`` episodes of ``policy`` in ``spec``'s env and return them as a dataset.

    ``workers > 1`` spreads contiguous chunks of episodes over a process pool; the result is identical
    to ``workers=1``. ``progress`` shows a tqdm bar over episodes (on a terminal).
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    params = dict(policy_params or {})
    # Build the policy once here: bad names or params fail before any worker starts, and it describes itself.
    env = make_env(spec)
    try:
        pol = make_policy(policy, env, **params)
        params_meta = {k: v for k, v in pol.describe().items() if k != "name"}
        policy_meta = {"name": pol.name, "params": params_meta, "modes": list(pol.MODES)}
    finally:
        env.close()

    bar = tqdm(total=episodes, unit="ep", desc=f"collect {spec.env_id}", disable=None if progress else True)
    spec_dict = spec.to_dict()
    try:
        if workers == 1:
            chunks = [_collect_chunk(spec_dict, policy, params, seed, 0, episodes, bar.update)]
        else:
            chunks = _collect_parallel(spec_dict, policy, params, seed, episodes, workers, bar)
    finally:
        bar.close()

    lengths = np.concatenate([c["lengths"] for c in chunks])
    starts = np.zeros(episodes + 1, dtype=np.int64)
    np.cumsum(lengths, out=starts[1:])
    cat = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0] if k != "lengths"}
    return TrajectoryDataset(
        **cat,
        episode_starts=starts,
        metadata=make_metadata(spec, policy_meta, seed=seed, episodes=episodes),
    )


def _collect_parallel(
    spec_dict: dict, policy: str, params: dict, seed: int, episodes: int, workers: int, bar: tqdm
) -> list[dict[str, np.ndarray]]:
    """Contiguous chunks of episode indices over a spawn-context process pool, results in episode order."""
    n_chunks = min(episodes, max(workers * _CHUNKS_PER_WORKER, -(-episodes // _MAX_CHUNK)))
    bounds = np.linspace(0, episodes, n_chunks + 1).round().astype(int)
    ctx = multiprocessing.get_context("spawn")
    results: dict[int, dict[str, np.ndarray]] = {}
    with ProcessPoolExecutor(max_workers=min(workers, n_chunks), mp_context=ctx) as pool:
        futures = {
            pool.submit(_collect_chunk, spec_dict, policy, params, seed, int(lo), int(hi)): k
            for k, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:]))
        }
        try:
            for fut in as_completed(futures):
                k = futures[fut]
                results[k] = fut.result()
                bar.update(int(bounds[k + 1] - bounds[k]))
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return [results[k] for k in range(n_chunks)]


def _collect_chunk(
    spec_dict: dict, policy: str, params: dict, seed: int, start: int, stop: int, on_episode=None
) -> dict[str, np.ndarray]:
    """Episodes ``start..stop-1`` as flat arrays plus per-episode ``lengths`` (top level: picklable)."""
    env = make_env(EnvSpec.from_dict(spec_dict))
    pol = make_policy(policy, env, **params)
    obs_l, dir_l, act_l, rew_l, term_l, trunc_l = [], [], [], [], [], []
    lengths, modes = [], []
    try:
        for i in range(start, stop):
            obs, _ = env.reset(seed=seed + i)
            pol.reset(env, np.random.default_rng([seed, i]))
            modes.append(pol.MODES.index(pol.current_mode))
            t = 0
            while True:
                grid, direction = compact_obs(obs)
                action = int(pol.act(env))
                obs_l.append(grid.copy())
                dir_l.append(direction)
                act_l.append(action)
                obs, reward, terminated, truncated, _ = env.step(action)
                rew_l.append(reward)
                term_l.append(terminated)
                trunc_l.append(truncated)
                t += 1
                if terminated or truncated:
                    break
            lengths.append(t)
            if on_episode is not None:
                on_episode(1)
    finally:
        env.close()
    return {
        "obs": np.stack(obs_l).astype(np.uint8, copy=False),
        "directions": np.asarray(dir_l, dtype=np.uint8),
        "actions": np.asarray(act_l, dtype=np.uint8),
        "rewards": np.asarray(rew_l, dtype=np.float32),
        "terminated": np.asarray(term_l, dtype=bool),
        "truncated": np.asarray(trunc_l, dtype=bool),
        "episode_modes": np.asarray(modes, dtype=np.uint8),
        "lengths": np.asarray(lengths, dtype=np.int64),
    }
