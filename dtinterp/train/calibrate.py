"""Return calibration: the return a DT achieves as a function of the return it is asked for.

A well-calibrated DT follows ``y = x`` over the returns its data covers and flattens outside them; the
figure shows the mean achieved return with its 95% bootstrap band against the identity line. The
numbers come from :func:`~dtinterp.train.evaluate.evaluate`, so every target is played on the same
env seeds.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import plotly.graph_objects as go

from dtinterp.errors import ConfigError
from dtinterp.limits import check_rtg
from dtinterp.outputs import check_output, check_outputs, write_outputs
from dtinterp.train.evaluate import check_device, evaluate, evaluate_on_backend, json_text

if TYPE_CHECKING:
    from dtinterp.model.checkpoint import Checkpoint


def calibrate(
    checkpoint: Checkpoint,
    rtg_min: float,
    rtg_max: float,
    points: int,
    episodes: int,
    seed: int,
    num_envs: int = 32,
    sample: bool = False,
    progress: bool = True,
    run: Callable[[list[float]], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Evaluate at ``points`` evenly spaced targets in ``[rtg_min, rtg_max]`` (see ``evaluate``'s result).

    ``run(targets)`` evaluates elsewhere (e.g. spread over workers or Ray) with the same numbers.
    """
    if not rtg_min < rtg_max:
        raise ValueError(f"rtg_min must be < rtg_max, got {rtg_min} >= {rtg_max}")
    if points < 2:
        raise ValueError(f"points must be >= 2, got {points}")
    for name, value in (("rtg_min", rtg_min), ("rtg_max", rtg_max)):
        check_rtg(value, name, checkpoint.rtg_scale)
    targets = np.linspace(rtg_min, rtg_max, points).tolist()
    if run is None:
        result = evaluate(checkpoint, targets, episodes, seed, num_envs, sample, progress=progress)
    else:
        result = run(targets)
    result.update(rtg_min=float(rtg_min), rtg_max=float(rtg_max), points=int(points))
    return result


def calibration_figure(result: dict[str, Any], title: str | None = None) -> go.Figure:
    """Achieved vs target return: the 95% CI band, the mean line and the ``y = x`` reference."""
    rows = result["results"]
    x = [r["target_rtg"] for r in rows]
    mean = [r["mean_return"] for r in rows]
    lo = [r["return_ci"][0] for r in rows]
    hi = [r["return_ci"][1] for r in rows]
    pct = round(100 * result.get("confidence", 0.95))
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=x, y=hi, mode="lines", line={"width": 0}, hoverinfo="skip", showlegend=False))
    fig.add_trace(
        go.Scatter(
            x=x,
            y=lo,
            mode="lines",
            line={"width": 0},
            fill="tonexty",
            fillcolor="rgba(31, 119, 180, 0.25)",
            name=f"{pct}% CI",
            hoverinfo="skip",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=x,
            y=mean,
            mode="lines+markers",
            line={"color": "rgb(31, 119, 180)"},
            name="mean return",
            customdata=np.stack([lo, hi, [r["success_rate"] for r in rows]], axis=-1),
            hovertemplate=(
                "target %{x:.3g}<br>return %{y:.3f} [%{customdata[0]:.3f}, %{customdata[1]:.3f}]"
                "<br>success %{customdata[2]:.0%}<extra></extra>"
            ),
        )
    )
    ends = [min(x), max(x)]
    fig.add_trace(
        go.Scatter(x=ends, y=ends, mode="lines", line={"color": "grey", "dash": "dash"}, name="y = x")
    )
    env_id = result.get("env_spec", {}).get("env_id", "")
    fig.update_layout(
        title=title or f"Return calibration {env_id} ({result['episodes']} episodes per target)",
        xaxis_title="target return",
        yaxis_title="achieved return",
        template="plotly_white",
        hovermode="x unified",
    )
    return fig


def html_text(fig: go.Figure) -> str:
    """A standalone interactive HTML page of ``fig`` (plotly.js embedded: works offline)."""
    return fig.to_html(include_plotlyjs=True, full_html=True)


def cmd_calibrate(args: argparse.Namespace) -> int:
    """``dtinterp calibrate``: achieved vs target return as interactive HTML plus JSON beside it.

    Both outputs (``--out`` and the JSON beside it) are checked before the model is loaded and written
    together at the end, all or none.
    """
    for flag, value in (("--min", args.rtg_min), ("--max", args.rtg_max)):
        check_rtg(value, flag)
    if not args.rtg_min < args.rtg_max:
        raise ConfigError(f"--min {args.rtg_min:g} must be smaller than --max {args.rtg_max:g}")
    if args.points < 2:
        raise ConfigError(f"--points {args.points}: need at least 2 targets to draw a curve")
    html_path = check_output("--out", args.out, (".html", ".htm"))
    json_path = html_path.with_suffix(".json")
    check_outputs({"--out": html_path, "--out's JSON": json_path})
    device = check_device(args.device)
    from dtinterp.model.checkpoint import load_checkpoint  # heavy: only once the arguments are valid

    ckpt = load_checkpoint(args.model_dir, device=device)
    for flag, value in (("--min", args.rtg_min), ("--max", args.rtg_max)):
        check_rtg(value, flag, ckpt.rtg_scale)
    result = calibrate(
        ckpt, args.rtg_min, args.rtg_max, args.points, args.episodes, args.seed, args.num_envs,
        run=lambda targets: evaluate_on_backend(args, ckpt, targets),
    )  # fmt: skip
    result["model_dir"] = str(args.model_dir)
    write_outputs(
        [
            ("--out", html_path, html_text(calibration_figure(result))),
            ("--out's JSON", json_path, json_text(result)),
        ]
    )
    print(f"wrote {html_path} and {json_path}")
    return 0
