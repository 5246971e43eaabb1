"""Reproduce the shipped agents from scratch: collect -> train -> evaluate -> calibrate -> card.

Each shipped agent ``trained_models/<name>/`` carries a ``recipe.json``: the collection arguments, the
full training config, and the evaluation protocol. ``make models`` (``python -m dtinterp.train.reproduce``)
runs, for every recipe, the very ``dtinterp`` commands a user would type, times each, then copies the
checkpoint into the agent's folder and records the results, the commands and their timings in
``config.json`` and ``model_card.md`` beside a calibration figure (SVG) and an episode GIF.

``--record-into trained_models --models-dir DIR`` rebuilds the shipped recipes into ``DIR`` instead (on
another device, say) and records each rebuild's host, step times and headline on the shipped agent's
card, leaving its weights alone: evidence that the recipe reproduces elsewhere.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from dtinterp.errors import ConfigError
from dtinterp.model.checkpoint import CONFIG_FILE, WEIGHTS_FILE, atomic_write_text, read_checkpoint_config
from dtinterp.model.shipped import models_dir

RECIPE_FILE = "recipe.json"
RECIPE_KEYS = {"collect", "train", "evaluate", "calibrate", "headline_rtg", "description", "data_note"}


def load_recipe(path: Path) -> dict[str, Any]:
    """Parse and check one ``recipe.json``."""
    try:
        recipe = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read recipe ({exc})") from None
    unknown = set(recipe) - RECIPE_KEYS
    missing = {"collect", "train", "evaluate", "calibrate", "headline_rtg"} - set(recipe)
    if unknown or missing:
        raise ConfigError(f"{path}: unknown keys {sorted(unknown)} / missing keys {sorted(missing)}")
    for key in ("description", "data_note"):
        if not isinstance(recipe.get(key, ""), str):
            raise ConfigError(f"{path}: {key!r} must be a string")
    return recipe


def find_recipes(root: Path, only: list[str] | None = None) -> list[tuple[str, dict[str, Any]]]:
    """``(name, recipe)`` of every ``<root>/<name>/recipe.json`` (optionally only the named ones)."""
    out = []
    for path in sorted(root.glob(f"*/{RECIPE_FILE}")):
        name = path.parent.name
        if only and name not in only:
            continue
        out.append((name, load_recipe(path)))
    if only and {n for n, _ in out} != set(only):
        raise ConfigError(f"no recipe for {sorted(set(only) - {n for n, _ in out})} under {root}")
    return out


def _collect_cmd(c: dict[str, Any], out: Path, workers: int) -> list[str]:
    cmd = [
        "collect",
        "--env",
        c["env"],
        "--episodes",
        str(c["episodes"]),
        "--policy",
        c.get("policy", "mixed"),
    ]
    cmd += ["--seed", str(c.get("seed", 0)), "--workers", str(workers), "--out", str(out)]
    if "view_size" in c:
        cmd += ["--view-size", str(c["view_size"])]
    if c.get("fully_observed"):
        cmd += ["--fully-observed"]
    if c.get("max_steps"):
        cmd += ["--max-steps", str(c["max_steps"])]
    for k, v in c.get("policy_params", {}).items():
        cmd += ["--policy-param", f"{k}={json.dumps(v, separators=(',', ':'))}"]
    return cmd


class _Runner:
    """Runs ``dtinterp`` subcommands, recording each command line and its wall time."""

    def __init__(self, log: list[dict[str, Any]]):
        self.log = log

    def __call__(self, args: list[str], label: str) -> float:
        shown = "dtinterp " + " ".join(shlex.quote(a) for a in args)
        print(f"\n$ {shown}", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "dtinterp.cli", *args], stdin=subprocess.DEVNULL)
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            raise ConfigError(f"step {label!r} failed (exit {proc.returncode}): {shown}")
        self.log.append({"step": label, "command": shown, "seconds": round(seconds, 1)})
        return seconds


def reproduce_one(
    name: str, recipe: dict[str, Any], root: Path, work: Path, device: str, workers: int
) -> dict[str, Any]:
    """Run one recipe end to end and install the result in ``root/name``; returns its results."""
    from dtinterp.train.calibrate import cmd_calibrate  # noqa: F401  (fail early if deps are missing)
    from dtinterp.viz.svg import band_chart_svg

    dest = root / name
    run_dir = work / name / "run"
    data = work / name / "data.npz"
    (work / name).mkdir(parents=True, exist_ok=True)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    cfg_path = work / name / "train_config.json"
    atomic_write_text(cfg_path, json.dumps({**recipe["train"], "device": device}, indent=2) + "\n")
    log: list[dict[str, Any]] = []
    run = _Runner(log)
    t_all = time.perf_counter()

    run(_collect_cmd(recipe["collect"], data, workers), "collect")
    run(["train", "--data", str(data), "--out", str(run_dir), "--config", str(cfg_path)], "train")
    ev, cal = recipe["evaluate"], recipe["calibrate"]
    eval_json, gif = work / name / "evaluation.json", work / name / "episode.gif"
    rtgs = [x for r in ev["rtg"] for x in ("--rtg", str(r))]
    run(
        ["evaluate", str(run_dir), *rtgs, "--episodes", str(ev["episodes"]), "--seed", str(ev["seed"]),
         "--json", str(eval_json), "--gif", str(gif), "--device", device],
        "evaluate",
    )  # fmt: skip
    cal_html = work / name / "calibration.html"
    run(
        ["calibrate", str(run_dir), "--min", str(cal["min"]), "--max", str(cal["max"]),
         "--points", str(cal["points"]), "--episodes", str(cal["episodes"]), "--seed", str(cal["seed"]),
         "--out", str(cal_html), "--device", device],
        "calibrate",
    )  # fmt: skip
    total = time.perf_counter() - t_all

    evaluation = json.loads(eval_json.read_text())
    calibration = json.loads(cal_html.with_suffix(".json").read_text())
    rows = [_row(r) for r in evaluation["results"]]
    headline = min(rows, key=lambda r: abs(r["target_rtg"] - recipe["headline_rtg"]))
    cal_rows = calibration["results"]
    svg = band_chart_svg(
        [r["target_rtg"] for r in cal_rows],
        [r["mean_return"] for r in cal_rows],
        [r["return_ci"][0] for r in cal_rows],
        [r["return_ci"][1] for r in cal_rows],
        title=f"{name}: achieved vs target return ({cal['episodes']} episodes per target)",
        xlabel="target return-to-go",
        ylabel="achieved return",
    )

    dest.mkdir(parents=True, exist_ok=True)
    for f in (WEIGHTS_FILE, CONFIG_FILE):
        shutil.copy2(run_dir / f, dest / f".{f}.tmp")
        os.replace(dest / f".{f}.tmp", dest / f)
    shutil.copy2(gif, dest / "episode.gif")
    atomic_write_text(dest / "calibration.svg", svg)
    atomic_write_text(dest / "calibration.json", json.dumps([_row(r) for r in cal_rows], indent=1) + "\n")
    results = {
        "headline": headline,
        "evaluation": rows,
        "evaluation_protocol": {"episodes": ev["episodes"], "seed": ev["seed"], "greedy": True},
        "calibration": {"file": "calibration.json", "figure": "calibration.svg", **cal},
        "episode_gif": "episode.gif",
    }
    reproduction = {
        "command": f"make models MODELS={name}",
        "steps": log,
        "total_seconds": round(total, 1),
        "device": device,
        "host": f"{platform.machine()}, {os.cpu_count()} CPU cores"
        + (f", {_gpu_name()}" if device.startswith("cuda") else ""),
        "collect_workers": workers,
    }
    notes = {"data_note": recipe["data_note"]} if "data_note" in recipe else {}
    update_meta(
        dest, results=results, reproduction=reproduction, description=recipe.get("description", ""), **notes
    )
    return results


def _row(r: dict[str, Any]) -> dict[str, Any]:
    keys = ("target_rtg", "mean_return", "return_ci", "success_rate", "success_ci", "mean_length", "episodes")
    return {k: r[k] for k in keys if k in r}


def _gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"


def update_meta(directory: Path, **meta: Any) -> None:
    """Merge ``meta`` into a checkpoint's ``config.json`` (weights untouched) and re-render its card."""
    from dtinterp.train.model_card import write_model_card

    config = read_checkpoint_config(directory)
    config.update(meta)
    atomic_write_text(directory / CONFIG_FILE, json.dumps(config, indent=2, sort_keys=True) + "\n")
    write_model_card(directory, config)


