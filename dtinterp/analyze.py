"""``dtinterp analyze``: run one analysis plugin on a checkpoint and write a standalone HTML report.

Inputs come from exactly one source: ``--trajectory FILE`` (a one-episode dataset file, one window at
``--step``), ``--data FILE --episodes N`` (windows ending at every step of the first N episodes, capped
by ``--max-windows``) or ``--rollout --rtg R --seed S`` (play one greedy episode now, one window at
``--step``). ``--edit`` builds the counterfactual, ``--param key=value`` sets the plugin's parameters.
Every argument is checked before any work and nothing is written unless the whole run succeeds; the
report and the optional result JSON are written atomically. Status lines go to stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import textwrap
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from dtinterp.data.dataset import load_dataset
from dtinterp.errors import DtinterpError
from dtinterp.interp.edits import parse_edit
from dtinterp.interp.trajectory import (
    TrajectoryError,
    episode_window,
    episode_windows,
    model_env_spec,
    recorded_target_rtg,
    rollout_trajectory,
)
from dtinterp.model.checkpoint import atomic_write_text, load_checkpoint
from dtinterp.model.hooked_dt import HookedDecisionTransformer
from dtinterp.model.inputs import DTInputs
from dtinterp.plugins.api import Analysis, AnalysisContext, Param, PluginError
from dtinterp.plugins.registry import Registry, get_registry
from dtinterp.viz.report import render_report

INPUT_FLAGS = "--trajectory FILE [--step T], --data FILE --episodes N, or --rollout --rtg R --seed S"


def _status(msg: str) -> None:
    print(f"dtinterp analyze: {msg}", file=sys.stderr, flush=True)


def cmd_analyze(args: argparse.Namespace) -> int:
    """``dtinterp analyze --list`` or one analysis run (see the module docstring)."""
    if args.list:
        print(format_plugin_list(get_registry()))
        return 0
    _check_args(args)
    edits = [parse_edit(text) for text in args.edit]
    raw_params = parse_params(args.param)

    registry = get_registry()
    plugin = registry.get(args.analysis)
    params = plugin.resolve_params(raw_params)
    if plugin.needs_counterfactual and not edits:
        raise PluginError(
            f"analysis {plugin.id!r} compares against a counterfactual: give at least one --edit"
        )

    _status(f"loading model {args.model_dir}")
    model, meta = load_checkpoint(args.model_dir, device=args.device)
    inputs, inputs_info = build_inputs(args, model, meta)
    inputs_info["edits"] = [str(e) for e in edits] or "none"
    ctx = AnalysisContext(model, inputs, meta, edits, description=str(inputs_info["source"]))

    _status(f"running {plugin.id} on {inputs.batch_size} window(s) of {inputs.context_len} timesteps")
    result = registry.run(plugin.id, ctx, params)
    figures = registry.figures(plugin.id, result)
    _check_figures(plugin, figures)

    _status(f"writing {len(figures)} figure(s)")
    html = render_report(
        plugin=plugin.describe(),
        params=result.params,
        model_info=describe_model(args.model_dir, model, meta),
        inputs_info=inputs_info,
        summary=result.summary,
        figures=figures,
    )
    outputs = [("--out", args.out, html)]
    if args.json:
        try:
            outputs.append(("--json", args.json, json.dumps(result.to_json(), allow_nan=False) + "\n"))
        except (TypeError, ValueError) as exc:
            raise PluginError(f"plugin {plugin.id!r}: its result is not JSON-serialisable ({exc})") from None
    for flag, path, text in outputs:  # everything is rendered before the first byte is written
        try:
            atomic_write_text(path, text)
        except OSError as exc:
            raise DtinterpError(f"cannot write {flag} {path!r}: {exc.strerror or exc}") from None
        print(f"wrote {path}")
    if result.summary:
        print(result.summary)
    return 0


def _check_args(args: argparse.Namespace) -> None:
    """Every check that needs no model or plugin, so a typo costs nothing and writes nothing."""
    if args.model_dir is None:
        raise DtinterpError("analyze needs a MODEL_DIR (or --list to see the analyses)")
    if args.analysis is None:
        raise DtinterpError("analyze needs --analysis ID (dtinterp analyze --list shows the ids)")
    if not Path(args.model_dir).is_dir():
        raise DtinterpError(f"model directory {args.model_dir!r} does not exist")
    if args.out is None:
        raise DtinterpError("analyze needs --out REPORT.html")
    for flag, path in (("--out", args.out), ("--json", args.json)):
        if path is not None:
            _check_out(flag, Path(path))
    if args.json is not None and Path(args.json).resolve() == Path(args.out).resolve():
        raise DtinterpError(f"--json and --out name the same file {args.out!r}")
    sources = [
        s for s, on in (("trajectory", args.trajectory), ("data", args.data), ("rollout", args.rollout)) if on
    ]
    if not sources:
        raise DtinterpError(f"analyze needs inputs: give {INPUT_FLAGS}")
    if len(sources) > 1:
        raise DtinterpError(f"give one input source, not {' and '.join('--' + s for s in sources)}")
    source = sources[0]
    misplaced = [
        flag
        for flag, value, allowed in (
            ("--step", args.step, ("trajectory", "rollout")),
            ("--episodes", args.episodes, ("data",)),
            ("--max-windows", args.max_windows, ("data",)),
            ("--rtg", args.rtg, ("rollout",)),
            ("--seed", args.seed, ("rollout",)),
        )
        if value is not None and source not in allowed
    ]
    if misplaced:
        raise DtinterpError(f"{misplaced[0]} does not apply to --{source} inputs (inputs: {INPUT_FLAGS})")
    if source == "data" and args.episodes is None:
        raise DtinterpError("--data needs --episodes N (windows at every step of the first N episodes)")
    if source == "rollout" and (args.rtg is None or not math.isfinite(args.rtg)):
        raise DtinterpError("--rollout needs --rtg R, a finite target return to play at")
    for flag, path in (("--trajectory", args.trajectory), ("--data", args.data)):
        if path is not None and not Path(path).is_file():
            raise DtinterpError(f"{flag} file {path!r} does not exist")


def _check_out(flag: str, path: Path) -> None:
    if path.is_dir():
        raise DtinterpError(f"{flag} {str(path)!r} is a directory, not a file")
    if not path.parent.is_dir():
        raise DtinterpError(f"{flag} {str(path)!r}: directory {str(path.parent)!r} does not exist")


def parse_params(items: list[str]) -> dict[str, str]:
    """``["key=value", ...]`` -> ``{key: text}`` (the plugin's :class:`Param` coerces the text)."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise DtinterpError(f"--param {item!r}: expected key=value")
        if key in out:
            raise DtinterpError(f"--param {key!r} is given twice")
        out[key] = value.strip()
    return out


def build_inputs(
    args: argparse.Namespace, model: HookedDecisionTransformer, meta: dict[str, Any]
) -> tuple[DTInputs, dict[str, Any]]:
    """The analysis inputs named by the input flags, and a description of them for the report."""
    rtg_scale = float(meta.get("rtg_scale", 1.0))
    if args.data is not None:
        ds = load_dataset(args.data)
        spec = model_env_spec(meta)
        where = f"dataset {args.data!r}"
        if args.episodes > ds.n_episodes:
            raise TrajectoryError(
                f"{where} has {ds.n_episodes} episodes; --episodes {args.episodes} is too many"
            )
        episodes = list(range(args.episodes))
        max_windows = 256 if args.max_windows is None else args.max_windows
        _status(f"building windows from {args.episodes} episode(s) of {args.data}")
        inputs = episode_windows(ds, episodes, model, rtg_scale, max_windows, spec, where)
        n_steps = int(ds.episode_lengths()[: args.episodes].sum())
        ends = "every step" if inputs.batch_size == n_steps else "evenly spaced steps"
        return inputs, {
            "source": f"dataset {args.data}",
            "env": spec.to_json(),
            "episodes": f"0..{args.episodes - 1} ({n_steps} steps)",
            "windows": f"{inputs.batch_size}, ending at {ends}",
            "return-to-go": "achieved return of each episode",
        }
    if args.trajectory is not None:
        ds = load_dataset(args.trajectory)
        where = f"trajectory {args.trajectory!r}"
        if ds.n_episodes != 1:
            raise TrajectoryError(
                f"{where} holds {ds.n_episodes} episodes; a trajectory file holds one "
                "(use --data FILE --episodes N for a dataset)"
            )
        source = f"trajectory {args.trajectory}"
    else:
        seed = 0 if args.seed is None else args.seed
        _status(f"playing one episode at target return {args.rtg:g}, env seed {seed}")
        ds = rollout_trajectory(model, meta, args.rtg, seed, progress=True)
        where = "the rollout"
        source = f"rollout at target return {args.rtg:g}, env seed {seed}"
    spec = model_env_spec(meta)
    length = int(ds.episode_lengths()[0])
    step = length - 1 if args.step is None else args.step
    inputs = episode_window(ds, 0, step, model, rtg_scale, spec, where)
    target = recorded_target_rtg(ds, 0)
    return inputs, {
        "source": source,
        "env": spec.to_json(),
        "episode": f"{length} steps, return {float(ds.episode_returns()[0]):.4g}",
        "step": f"{step} (the window ends here; its action is the one predicted)",
        "return-to-go": "achieved return" if target is None else f"target {target:g} minus rewards so far",
    }


def describe_model(model_dir: str, model: HookedDecisionTransformer, meta: dict[str, Any]) -> dict[str, Any]:
    """Name -> value description of a loaded checkpoint for the report."""
    info: dict[str, Any] = {
        "checkpoint": str(Path(model_dir).resolve()),
        "env": json.dumps(meta.get("env_spec")) if "env_spec" in meta else "not recorded",
        "config": model.cfg.to_dict(),
        "parameters": f"{sum(p.numel() for p in model.parameters()):,}",
        "rtg_scale": meta.get("rtg_scale", 1.0),
    }
    for key in ("step", "dataset", "results"):
        if key in meta:
            info[key] = meta[key]
    return info


def _check_figures(plugin: Analysis, figures: Any) -> None:
    if not isinstance(figures, list) or not all(isinstance(f, go.Figure) for f in figures):
        kinds = (
            sorted({type(f).__name__ for f in figures})
            if isinstance(figures, list)
            else [type(figures).__name__]
        )
        raise PluginError(
            f"plugin {plugin.id!r}: figures() must return a list of plotly Figures, got {kinds}"
        )


def format_plugin_list(registry: Registry, width: int = 100) -> str:
    """Every analysis by category with its parameters, then the plugins that failed to load."""

    def wrap(text: str, indent: int) -> list[str]:
        pad = " " * indent
        return textwrap.wrap(" ".join(text.split()), width, initial_indent=pad, subsequent_indent=pad)

    lines: list[str] = []
    for category, plugins in registry.by_category().items():
        lines.append(f"{category}:")
        if not plugins:
            lines.append("  (none)")
        for p in plugins:
            flag = "  [needs --edit]" if p.needs_counterfactual else ""
            lines.append(f"  {p.id:<28} {p.title}{flag}")
            lines.extend(wrap(p.description, 6))
            for q in p.parameters:
                lines.append(f"      --param {q.name}={q.default}  ({_param_kind(q)})")
                lines.extend(wrap(q.help, 10))
    if registry.failures:
        lines.append("failed plugins (skipped):")
        lines.extend(f"  {f.name} ({f.stage}): {f.error}" for f in registry.failures)
    return "\n".join(lines)


def _param_kind(p: Param) -> str:
    if p.choices is not None:
        return f"{p.type}: {' | '.join(str(c) for c in p.choices)}"
    if p.min is not None and p.max is not None:
        return f"{p.type} in [{p.min}, {p.max}]"
    if p.min is not None:
        return f"{p.type} >= {p.min}"
    if p.max is not None:
        return f"{p.type} <= {p.max}"
    return p.type


__all__ = ["build_inputs", "cmd_analyze", "describe_model", "format_plugin_list", "parse_params"]
