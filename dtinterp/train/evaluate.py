"""Evaluate a trained DT: returns and success rates at target returns, with confidence intervals.

Every target is played on the same env seeds ``seed, seed + 1, ...`` (common random numbers), so the
differences between targets come from the conditioning, not from the layouts drawn. The mean return gets
a percentile-bootstrap 95% CI (2000 resamples, fixed rng: the same returns always give the same
interval); the success rate gets a Wilson score interval, which unlike the bootstrap stays honest at 0%
and 100% success.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from dtinterp.errors import ConfigError
from dtinterp.limits import check_rtg
from dtinterp.outputs import check_outputs, write_outputs

if TYPE_CHECKING:
    from dtinterp.model.checkpoint import Checkpoint

# torch and the model are imported where used, so a bad argument is reported without waiting for them.

N_BOOTSTRAP = 2000
CONFIDENCE = 0.95
BOOTSTRAP_SEED = 0


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    n_resamples: int = N_BOOTSTRAP,
    confidence: float = CONFIDENCE,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of the mean of ``values`` (deterministic: fixed rng)."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"bootstrap_ci needs a non-empty 1-d sample, got shape {x.shape}")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_resamples, x.size))].mean(axis=1)  # (n_resamples,)
    alpha = (1.0 - confidence) / 2
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    # Clip float noise so the interval always holds the sample mean (a resampled mean of a constant
    # sample can differ from it in the last bit).
    m = x.mean()
    return float(min(lo, m)), float(max(hi, m))


def wilson_ci(successes: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ``successes / n``."""
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"wilson_ci needs 0 <= successes <= n and n >= 1, got {successes}/{n}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # The bounds are exactly 0 and 1 at 0% and 100% success; keep float noise from hiding that.
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return lo, hi


def summarize(target_rtg: float, results: Sequence[Any]) -> dict[str, Any]:
    """Summary of one target's episodes (:class:`~dtinterp.play.rollout.EpisodeResult` list)."""
    returns = np.array([r.episode_return for r in results], dtype=np.float64)
    successes = int(sum(r.success for r in results))
    return {
        "target_rtg": float(target_rtg),
        "episodes": len(results),
        "mean_return": float(returns.mean()),
        "return_ci": list(bootstrap_ci(returns)),
        "success_rate": successes / len(results),
        "success_ci": list(wilson_ci(successes, len(results))),
        "mean_length": float(np.mean([r.length for r in results])),
        "returns": returns.tolist(),
        "lengths": [int(r.length) for r in results],
    }


def evaluate(
    checkpoint: Checkpoint,
    rtgs: Sequence[float],
    episodes: int,
    seed: int,
    num_envs: int = 32,
    sample: bool = False,
    progress: bool = True,
    on_episode: Callable[[Any], None] | None = None,
    hooks: Sequence[tuple[str, Callable]] = (),
) -> dict[str, Any]:
    """Play ``episodes`` seeded episodes at each target in ``rtgs``; summary per target (see :func:`summarize`).

    Env seeds are ``seed .. seed + episodes - 1`` for every target; sampled actions use ``seed`` as the
    sample seed, so the whole result is a function of (model, arguments). ``hooks`` are attached to every
    forward pass (an ablation played out). A target the model's RTG token cannot represent is a
    :class:`~dtinterp.errors.ConfigError` before any episode is played.
    """
    from dtinterp.play.rollout import rollout

    rtgs = check_rtgs(rtgs, "target return", checkpoint)
    seeds = list(range(seed, seed + episodes))
    bar = tqdm(total=len(rtgs) * episodes, desc="evaluate", unit="ep", disable=not progress)

    def tick(result: Any) -> None:
        bar.update(1)
        if on_episode is not None:
            on_episode(result)

    try:
        per_target = [
            summarize(
                rtg,
                rollout(
                    checkpoint,
                    rtg,
                    seeds,
                    num_envs,
                    sample,
                    seed,
                    progress=False,
                    on_episode=tick,
                    hooks=hooks,
                ),
            )
            for rtg in rtgs
        ]
    finally:
        bar.close()
    return {
        "env_spec": checkpoint.env_spec.to_dict(),
        "rtg_scale": checkpoint.rtg_scale,
        "episodes": episodes,
        "seed": seed,
        "sample": sample,
        "confidence": CONFIDENCE,
        "results": per_target,
    }


# ---------------------------------------------------------------------------------------------- CLI


