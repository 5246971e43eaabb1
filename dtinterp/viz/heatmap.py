"""Labelled heatmaps of matrices (similarities, norms by layer and position, attributions)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
from jaxtyping import Float

from dtinterp.viz.style import DIVERGING, SEQUENTIAL, finish


def heatmap(
    z: Float[np.ndarray, "rows cols"],
    *,
    x_labels: Sequence[object] | None = None,
    y_labels: Sequence[object] | None = None,
    title: str,
    x_title: str,
    y_title: str,
    colorbar_title: str = "",
    diverging: bool = False,
    zmax: float | None = None,
    colorscale: str | None = None,
    hover_extra: Float[np.ndarray, "rows cols"] | None = None,
    hover_extra_name: str = "",
    height: int | None = None,
    categorical: bool = True,
) -> go.Figure:
    """A heatmap of ``z`` with row 0 at the top.

    Labels are shown as categories in the given order (so a clustered permutation of numeric labels
    keeps its order); ``categorical=False`` puts numeric labels (timesteps in order) on numeric axes,
    which get evenly spaced ticks however many rows there are. ``diverging`` uses a red-blue scale centred at 0 and symmetric about it, with
    ``zmax`` (default: the largest finite ``|z|``) as its limit. ``hover_extra`` (same shape as ``z``,
    e.g. a standard deviation) is added to the hover text. NaN cells are left blank.
    """
    z = np.asarray(z, dtype=float)
    if z.ndim != 2:
        raise ValueError(f"heatmap needs a 2-D array, got shape {z.shape}")
    rows, cols = z.shape
    x = list(x_labels if x_labels is not None else range(cols))
    y = list(y_labels if y_labels is not None else range(rows))
    if categorical:
        x, y = [str(v) for v in x], [str(v) for v in y]
    if len(x) != cols or len(y) != rows:
        raise ValueError(f"heatmap of shape {z.shape} got {len(y)} row and {len(x)} column labels")
    kw: dict = {"colorscale": colorscale or (DIVERGING if diverging else SEQUENTIAL)}
    if diverging:
        finite = np.abs(z[np.isfinite(z)])
        limit = zmax if zmax is not None else (float(finite.max()) if finite.size else 1.0)
        limit = limit or 1.0
        kw.update(zmid=0.0, zmin=-limit, zmax=limit)
    elif zmax is not None:
        kw["zmax"] = zmax
    hover = "%{y} · %{x}<br>%{z:.4g}"
    if hover_extra is not None:
        kw["customdata"] = np.asarray(hover_extra, dtype=float)
        hover += f"<br>{hover_extra_name or 'extra'}: %{{customdata:.3g}}"
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=x,
            y=y,
            colorbar={"title": {"text": colorbar_title}},
            hovertemplate=hover + "<extra></extra>",
            hoverongaps=False,
            **kw,
        )
    )
    if categorical:
        fig.update_xaxes(type="category")
        fig.update_yaxes(type="category")
    fig.update_yaxes(autorange="reversed")
    return finish(fig, title, x_title, y_title, height=height)


def heatmap_grid(
    mats: Sequence[Float[np.ndarray, "rows cols"]],
    titles: Sequence[str],
    *,
    x_labels: Sequence[object],
    y_labels: Sequence[object],
    title: str,
    x_title: str,
    y_title: str,
    colorbar_title: str = "",
    diverging: bool = False,
    zmin: float | None = None,
    zmax: float | None = None,
    cols: int = 4,
    panel_px: int = 210,
    hover: str = "%{y} · %{x}<br>%{z:.3g}",
) -> go.Figure:
    """Small multiples: one heatmap per matrix (same labels), sharing one colour scale, row 0 at the top.

    ``diverging`` centres a red-blue scale at 0 with limit ``zmax`` (default: the robust limit of all
    panels, :func:`~dtinterp.viz.style.robust_limit`); otherwise a sequential scale over
    ``[zmin, zmax]`` (default ``[0, robust limit]``). The height grows with the rows of panels up to
    :data:`~dtinterp.viz.style.MAX_HEIGHT`. Every axis is labelled (the panel titles say which panel).
    """
    from dtinterp.viz.panels import panel_grid
    from dtinterp.viz.style import MAX_HEIGHT, robust_limit

    n = len(mats)
    if n == 0 or len(titles) != n:
        raise ValueError(f"heatmap_grid needs matrices and one title each, got {n} and {len(titles)}")
    x = [str(v) for v in x_labels]
    y = [str(v) for v in y_labels]
    every = np.concatenate([np.asarray(m, dtype=float).ravel() for m in mats])
    limit = zmax if zmax is not None else robust_limit(every)
    if diverging:
        axis = {"colorscale": DIVERGING, "cmid": 0.0, "cmin": -limit, "cmax": limit}
    else:
        axis = {"colorscale": SEQUENTIAL, "cmin": 0.0 if zmin is None else zmin, "cmax": limit}
    cols = max(1, min(cols, n))
    rows = -(-n // cols)
    grid = panel_grid(titles, cols, hspace=min(0.3 / cols, 0.07), vspace=min(0.4 / rows, 0.13), right=0.95)
    ticks = {"type": "category", "tickfont": {"size": 8}}
    traces = []
    for i, m in enumerate(mats):
        m = np.asarray(m, dtype=float)
        if m.shape != (len(y), len(x)):
            raise ValueError(f"panel {i} has shape {m.shape}, labels say {(len(y), len(x))}")
        traces.append(
            {
                "type": "heatmap",
                "z": m,
                "x": x,
                "y": y,
                "coloraxis": "coloraxis",
                "hovertemplate": hover + "<extra></extra>",
                "xaxis": grid.x[i],
                "yaxis": grid.y[i],
            }
        )
        grid.axis(i, "x").update(ticks)
        grid.axis(i, "y").update(ticks, autorange="reversed", title={"text": y_title, "font": {"size": 10}})
        if grid.bottom(i):
            grid.axis(i, "x").update(title={"text": x_title, "font": {"size": 10}})
    layout = {
        **grid.layout,
        "coloraxis": {**axis, "colorbar": {"title": {"text": colorbar_title}}},
        "height": min(MAX_HEIGHT, rows * panel_px + 130),
    }
    return finish(go.Figure(data=traces, layout=layout), title)
