"""A grid of panels (small multiples) laid out in one pass, without ``make_subplots``.

``make_subplots`` followed by per-panel ``update_xaxes(row=, col=)`` calls costs plotly's validation once
per call: seconds for a 20-panel gridmap. :func:`panel_grid` computes every axis domain and panel title
as plain dicts, so a builder creates its figure with a single ``go.Figure(data, layout)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class PanelGrid:
    """Axis names and layout entries of ``n`` panels in ``rows x cols`` (row-major, panel 0 top left)."""

    rows: int
    cols: int
    x: list[str] = field(default_factory=list)
    """Trace axis reference of each panel: ``"x"``, ``"x2"``, ..."""
    y: list[str] = field(default_factory=list)
    layout: dict[str, Any] = field(default_factory=dict)
    """``xaxis``/``yaxis`` entries (domains, anchors) and ``annotations`` (the panel titles)."""

    def axis(self, i: int, which: str) -> dict[str, Any]:
        """The layout dict of panel ``i``'s ``"x"`` or ``"y"`` axis (to add ticks, ranges, titles)."""
        name = (self.x if which == "x" else self.y)[i]
        return self.layout[f"{which}axis{name[1:]}"]

    def bottom(self, i: int) -> bool:
        """Panel ``i`` has no panel below it."""
        return i + self.cols >= len(self.x)

    def left(self, i: int) -> bool:
        return i % self.cols == 0


def panel_grid(
    titles: Sequence[str],
    cols: int,
    *,
    hspace: float = 0.04,
    vspace: float = 0.08,
    right: float = 1.0,
    title_size: int = 11,
) -> PanelGrid:
    """Domains for ``len(titles)`` panels, ``cols`` per row, each titled above (``right``: x extent used)."""
    n = len(titles)
    if n == 0:
        raise ValueError("panel_grid needs at least one panel")
    cols = max(1, min(cols, n))
    rows = -(-n // cols)
    w = (right - hspace * (cols - 1)) / cols
    h = (1.0 - vspace * (rows - 1)) / rows
    grid = PanelGrid(rows, cols)
    notes = []
    for i, title in enumerate(titles):
        r, c = divmod(i, cols)
        suffix = "" if i == 0 else str(i + 1)
        x0 = c * (w + hspace)
        y1 = 1.0 - r * (h + vspace)
        grid.x.append(f"x{suffix}")
        grid.y.append(f"y{suffix}")
        grid.layout[f"xaxis{suffix}"] = {"domain": _span(x0, x0 + w), "anchor": f"y{suffix}"}
        grid.layout[f"yaxis{suffix}"] = {"domain": _span(y1 - h, y1), "anchor": f"x{suffix}"}
        notes.append(
            {
                "text": str(title),
                "x": x0 + w / 2,
                "y": y1,
                "xref": "paper",
                "yref": "paper",
                "xanchor": "center",
                "yanchor": "bottom",
                "showarrow": False,
                "font": {"size": title_size},
            }
        )
    grid.layout["annotations"] = notes
    return grid


def _span(lo: float, hi: float) -> list[float]:
    """A domain inside [0, 1] (round-off in the sums above can step a hair outside it)."""
    return [min(max(round(lo, 6), 0.0), 1.0), min(max(round(hi, 6), 0.0), 1.0)]
