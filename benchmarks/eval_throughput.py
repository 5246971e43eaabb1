"""Benchmark: episodes/s of vectorized evaluation against playing one env at a time.

Both play the same seeded episodes with the same model in the same run: ``rollout`` with ``--num-envs``
envs and one batched forward per step, against ``rollout`` with one env (a batch-of-one forward per
step). The two are interleaved and the median of ``--runs`` repeats is printed, with the ratio. Results
must be identical (same seeds, greedy): that is checked.

The model is a randomly initialised DT of the default size (``DTConfig()``) or a checkpoint given with
``--checkpoint`` (its env spec and RTG scale are then used). An untrained model rarely ends an episode
early, so episodes last ``--max-steps`` steps.

Run by hand: ``python benchmarks/eval_throughput.py [--checkpoint DIR] [--device cuda]`` (asserts nothing).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from dtinterp.model import DTConfig, HookedDecisionTransformer
from dtinterp.model.checkpoint import Checkpoint, load_checkpoint
from dtinterp.play.rollout import rollout
from envs import EnvSpec, obs_shape


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--checkpoint", default=None, help="checkpoint directory (default: random default-size DT)"
    )
    p.add_argument("--env", default="MiniGrid-DoorKey-8x8-v0", help="env id for the random model")
    p.add_argument("--max-steps", type=int, default=100, help="episode length limit for the random model")
    p.add_argument("--episodes", type=int, default=64)
    p.add_argument("--num-envs", type=int, default=32)
    p.add_argument("--runs", type=int, default=3, help="repeats; the median is reported")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    if args.checkpoint:
        ckpt = load_checkpoint(args.checkpoint, device=args.device)
        source = args.checkpoint
    else:
        spec = EnvSpec(args.env, max_steps=args.max_steps)
        cfg = DTConfig(obs_shape=obs_shape(spec)[:2], max_timestep=args.max_steps, seed=0, device=args.device)
        model = HookedDecisionTransformer(cfg).to(args.device).eval()
        ckpt = Checkpoint.from_model(model, {"env_spec": spec.to_dict(), "rtg_scale": 1.0})
        source = "random DTConfig() model"
    spec, cfg = ckpt.env_spec, ckpt.config
    seeds = list(range(args.episodes))
    print(
        f"{source}: {spec.env_id}, K={cfg.context_len}, n_layers={cfg.n_layers}, d_model={cfg.d_model}, "
        f"device={args.device}, threads={args.threads}; {args.episodes} greedy episodes, median of {args.runs}"
    )

    def timed(fn) -> tuple[float, list]:
        t0 = time.perf_counter()
        res = fn()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return len(seeds) / (time.perf_counter() - t0), res

    players = {
        f"vectorized (num_envs={args.num_envs})": lambda: rollout(
            ckpt, 1.0, seeds, args.num_envs, progress=False
        ),
        "one env at a time (reference)": lambda: rollout(ckpt, 1.0, seeds, 1, progress=False),
    }
    rates: dict[str, list[float]] = {name: [] for name in players}
    outcomes = {}
    for _ in range(args.runs):
        for name, play in players.items():
            rate, res = timed(play)
            rates[name].append(rate)
            outcomes[name] = [(r.episode_return, r.length) for r in res]
    steps = sum(n for _, n in next(iter(outcomes.values())))
    print(f"{steps} env steps per run; identical results: {len({tuple(v) for v in outcomes.values()}) == 1}")
    med = {name: statistics.median(r) for name, r in rates.items()}
    ref = med["one env at a time (reference)"]
    print(f"{'player':<34} {'episodes/s':>11} {'steps/s':>9} {'vs reference':>13}")
    for name, m in med.items():
        print(f"{name:<34} {m:>11.2f} {m * steps / len(seeds):>9.0f} {m / ref:>12.2f}x")


if __name__ == "__main__":
    main()
