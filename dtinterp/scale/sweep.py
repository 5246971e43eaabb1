"""Hyperparameter sweeps: one ordinary training run per configuration, evaluated and ranked in one table.

A sweep is a base training config (a :class:`~dtinterp.train.config.TrainConfig` JSON object, plus an
optional ``"data"`` key naming the dataset: an ``.npz`` path or ``minari:NAMESPACE/NAME-v0``), a grid of
values for some of its keys (dotted keys reach into ``model``: ``model.n_layers``) and a number of samples
per grid point (sample ``s`` adds ``s`` to the config's seed). Every configuration trains into its own run
directory under ``out_dir``, named after its grid values (``lr=0.001_model.n_layers=2_s1``), exactly like
``dtinterp train --out``: a stopped sweep rerun with the same arguments resumes each unfinished run from
its last checkpoint and skips finished ones (their evaluation is kept in ``sweep_eval.json``).

Each finished run is evaluated greedily at the given target returns (default: its config's ``eval_rtg``)
on ``eval_episodes`` env seeds from ``eval_seed`` (the numbers ``dtinterp evaluate RUN --rtg T --episodes N
--seed S`` prints), and the sweep writes ``summary.csv``, ``summary.html`` and ``sweep.json`` atomically:
configuration, final training loss, success rate and mean return (averaged over the targets, and per
target when there are several) and training wall time, ranked by ``metric``.

On a :class:`~dtinterp.scale.backend.LocalBackend` the runs go through its ``map`` (one after another with
one worker); on a :class:`~dtinterp.scale.backend.RayBackend` each run is a Ray Tune trial (one CPU, the
dataset shipped once through the object store), and ``early_stop=True`` adds ASHA: trials report their
training loss after each eighth of training and the worst are stopped, leaving a resumable run directory
and a ``stopped`` row. On a multi-node cluster ``out_dir`` must be on storage every node mounts.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import re
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from itertools import product
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dtinterp.errors import ConfigError
from dtinterp.scale.backend import Backend, LocalBackend, RayBackend, make_backend

if TYPE_CHECKING:
    import pandas as pd

    from dtinterp.data.dataset import TrajectoryDataset

#: Sweep-level key of the base config: the dataset every run trains on.
DATA_KEY = "data"
#: Per-run file holding the run's evaluation (reused when the weights have not changed).
EVAL_FILE = "sweep_eval.json"
SUMMARY_CSV, SUMMARY_HTML, SUMMARY_JSON = "summary.csv", "summary.html", "sweep.json"
#: Default first env seed of the final evaluation (``dtinterp evaluate``'s default).
EVAL_SEED = 1000
#: ``metric`` name -> (summary column, lower is better).
METRICS = {
    "success": ("success", False),
    "return": ("return", False),
    "loss": ("final_loss", True),
    "final_loss": ("final_loss", True),
    "wall_time": ("wall_time_s", True),
    "wall_time_s": ("wall_time_s", True),
}
#: With ``early_stop``, trials report their loss this many times (ASHA's rungs are counted in reports).
ASHA_REPORTS = 8
_MAX_NAME = 80
_UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]+")


@dataclass(frozen=True)
class Trial:
    """One configuration of a sweep."""

    name: str
    """Run directory name under the sweep's ``out_dir`` (a function of ``params``: stable across reruns)."""
    params: dict[str, Any]
    """The grid values of this trial (dotted keys), plus ``seed`` when there are several samples."""
    config: dict[str, Any]
    """The full training config (a valid :class:`~dtinterp.train.config.TrainConfig` dict)."""


@dataclass(frozen=True)
class EvalSettings:
    """How every run of a sweep is evaluated."""

    targets: list[float] | None
    """Target returns; None: each run's own ``eval_rtg``."""
    episodes: int | None
    """Episodes per target; None: each run's own ``eval_episodes``."""
    seed: int
    num_envs: int


# ---------------------------------------------------------------------------------------------- grid


