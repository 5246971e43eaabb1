"""Benchmark: collection and evaluation throughput with 1 and 2 workers, on a process pool and on Ray.

Collection is measured in env-steps/s of :func:`~dtinterp.scale.backend.collect_parallel` (scripted
``--policy`` in ``--env``), evaluation in episodes/s of :func:`~dtinterp.scale.backend.evaluate_parallel`
(the shipped ``--checkpoint`` at target return 1, greedy). Each is run on four backends: a local process
pool with 1 and 2 workers, and one local Ray instance with 2 CPUs whose tasks reserve 2 CPUs (one at a
time) or 1 CPU (two side by side). Every backend is warmed up first (workers started, torch imported),
then timed ``--runs`` times in a row (Ray replaces idle workers when the shape of its tasks changes, so
interleaving backends would time torch imports); the median is printed as a ratio to the 1-worker local
run. All backends must give identical results (same bytes, same numbers): that is checked and printed.

On a 2-core machine the 2-worker ratios are bounded by 2 and lowered by anything else running.

Run by hand: ``python benchmarks/scale.py [--no-ray]`` (prints, asserts nothing).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from dtinterp.scale.backend import Backend, LocalBackend, RayBackend, collect_parallel, evaluate_parallel
from envs.spec import EnvSpec

ROOT = Path(__file__).resolve().parent.parent


def backends(with_ray: bool) -> dict[str, Callable[[], Backend]]:
    """Name -> constructor; the Ray ones share the one instance the first of them starts."""
    out: dict[str, Callable[[], Backend]] = {
        "local, 1 worker": lambda: LocalBackend(1),
        "local, 2 workers": lambda: LocalBackend(2),
    }
    if with_ray:
        out["ray, 1 worker"] = lambda: RayBackend(num_cpus=2, cpus_per_task=2)
        out["ray, 2 workers"] = lambda: RayBackend(cpus_per_task=1)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", default="MiniGrid-DoorKey-8x8-v0")
    p.add_argument("--policy", default="mixed")
    p.add_argument("--episodes", type=int, default=256, help="episodes per timed collection")
    p.add_argument("--chunk", type=int, default=32, help="episodes per collection task")
    p.add_argument("--checkpoint", default=str(ROOT / "trained_models" / "doorkey-6x6"))
    p.add_argument("--eval-episodes", type=int, default=128, help="episodes per timed evaluation")
    p.add_argument("--num-envs", type=int, default=16, help="envs per rollout (and seeds per task)")
    p.add_argument("--runs", type=int, default=3, help="repeats; the median is reported")
    p.add_argument("--no-ray", action="store_true", help="only the local process pool")
    args = p.parse_args()
    torch.set_num_threads(1)  # one thread per worker everywhere, the driver included
    spec = EnvSpec(args.env)

    made: dict[str, Backend] = {}
    steps: dict[str, list[float]] = {}
    episodes: dict[str, list[float]] = {}
    datasets, evaluations = {}, {}
    for name, make in backends(not args.no_ray).items():
        made[name] = backend = make()
        steps[name], episodes[name] = [], []
        # Warm-up: start the workers and import what the tasks need, in each of them.
        collect_parallel(spec, 4, args.policy, 0, backend=backend, chunk_size=1, progress=False)
        evaluate_parallel(args.checkpoint, [1.0], 4, 0, 1, backend=backend, chunk_size=1, progress=False)
        for r in range(args.runs):
            t0 = time.perf_counter()
            ds = collect_parallel(
                spec,
                args.episodes,
                args.policy,
                1000 * r,
                backend=backend,
                chunk_size=args.chunk,
                progress=False,
            )
            steps[name].append(ds.n_transitions / (time.perf_counter() - t0))
            datasets[name] = ds.fingerprint()["sha256"]
            t0 = time.perf_counter()
            res = evaluate_parallel(
                args.checkpoint, [1.0], args.eval_episodes, 10_000 * (r + 1), args.num_envs, backend=backend,
                progress=False,
            )  # fmt: skip
            episodes[name].append(args.eval_episodes / (time.perf_counter() - t0))
            evaluations[name] = res["results"][0]["returns"]
    for backend in made.values():
        backend.close()

    same = len(set(datasets.values())) == 1 and len({tuple(v) for v in evaluations.values()}) == 1
    base = next(iter(made))
    c_ref, e_ref = statistics.median(steps[base]), statistics.median(episodes[base])
    print(
        f"collection: {args.episodes} {args.policy} episodes of {args.env} in chunks of {args.chunk}; "
        f"evaluation: {args.eval_episodes} episodes of {Path(args.checkpoint).name}, "
        f"{args.num_envs} envs per task; "
        f"median of {args.runs} runs; identical results on every backend: {same}"
    )
    print(f"{'backend':<18} {'env-steps/s':>12} {'ratio':>7} {'episodes/s':>11} {'ratio':>7}")
    for name in made:
        c, e = statistics.median(steps[name]), statistics.median(episodes[name])
        print(f"{name:<18} {c:>12,.0f} {c / c_ref:>7.2f} {e:>11.1f} {e / e_ref:>7.2f}")


if __name__ == "__main__":
    main()