def record_reproduction(shipped: Path, rebuilt: Path) -> dict[str, Any]:
    """Record, in ``shipped``'s config and card, a rebuild of it made elsewhere (another device or host).

    ``rebuilt`` is the folder ``make models`` wrote from the same recipe; its host, device, step times
    and headline result are added to ``other_reproductions`` (replacing an earlier entry for the same
    host and device). The shipped weights are untouched. Returns the entry.
    """
    for d in (shipped, rebuilt):
        if not (d / RECIPE_FILE).is_file():
            raise ConfigError(f"{d}: no {RECIPE_FILE}")
    if load_recipe(shipped / RECIPE_FILE) != load_recipe(rebuilt / RECIPE_FILE):
        raise ConfigError(f"{rebuilt}: built from a different recipe than {shipped}")
    other = read_checkpoint_config(rebuilt)
    if "reproduction" not in other or "results" not in other:
        raise ConfigError(f"{rebuilt}: not a folder written by make models (no reproduction record)")
    repro = other["reproduction"]
    entry = {
        "host": repro["host"],
        "device": repro["device"],
        "step_seconds": {s["step"]: s["seconds"] for s in repro["steps"]},
        "total_seconds": repro["total_seconds"],
        "headline": other["results"]["headline"],
        "weights_sha256": other.get("weights_sha256"),
        "dataset_sha256": other.get("dataset", {}).get("sha256"),
    }
    config = read_checkpoint_config(shipped)
    earlier = [
        e
        for e in config.get("other_reproductions", [])
        if (e["host"], e["device"]) != (entry["host"], entry["device"])
    ]
    update_meta(shipped, other_reproductions=[*earlier, entry])
    return entry


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m dtinterp.train.reproduce", description=__doc__.splitlines()[0]
    )
    p.add_argument("names", nargs="*", help="agents to rebuild (default: every recipe)")
    p.add_argument("--models-dir", type=Path, default=None, help="default: trained_models/")
    p.add_argument("--work-dir", type=Path, default=Path("build/models"), help="datasets and run directories")
    p.add_argument("--device", default="cpu", help="training and evaluation device (cpu, cuda)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="collection worker processes")
    p.add_argument(
        "--record-into",
        type=Path,
        default=None,
        help="rebuild the agents of this folder (e.g. trained_models/) into --models-dir, then record each "
        "rebuild's timings and headline on the original, whose weights stay",
    )
    args = p.parse_args(argv)
    root = args.models_dir or models_dir()
    try:
        if args.record_into is not None and args.record_into.resolve() == root.resolve():
            raise ConfigError(
                f"--record-into {args.record_into}: must differ from --models-dir (the rebuilds go there)"
            )
        recipes = find_recipes(args.record_into or root, args.names or None)
        if not recipes:
            raise ConfigError(f"no {RECIPE_FILE} under {root}")
        for name, recipe in recipes:
            if args.record_into is not None:  # rebuild the shipped recipe in root, beside nothing else
                (root / name).mkdir(parents=True, exist_ok=True)
                shutil.copy2(args.record_into / name / RECIPE_FILE, root / name / RECIPE_FILE)
            res = reproduce_one(name, recipe, root, args.work_dir, args.device, args.workers)
            if args.record_into is not None:
                record_reproduction(args.record_into / name, root / name)
            h = res["headline"]
            print(
                f"\n{name}: RTG {h['target_rtg']:g} -> success {h['success_rate']:.1%}, return {h['mean_return']:.3f}"
            )
    except ConfigError as exc:
        print(f"reproduce: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
