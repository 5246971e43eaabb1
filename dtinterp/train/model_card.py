"""``model_card.md``: what a trained model is and how it was made, rendered from its checkpoint meta.

The card is a pure function of ``config.json`` (model config + meta), so anything that updates the meta
(evaluation adding ``results``) can re-render it with :func:`write_model_card`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from dtinterp.model.checkpoint import atomic_write_text

CARD_FILE = "model_card.md"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return f"`{json.dumps(v, sort_keys=True)}`"
    return f"`{v}`" if isinstance(v, str) else str(v)


def _table(d: dict[str, Any]) -> list[str]:
    rows = ["| key | value |", "| --- | --- |"]
    rows += [f"| {k} | {_fmt(v)} |" for k, v in d.items()]
    return rows


def _duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s"


def render_model_card(config: dict[str, Any]) -> str:
    """Markdown card from a checkpoint's ``config.json`` content (``model`` plus meta keys)."""
    model = config.get("model", {})
    env = config.get("env_spec", {})
    run = config.get("run", {})
    train = config.get("train", {})
    data = config.get("dataset", {})
    data_meta = config.get("dataset_metadata", {})
    policy = data_meta.get("policy", {})
    env_id = env.get("env_id", "unknown env")
    view = (
        "fully observed"
        if env.get("fully_observed")
        else f"egocentric {env.get('view_size', 7)}x{env.get('view_size', 7)} view"
    )

    lines = [
        f"# Decision transformer for {env_id}",
        "",
        f"A decision transformer trained with dtinterp by behaviour cloning on return-conditioned windows of "
        f"{model.get('context_len', '?')} timesteps ({3 * int(model.get('context_len', 1)) - 1} tokens: "
        f"`R1, S1, A1, ..., RK, SK`). Given a target return-to-go it predicts the next MiniGrid action. "
        f"Load it with `dtinterp.model.checkpoint.load_checkpoint(<this folder>)`.",
        "",
        "## Environment",
        "",
        f"- env: `{env_id}`, {view}, max steps {env.get('max_steps') or 'env default'} "
        f"(time embedding covers {model.get('max_timestep', '?')} steps)",
        f"- the model sees return-to-go divided by `rtg_scale` = {_fmt(config.get('rtg_scale', 1.0))}",
        "",
        "## Training data",
        "",
        f"- {data.get('n_episodes', '?')} episodes, {data.get('n_transitions', '?')} transitions",
        f"- behaviour policy: `{policy.get('name', '?')}` (modes: {', '.join(policy.get('modes', [])) or '?'}), "
        f"collection seed {data_meta.get('seed', '?')}",
    ]
    if policy.get("params"):
        lines.append(f"- policy parameters: {_fmt(policy['params'])}")
    if config.get("data_note"):
        lines.append(f"- why this mixture: {config['data_note']}")
    if run.get("data_path"):
        lines.append(f"- file: `{run['data_path']}`")
    lines += [f"- fingerprint (sha256 of the arrays): `{data.get('sha256', '?')}`", ""]

    lines += ["## Architecture", ""]
    if "n_params" in run:
        lines.append(f"{run['n_params']:,} parameters.")
        lines.append("")
    lines += _table(model) + [""]

    lines += ["## Training", ""]
    if "step" in config:
        lines.append(f"- steps done: {config['step']} of {train.get('steps', '?')}")
    if "wall_time_s" in run:
        lines.append(f"- wall time: {_duration(run['wall_time_s'])} on `{run.get('device', '?')}`")
    if "final_loss" in run:
        lines.append(f"- final training loss {run['final_loss']:.4f}, action accuracy {run['final_acc']:.3f}")
    lines += ["", *_table(train), ""]

    lines += ["## Results", ""]
    results = config.get("results")
    if isinstance(results, dict) and "evaluation" in results:
        lines += _structured_results(results)
    elif results:
        lines += _results_lines(results)
    else:
        lines.append("Not evaluated yet: run `dtinterp evaluate <this folder> --rtg <target>`.")
    repro = config.get("reproduction")
    if repro:
        lines += [
            "",
            "## Reproduce",
            "",
            f"`{repro['command']}` runs these commands (timed on {repro['host']}, "
            f"device `{repro['device']}`; {_duration(repro['total_seconds'])} in total):",
            "",
        ]
        lines += ["| step | wall time | command |", "| --- | --- | --- |"]
        lines += [f"| {s['step']} | {_duration(s['seconds'])} | `{s['command']}` |" for s in repro["steps"]]
    others = config.get("other_reproductions")
    if others:
        lines += _other_reproductions(others, config.get("dataset", {}).get("sha256"))
    return "\n".join(lines) + "\n"


