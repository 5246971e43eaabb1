"""Scatter plots of labelled points (PCA coordinates) and scree plots of explained variance."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
from jaxtyping import Float

from dtinterp.viz.style import color, finish


def pca_scatter(
    coords: Float[np.ndarray, "n k"],
    labels: Sequence[str],
    groups: Sequence[str],
    *,
    ratios: Sequence[float],
    title: str,
    dims: int = 2,
    text: bool = False,
) -> go.Figure:
    """Points at their first ``dims`` (2 or 3) coordinates, one coloured trace per group.

    Axis titles carry each component's share of the variance (``ratios``); hover shows the label.
    ``text`` writes the labels next to the points (for a few dozen points).
    """
    coords = np.asarray(coords, dtype=float)
    if dims not in (2, 3):
        raise ValueError(f"dims must be 2 or 3, got {dims}")
    if coords.shape[0] != len(labels) or coords.shape[0] != len(groups):
        raise ValueError(f"{coords.shape[0]} points, {len(labels)} labels and {len(groups)} groups disagree")
    if coords.shape[1] < dims:  # fewer components than asked: pad with zeros
        coords = np.concatenate([coords, np.zeros((coords.shape[0], dims - coords.shape[1]))], 1)
    axis = [f"PC{i + 1} ({float(ratios[i]) if i < len(ratios) else 0.0:.1%})" for i in range(dims)]
    fig = go.Figure()
    for i, g in enumerate(dict.fromkeys(groups)):
        idx = [j for j, x in enumerate(groups) if x == g]
        common = {
            "name": g,
            "text": [labels[j] for j in idx],
            "mode": "markers+text" if text else "markers",
            "textposition": "top center",
            "hovertemplate": "%{text}<extra>" + g + "</extra>",
        }
        if dims == 2:
            fig.add_trace(
                go.Scatter(
                    x=coords[idx, 0], y=coords[idx, 1], marker={"color": color(i), "size": 7}, **common
                )
            )
        else:
            fig.add_trace(
                go.Scatter3d(
                    x=coords[idx, 0],
                    y=coords[idx, 1],
                    z=coords[idx, 2],
                    marker={"color": color(i), "size": 3},
                    **common,
                )
            )
    if dims == 2:
        return finish(fig, title, axis[0], axis[1], height=600)
    fig.update_layout(scene={"xaxis_title": axis[0], "yaxis_title": axis[1], "zaxis_title": axis[2]})
    fig = finish(fig, title, axis[0], axis[1], height=650)
    return fig


def scree(ratios: Float[np.ndarray, "k"], *, title: str, max_components: int = 30) -> go.Figure:
    """Bars of each component's share of the variance and a line of the cumulative share."""
    r = np.asarray(ratios, dtype=float)[:max_components]
    x = [f"PC{i + 1}" for i in range(len(r))]
    fig = go.Figure(
        [
            go.Bar(x=x, y=r, name="share of variance", marker={"color": color(0)}),
            go.Scatter(
                x=x, y=np.cumsum(r), name="cumulative", mode="lines+markers", line={"color": color(1)}
            ),
        ]
    )
    fig.update_yaxes(range=[0, 1.02])
    fig.update_xaxes(type="category")
    return finish(fig, title, "principal component", "share of variance")