def parse_grid(items: Sequence[str]) -> dict[str, list[Any]]:
    """``["lr=1e-3,3e-3", "model.n_layers=1,2"]`` -> ``{"lr": [0.001, 0.003], "model.n_layers": [1, 2]}``.

    Values are JSON where possible (numbers, booleans, null, lists such as ``[0.9,0.95]``) and strings
    otherwise; commas inside brackets or quotes do not split values.
    """
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or not text.strip():
            raise ConfigError(f"--grid {item!r}: expected KEY=VALUE[,VALUE...]")
        if key in grid:
            raise ConfigError(f"--grid {item!r}: {key!r} is given twice")
        try:
            values = json.loads(f"[{text}]")
        except json.JSONDecodeError:
            values = [_json_or_text(v) for v in _split_top_level(text, item)]
        if not values:
            raise ConfigError(f"--grid {item!r}: no values")
        grid[key] = values
    return grid


def _split_top_level(text: str, item: str) -> list[str]:
    parts, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    parts = [p.strip() for p in parts]
    if any(not p for p in parts):
        raise ConfigError(f"--grid {item!r}: empty value")
    return parts


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def set_dotted(config: dict[str, Any], key: str, value: Any) -> None:
    """``config[a][b] = value`` for ``key == "a.b"`` (missing levels become objects)."""
    *path, leaf = key.split(".")
    node = config
    for part in path:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"grid key {key!r}: {part!r} is not an object in the base config")
        node = child
    node[leaf] = value


def expand_grid(base_config: dict[str, Any], grid: dict[str, list[Any]], samples: int = 1) -> list[Trial]:
    """Every trial of the sweep in order (grid points in key order, then samples), each config validated."""
    from dtinterp.train.config import TrainConfig

    if not isinstance(samples, int) or samples < 1:
        raise ConfigError(f"samples must be an integer >= 1, got {samples!r}")
    if DATA_KEY in grid:
        raise ConfigError(f"grid key {DATA_KEY!r}: a sweep trains every run on one dataset")
    base = {k: v for k, v in base_config.items() if k != DATA_KEY}
    trials, names = [], set()
    for values in product(*grid.values()):
        point = dict(zip(grid, values))
        for s in range(samples):
            config = copy.deepcopy(base)
            for key, value in point.items():
                set_dotted(config, key, value)
            params = dict(point)
            if samples > 1:
                config["seed"] = config.get("seed", 0) + s
                params["seed"] = config["seed"]
            name = trial_name(point, s if samples > 1 else None)
            if name in names:
                raise ConfigError(f"grid values {point} give the run name {name!r} twice: make them distinct")
            names.add(name)
            TrainConfig.from_dict(config, source=f"sweep run {name}")  # one line naming run and key
            trials.append(Trial(name=name, params=params, config=config))
    return trials


def trial_name(point: dict[str, Any], sample: int | None = None) -> str:
    """Run directory name of a grid point: ``lr=0.001_model.n_layers=2`` (``_s1`` for sample 1)."""
    parts = [
        f"{k}={v if isinstance(v, str) else json.dumps(v, separators=(',', ':'))}" for k, v in point.items()
    ]
    name = _UNSAFE.sub("-", "_".join(parts)) or "base"
    if sample is not None:
        name += f"_s{sample}"
    if len(name) > _MAX_NAME:
        digest = hashlib.sha256(json.dumps([point, sample], sort_keys=True).encode()).hexdigest()[:10]
        name = f"{name[: _MAX_NAME - 11]}-{digest}"
    return name


# ---------------------------------------------------------------------------------------------- one trial


