"""Line plots of several named series over a shared x axis, with optional ± error bands."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from jaxtyping import Float

from dtinterp.viz.style import color, finish, rgba


def line_plot(
    x: Sequence[float] | np.ndarray,
    ys: Mapping[str, Float[np.ndarray, "n"]],
    *,
    errors: Mapping[str, Float[np.ndarray, "n"]] | None = None,
    title: str,
    x_title: str,
    y_title: str,
    markers: bool = False,
    zero_line: bool = False,
    height: int | None = None,
) -> go.Figure:
    """One line per entry of ``ys`` (legend = key) against ``x``.

    ``errors[name]`` (e.g. a standard deviation or a confidence half-width) draws a translucent band
    ``y ± error`` behind that line; NaNs in a band are treated as 0 width. ``zero_line`` draws y = 0.
    """
    x = np.asarray(x)
    fig = go.Figure()
    for i, (name, y) in enumerate(ys.items()):
        y = np.asarray(y, dtype=float)
        if y.shape != x.shape:
            raise ValueError(f"series {name!r} has shape {y.shape}, x has {x.shape}")
        c = color(i)
        if errors is not None and name in errors:
            err = np.nan_to_num(np.asarray(errors[name], dtype=float))
            fig.add_trace(
                go.Scatter(
                    x=np.concatenate([x, x[::-1]]),
                    y=np.concatenate([y + err, (y - err)[::-1]]),
                    fill="toself",
                    fillcolor=rgba(c, 0.2),
                    line={"width": 0},
                    hoverinfo="skip",
                    showlegend=False,
                    legendgroup=name,
                )
            )
        fig.add_trace(
            go.Scatter(
                x=x,
                y=y,
                name=name,
                legendgroup=name,
                mode="lines+markers" if markers else "lines",
                line={"color": c},
            )
        )
    if zero_line:
        fig.add_hline(y=0, line={"color": "grey", "width": 1, "dash": "dot"})
    return finish(fig, title, x_title, y_title, height=height)
