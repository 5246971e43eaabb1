"""Benchmark: expert collection throughput against a bare MiniGrid loop, and bytes on disk per transition.

Collection (scripted expert, one process) is timed against the cheapest possible loop over the same env:
``gym.make(id)`` stepped with uniform random actions, reset on done. The ratio of env-steps per second
says what the expert's planning, observation encoding and bookkeeping cost. Both are timed in the same
run, interleaved, and the median of ``--runs`` repeats is reported. Target: ratio >= 0.5 on
MiniGrid-Dynamic-Obstacles-8x8-v0 (the expert replans every step there, as obstacles move).

Bytes per transition are measured on a saved dataset (target <= 200; an older tool stored float64
one-hot observations: 7,840 bytes per transition).

Run by hand: ``python benchmarks/collect.py`` (prints, asserts nothing).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np

import envs  # noqa: F401  (registers the custom envs for gym.make)
from dtinterp.data.collect import collect
from dtinterp.data.dataset import save_dataset
from envs.spec import EnvSpec

DEFAULT_ENVS = (
    "MiniGrid-Dynamic-Obstacles-8x8-v0",
    "MiniGrid-DoorKey-8x8-v0",
    "MiniGrid-MemoryS7FixedStart-v0",
)
TARGET_RATIO = 0.5
TARGET_BYTES = 200


def bare_loop_rate(env_id: str, steps: int, seed: int) -> float:
    """Env-steps/s of ``gym.make(env_id)`` stepped with random actions for ``steps`` steps."""
    env = gym.make(env_id)
    rng = np.random.default_rng(seed)
    actions = rng.integers(env.action_space.n, size=steps)
    env.reset(seed=seed)
    t0 = time.perf_counter()
    for a in actions:
        _, _, terminated, truncated, _ = env.step(int(a))
        if terminated or truncated:
            env.reset()
    dt = time.perf_counter() - t0
    env.close()
    return steps / dt


def collect_rate(spec: EnvSpec, episodes: int, seed: int) -> tuple[float, int]:
    """(env-steps/s, transitions) of expert collection with one worker, no progress bar."""
    t0 = time.perf_counter()
    ds = collect(spec, episodes, "expert", seed=seed, workers=1, progress=False)
    return ds.n_transitions / (time.perf_counter() - t0), ds.n_transitions


def bytes_per_transition(spec: EnvSpec, episodes: int, seed: int) -> tuple[float, int]:
    ds = collect(spec, episodes, "mixed", seed=seed, workers=1, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.npz"
        save_dataset(ds, path)
        return path.stat().st_size / ds.n_transitions, ds.n_transitions


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--envs", nargs="+", default=list(DEFAULT_ENVS))
    p.add_argument("--episodes", type=int, default=100, help="expert episodes per timed collection")
    p.add_argument("--runs", type=int, default=5, help="repeats; the median is reported")
    p.add_argument("--size-episodes", type=int, default=1000, help="mixed-policy episodes for the size check")
    args = p.parse_args()

    print(f"expert collection (workers=1) vs bare gym loop with random actions; median of {args.runs} runs")
    print(f"{'env':<36} {'collect steps/s':>16} {'bare steps/s':>14} {'ratio':>7}")
    for env_id in args.envs:
        spec = EnvSpec(env_id)
        collect(spec, 2, "expert", seed=0, progress=False)  # warm-up: imports, caches
        c_rates, b_rates = [], []
        for r in range(args.runs):
            rate, n = collect_rate(spec, args.episodes, seed=1000 * r)
            c_rates.append(rate)
            b_rates.append(bare_loop_rate(env_id, n, seed=r))
        c, b = statistics.median(c_rates), statistics.median(b_rates)
        target = f"  (target >= {TARGET_RATIO})" if env_id == DEFAULT_ENVS[0] else ""
        print(f"{env_id:<36} {c:>16,.0f} {b:>14,.0f} {c / b:>7.2f}{target}")

    spec = EnvSpec(args.envs[0])
    bpt, n = bytes_per_transition(spec, args.size_episodes, seed=0)
    print(
        f"\nbytes per transition on disk: {bpt:.1f} ({args.size_episodes} mixed episodes of {spec.env_id}, "
        f"{n} transitions; target <= {TARGET_BYTES}; float64 one-hot would be 7,840)"
    )


if __name__ == "__main__":
    main()
