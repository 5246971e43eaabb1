"""Gridmaps: numbers per cell of the agent's view, one panel per object, colour or state (or any grouping).

A panel is ``[W, H]`` indexed ``[x, y]`` like the observation (``obs[x, y]``), drawn with ``x`` to the
right and ``y`` downwards, so it looks like the agent's view as MiniGrid renders it: in a 7x7 egocentric
view the agent stands at the bottom centre, ``(3, 6)``, facing up. Given the rendered view (an RGB image
of the observation, :func:`view_image`), every panel is drawn translucent over it ("what contributes is
the key in front of the agent").

Signed numbers share one diverging scale, symmetric about 0, with a robust limit (the 99th percentile of
``|values|``): one extreme cell saturates instead of washing every other cell out.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from jaxtyping import Float

from dtinterp.viz.panels import panel_grid
from dtinterp.viz.style import DIVERGING, MAX_HEIGHT, finish, robust_limit

#: Pixels per cell of rendered views.
TILE = 16


def view_image(grid: np.ndarray, tile: int = TILE) -> str:
    """The compact observation ``grid [W, H, 3]`` rendered as MiniGrid draws it, as a PNG data URI."""
    from PIL import Image

    from envs.render import render_pov

    rgb = render_pov(np.asarray(grid, dtype=np.uint8), tile_size=tile, highlight=True)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def image_trace(uri: str, xaxis: str = "x", yaxis: str = "y", tile: int = TILE) -> dict[str, Any]:
    """A rendered view placed so that cell ``(x, y)`` spans ``[x - 0.5, x + 0.5]`` on numeric axes."""
    return {
        "type": "image",
        "source": uri,
        "x0": -0.5 + 0.5 / tile,
        "y0": -0.5 + 0.5 / tile,
        "dx": 1 / tile,
        "dy": 1 / tile,
        "hoverinfo": "skip",
        "xaxis": xaxis,
        "yaxis": yaxis,
    }


def gridmap(
    panels: Float[np.ndarray, "n W H"],
    names: Sequence[str],
    *,
    title: str,
    colorbar_title: str = "dot product",
    image: str | None = None,
    cols: int = 6,
    zmax: float | None = None,
    panel_px: int = 170,
    hover_extra: Float[np.ndarray, "n W H"] | None = None,
    hover_extra_name: str = "std",
) -> go.Figure:
    """One heatmap per panel over the view's cells, on one diverging scale (see the module docstring).

    ``image`` (a data URI from :func:`view_image`) is drawn under every panel; ``hover_extra`` (e.g. a
    standard deviation over windows) is added to each cell's hover text.
    """
    panels = np.asarray(panels, dtype=float)
    if panels.ndim != 3 or panels.shape[0] != len(names) or panels.shape[0] == 0:
        raise ValueError(f"gridmap needs [n, W, H] panels with n names, got {panels.shape} and {len(names)}")
    n, W, H = panels.shape
    limit = zmax if zmax is not None else robust_limit(panels)
    grid = panel_grid(
        names, cols, hspace=0.03, vspace=min(0.3 / -(-n // max(1, min(cols, n))), 0.1), right=0.93
    )
    hover = "x=%{x}, y=%{y}<br>%{z:.3g}"
    extra = None if hover_extra is None else np.asarray(hover_extra, dtype=float)
    if extra is not None:
        hover += f"<br>{hover_extra_name}: %{{customdata:.3g}}"
    traces: list[dict[str, Any]] = []
    cell = {"showgrid": False, "zeroline": False, "tickfont": {"size": 8}, "dtick": 1, "constrain": "domain"}
    for i in range(n):
        xa, ya = grid.x[i], grid.y[i]
        if image is not None:
            traces.append(image_trace(image, xa, ya))
        traces.append(
            {
                "type": "heatmap",
                "z": panels[i].T,  # rows are y, columns x
                "x": list(range(W)),
                "y": list(range(H)),
                "coloraxis": "coloraxis",
                "opacity": 0.65 if image is not None else 1.0,
                "customdata": None if extra is None else extra[i].T,
                "hovertemplate": hover + "<extra></extra>",
                "xgap": 1,
                "ygap": 1,
                "xaxis": xa,
                "yaxis": ya,
            }
        )
        grid.axis(i, "x").update(range=[-0.5, W - 0.5], **cell)
        grid.axis(i, "y").update(range=[H - 0.5, -0.5], scaleanchor=xa, **cell)
        grid.axis(i, "y").update(title={"text": "y", "font": {"size": 9}, "standoff": 2})
        if grid.bottom(i):
            grid.axis(i, "x").update(title={"text": "x", "font": {"size": 9}, "standoff": 2})
    layout = {
        **grid.layout,
        "coloraxis": {
            "colorscale": DIVERGING,
            "cmid": 0.0,
            "cmin": -limit,
            "cmax": limit,
            "colorbar": {"title": {"text": colorbar_title}},
        },
        "height": min(MAX_HEIGHT, grid.rows * panel_px + 140),
    }
    return finish(go.Figure(data=traces, layout=layout), title)


def agent_views(
    grids: Sequence[np.ndarray],
    captions: Sequence[str],
    *,
    title: str,
    cols: int = 4,
    panel_px: int = 210,
) -> go.Figure:
    """The rendered agent's views of several observations (``[W, H, 3]`` grids), each with a caption."""
    n = len(grids)
    if n == 0 or len(captions) != n:
        raise ValueError(f"agent_views needs grids and one caption each, got {n} and {len(captions)}")
    grid = panel_grid(captions, cols, hspace=0.03, vspace=0.1)
    traces = []
    hidden = {"showticklabels": False, "showgrid": False, "zeroline": False}
    for i, g in enumerate(grids):
        W, H = np.asarray(g).shape[:2]
        traces.append(image_trace(view_image(g), grid.x[i], grid.y[i]))
        grid.axis(i, "x").update(
            range=[-0.5, W - 0.5], title={"text": "cells (x)", "font": {"size": 9}}, **hidden
        )
        grid.axis(i, "y").update(
            range=[H - 0.5, -0.5],
            scaleanchor=grid.x[i],
            title={"text": "cells (y)", "font": {"size": 9}},
            **hidden,
        )
    layout = {**grid.layout, "height": min(MAX_HEIGHT, grid.rows * panel_px + 120)}
    return finish(go.Figure(data=traces, layout=layout), title)
