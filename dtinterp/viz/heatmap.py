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
) -> go.Figure:
    """A heatmap of ``z`` with row 0 at the top.

    Labels are shown as categories in the given order (so a clustered permutation of numeric labels
    keeps its order). ``diverging`` uses a red-blue scale centred at 0 and symmetric about it, with
    ``zmax`` (default: the largest finite ``|z|``) as its limit. ``hover_extra`` (same shape as ``z``,
    e.g. a standard deviation) is added to the hover text. NaN cells are left blank.
    """
    z = np.asarray(z, dtype=float)
    if z.ndim != 2:
        raise ValueError(f"heatmap needs a 2-D array, got shape {z.shape}")
    rows, cols = z.shape
    x = [str(v) for v in (x_labels if x_labels is not None else range(cols))]
    y = [str(v) for v in (y_labels if y_labels is not None else range(rows))]
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
    fig.update_xaxes(type="category")
    fig.update_yaxes(type="category", autorange="reversed")
    return finish(fig, title, x_title, y_title, height=height)
