"""House style shared by the figure builders: colour scales, the qualitative palette, titles and axes.

Every builder ends with :func:`finish`, so all figures carry a title and labelled axes and look alike in
notebooks, the CLI's HTML reports and the app.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
from plotly.colors import hex_to_rgb, qualitative

#: Diverging scale for signed quantities (similarities, logit contributions), centred at 0 by the caller.
DIVERGING = "RdBu_r"
#: Sequential scale for non-negative quantities (norms, counts).
SEQUENTIAL = "Viridis"
#: Colours of categorical series, in order.
PALETTE: tuple[str, ...] = tuple(qualitative.Plotly)
#: The tallest a figure is drawn by default (about one screen); taller only when the user asks.
MAX_HEIGHT = 900
#: Percentile of ``|values|`` that sets a robust colour limit (heavy tails saturate instead of washing out).
ROBUST_PERCENTILE = 99.0


def robust_limit(values: object, percentile: float = ROBUST_PERCENTILE) -> float:
    """A colour limit for ``values``: the ``percentile`` of the finite ``|values|`` (1.0 if there are none).

    With a symmetric diverging scale ``[-limit, limit]``, a few extreme cells saturate rather than
    squeeze every other cell into the middle colour.
    """
    a = np.abs(np.asarray(values, dtype=float))
    a = a[np.isfinite(a)]
    if a.size == 0:
        return 1.0
    limit = float(np.percentile(a, percentile))
    return limit if limit > 0 else (float(a.max()) or 1.0)


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
    _set_template(fig)
    fig.update_layout(
        title={"text": title, "x": 0.02, "xanchor": "left"}, margin={"l": 60, "r": 20, "t": 60, "b": 50}
    )
    if height is not None:
        fig.update_layout(height=height)
    if x_title:
        fig.update_xaxes(title_text=x_title)
    if y_title:
        fig.update_yaxes(title_text=y_title)
    return fig


def _set_template(fig: go.Figure) -> None:
    """``fig.layout.template = "plotly_white"`` without re-validating the registered template.

    Validating a whole template costs ~25 ms per figure (a report of a few analyses draws dozens); plotly
    assigns its own default template the same way, trusting a registered template to be valid.
    """
    layout = fig.layout
    layout._validate = False
    try:
        layout.template = pio.templates["plotly_white"]
    finally:
        layout._validate = True
