"""Layered graphs: attention heads composing (:func:`head_graph`) and circuits of the model's graph
(:func:`circuit_graph`).

Edges go from an earlier node to a later one (left to right). One line trace per (edge kind, width
bucket) keeps a figure to a handful of traces however many edges there are; an edge's width grows with
its weight and its hover names both ends and the weight.
"""

from __future__ import annotations

import re
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


#: Receiver kinds of :func:`circuit_graph`, in legend order, and where an edge of each kind ends on its node.
_RECEIVER_KINDS = {
    "q": ("query", -0.22),
    "k": ("key", 0.0),
    "v": ("value", 0.22),
    "in": ("MLP input", 0.0),
    "logits": ("logits", 0.0),
}
_EMBEDS = ("rtg", "state", "action", "time")


def circuit_graph(
    n_layers: int,
    n_heads: int,
    edges: Sequence[tuple[str, str, float]],
    *,
    attn_only: bool = False,
    nodes: Sequence[str] = (),
    title: str,
    subtitle: str = "",
    height: int | None = None,
) -> go.Figure:
    """A circuit of the model's graph (:mod:`dtinterp.interp.graph`): ``edges`` are ``(sender, receiver,
    score)`` in the graph's labels (``state``, ``L0H1``, ``MLP0``; ``L1H0.q|k|v``, ``MLP1.in``, ``logits``).

    Columns: the embeddings, then each layer's heads and its MLP, then the logits; rows: heads (and the four
    embeddings). Every node of the model is drawn faintly, the circuit's nodes (and ``nodes``) in full; an
    edge into a head ends on its query, key or value side and takes that input's colour; its width grows with
    ``|score|``.
    """
    mid = (n_heads - 1) / 2

    def attn_col(l: int) -> int:
        return 1 + (l if attn_only else 2 * l)

    logits_col = attn_col(n_layers)

    def place(label: str) -> tuple[float, float]:
        if label in _EMBEDS:
            return 0.0, _EMBEDS.index(label) * max(n_heads - 1, 1) / 3
        if label == "logits":
            return float(logits_col), mid
        m = re.fullmatch(r"L(\d+)H(\d+)", label)
        if m:
            return float(attn_col(int(m[1]))), float(m[2])
        m = re.fullmatch(r"MLP(\d+)", label)
        if m:
            return attn_col(int(m[1])) + 1.0, mid
        raise ValueError(f"{label!r} is not a node label of the model's graph")

    def receiver(label: str) -> tuple[str, str]:
        node, _, kind = label.partition(".")
        return (node, kind) if kind else (label, "logits")

    every = [*_EMBEDS, *(f"L{l}H{h}" for l in range(n_layers) for h in range(n_heads))]
    if not attn_only:
        every += [f"MLP{l}" for l in range(n_layers)]
    every.append("logits")
    used = set(nodes) | {s for s, _, _ in edges} | {receiver(r)[0] for _, r, _ in edges}
    fig = go.Figure()
    scores = [abs(float(w)) for _, _, w in edges]
    top = max(scores) if scores else 1.0
    for i, (kind, (name, offset)) in enumerate(_RECEIVER_KINDS.items()):
        mine = [(s, r, float(w)) for s, r, w in edges if receiver(r)[1] == kind]
        if not mine:
            continue
        c = color(i)
        for b, width in enumerate(_WIDTHS):
            xs: list[float | None] = []
            ys: list[float | None] = []
            mx, my, text = [], [], []
            for s, r, w in mine:
                bucket = min(2, int(3 * abs(w) / top)) if top > 0 else 0
                if bucket != b:
                    continue
                (x0, y0), (x1, y1) = place(s), place(receiver(r)[0])
                y1 += offset
                xs += [x0, x1, None]
                ys += [y0, y1, None]
                mx.append((x0 + x1) / 2)
                my.append((y0 + y1) / 2)
                text.append(f"{s} → {r}<br>score {w:+.4g}")
            if not mx:
                continue
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=ys,
                    mode="lines",
                    line={"color": c, "width": width},
                    opacity=0.75,
                    legendgroup=name,
                    showlegend=False,
                    hoverinfo="skip",
                )
            )
            fig.add_trace(  # invisible midpoints carry each edge's hover
                go.Scatter(
                    x=mx,
                    y=my,
                    mode="markers",
                    marker={"size": 10, "color": c, "opacity": 0.0},
                    text=text,
                    hovertemplate="%{text}<extra></extra>",
                    showlegend=False,
                    legendgroup=name,
                )
            )
        fig.add_trace(
            go.Scatter(x=[None], y=[None], mode="lines", line={"color": c, "width": 3}, name=f"into {name}")
        )
    for inside in (False, True):
        shown = [n for n in every if (n in used) == inside]
        if not shown:
            continue
        xy = np.array([place(n) for n in shown])
        fig.add_trace(
            go.Scatter(
                x=xy[:, 0],
                y=xy[:, 1],
                mode="markers+text",
                text=shown,
                textfont={"size": 9},
                marker={
                    "size": 30,
                    "color": "white" if inside else "#f2f2f2",
                    "line": {"color": "#333" if inside else "#ccc", "width": 2 if inside else 1},
                },
                opacity=1.0 if inside else 0.6,
                hoverinfo="text",
                showlegend=False,
            )
        )
    ticks = ["embeddings"]
    for l in range(n_layers):
        ticks += [f"L{l} heads"] if attn_only else [f"L{l} heads", f"L{l} MLP"]
    ticks.append("logits")
    fig.update_xaxes(
        tickvals=list(range(len(ticks))),
        ticktext=ticks,
        range=[-0.5, len(ticks) - 0.5],
        zeroline=False,
        showgrid=False,
    )
    fig.update_yaxes(
        tickvals=list(range(n_heads)),
        ticktext=[f"H{h}" for h in range(n_heads)],
        range=[max(n_heads - 1, 1) + 0.6, -0.6],
        zeroline=False,
        showgrid=False,
    )
    fig = finish(
        fig,
        title,
        "layer (left to right: the order the model computes in)",
        "head",
        height=height or min(700, 220 + 80 * max(n_heads, 4)),
    )
    if subtitle:
        fig.update_layout(title={"text": f"{title}<br><sup>{subtitle}</sup>"}, margin={"t": 100})
    return fig
