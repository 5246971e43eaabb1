"""Widgets every tab shares: the context-window token chips, the action-probability chart, the step slider.

Tabs import these and never each other. The action-probability chart is an SVG image: it changes on every
play step, and both building a ``plotly.graph_objects.Figure`` (tens of milliseconds on the server) and a
Plotly redraw in the browser (tens of milliseconds before the new frame is painted) would dominate a step.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import numpy as np
from dash import dcc, html

from dtinterp.model.inputs import DTInputs, token_labels
from envs.encoding import ACTION_NAMES

KIND_NAMES = {"R": "return-to-go", "S": "state", "A": "action"}
#: Bar colours: the one distribution's bars and its top action; the before/after pair.
BAR, TOP, BEFORE, AFTER = "#1f77b4", "#d62728", "#7f7f7f", "#d62728"
#: Size of the action-probability chart, CSS pixels.
CHART_W, CHART_H = 420, 300


def window_tokens(inputs: DTInputs, rtg_scale: float) -> list[dict[str, Any]]:
    """One dict per token of the (batch 1) window: label, kind, value text, env timestep, padded or not.

    RTG tokens show the unscaled return-to-go, state tokens ``obs@t``, action tokens the action's name.
    """
    out = []
    for pos, label in enumerate(token_labels(inputs.context_len)):
        k, kind = pos // 3, label[0]
        real = bool(inputs.pad_mask[0, k])
        t = int(inputs.timesteps[0, k]) if real else None
        if not real:
            value = "pad"
        elif kind == "R":
            value = f"{float(inputs.rtg[0, k]) * rtg_scale:.3f}"
        elif kind == "S":
            value = f"obs@{t}"
        else:
            value = ACTION_NAMES[int(inputs.actions[0, k])]
        out.append({"label": label, "kind": KIND_NAMES[kind], "value": value, "timestep": t, "pad": not real})
    return out


def token_chip(tok: dict[str, Any]) -> str:
    """One token of the window as a chip (HTML): label, value, env timestep; edited tokens say what they
    were. Every text is escaped."""
    edited = bool(tok.get("edited"))
    cls = (
        f"token token-{tok['kind'].split('-')[0]}"
        + (" token-pad" if tok["pad"] else "")
        + (" token-edited" if edited else "")
    )
    t = "" if tok["timestep"] is None else f"t={tok['timestep']}"
    was = f" (was {tok['clean_value']})" if edited and tok.get("clean_value") != tok["value"] else ""
    title = f"{tok['label']}: {tok['kind']} {tok['value']}{was} {t}".strip() + (" — edited" if edited else "")
    return (
        f'<div class="{cls}" title={quoteattr(title)}>'
        f'<div class="token-label">{escape(str(tok["label"]))}</div>'
        f'<div class="token-value">{escape(str(tok["value"]))}</div>'
        f'<div class="token-time">{escape(t)}</div></div>'
    )


def token_chips(tokens: Sequence[dict[str, Any]]) -> dcc.Markdown:
    """The window's tokens as one strip of chips.

    One page component holding their HTML rather than four components per chip: the browser's work on
    every play step grows with the number of components on the page, and two strips of 30 chips would
    be most of them.
    """
    return dcc.Markdown(
        "".join(token_chip(t) for t in tokens), dangerously_allow_html=True, className="tokens"
    )


def token_legend() -> html.P:
    """The colour key of the chips."""
    return html.P(
        [
            html.Span("return-to-go", className="token token-return"),
            html.Span("state", className="token token-state"),
            html.Span("action", className="token token-action"),
            html.Span("pad (left padding, ignored)", className="token token-pad"),
        ],
        className="tokens legend",
    )


def action_chart(
    action_names: Sequence[str],
    probs: np.ndarray | None,
    after: np.ndarray | None = None,
    title: str = "DT action probabilities",
    note: str = "",
) -> str:
    """Bar chart of the model's action distribution over its own actions, as an SVG data URI for the
    ``src`` of an :func:`action_chart_box`.

    One distribution highlights its most likely action; with ``after`` the two are grouped as before
    (clean) and after (edited), with a legend. Without any distribution the axis stays labelled with the
    action names and ``note`` says why nothing is shown (e.g. the episode is over). Every bar is printed
    with its value and carries its series, action and exact probability (``data-series``, ``data-action``,
    ``data-p``).

    An image rather than a Plotly figure or HTML elements: these charts change on every play step, and a
    Plotly redraw (or dozens of new page components) holds up the new world frame by tens of milliseconds,
    where one image source costs about one; nor need the page load plotly.js before a figure is shown.
    """
    names = list(action_names)
    series: list[tuple[str, np.ndarray, list[str]]] = []
    if probs is not None and after is None:
        p = np.asarray(probs, dtype=float)[: len(names)]
        top = int(np.argmax(p))
        series.append(("probability", p, [TOP if i == top else BAR for i in range(len(names))]))
    elif probs is not None:
        for name, dist, color in (("before (clean)", probs, BEFORE), ("after (edited)", after, AFTER)):
            series.append((name, np.asarray(dist, dtype=float)[: len(names)], [color] * len(names)))
    w, h, left, right, top_m, bottom = CHART_W, CHART_H, 46, 8, 44, 48
    pw, ph = w - left - right, h - top_m - bottom
    y0 = top_m + ph  # the 0 line; the axis runs to 1.15 so the values above full bars fit

    def y(p: float) -> float:
        return y0 - ph * min(max(p, 0.0), 1.0) / 1.15

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
        'font-family="sans-serif" font-size="11" fill="#333">',
        f'<rect width="{w}" height="{h}" fill="white"/>',
        f'<text class="title" x="8" y="18" font-size="14">{escape(title)}</text>',
    ]
    for t in (0.0, 0.25, 0.5, 0.75, 1.0):
        out.append(f'<line x1="{left}" x2="{w - right}" y1="{y(t):.1f}" y2="{y(t):.1f}" stroke="#e5e5e5"/>')
        out.append(f'<text x="{left - 5}" y="{y(t) + 4:.1f}" text-anchor="end">{t:g}</text>')
    out.append(
        f'<text transform="translate(12 {top_m + ph / 2:.0f}) rotate(-90)" text-anchor="middle">probability</text>'
    )
    group, gap = pw / max(len(names), 1), 3.0
    bw = (group * 0.8 - gap * (len(series) - 1)) / max(len(series), 1)
    for i, a in enumerate(names):
        cx = left + group * (i + 0.5)
        out.append(f'<text x="{cx:.1f}" y="{y0 + 16}" text-anchor="middle">{escape(a)}</text>')
        for j, (name, p, colors) in enumerate(series):
            v = float(p[i])
            x = cx - group * 0.4 + j * (bw + gap)
            out.append(
                f'<rect class="bar" x="{x:.1f}" y="{y(v):.1f}" width="{bw:.1f}" height="{y0 - y(v):.1f}" '
                f'fill="{colors[i]}" data-series={quoteattr(name)} data-action={quoteattr(a)} data-p="{v!r}">'
                f"<title>{escape(a)}: {v:.3f} ({escape(name)})</title></rect>"
            )
            size = 11 if len(series) == 1 else 9
            out.append(
                f'<text x="{x + bw / 2:.1f}" y="{y(v) - 3:.1f}" text-anchor="middle" font-size="{size}">{v:.2f}</text>'
            )
    out.append(f'<line x1="{left}" x2="{w - right}" y1="{y0}" y2="{y0}" stroke="#999"/>')
    out.append(f'<line x1="{left}" x2="{left}" y1="{top_m - 4}" y2="{y0}" stroke="#999"/>')
    if len(series) > 1:
        x = w - right - 230
        for name, _, colors in series:
            out.append(f'<rect x="{x}" y="{top_m - 16}" width="10" height="10" fill="{colors[0]}"/>')
            out.append(f'<text x="{x + 14}" y="{top_m - 7}">{escape(name)}</text>')
            x += 115
    if not series and note:
        out.append(
            f'<text x="{left + pw / 2:.0f}" y="{top_m + ph / 2:.0f}" text-anchor="middle" fill="#666" '
            f'font-size="13">{escape(note)}</text>'
        )
    out.append("</svg>")
    return "data:image/svg+xml;base64," + base64.b64encode("".join(out).encode()).decode("ascii")


def action_chart_box(
    component_id: str, action_names: Sequence[str], title: str = "DT action probabilities"
) -> html.Img:
    """The image a tab updates with :func:`action_chart` (``Output(component_id, "src")``)."""
    return html.Img(
        id=component_id,
        src=action_chart(action_names, None, title=title),
        alt="action probabilities",
        className="bar-chart",
        width=CHART_W,
        height=CHART_H,
    )


def step_slider(component_id: str) -> html.Div:
    """An integer step slider starting empty (0..0); its value is shown beside it, never over the chips."""
    return html.Div(
        dcc.Slider(
            id=component_id,
            min=0,
            max=0,
            step=1,
            value=0,
            marks=None,
            tooltip={"placement": "top", "always_visible": True},
        ),
        className="step-slider",
    )


__all__ = [
    "KIND_NAMES",
    "action_chart",
    "action_chart_box",
    "step_slider",
    "token_chip",
    "token_chips",
    "token_legend",
    "window_tokens",
]
