"""``dtinterp collect`` and ``dtinterp data info``: make a dataset, and look inside one."""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np

from dtinterp.data.dataset import TrajectoryDataset, load_dataset, save_dataset
from dtinterp.errors import ConfigError, DatasetError
from dtinterp.outputs import check_output, write_outputs
from envs.spec import EnvSpec

_HIST_BINS = 12
_BAR_WIDTH = 40


def cmd_collect(args: argparse.Namespace) -> int:
    """Collect ``--episodes`` episodes of ``--policy`` in ``--env`` and save them atomically to ``--out``.

    ``--out`` is checked (a writable directory, not a directory itself) before anything else, and
    :func:`~dtinterp.data.collect.collect` bounds the view and episode limit by what the env can use
    before the first episode is played.
    """
    out = check_output("--out", args.out)
    spec = EnvSpec(
        env_id=args.env,
        view_size=args.view_size,
        fully_observed=args.fully_observed,
        max_steps=args.max_steps,
    )
    params = parse_policy_params(getattr(args, "policy_param", None) or [])
    if getattr(args, "backend", "local") == "ray":
        from dtinterp.scale.backend import collect_parallel, make_backend

        with make_backend("ray", args.workers, args.ray_address) as backend:  # unreachable: one line, exit 2
            ds = collect_parallel(spec, args.episodes, args.policy, args.seed, backend, params, progress=True)
    else:
        if getattr(args, "ray_address", None) is not None:
            raise ConfigError("--ray-address needs --backend ray")
        from dtinterp.data.collect import collect  # after the cheap checks: it loads the policies

        ds = collect(
            spec,
            args.episodes,
            args.policy,
            seed=args.seed,
            workers=args.workers,
            policy_params=params,
            progress=True,
        )
    write_outputs([("--out", out, lambda tmp: save_dataset(ds, tmp))])
    size = out.stat().st_size
    rets = ds.episode_returns()
    print(f"wrote {out}")
    print(f"  episodes      {ds.n_episodes}")
    print(f"  transitions   {ds.n_transitions}")
    print(f"  return        mean {rets.mean():.3f}  min {rets.min():.3f}  max {rets.max():.3f}")
    print(f"  success rate  {ds.success_mask().mean():.1%}")
    print(f"  file size     {_human_bytes(size)} ({size / ds.n_transitions:.1f} bytes per transition)")
    return 0


def parse_policy_params(items: list[str]) -> dict[str, Any]:
    """``["epsilon=0.1", 'weights={"expert": 1}']`` -> ``{"epsilon": 0.1, "weights": {"expert": 1}}``.

    Each value is JSON (numbers, objects); a value that is not JSON is kept as a string.
    """
    params: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise DatasetError(f"--policy-param {item!r}: expected KEY=VALUE (VALUE in JSON)")
        try:
            params[key.strip()] = json.loads(text)
        except json.JSONDecodeError:
            params[key.strip()] = text
    return params


def cmd_data_info(args: argparse.Namespace) -> int:
    """Print a dataset's provenance, statistics and a histogram of episode returns."""
    ds = load_dataset(args.file)
    print(format_info(ds, title=str(args.file)))
    return 0


def format_info(ds: TrajectoryDataset, title: str = "dataset") -> str:
    """Multi-line text summary of ``ds``: metadata, statistics, per-mode counts, return histogram."""
    meta = ds.metadata
    spec = ds.env_spec
    view = "fully observed" if spec.fully_observed else f"egocentric {spec.view_size}x{spec.view_size}"
    max_steps = spec.max_steps if spec.max_steps is not None else "env default"
    pol = meta["policy"]
    rets, lens, succ = ds.episode_returns(), ds.episode_lengths(), ds.success_mask()
    lines = [
        title,
        f"  env             {spec.env_id} ({view}, max steps {max_steps})",
        f"  policy          {pol['name']}",
        *(f"    {k:<13} {_format_param(v)}" for k, v in sorted(pol.get("params", {}).items())),
        f"  seed            {meta['seed']}",
        f"  format          v{meta['format_version']}, written by dtinterp {meta['package_version']}",
        f"  episodes        {ds.n_episodes}",
        f"  transitions     {ds.n_transitions}",
        f"  mean length     {lens.mean():.1f} (min {lens.min()}, max {lens.max()})",
        f"  success rate    {succ.mean():.1%}",
        f"  return          mean {rets.mean():.3f}  min {rets.min():.3f}  max {rets.max():.3f}",
        "  modes",
    ]
    counts = np.bincount(ds.episode_modes, minlength=len(ds.modes))
    width = max(len(m) for m in ds.modes)
    for k, name in enumerate(ds.modes):
        sel = ds.episode_modes == k
        detail = (
            f"  success {succ[sel].mean():6.1%}  mean return {rets[sel].mean():6.3f}" if counts[k] else ""
        )
        lines.append(f"    {name:<{width}}  {counts[k]:>7} episodes{detail}")
    lines.append("  episode returns")
    lines += ["    " + row for row in return_histogram(rets)]
    return "\n".join(lines)


def _format_param(value: object) -> str:
    """``{"a": 1, "b": "x"}`` -> ``a=1, b=x``: policy parameters, readable in one line."""
    if isinstance(value, dict):
        return ", ".join(f"{k}={_format_param(v)}" for k, v in value.items()) or "{}"
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:g}"
    return json.dumps(value)


def return_histogram(returns: np.ndarray, bins: int = _HIST_BINS, width: int = _BAR_WIDTH) -> list[str]:
    """Text histogram rows ``[lo, hi)  ####  count`` with bars scaled so the fullest bin is ``width`` wide."""
    lo, hi = float(returns.min()), float(returns.max())
    if lo == hi:
        counts, edges = np.array([len(returns)]), np.array([lo, hi])
    else:
        counts, edges = np.histogram(returns, bins=bins, range=(lo, hi))
    top = max(int(counts.max()), 1)
    rows = []
    for k, c in enumerate(counts):
        close = "]" if k == len(counts) - 1 else ")"
        bar = "#" * int(round(width * c / top))
        if c and not bar:
            bar = "."  # a non-empty bin too small to draw still shows
        rows.append(f"[{edges[k]:7.3f}, {edges[k + 1]:7.3f}{close}  {bar:<{width}}  {c}")
    return rows


def _human_bytes(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    size, unit = n / 1024, "KiB"
    for bigger in ("MiB", "GiB"):
        if size < 1024:
            break
        size, unit = size / 1024, bigger
    return f"{size:.1f} {unit}"
