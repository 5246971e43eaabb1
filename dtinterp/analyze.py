"""``dtinterp analyze``: run one analysis plugin on a checkpoint and write a standalone HTML report.

Inputs come from at most one source: ``--trajectory FILE`` (a one-episode dataset file, one window at
``--step``), ``--data FILE --episodes N`` (windows ending at every step of the first N episodes, capped
by ``--max-windows``) or ``--rollout --rtg R --seed S`` (play one greedy episode now, one window at
``--step``); a static analysis (weights only) needs none. With ``--data`` the analysis also gets those
episodes of the dataset themselves (``AnalysisContext.dataset``: the ``probes`` analysis reads their
ground-truth facts and harvests windows of its own). ``--edit`` builds the counterfactual,
``--param key=value`` sets the plugin's parameters. The run itself is
:func:`dtinterp.plugins.run.run_analysis`, the same as in the app. Every argument is checked before any
work (the outputs' locations first; the target and edited returns, the parameters whose choices depend on
the model and the number of windows once the model is loaded, before any episode is played) and nothing is
written unless the whole run succeeds; the report and the optional result JSON (with the run's
provenance) are written together, all or none (:mod:`dtinterp.outputs`). Status lines go to stderr.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path
from typing import Any

from dtinterp.data.dataset import TrajectoryDataset, load_dataset
from dtinterp.data.episode import Episode, dataset_targets, dataset_windows
from dtinterp.errors import DtinterpError, EpisodeError
from dtinterp.interp.edits import Edit, EditError, SetRTG, parse_edit
from dtinterp.limits import MAX_CACHE_BYTES, cache_bytes_per_window, check_rtg, max_windows
from dtinterp.model.checkpoint import Checkpoint, load_checkpoint
from dtinterp.model.inputs import DTInputs
from dtinterp.outputs import check_outputs, write_outputs
from dtinterp.play.rollout import play_episode
from dtinterp.plugins.api import PluginError
from dtinterp.plugins.registry import Registry, get_registry
from dtinterp.plugins.run import run_analysis
from dtinterp.train.evaluate import check_device

INPUT_FLAGS = "--trajectory FILE [--step T], --data FILE --episodes N, or --rollout --rtg R --seed S"
#: Windows taken from ``--data`` without ``--max-windows`` (fewer if this model's cache cannot hold them).
DEFAULT_MAX_WINDOWS = 256


def _status(msg: str) -> None:
    print(f"dtinterp analyze: {msg}", file=sys.stderr, flush=True)


def cmd_analyze(args: argparse.Namespace) -> int:
    """``dtinterp analyze --list`` or one analysis run (see the module docstring)."""
    if args.list:
        print(format_plugin_list(get_registry()))
        return 0
    outputs = _check_args(args)
    edits = [parse_edit(text) for text in args.edit]
    raw_params = parse_params(args.param)
    device = check_device(args.device)

    registry = get_registry()
    plugin = registry.get(args.analysis)
    resolved = plugin.resolve_params(raw_params)  # every parameter is checked before the model is loaded
    if plugin.needs_edits(resolved) and not edits:
        raise PluginError(
            f"analysis {plugin.id!r} compares against a counterfactual: give at least one --edit"
        )
    if plugin.category != "static" and not _sources(args):
        raise DtinterpError(f"analysis {plugin.id!r} runs on windows: give {INPUT_FLAGS}")

    _status(f"loading model {args.model_dir}")
    ckpt = load_checkpoint(args.model_dir, device=device)
    _check_against_model(args, ckpt, edits)
    plugin.resolve_params(raw_params, ckpt)  # choices that depend on the model (its actions)
    inputs, source, dataset = build_inputs(args, ckpt)
    what = (
        "weights only"
        if inputs is None
        else f"{inputs.batch_size} window(s) of {inputs.context_len} timesteps"
    )
    _status(f"running {plugin.id} on {what}")
    run = run_analysis(
        ckpt, inputs, plugin, raw_params, edits, source=source, registry=registry, dataset=dataset
    )

    _status(f"writing {len(run.figures)} figure(s)")
    texts = [("--out", outputs["--out"], run.report_html())]
    if "--json" in outputs:
        texts.append(("--json", outputs["--json"], run.json_text()))
    for path in write_outputs(texts):  # everything is rendered before the first byte is written
        print(f"wrote {path}")
    if run.summary:
        print(run.summary)
    return 0


def _sources(args: argparse.Namespace) -> list[str]:
    return [
        s for s, on in (("trajectory", args.trajectory), ("data", args.data), ("rollout", args.rollout)) if on
    ]


def _check_args(args: argparse.Namespace) -> dict[str, Path]:
    """Every check that needs no model or plugin, so a typo costs nothing and writes nothing.

    Returns the checked output paths (``--out``, and ``--json`` if asked for).
    """
    if args.model_dir is None:
        raise DtinterpError("analyze needs a MODEL_DIR (or --list to see the analyses)")
    if args.analysis is None:
        raise DtinterpError("analyze needs --analysis ID (dtinterp analyze --list shows the ids)")
    if not Path(args.model_dir).is_dir():
        raise DtinterpError(f"model directory {args.model_dir!r} does not exist")
    if args.out is None:
        raise DtinterpError("analyze needs --out REPORT.html")
    outputs = check_outputs({"--out": args.out, "--json": args.json})
    if args.rtg is not None:
        check_rtg(args.rtg, "--rtg")
    sources = _sources(args)
    if not sources:  # a static analysis runs on the checkpoint alone; others are refused once the id is known
        stray = [f for f, v in (("--step", args.step), ("--episodes", args.episodes),
                                ("--max-windows", args.max_windows), ("--rtg", args.rtg), ("--seed", args.seed))
                 if v is not None]  # fmt: skip
        if stray:
            raise DtinterpError(f"{stray[0]} needs an input source ({INPUT_FLAGS})")
        return outputs
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
    if source == "rollout" and args.rtg is None:
        raise DtinterpError("--rollout needs --rtg R, a finite target return to play at")
    for flag, path in (("--trajectory", args.trajectory), ("--data", args.data)):
        if path is not None and not Path(path).is_file():
            raise DtinterpError(f"{flag} file {path!r} does not exist")
    return outputs


def _check_against_model(args: argparse.Namespace, ckpt: Checkpoint, edits: list[Edit]) -> None:
    """The checks that need the model: target and edited returns against its RTG scale, and how many
    windows its activation cache can hold (:func:`dtinterp.limits.max_windows`)."""
    if args.rtg is not None:
        check_rtg(args.rtg, "--rtg", ckpt.rtg_scale)
    for edit in edits:
        if isinstance(edit, SetRTG):
            check_rtg(edit.value, f"--edit {str(edit)!r}", ckpt.rtg_scale, error=EditError)
    limit = max_windows(ckpt.config)
    if args.max_windows is not None and args.max_windows > limit:
        gib = args.max_windows * cache_bytes_per_window(ckpt.config) / 2**30
        raise DtinterpError(
            f"--max-windows {args.max_windows}: the activation cache of that many windows of this model "
            f"would take {gib:.1f} GiB; at most {limit} fit in {MAX_CACHE_BYTES / 2**30:g} GiB"
        )


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
    args: argparse.Namespace, ckpt: Checkpoint
) -> tuple[DTInputs | None, dict[str, Any], TrajectoryDataset | None]:
    """The windows named by the input flags (None without any: a static analysis), their provenance, and
    for ``--data`` the dataset's first ``--episodes`` episodes (what the analysis context offers as
    ``dataset``: ground-truth facts, every step)."""
    if args.data is not None:
        ds = load_dataset(args.data)
        where = f"dataset {args.data!r}"
        if args.episodes > ds.n_episodes:
            raise EpisodeError(
                f"{where} has {ds.n_episodes} episodes; --episodes {args.episodes} is too many"
            )
        n_windows = (
            min(DEFAULT_MAX_WINDOWS, max_windows(ckpt.config))
            if args.max_windows is None
            else args.max_windows
        )
        _status(f"building windows from {args.episodes} episode(s) of {args.data}")
        inputs, ends = dataset_windows(ds, list(range(args.episodes)), ckpt, n_windows, where)
        n_steps = int(ds.episode_lengths()[: args.episodes].sum())
        every = "every step" if inputs.batch_size == n_steps else f"{inputs.batch_size} evenly spaced steps"
        source = {
            "description": f"dataset {args.data}, windows at {every}",
            "dataset": str(Path(args.data).resolve()),
            "dataset_sha256": ds.fingerprint()["sha256"],
            "episodes": f"0..{args.episodes - 1} ({n_steps} steps)",
            "steps": [f"{e}:{t}" for e, t in ends],
            "conditioning": "recorded target returns"
            if any(t is not None for t in dataset_targets(ds))
            else "the achieved return-to-go of each episode",
        }
        used = ds if args.episodes == ds.n_episodes else ds.select_episodes(range(args.episodes))
        return inputs, source, used
    if args.trajectory is not None:
        ds = load_dataset(args.trajectory)
        where = f"trajectory {args.trajectory!r}"
        if ds.n_episodes != 1:
            raise EpisodeError(
                f"{where} holds {ds.n_episodes} episodes; a trajectory file holds one "
                "(use --data FILE --episodes N for a dataset)"
            )
        episode = Episode.from_dataset(ds, 0, source="file", where=where)
        episode.info["file"] = str(Path(args.trajectory).resolve())
        description = f"trajectory {args.trajectory}"
    elif args.rollout:
        seed = 0 if args.seed is None else args.seed
        _status(f"playing one episode at target return {args.rtg:g}, env seed {seed}")
        episode = play_episode(ckpt, args.rtg, seed, progress=True)
        description = f"rollout at target return {args.rtg:g}, env seed {seed}"
    else:
        return None, {"description": "none: the analysis reads the weights only"}, None
    step = episode.length - 1 if args.step is None else args.step
    if not 0 <= step < episode.length:
        raise EpisodeError(f"--step {step} is outside the episode's steps 0..{episode.length - 1}")
    source = {
        "description": description,
        "episode": episode.provenance(),
        "steps": [step],
        "conditioning": episode.conditioning(),
    }
    return episode.window(ckpt, step), source, None


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
            flag = "  [needs --edit]" if p.needs_edits(p.resolve_params()) else ""
            lines.append(f"  {p.id:<28} {p.title}{flag}")
            lines.extend(wrap(p.description, 6))
            for q in p.parameters:
                lines.append(f"      --param {q.name}={q.default}  ({q.describe_type()})")
                lines.extend(wrap(q.help, 10))
    if registry.failures:
        lines.append("failed plugins (skipped):")
        lines.extend(f"  {f.name} ({f.stage}): {f.error}" for f in registry.failures)
    return "\n".join(lines)


__all__ = ["build_inputs", "cmd_analyze", "format_plugin_list", "parse_params"]
