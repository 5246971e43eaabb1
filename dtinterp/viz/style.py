"""House style shared by the figure builders: colour scales, the qualitative palette, titles and axes.

Every builder ends with :func:`finish`, so all figures carry a title and labelled axes and look alike in
notebooks, the CLI's HTML reports and the app.
"""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.colors import hex_to_rgb, qualitative

#: Diverging scale for signed quantities (similarities, logit contributions), centred at 0 by the caller.
DIVERGING = "RdBu_r"
#: Sequential scale for non-negative quantities (norms, counts).
SEQUENTIAL = "Viridis"
#: Colours of categorical series, in order.
PALETTE: tuple[str, ...] = tuple(qualitative.Plotly)


def color(i: int) -> str:
    """The ``i``-th series colour (cycling)."""
    return PALETTE[i % len(PALETTE)]


def rgba(hex_color: str, alpha: float) -> str:
    """``"#636efa"`` -> ``"rgba(99,110,250,alpha)"`` (for translucent error bands)."""
    r, g, b = hex_to_rgb(hex_color)
    return f"rgba({r},{g},{b},{alpha})"


def finish(
    fig: go.Figure, title: str, x_title: str = "", y_title: str = "", height: int | None = None
) -> go.Figure:
    """Set the title, axis titles and the house template on ``fig`` (in place) and return it."""
    fig.update_layout(
        title={"text": title, "x": 0.02, "xanchor": "left"},
        template="plotly_white",
        margin={"l": 60, "r": 20, "t": 60, "b": 50},
    )
    if height is not None:
        fig.update_layout(height=height)
    if x_title:
        fig.update_xaxes(title_text=x_title)
    if y_title:
        fig.update_yaxes(title_text=y_title)
    return fig
