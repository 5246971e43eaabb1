"""Figures of causal experiments: patching sweeps laid out by their axes, and intervals of played-out runs.

:func:`sweep_figures` draws any patching result from its axes (the names of
:class:`~dtinterp.interp.patching.PatchResult`): ``layer x pos``, ``layer x head`` and
``layer x sender`` as heatmaps, ``layer x pos x head`` and ``layer x head x dest_pos`` as one heatmap with
a row per head (``L1H2``) and a column per token, neurons as labelled strips (one point per neuron, its
hover names it) beside a heatmap of the strongest ones, and a leading ``patch_type`` axis as one figure
per type. Token axes carry the token labels (``R3``, ``S3``, ``A3``) and leave out tokens padded in every
window. Signed values get a red-blue scale symmetric about 0. :func:`interval_lines` and
:func:`interval_bars` draw means with asymmetric confidence intervals (bootstrap and Wilson intervals are
not symmetric). :func:`estimate_scatter` sets an estimate (attribution patching) against the exact effect
it estimates, one point per patch, with the line where they agree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from dtinterp.viz.heatmap import heatmap
from dtinterp.viz.strip import labelled_strip
from dtinterp.viz.style import MAX_HEIGHT, color, finish, rgba

#: Neurons shown in the heatmap beside a neuron strip (the largest |value|).
TOP_NEURONS = 20
_TITLE_MARGIN = (
    110  # up to three title lines: the experiment; the metric and the runs' predictions; the inputs
)


def _titled(fig: go.Figure, title: str, subtitle: str) -> go.Figure:
    text = title if not subtitle else f"{title}<br><sup>{subtitle}</sup>"
    fig.update_layout(title={"text": text}, margin={"t": _TITLE_MARGIN})
    return fig


def _rows_height(n: int, per: int = 30, base: int = 200) -> int:
    return min(MAX_HEIGHT, base + per * n)


def sweep_figures(
    values: np.ndarray,
    axis_names: Sequence[str],
    axis_labels: Mapping[str, Sequence[str]],
    *,
    title: str,
    subtitle: str = "",
    colorbar_title: str,
    real_tokens: Sequence[bool] | None = None,
    std: np.ndarray | None = None,
    signed: bool = True,
    zmax: float | None = None,
) -> list[go.Figure]:
    """Figures of one sweep's ``values`` (laid out along ``axis_names``), see the module docstring.

    ``real_tokens`` (one flag per token) leaves out tokens padded in every window; ``std`` (same shape)
    goes into the hover; ``signed`` picks a diverging scale symmetric about 0 (else sequential);
    ``zmax`` fixes the colour limit (default: the largest finite ``|value|``; the figures of a
    ``patch_type`` axis share one limit, so a patch type that does nothing looks it).
    """
    values = np.asarray(values, dtype=float)
    names = list(axis_names)
    if values.ndim != len(names):
        raise ValueError(f"values of shape {values.shape} do not have the axes {names}")
    if names and names[0] == "patch_type":
        finite = np.abs(values[np.isfinite(values)])
        zmax = zmax if zmax is not None else (float(finite.max()) if finite.size else None)
        figs = []
        for i, kind in enumerate(axis_labels["patch_type"]):
            sub = None if std is None else np.asarray(std, dtype=float)[i]
            figs += sweep_figures(
                values[i], names[1:], axis_labels, title=f"{title}: {kind}", subtitle=subtitle,
                colorbar_title=colorbar_title, real_tokens=real_tokens, std=sub, signed=signed, zmax=zmax,
            )  # fmt: skip
        return figs
    std = None if std is None else np.asarray(std, dtype=float)
    tokens = list(axis_labels.get("pos", axis_labels.get("dest_pos", [])))
    keep = np.ones(len(tokens), dtype=bool) if real_tokens is None else np.asarray(real_tokens, dtype=bool)
    kept = [t for t, k in zip(tokens, keep) if k]
    common = {"colorbar_title": colorbar_title, "diverging": signed, "zmax": zmax or None}

    def hm(z: np.ndarray, s: np.ndarray | None, x: list[str], y: list[str], xt: str, yt: str) -> go.Figure:
        fig = heatmap(
            z, x_labels=x, y_labels=y, title=title, x_title=xt, y_title=yt, hover_extra=s,
            hover_extra_name="std over windows", height=_rows_height(len(y)), **common,
        )  # fmt: skip
        return _titled(fig, title, subtitle)

    layers = list(axis_labels["layer"])
    key = tuple(names)
    if key == ("layer", "pos"):
        return [hm(values[:, keep], None if std is None else std[:, keep], kept, layers, "token", "layer")]
    if key in (("layer", "head"), ("layer", "sender")):
        return [hm(values, std, list(axis_labels[key[1]]), layers, key[1], "layer")]
    if key in (("layer", "pos", "head"), ("layer", "head", "dest_pos")):
        heads = list(axis_labels["head"])
        z = values if key[1] == "head" else values.transpose(0, 2, 1)  # [L, H, P]
        s = None if std is None else (std if key[1] == "head" else std.transpose(0, 2, 1))
        rows = [f"{lay}{h}" for lay in layers for h in heads]
        z = z.reshape(len(rows), -1)[:, keep]
        s = None if s is None else s.reshape(len(rows), -1)[:, keep]
        x_title = "query token" if key[2] == "dest_pos" else "token"
        return [hm(z, s, kept, rows, x_title, "head")]
    if key == ("layer", "neuron"):
        neurons = list(axis_labels["neuron"])
        strip = labelled_strip(
            {colorbar_title: ([lay for lay in layers for _ in neurons], values.ravel(),
                              [f"{lay}{n}" for lay in layers for n in neurons])},
            order=layers, title=title, x_title="layer", y_title=colorbar_title,
        )  # fmt: skip
        return [_titled(strip, title, subtitle)]
    if key == ("layer", "pos", "neuron"):
        neurons = list(axis_labels["neuron"])
        series = {}
        for li, lay in enumerate(layers):
            v = values[li][keep]  # [P', m]
            series[lay] = (
                [t for t in kept for _ in neurons],
                v.ravel(),
                [f"{lay}{n} at {t}" for t in kept for n in neurons],
            )
        strip = _titled(
            labelled_strip(series, order=kept, title=title, x_title="token", y_title=colorbar_title),
            title,
            subtitle,
        )
        flat = values[:, keep].transpose(0, 2, 1).reshape(-1, len(kept))  # [L*m, P']
        top = np.argsort(-np.nan_to_num(np.abs(flat)).max(1), kind="stable")[:TOP_NEURONS]
        labels = [f"{layers[i // len(neurons)]}{neurons[i % len(neurons)]}" for i in top]
        s = None
        if std is not None:
            s = std[:, keep].transpose(0, 2, 1).reshape(-1, len(kept))[top]
        return [strip, hm(flat[top], s, kept, labels, "token", f"neuron (top {len(top)} by |value|)")]
    raise ValueError(f"no figure for a sweep with axes {names}")


def interval_lines(
    x: Sequence[float],
    series: Mapping[str, tuple[Sequence[float], Sequence[float], Sequence[float]]],
    *,
    title: str,
    subtitle: str = "",
    x_title: str,
    y_title: str,
    identity: bool = False,
    height: int | None = 500,
) -> go.Figure:
    """One line per ``series[name] = (mean, lo, hi)`` with its interval as a band; ``identity`` adds y = x."""
    x = np.asarray(x, dtype=float)
    fig = go.Figure()
    for i, (name, (mean, lo, hi)) in enumerate(series.items()):
        c = color(i)
        fig.add_trace(
            go.Scatter(
                x=np.concatenate([x, x[::-1]]),
                y=np.concatenate([np.asarray(hi, dtype=float), np.asarray(lo, dtype=float)[::-1]]),
                mode="lines", fill="toself", fillcolor=rgba(c, 0.2), line={"width": 0}, hoverinfo="skip",
                showlegend=False, legendgroup=name,
            )
        )  # fmt: skip
        fig.add_trace(
            go.Scatter(
                x=x, y=np.asarray(mean, dtype=float), name=name, legendgroup=name, mode="lines+markers",
                line={"color": c}, customdata=np.stack([lo, hi], -1),
                hovertemplate="%{x:.3g}: %{y:.3f} [%{customdata[0]:.3f}, %{customdata[1]:.3f}]<extra>"
                + name + "</extra>",
            )
        )  # fmt: skip
    if identity and x.size:
        ends = [float(x.min()), float(x.max())]
        fig.add_trace(
            go.Scatter(x=ends, y=ends, mode="lines", name="y = x", line={"color": "grey", "dash": "dash"})
        )
    return _titled(finish(fig, title, x_title, y_title, height=height), title, subtitle)


def interval_bars(
    categories: Sequence[str],
    series: Mapping[str, tuple[Sequence[float], Sequence[float], Sequence[float]]],
    *,
    title: str,
    subtitle: str = "",
    x_title: str,
    y_title: str,
    height: int | None = 450,
    percent: bool = False,
) -> go.Figure:
    """Grouped bars, one group per category and one bar per ``series[name] = (value, lo, hi)`` with its
    interval as asymmetric error bars; ``percent`` formats the y axis as a percentage."""
    cats = [str(c) for c in categories]
    fig = go.Figure()
    for i, (name, (value, lo, hi)) in enumerate(series.items()):
        v, lo, hi = (np.asarray(a, dtype=float) for a in (value, lo, hi))
        fig.add_trace(
            go.Bar(
                x=cats, y=v, name=name, marker={"color": color(i)},
                error_y={"type": "data", "symmetric": False, "array": hi - v, "arrayminus": v - lo},
            )
        )  # fmt: skip
    fig.update_layout(barmode="group")
    fig.update_xaxes(type="category")
    if percent:
        fig.update_yaxes(tickformat=".0%")
    return _titled(finish(fig, title, x_title, y_title, height=height), title, subtitle)


def estimate_scatter(
    estimate: Sequence[float],
    exact: Sequence[float],
    labels: Sequence[str],
    *,
    title: str,
    subtitle: str = "",
    x_title: str,
    y_title: str,
    height: int | None = 560,
) -> go.Figure:
    """One point per patch at ``(exact, estimate)`` (hover: its label), beside the line ``y = x`` on which a
    perfect estimate lies. Axes share one range so the line is the diagonal."""
    x, y = np.asarray(exact, dtype=float), np.asarray(estimate, dtype=float)
    if x.shape != y.shape or len(labels) != x.size:
        raise ValueError(f"{x.size} exact values, {y.size} estimates and {len(labels)} labels differ")
    finite = np.concatenate([x[np.isfinite(x)], y[np.isfinite(y)], [0.0]])
    lo, hi = float(finite.min()), float(finite.max())
    pad = 0.05 * (hi - lo or 1.0)
    span = [lo - pad, hi + pad]
    scatter = go.Scattergl if x.size > 2000 else go.Scatter
    fig = go.Figure(
        [
            go.Scatter(
                x=span,
                y=span,
                mode="lines",
                name="estimate = exact",
                line={"color": "grey", "dash": "dash", "width": 1},
                hoverinfo="skip",
            ),
            scatter(
                x=x,
                y=y,
                mode="markers",
                name="one patch",
                text=list(labels),
                marker={"color": color(0), "size": 6, "opacity": 0.7},
                hovertemplate="%{text}<br>exact %{x:.4g}<br>estimate %{y:.4g}<extra></extra>",
            ),
        ]
    )
    fig.update_xaxes(range=span, zeroline=True)
    fig.update_yaxes(range=span, zeroline=True, scaleanchor="x", scaleratio=1)
    return _titled(finish(fig, title, x_title, y_title, height=height), title, subtitle)


__all__ = ["estimate_scatter", "interval_bars", "interval_lines", "sweep_figures"]
