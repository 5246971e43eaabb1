"""Collect demonstration datasets by rolling out a scripted policy in a MiniGrid env.

Episode ``i`` is fully determined by ``(seed, i)``: the env is reset with ``seed + i`` and the policy
draws from ``np.random.default_rng([seed, i])``. Episodes are therefore independent of how they are
split across worker processes, and the same arguments give the same dataset for any ``workers``.

Each step also records the env's ground-truth facts (:mod:`envs.facts`: the Memory cue, the DoorKey
door, ...) next to its observation. Reading them draws no random numbers, so a dataset collected with
facts holds the same episodes (and fingerprint) as one collected without. :func:`add_facts` gives an
older dataset its facts by replaying every episode from its seed.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from dtinterp.data.dataset import FORMAT_VERSION, TrajectoryDataset, make_metadata
from dtinterp.data.minari_io import episode_seeds
from dtinterp.errors import DatasetError
from dtinterp.limits import check_env_sizes
from envs.encoding import compact_obs
from envs.facts import FactRecorder
from envs.policies import make_policy
from envs.replay import ReplayMismatch
from envs.spec import EnvSpec, make_env

# Work is split into contiguous chunks: at least a few per worker (slow chunks balance out) and at most
# _MAX_CHUNK episodes each (the progress bar moves, results come back in pieces).
_CHUNKS_PER_WORKER = 4
_MAX_CHUNK = 64
_FACT_KEY = "fact:"  # prefix of the fact arrays in a chunk's result


def collect(
    spec: EnvSpec,
    episodes: int,
    policy: str,
    seed: int,
    workers: int = 1,
    policy_params: dict[str, Any] | None = None,
    progress: bool = True,
    facts: bool = True,
) -> TrajectoryDataset:
    """Roll out ``episodes`` episodes of ``policy`` in ``spec``'s env and return them as a dataset.

    ``workers > 1`` spreads contiguous chunks of episodes over a process pool; the result is identical
    to ``workers=1``. ``progress`` shows a tqdm bar over episodes (on a terminal). ``facts`` records the
    env's ground-truth facts at every step (:mod:`envs.facts`).
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    params, policy_meta = prepare(spec, episodes, policy, policy_params)

    bar = tqdm(total=episodes, unit="ep", desc=f"collect {spec.env_id}", disable=None if progress else True)
    spec_dict = spec.to_dict()
    try:
        if workers == 1:
            chunks = [collect_chunk(spec_dict, policy, params, seed, 0, episodes, facts, bar.update)]
        else:
            chunks = _collect_parallel(spec_dict, policy, params, seed, episodes, workers, facts, bar)
    finally:
        bar.close()

    return assemble(spec, policy_meta, seed, episodes, chunks)


def prepare(
    spec: EnvSpec, episodes: int, policy: str, policy_params: dict[str, Any] | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(params, policy metadata)`` of a collection, after every check that needs no episode.

    Sizes are checked before any env is built with them (MiniGrid allocates a view's observation space up
    front); the policy is built once, so bad names or params fail before any worker starts.
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    check_env_sizes(spec.env_id, spec.view_size, spec.fully_observed, spec.max_steps, error=DatasetError)
    params = dict(policy_params or {})
    env = make_env(spec)
    try:
        pol = make_policy(policy, env, **params)
        params_meta = {k: v for k, v in pol.describe().items() if k != "name"}
        return params, {"name": pol.name, "params": params_meta, "modes": list(pol.MODES)}
    finally:
        env.close()


def assemble(
    spec: EnvSpec, policy_meta: dict[str, Any], seed: int, episodes: int, chunks: list[dict[str, np.ndarray]]
) -> TrajectoryDataset:
    """Results of :func:`collect_chunk` for consecutive episode ranges, in order, as one dataset."""
    lengths = np.concatenate([c["lengths"] for c in chunks])
    starts = np.zeros(episodes + 1, dtype=np.int64)
    np.cumsum(lengths, out=starts[1:])
    cat = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0] if k != "lengths"}
    fact_arrays = {k[len(_FACT_KEY) :]: cat.pop(k) for k in list(cat) if k.startswith(_FACT_KEY)}
    return TrajectoryDataset(
        **cat,
        episode_starts=starts,
        metadata=make_metadata(spec, policy_meta, seed=seed, episodes=episodes),
        facts=fact_arrays,
    )