def _other_reproductions(entries: list[dict[str, Any]], dataset_sha: str | None) -> list[str]:
    """The same recipe rebuilt elsewhere: step times, whether the data came out byte-identical, and the
    rebuilt agent's headline result."""
    steps = ("collect", "train", "evaluate", "calibrate")
    out = [
        "",
        "### Rebuilt elsewhere from the same recipe",
        "",
        "Same commands, other hardware; the rebuilt weights differ (float arithmetic differs between devices), "
        "the shipped ones above are unchanged.",
        "",
        "| host | device | "
        + " | ".join(steps)
        + " | total | same data | headline success | headline return |",
        "| --- | --- | " + " | ".join("---" for _ in steps) + " | --- | --- | --- | --- |",
    ]
    for e in entries:
        h = e["headline"]
        rebuilt_sha = e.get("dataset_sha256")
        same = (
            "?"
            if not (rebuilt_sha and dataset_sha)
            else ("yes (sha256)" if rebuilt_sha == dataset_sha else "no")
        )
        times = " | ".join(_duration(e["step_seconds"][s]) if s in e["step_seconds"] else "-" for s in steps)
        out.append(
            f"| {e['host']} | `{e['device']}` | {times} | {_duration(e['total_seconds'])} | {same} | "
            f"{h['success_rate']:.1%} (target {_fmt(h['target_rtg'])}) | {h['mean_return']:.3f} |"
        )
    return out


def _structured_results(results: dict[str, Any]) -> list[str]:
    """Headline, evaluation table with CIs, calibration figure and episode GIF of a shipped agent."""
    h = results["headline"]
    proto = results.get("evaluation_protocol", {})
    out = [
        f"**Headline:** at target return {h['target_rtg']:g}, success {h['success_rate']:.1%} "
        f"(95% CI {h['success_ci'][0]:.1%}-{h['success_ci'][1]:.1%}), mean return {h['mean_return']:.3f} "
        f"(95% CI {h['return_ci'][0]:.3f}-{h['return_ci'][1]:.3f}) over {h['episodes']} seeded episodes.",
        "",
        f"Greedy actions, env seeds {proto.get('seed', '?')}..{proto.get('seed', 0) + proto.get('episodes', 0) - 1}, "
        "the same seeds at every target:",
        "",
        "| target return | mean return | 95% CI | success | 95% CI | mean length |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in results["evaluation"]:
        out.append(
            f"| {r['target_rtg']:g} | {r['mean_return']:.3f} | {r['return_ci'][0]:.3f} - {r['return_ci'][1]:.3f} "
            f"| {r['success_rate']:.1%} | {r['success_ci'][0]:.1%} - {r['success_ci'][1]:.1%} | {r['mean_length']:.1f} |"
        )
    cal = results.get("calibration")
    if cal:
        out += [
            "",
            f"### Calibration ({cal.get('points', '?')} targets from {cal.get('min', '?')} to {cal.get('max', '?')}, "
            f"{cal.get('episodes', '?')} episodes each)",
            "",
            f"![achieved vs target return]({cal['figure']})",
            "",
            f"Numbers: [`{cal['file']}`]({cal['file']}).",
        ]
    if results.get("episode_gif"):
        out += ["", "### An episode at the headline target", "", f"![episode]({results['episode_gif']})"]
    return out


def _results_lines(results: Any) -> list[str]:
    """Evaluation results: a table if it is a list of flat records, else a JSON block."""
    if isinstance(results, list) and results and all(isinstance(r, dict) for r in results):
        keys = list(dict.fromkeys(k for r in results for k in r if not isinstance(r[k], (dict, list))))
        rows = ["| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
        rows += ["| " + " | ".join(_fmt(r.get(k, "")) for k in keys) + " |" for r in results]
        return rows
    return ["```json", json.dumps(results, indent=2, sort_keys=True), "```"]


def write_model_card(directory: str | os.PathLike, config: dict[str, Any]) -> Path:
    """Render and atomically write ``model_card.md`` into ``directory``; returns its path."""
    path = Path(directory) / CARD_FILE
    atomic_write_text(path, render_model_card(config))
    return path
