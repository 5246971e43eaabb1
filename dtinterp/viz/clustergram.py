"""Clustergram: a correlation (or any square) matrix reordered by a dendrogram, with the tree drawn beside it.

Built from scipy's ``dendrogram(Z, no_plot=True)`` coordinates like plotly's ``figure_factory``
dendrogram, without recomputing the clustering: leaf ``i`` of the dendrogram sits at ``x = 10 i + 5``
(scipy's convention), so the heatmap cells are placed at the same coordinates and the tree lines up with
its rows (left) and columns (top).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
from jaxtyping import Float

from dtinterp.viz.style import DIVERGING, MAX_HEIGHT, finish

_TREE = 0.12  # fraction of the width (left tree) and height (top tree) taken by each dendrogram
_LABELS = 0.14  # room right of the heatmap for the row labels (the colour bar sits in the right margin)


def _tree_trace(
    along: Sequence[Sequence[float]], height: Sequence[Sequence[float]], horizontal: bool
) -> dict:
    """All links of a dendrogram as one line trace (``None`` separates links)."""
    a: list[float | None] = []
    h: list[float | None] = []
    for ic, dc in zip(along, height):
        a.extend([*ic, None])
        h.extend([*dc, None])
    x, y = (h, a) if horizontal else (a, h)
    return {
        "type": "scatter",
        "x": x,
        "y": y,
        "mode": "lines",
        "line": {"color": "#444", "width": 1},
        "hoverinfo": "skip",
        "showlegend": False,
        "xaxis": "x2" if horizontal else "x3",
        "yaxis": "y3" if horizontal else "y2",
    }


def clustergram(
    matrix: Float[np.ndarray, "n n"],
    labels: Sequence[str],
    order: Sequence[int],
    icoord: Sequence[Sequence[float]],
    dcoord: Sequence[Sequence[float]],
    *,
    title: str,
    axis_title: str = "component",
    colorbar_title: str = "correlation",
    zmin: float = -1.0,
    zmax: float = 1.0,
    height: int | None = None,
) -> go.Figure:
    """Heatmap of ``matrix`` with rows and columns in dendrogram ``order``, the tree on top and left.

    ``order`` is the dendrogram's leaf order (``leaves``) and ``icoord``/``dcoord`` its link
    coordinates, as returned by ``scipy.cluster.hierarchy.dendrogram(Z, no_plot=True)``. The heatmap's
    category axes put leaf ``i`` at index ``i``; the trees are drawn on hidden numeric axes spanning the
    same domains with range ``[0, 10 n]``, where scipy puts leaf ``i`` at ``10 i + 5``, so both line up.
    """
    m = np.asarray(matrix, dtype=float)
    n = len(order)
    if m.shape != (len(labels), len(labels)) or sorted(order) != list(range(len(labels))):
        raise ValueError(f"clustergram: matrix {m.shape}, {len(labels)} labels and order of {n} disagree")
    idx = np.asarray(order, dtype=np.int64)
    names = [str(labels[i]) for i in idx]
    heat = {
        "type": "heatmap",
        "z": m[np.ix_(idx, idx)],
        "x": names,
        "y": names,
        "hovertemplate": "%{y} · %{x}<br>%{z:.3f}<extra></extra>",
        "colorscale": DIVERGING,
        "zmid": 0.0,
        "zmin": zmin,
        "zmax": zmax,
        "colorbar": {"title": {"text": colorbar_title}, "x": 1.01, "xanchor": "left"},
    }
    cells = {"type": "category", "categoryorder": "array", "categoryarray": names, "range": [-0.5, n - 0.5]}
    hidden = {"showticklabels": False, "showgrid": False, "zeroline": False}
    x_dom, y_dom = [_TREE + 0.005, 1.0 - _LABELS], [0.0, 1.0 - _TREE]
    small = {"font": {"size": 10}}
    layout = {
        "xaxis": {"domain": x_dom, "anchor": "y", "tickangle": -90, "title": {"text": axis_title}, **cells},
        # row labels right of the cells, the left tree right against them
        "yaxis": {"domain": y_dom, "anchor": "x", "side": "right", "title": {"text": axis_title}, **cells},
        "xaxis2": {"domain": [0.0, _TREE], "anchor": "y3", "autorange": "reversed", **hidden},
        "yaxis2": {"domain": [1.0 - _TREE + 0.01, 1.0], "anchor": "x3", "title": {"text": "merge", **small}, **hidden},
        "xaxis3": {"domain": x_dom, "anchor": "y2", "range": [0.0, 10.0 * n], **hidden},
        "yaxis3": {"domain": y_dom, "anchor": "x2", "range": [0.0, 10.0 * n], "title": {"text": "clusters", **small}, **hidden},
        "height": height or max(450, min(MAX_HEIGHT, 16 * n + 200)),
    }  # fmt: skip
    trees = [_tree_trace(icoord, dcoord, horizontal=False), _tree_trace(icoord, dcoord, True)]
    fig = finish(go.Figure(data=[heat, *trees], layout=layout), title)
    fig.update_layout(margin_r=90)
    return fig
