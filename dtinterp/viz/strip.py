"""Distributions by category: grouped box/strip plots, overlaid histograms, bar panels with error bars."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from jaxtyping import Float
from plotly.subplots import make_subplots

from dtinterp.viz.style import color, finish


def strip_plot(
    groups: Mapping[str, Mapping[str, Float[np.ndarray, "n"]]],
    *,
    title: str,
    x_title: str,
    y_title: str,
    log_y: bool = False,
    points: str | bool = "outliers",
    height: int | None = None,
) -> go.Figure:
    """Box plots of values by category, one coloured series per outer key, side by side.

    ``groups[series][category]`` is a 1-D array of values (NaNs are dropped), e.g.
    ``{"model basis": {"L0 resid": k0, ...}, "rotated": {...}}``. ``points`` is plotly's ``boxpoints``
    (``"all"`` overlays every value as a jittered strip).
    """
    fig = go.Figure()
    for i, (series, cats) in enumerate(groups.items()):
        xs, ys = [], []
        for cat, values in cats.items():
            v = np.asarray(values, dtype=float).ravel()
            v = v[np.isfinite(v)]
            xs.extend([str(cat)] * v.size)
            ys.append(v)
        fig.add_trace(
            go.Box(
                x=xs,
                y=np.concatenate(ys) if ys else [],
                name=series,
                marker={"color": color(i), "size": 3},
                boxpoints=points,
                jitter=0.4 if points == "all" else 0,
            )
        )
    fig.update_layout(boxmode="group")
    fig.update_xaxes(type="category")
    if log_y:
        fig.update_yaxes(type="log")
    return finish(fig, title, x_title, y_title, height=height)


def histogram(
    series: Mapping[str, Float[np.ndarray, "n"]],
    *,
    title: str,
    x_title: str,
    y_title: str = "count",
    nbins: int = 50,
    height: int | None = None,
) -> go.Figure:
    """Overlaid translucent histograms of each series (NaNs dropped), sharing one set of bins."""
    cleaned = {k: np.asarray(v, dtype=float).ravel() for k, v in series.items()}
    cleaned = {k: v[np.isfinite(v)] for k, v in cleaned.items()}
    every = np.concatenate(list(cleaned.values())) if cleaned else np.zeros(0)
    lo, hi = (float(every.min()), float(every.max())) if every.size else (0.0, 1.0)
    size = (hi - lo) / nbins if hi > lo else 1.0
    fig = go.Figure()
    for i, (name, v) in enumerate(cleaned.items()):
        fig.add_trace(
            go.Histogram(
                x=v,
                name=name,
                opacity=0.6,
                marker={"color": color(i)},
                xbins={"start": lo, "end": hi + size, "size": size},
            )
        )
    fig.update_layout(barmode="overlay")
    return finish(fig, title, x_title, y_title, height=height)


def binned_histogram(
    edges: Float[np.ndarray, "nb1"],
    counts: Float[np.ndarray, "nb"],
    *,
    title: str,
    x_title: str,
    y_title: str = "count",
    log_y: bool = False,
    height: int | None = None,
) -> go.Figure:
    """A histogram already binned: ``counts[i]`` values in ``[edges[i], edges[i + 1])``; ``log_y`` for
    counts spanning orders of magnitude (a sparse feature's zeros beside its rare firings)."""
    edges, counts = np.asarray(edges, dtype=float), np.asarray(counts, dtype=float)
    if edges.shape != (counts.shape[0] + 1,):
        raise ValueError(
            f"binned_histogram needs one more edge than counts, got {edges.shape} and {counts.shape}"
        )
    fig = go.Figure(
        go.Bar(
            x=(edges[:-1] + edges[1:]) / 2,
            y=counts,
            width=np.diff(edges),
            marker={"color": color(0)},
            customdata=np.stack([edges[:-1], edges[1:]], 1),
            hovertemplate="[%{customdata[0]:.4g}, %{customdata[1]:.4g}): %{y}<extra></extra>",
        )
    )
    if log_y:
        fig.update_yaxes(type="log")
    return finish(fig, title, x_title, y_title + (" (log scale)" if log_y else ""), height=height)


def bar_panels(
    labels: Sequence[str],
    panels: Mapping[str, Float[np.ndarray, "n"]],
    *,
    errors: Mapping[str, Float[np.ndarray, "n"]] | None = None,
    colors: Sequence[int] | None = None,
    title: str,
    x_title: str,
    height: int | None = None,
) -> go.Figure:
    """One bar chart per panel, stacked vertically over the shared category axis ``labels``.

    The panel name is that row's y-axis title (e.g. ``"L2 norm"`` and ``"direct logit contribution"``
    of the same components). ``errors[panel]`` adds ± error bars; ``colors[i]`` is the palette index of
    bar ``i`` (to tell groups of categories apart).
    """
    names = list(panels)
    fig = make_subplots(rows=len(names), cols=1, shared_xaxes=True, vertical_spacing=0.06)
    bar_colors = [color(c) for c in colors] if colors is not None else color(0)
    for row, name in enumerate(names, start=1):
        y = np.asarray(panels[name], dtype=float)
        if y.shape != (len(labels),):
            raise ValueError(f"panel {name!r} has shape {y.shape}, expected ({len(labels)},)")
        err = None
        if errors is not None and name in errors:
            err = {"type": "data", "array": np.nan_to_num(np.asarray(errors[name], dtype=float))}
        fig.add_trace(
            go.Bar(
                x=list(labels), y=y, name=name, error_y=err, marker={"color": bar_colors}, showlegend=False
            ),
            row=row,
            col=1,
        )
        fig.update_yaxes(title_text=name, row=row, col=1)
    fig.update_xaxes(type="category")
    finish(fig, title, height=height or 220 * len(names) + 120)
    fig.update_xaxes(title_text=x_title, row=len(names), col=1)
    return fig


def labelled_strip(
    series: Mapping[str, tuple[Sequence[str], Sequence[float], Sequence[str]]],
    *,
    order: Sequence[str],
    title: str,
    x_title: str,
    y_title: str,
    height: int | None = None,
) -> go.Figure:
    """Strips of labelled points by category: ``series[name] = (categories, values, point labels)``.

    Every point is drawn (jittered over a box of its category) and its hover names it (e.g. the neuron);
    categories are shown in ``order`` (a sorted order chosen by the caller), one colour per series.
    """
    fig = go.Figure()
    for i, (name, (cats, values, labels)) in enumerate(series.items()):
        fig.add_trace(
            go.Box(
                x=list(cats),
                y=np.asarray(values, dtype=float),
                text=list(labels),
                name=name,
                boxpoints="all",
                jitter=0.6,
                pointpos=0,
                marker={"color": color(i), "size": 4, "opacity": 0.7},
                line={"width": 1},
                fillcolor="rgba(0,0,0,0)",
                hovertemplate="%{text}<br>%{x}: %{y:.4g}<extra>" + name + "</extra>",
            )
        )
    fig.update_layout(boxmode="group")
    fig.update_xaxes(type="category", categoryorder="array", categoryarray=list(order))
    fig.add_hline(y=0, line={"color": "grey", "width": 1, "dash": "dot"})
    return finish(fig, title, x_title, y_title, height=height or 480)