def check_device(device: str) -> str:
    """Validate a torch device string for the CLI (one clear line if unusable)."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"--device {device!r}: not a torch device (try cpu or cuda)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device!r}: CUDA is not available on this machine")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"--device {device!r}: MPS is not available on this machine")
    return device


def check_rtgs(values: Sequence[float], flag: str, checkpoint: Checkpoint) -> list[float]:
    """Each target return checked against the model's RTG scale (:func:`dtinterp.limits.check_rtg`)."""
    return [check_rtg(v, flag, checkpoint.rtg_scale) for v in values]


def json_text(data: dict[str, Any]) -> str:
    """``data`` as indented JSON text; NaN and infinities are refused (they are not JSON)."""
    return json.dumps(data, indent=2, allow_nan=False) + "\n"


def print_table(result: dict[str, Any], title: str) -> None:
    """Print the per-target summary as a table."""
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=title, caption=f"{result['episodes']} episodes per target, seeds from {result['seed']}"
    )
    for col in ("target", "return", "95% CI", "success", "95% CI", "length"):
        table.add_column(col, justify="right", no_wrap=True)
    for r in result["results"]:
        lo, hi = r["return_ci"]
        slo, shi = r["success_ci"]
        table.add_row(
            f"{r['target_rtg']:g}",
            f"{r['mean_return']:.3f}",
            f"[{lo:.3f}, {hi:.3f}]",
            f"{100 * r['success_rate']:.1f}%",
            f"[{100 * slo:.1f}, {100 * shi:.1f}]",
            f"{r['mean_length']:.1f}",
        )
    Console().print(table)


def evaluate_on_backend(args: argparse.Namespace, ckpt: Checkpoint, rtgs: Sequence[float]) -> dict[str, Any]:
    """:func:`evaluate` here (one process), or spread over ``--workers`` / Ray with the same numbers."""
    sample = getattr(args, "sample", False)  # calibrate plays greedily
    if args.backend == "local" and args.workers == 1:
        if args.ray_address is not None:
            raise ConfigError("--ray-address needs --backend ray")
        return evaluate(ckpt, rtgs, args.episodes, args.seed, args.num_envs, sample)
    if args.backend == "ray" and args.device != "cpu":
        raise ConfigError(f"--device {args.device}: Ray workers evaluate on the CPU (drop --device)")
    from dtinterp.scale.backend import evaluate_parallel, make_backend

    with make_backend(args.backend, args.workers, args.ray_address) as backend:
        return evaluate_parallel(
            args.model_dir, rtgs, args.episodes, args.seed, args.num_envs, sample, backend=backend
        )


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``dtinterp evaluate``: roll out a checkpoint at target returns, print a table, optionally save.

    Every output location (``--json``, ``--gif``) is checked before the model is loaded, every target
    return against the model's RTG scale before the first episode, and the outputs are written together
    once everything is computed: all of them or none.
    """
    from dtinterp.train.export import check_video_path, export_episode

    for r in args.rtg:
        check_rtg(r, "--rtg")
    if args.gif:
        check_video_path(args.gif, "--gif")
    paths = check_outputs({"--json": args.json, "--gif": args.gif}, {"--json": (".json",)})
    device = check_device(args.device)
    from dtinterp.model.checkpoint import load_checkpoint  # heavy: only once the arguments are valid
    from dtinterp.play.rollout import rollout

    ckpt = load_checkpoint(args.model_dir, device=device)
    check_rtgs(args.rtg, "--rtg", ckpt)
    result = evaluate_on_backend(args, ckpt, args.rtg)
    result["model_dir"] = str(args.model_dir)
    mode = "sampled" if args.sample else "greedy"
    print_table(result, f"{args.model_dir}  ({ckpt.env_spec.env_id}, {mode})")
    outputs: list[tuple[str, Path, Any]] = []
    if "--json" in paths:
        outputs.append(("--json", paths["--json"], json_text(result)))
    if "--gif" in paths:
        # Rollouts are a pure function of the seed, so replaying the first seed alone (recorded this
        # time) reproduces the first episode of the first target.
        (first,) = rollout(
            ckpt, args.rtg[0], [args.seed], 1, args.sample, args.seed, record=True, progress=False
        )
        episode = (ckpt.env_spec, first.seed, first.episode.actions)
        outputs.append(("--gif", paths["--gif"], lambda tmp: export_episode(episode, tmp)))
    for path in write_outputs(outputs):
        print(f"wrote {path}")
    return 0