def run_trial(
    trial: Trial,
    data: TrajectoryDataset,
    out_dir: str | os.PathLike,
    settings: EvalSettings,
    data_label: str | None = None,
    report: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train (or resume, or skip when finished) one run, evaluate it, and return its summary row.

    With ``report`` (ASHA), training runs in :data:`ASHA_REPORTS` segments, each ending in a checkpoint,
    and ``report({"loss": ..., "step": ...})`` is called after each; the caller may end the trial there.
    """
    from dtinterp.train.config import TrainConfig
    from dtinterp.train.trainer import RUN_FILES, STATE_JSON_FILE, train

    cfg = TrainConfig.from_dict(trial.config, source=f"sweep run {trial.name}")
    run_dir = Path(out_dir) / trial.name
    if not (run_dir / STATE_JSON_FILE).is_file():
        # An attempt that died before its first checkpoint committed nothing: start the run afresh.
        for name in RUN_FILES:
            (run_dir / name).unlink(missing_ok=True)
    every = max(cfg.steps // ASHA_REPORTS, 1) if report is not None else cfg.steps
    while True:
        resume = (run_dir / STATE_JSON_FILE).is_file()
        result = train(
            cfg,
            data,
            run_dir,
            resume=resume,
            should_stop=(lambda step: step % every == 0) if report is not None else None,
            progress=False,
            data_path=data_label,
        )
        if report is None or not result.stopped_early:
            break
        report({"loss": result.loss, "step": result.step})
    row = _train_row(trial, result.step, result.loss, result.wall_time_s, "done")
    row.update(_evaluate_run(run_dir, cfg, settings))
    return row


def _train_row(trial: Trial, step: int, loss: float, wall_time_s: float, status: str) -> dict[str, Any]:
    return {
        "run": trial.name,
        "status": status,
        **trial.params,
        "step": int(step),
        "final_loss": float(loss),
        "wall_time_s": float(wall_time_s),
    }


def _evaluate_run(run_dir: Path, cfg: Any, settings: EvalSettings) -> dict[str, Any]:
    """Success and return per target (and their means), reusing the saved evaluation of these weights."""
    from dtinterp.model.checkpoint import atomic_write_text, load_checkpoint
    from dtinterp.train.evaluate import evaluate

    targets = [float(t) for t in (settings.targets if settings.targets is not None else cfg.eval_rtg)]
    episodes = settings.episodes if settings.episodes is not None else cfg.eval_episodes
    ckpt = load_checkpoint(run_dir)
    key = {
        "weights_sha256": ckpt.weights_sha256,
        "targets": targets,
        "episodes": episodes,
        "seed": settings.seed,
    }
    path = run_dir / EVAL_FILE
    saved = _read_json(path)
    if saved is not None and saved.get("key") == key:
        result = saved["result"]
    else:
        result = evaluate(ckpt, targets, episodes, settings.seed, settings.num_envs, progress=False)
        atomic_write_text(path, json.dumps({"key": key, "result": result}, indent=2) + "\n")
    per = result["results"]
    row: dict[str, Any] = {
        "success": sum(r["success_rate"] for r in per) / len(per),
        "return": sum(r["mean_return"] for r in per) / len(per),
    }
    if len(per) > 1:
        for r in per:
            row[f"success@{r['target_rtg']:g}"] = r["success_rate"]
            row[f"return@{r['target_rtg']:g}"] = r["mean_return"]
    return row


def _stopped_row(trial: Trial, out_dir: Path) -> dict[str, Any]:
    """The row of a trial ASHA stopped: its last checkpoint's step, loss and time, no evaluation."""
    from dtinterp.model.checkpoint import read_checkpoint_config

    run = read_checkpoint_config(out_dir / trial.name)
    info = run.get("run", {})
    return _train_row(
        trial,
        run.get("step", 0),
        info.get("final_loss", math.nan),
        info.get("wall_time_s", math.nan),
        "stopped",
    )


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _trial_task(shared: tuple, trial: Trial) -> dict[str, Any]:
    data, out_dir, settings, data_label = shared
    return run_trial(trial, data, out_dir, settings, data_label)


def _tune_trainable(config: dict[str, Any], data: Any = None, shared: tuple = ()) -> None:
    """A Ray Tune function trainable: one trial, its summary row reported as JSON at the end."""
    from ray import tune

    out_dir, settings, data_label, early_stop = shared
    trial = Trial(**config["trial"])
    report = (lambda metrics: tune.report(metrics)) if early_stop else None
    row = run_trial(trial, data, out_dir, settings, data_label, report=report)
    tune.report({"loss": row["final_loss"], "step": row["step"], "row_json": json.dumps(row)})


# ---------------------------------------------------------------------------------------------- the sweep


def run_sweep(
    base_config: dict[str, Any],
    grid: dict[str, list[Any]],
    samples: int = 1,
    backend: Backend | None = None,
    out_dir: str | os.PathLike = "sweep",
    metric: str = "success",
    data: str | os.PathLike | TrajectoryDataset | None = None,
    targets: Sequence[float] | None = None,
    eval_episodes: int | None = None,
    eval_seed: int = EVAL_SEED,
    num_envs: int = 32,
    early_stop: bool = False,
    progress: bool = True,
) -> pd.DataFrame:
    """Train and evaluate every configuration of ``grid`` over ``base_config``; the ranked summary table.

    ``data`` (else ``base_config["data"]``) is the dataset: loaded, an ``.npz`` path or ``minari:ID``.
    Everything (grid, configs, metric, dataset, targets, ``out_dir``) is checked before the first run
    starts. ``early_stop`` (ASHA on the training loss) needs a :class:`RayBackend`.
    """
    from dtinterp.data.dataset import TrajectoryDataset
    from dtinterp.data.minari_io import load_training_data
    from dtinterp.outputs import check_outputs

    if metric not in METRICS:
        raise ConfigError(f"--metric {metric!r}: expected one of {', '.join(METRICS)}")
    if targets is not None and (not targets or not all(math.isfinite(t) for t in targets)):
        raise ConfigError(f"target returns must be a non-empty list of finite numbers, got {list(targets)!r}")
    if eval_episodes is not None and eval_episodes < 1:
        raise ConfigError(f"eval_episodes must be >= 1, got {eval_episodes}")
    backend = backend or LocalBackend()
    if early_stop and not isinstance(backend, RayBackend):
        raise ConfigError("early stopping (ASHA) runs on Ray Tune: use the ray backend")
    source = data if data is not None else base_config.get(DATA_KEY)
    if source is None:
        raise ConfigError(f"the sweep needs a dataset: set {DATA_KEY!r} in the base config or pass --data")
    trials = expand_grid(base_config, grid, samples)
    loaded = isinstance(source, TrajectoryDataset)
    dataset = source if loaded else load_training_data(source)
    label = str(base_config.get(DATA_KEY, "a dataset in memory")) if loaded else str(source)
    out = Path(out_dir).resolve()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"--out {str(out_dir)!r}: cannot create the directory ({exc.strerror or exc})"
        ) from None
    check_outputs({"summary": out / SUMMARY_CSV})  # a one-line error now, not after every run trained
    settings = EvalSettings(
        targets=None if targets is None else [float(t) for t in targets],
        episodes=eval_episodes,
        seed=eval_seed,
        num_envs=num_envs,
    )
    if isinstance(backend, RayBackend):
        rows = _run_tune(trials, dataset, backend, out, settings, label, early_stop)
    else:
        rows = backend.map(
            _trial_task, trials, progress=progress, desc="sweep", shared=(dataset, out, settings, label)
        )
    table = summary_table(rows, metric)
    _write_summary(
        out,
        table,
        {
            "base_config": base_config,
            "grid": grid,
            "samples": samples,
            "metric": metric,
            "data": label,
            "evaluation": asdict(settings),
            "backend": backend.describe(),
            "early_stop": early_stop,
        },
    )
    return table