def _collect_parallel(
    spec_dict: dict,
    policy: str,
    params: dict,
    seed: int,
    episodes: int,
    workers: int,
    facts: bool,
    bar: tqdm,
) -> list[dict[str, np.ndarray]]:
    """Contiguous chunks of episode indices over a spawn-context process pool, results in episode order."""
    n_chunks = min(episodes, max(workers * _CHUNKS_PER_WORKER, -(-episodes // _MAX_CHUNK)))
    bounds = np.linspace(0, episodes, n_chunks + 1).round().astype(int)
    ctx = multiprocessing.get_context("spawn")
    results: dict[int, dict[str, np.ndarray]] = {}
    with ProcessPoolExecutor(max_workers=min(workers, n_chunks), mp_context=ctx) as pool:
        futures = {
            pool.submit(collect_chunk, spec_dict, policy, params, seed, int(lo), int(hi), facts): k
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


def collect_chunk(
    spec_dict: dict,
    policy: str,
    params: dict,
    seed: int,
    start: int,
    stop: int,
    facts: bool = True,
    on_episode=None,
) -> dict[str, np.ndarray]:
    """Episodes ``start..stop-1`` as flat arrays plus per-episode ``lengths`` (top level: picklable)."""
    env = make_env(EnvSpec.from_dict(spec_dict))
    pol = make_policy(policy, env, **params)
    recorder = FactRecorder(env) if facts else None
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
                if recorder is not None:
                    recorder.record(env)
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
    } | ({} if recorder is None else {_FACT_KEY + k: v for k, v in recorder.arrays().items()})


def add_facts(ds: TrajectoryDataset, progress: bool = True) -> TrajectoryDataset:
    """``ds`` with the env's facts at every step, found by replaying each episode from its seed.

    For datasets collected before facts were recorded (format 1) or without them. The episode seeds are
    the ones the metadata records (:func:`~dtinterp.data.minari_io.episode_seeds`); an episode without a
    seed, or whose replay does not reproduce its stored observations step by step, is a one-line
    :class:`DatasetError`. The result is a format-2 dataset with the same steps (and fingerprint).
    """
    spec = ds.env_spec
    seeds = episode_seeds(ds)
    parts: list[dict[str, np.ndarray]] = []
    env = make_env(spec)
    recorder = FactRecorder(env)
    try:
        for e in tqdm(
            range(ds.n_episodes), unit="ep", desc="replay for facts", disable=None if progress else True
        ):
            if seeds[e] is None:
                raise DatasetError(f"episode {e} records no env seed: its facts cannot be replayed")
            sl = ds.episode_slice(e)
            recorder = FactRecorder(env)
            obs, _ = env.reset(seed=int(seeds[e]))
            for t, row in enumerate(range(sl.start, sl.stop)):
                grid, direction = compact_obs(obs)
                if not (np.array_equal(grid, ds.obs[row]) and direction == ds.directions[row]):
                    raise DatasetError(f"episode {e}: {ReplayMismatch(seeds[e], t)}")
                recorder.record(env)
                obs, *_ = env.step(int(ds.actions[row]))
            parts.append(recorder.arrays())
    finally:
        env.close()
    facts = {f.name: np.concatenate([p[f.name] for p in parts]) for f in recorder.facts}
    out = replace(ds, metadata={**ds.metadata, "format_version": FORMAT_VERSION}, facts=facts)
    out.validate("dataset with facts")
    return out
