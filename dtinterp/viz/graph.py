"""A layered graph of attention heads: nodes at (layer, head), edges between composing heads.

Edges go from an earlier head to a later one (left to right). One line trace per (edge kind, width
bucket) keeps the figure to a handful of traces however many heads there are; an edge's width grows with
its weight and its hover names both heads and the weight.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from dtinterp.viz.style import color, finish

_WIDTHS = (1.0, 2.5, 4.5)


def head_graph(
    n_layers: int,
    n_heads: int,
    edges: Mapping[str, Sequence[tuple[int, int, int, int, float]]],
    *,
    title: str,
    height: int | None = None,
) -> go.Figure:
    """``edges[kind]`` are ``(l1, h1, l2, h2, weight)``; kinds get a colour each (e.g. Q, K, V).

    Edges of different kinds between the same pair of heads are offset vertically so all stay visible.
    """
    fig = go.Figure()
    weights = [e[4] for es in edges.values() for e in es]
    lo, hi = (min(weights), max(weights)) if weights else (0.0, 1.0)
    kinds = list(edges)
    for i, kind in enumerate(kinds):
        offset = 0.12 * (i - (len(kinds) - 1) / 2)
        for w, width in enumerate(_WIDTHS):
            xs: list[float | None] = []
            ys: list[float | None] = []
            mx, my, text = [], [], []
            for l1, h1, l2, h2, weight in edges[kind]:
                bucket = 0 if hi <= lo else min(2, int(3 * (weight - lo) / (hi - lo)))
                if bucket != w:
                    continue
                xs += [l1, l2, None]
                ys += [h1 + offset, h2 + offset, None]
                mx.append((l1 + l2) / 2)
                my.append((h1 + h2) / 2 + offset)
                text.append(f"L{l1}H{h1} → L{l2}H{h2}<br>{kind}: {weight:.3g}")
            if not mx:
                continue
            c = color(i)
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=ys,
                    mode="lines",
                    line={"color": c, "width": width},
                    opacity=0.7,
                    name=kind,
                    legendgroup=kind,
                    showlegend=False,
                    hoverinfo="skip",
                )
            )
            fig.add_trace(  # invisible midpoints carry the hover text of each edge
                go.Scatter(
                    x=mx,
                    y=my,
                    mode="markers",
                    marker={"size": 8, "color": c, "opacity": 0.0},
                    text=text,
                    hovertemplate="%{text}<extra></extra>",
                    showlegend=False,
                    legendgroup=kind,
                )
            )
        fig.add_trace(  # legend entry per kind
            go.Scatter(x=[None], y=[None], mode="lines", line={"color": color(i), "width": 3}, name=kind)
        )
    layer, head = np.meshgrid(np.arange(n_layers), np.arange(n_heads), indexing="ij")
    fig.add_trace(
        go.Scatter(
            x=layer.ravel(),
            y=head.ravel(),
            mode="markers+text",
            marker={"size": 26, "color": "white", "line": {"color": "#444", "width": 1.5}},
            text=[f"L{l}H{h}" for l, h in zip(layer.ravel(), head.ravel())],
            textfont={"size": 9},
            hoverinfo="text",
            showlegend=False,
        )
    )
    fig.update_xaxes(tickvals=list(range(n_layers)), range=[-0.5, n_layers - 0.5], zeroline=False)
    fig.update_yaxes(
        tickvals=list(range(n_heads)), range=[n_heads - 0.5, -0.5], zeroline=False, showgrid=False
    )
    return finish(fig, title, "layer", "head", height=height or min(700, 120 + 70 * n_heads))