def _run_tune(
    trials: list[Trial],
    data: TrajectoryDataset,
    backend: RayBackend,
    out: Path,
    settings: EvalSettings,
    label: str,
    early_stop: bool,
) -> list[dict[str, Any]]:
    """Every trial as a Ray Tune trial; rows in trial order (stopped trials read from their run directory)."""
    from ray import tune

    trainable = tune.with_parameters(_tune_trainable, data=data, shared=(out, settings, label, early_stop))
    gpu = any(str(t.config.get("device", "cpu")).startswith("cuda") for t in trials)
    trainable = tune.with_resources(trainable, {"cpu": 1, "gpu": 1 if gpu else 0})
    scheduler = None
    if early_stop:
        from ray.tune.schedulers import ASHAScheduler

        scheduler = ASHAScheduler(
            time_attr="training_iteration", max_t=ASHA_REPORTS, grace_period=1, reduction_factor=2
        )
    tuner = tune.Tuner(
        trainable,
        param_space={"trial": tune.grid_search([asdict(t) for t in trials])},
        # Reused trial actors keep torch imported: only the first trial on each CPU pays for it.
        tune_config=tune.TuneConfig(metric="loss", mode="min", scheduler=scheduler, reuse_actors=True),
        run_config=tune.RunConfig(
            name=time.strftime("tune-%Y%m%d-%H%M%S"),
            storage_path=str(out / ".tune"),
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=backend.max_retries),
        ),
    )
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        results = tuner.fit()
    finally:  # Tune installs its own Ctrl+C handlers and leaves them behind: give the caller back its own
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    rows: dict[str, dict[str, Any]] = {}
    for result in results:
        trial = Trial(**result.config["trial"])
        if result.error is not None:
            raise result.error
        metrics = result.metrics or {}
        rows[trial.name] = (
            json.loads(metrics["row_json"]) if "row_json" in metrics else _stopped_row(trial, out)
        )
    return [rows[t.name] for t in trials]


def summary_table(rows: list[dict[str, Any]], metric: str) -> pd.DataFrame:
    """Rows ranked by ``metric`` (best first, runs without a value last, ties in trial order)."""
    import pandas as pd

    column, ascending = METRICS[metric]
    df = pd.DataFrame(rows)
    if column not in df:
        df[column] = math.nan
    df = df.sort_values(column, ascending=ascending, na_position="last", kind="stable").reset_index(drop=True)
    df.insert(0, "rank", range(1, len(df) + 1))
    return df


def _write_summary(out: Path, table: pd.DataFrame, info: dict[str, Any]) -> None:
    """``summary.csv``, ``summary.html`` and ``sweep.json``, written together: all of them or none."""
    from dtinterp.outputs import write_outputs

    body = table.to_html(index=False, na_rep="-", float_format=lambda x: f"{x:.4g}", border=0)
    caption = f"{len(table)} runs ranked by {info['metric']} · data {info['data']} · {info['backend']}"
    html = (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>dtinterp sweep</title><style>"
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "th,td{padding:4px 10px;border-bottom:1px solid #ddd;text-align:right}th{background:#f4f4f4}"
        f"</style></head><body><h1>Sweep {out.name}</h1><p>{caption}</p>\n{body}\n</body></html>\n"
    )
    rows = json.loads(table.to_json(orient="records"))
    summary = json.dumps({**info, "rows": rows}, indent=2, default=str) + "\n"
    write_outputs(
        [
            ("summary", out / SUMMARY_CSV, table.to_csv(index=False)),
            ("summary", out / SUMMARY_HTML, html),
            ("summary", out / SUMMARY_JSON, summary),
        ]
    )


# ---------------------------------------------------------------------------------------------- CLI


def load_base_config(path: str | os.PathLike) -> dict[str, Any]:
    """A sweep's base config file; a relative ``"data"`` path in it is relative to the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep config {str(path)!r} does not exist")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"sweep config {str(path)!r} is not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise ConfigError(f"sweep config {str(path)!r}: expected a JSON object")
    data = config.get(DATA_KEY)
    if isinstance(data, str) and not data.startswith("minari:") and not Path(data).is_absolute():
        config[DATA_KEY] = str(path.parent / data)
    return config


def cmd_sweep(args: argparse.Namespace) -> int:
    """``dtinterp sweep BASE.json --grid KEY=V1,V2 ... --out DIR``: train, evaluate, rank, print the best."""
    from dtinterp.data.minari_io import load_training_data

    base = load_base_config(args.base_config)
    grid = parse_grid(args.grid or [])
    if args.metric not in METRICS:
        raise ConfigError(f"--metric {args.metric!r}: expected one of {', '.join(METRICS)}")
    expand_grid(base, grid, args.samples)  # every config is checked before the data loads or Ray starts
    source = args.data if args.data is not None else base.get(DATA_KEY)
    if source is None:
        raise ConfigError(f"the sweep needs a dataset: set {DATA_KEY!r} in {args.base_config} or pass --data")
    dataset = load_training_data(source)
    base = {**base, DATA_KEY: str(source)}
    with make_backend(args.backend, args.workers, args.ray_address) as backend:
        table = run_sweep(
            base,
            grid,
            samples=args.samples,
            backend=backend,
            out_dir=args.out,
            metric=args.metric,
            data=dataset,
            targets=args.rtg,
            eval_episodes=args.episodes,
            early_stop=args.early_stop,
        )
    out = Path(args.out)
    shown = [c for c in table.columns if c not in ("status", "step")]
    print(table[shown].head(10).to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    print(f"wrote {out / SUMMARY_CSV}, {out / SUMMARY_HTML} and {out / SUMMARY_JSON} ({len(table)} runs)")
    return 0


__all__ = [
    "DATA_KEY",
    "EVAL_SEED",
    "METRICS",
    "EvalSettings",
    "cmd_sweep",
    "load_base_config",
    "Trial",
    "expand_grid",
    "parse_grid",
    "run_sweep",
    "run_trial",
    "set_dotted",
    "summary_table",
    "trial_name",
]
