"""Widgets every tab shares: the context-window token chips, the action-probability chart, the step slider.

Tabs import these and never each other. The chart is built as a plain figure dict (what ``dcc.Graph``
receives anyway): building a ``plotly.graph_objects.Figure`` with a template costs tens of milliseconds per
call, which would dominate a play step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from dash import dcc, html

from dtinterp.model.inputs import DTInputs, token_labels
from envs.encoding import ACTION_NAMES

KIND_NAMES = {"R": "return-to-go", "S": "state", "A": "action"}
#: Bar colours: the one distribution's bars and its top action; the before/after pair.
BAR, TOP, BEFORE, AFTER = "#1f77b4", "#d62728", "#7f7f7f", "#d62728"


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


def token_chip(tok: dict[str, Any]) -> html.Div:
    """One token of the window as a chip: label, value, env timestep; edited tokens say what they were."""
    edited = bool(tok.get("edited"))
    cls = (
        f"token token-{tok['kind'].split('-')[0]}"
        + (" token-pad" if tok["pad"] else "")
        + (" token-edited" if edited else "")
    )
    t = "" if tok["timestep"] is None else f"t={tok['timestep']}"
    was = f" (was {tok['clean_value']})" if edited and tok.get("clean_value") != tok["value"] else ""
    return html.Div(
        [
            html.Div(tok["label"], className="token-label"),
            html.Div(tok["value"], className="token-value"),
            html.Div(t, className="token-time"),
        ],
        className=cls,
        title=f"{tok['label']}: {tok['kind']} {tok['value']}{was} {t}".strip()
        + (" — edited" if edited else ""),
    )


def token_chips(tokens: Sequence[dict[str, Any]]) -> list[html.Div]:
    return [token_chip(t) for t in tokens]


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
    height: int = 300,
) -> dict[str, Any]:
    """Bar chart of the model's action distribution over its own actions, as a figure dict.

    One distribution highlights its most likely action; with ``after`` the two are grouped as before
    (clean) and after (edited). Without any distribution the axes stay labelled with the action names and
    ``note`` says why nothing is shown (e.g. the episode is over).
    """
    names = list(action_names)
    data: list[dict[str, Any]] = []

    def bars(p: np.ndarray, name: str, color: Any) -> dict[str, Any]:
        p = np.asarray(p, dtype=float)[: len(names)]
        return {
            "type": "bar",
            "x": names,
            "y": p.tolist(),
            "name": name,
            "marker": {"color": color},
            "text": [f"{v:.2f}" for v in p],
            "textposition": "outside",
            "hovertemplate": "%{x}: %{y:.3f}<extra>" + name + "</extra>",
        }

    if probs is not None and after is None:
        top = int(np.argmax(probs))
        data.append(bars(probs, "probability", [TOP if i == top else BAR for i in range(len(names))]))
    elif probs is not None:
        data += [bars(probs, "before (clean)", BEFORE), bars(after, "after (edited)", AFTER)]
    layout: dict[str, Any] = {
        "title": {"text": title, "x": 0.02, "xanchor": "left"},
        "barmode": "group",
        "xaxis": {
            "type": "category",
            "categoryorder": "array",
            "categoryarray": names,
            "range": [-0.5, len(names) - 0.5],
        },
        "yaxis": {"range": [0, 1.15], "title": {"text": "probability"}},
        "height": height,
        "margin": {"l": 50, "r": 10, "t": 40, "b": 40},
        "showlegend": after is not None,
        "legend": {"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 1, "xanchor": "right"},
        "plot_bgcolor": "white",
        "paper_bgcolor": "white",
    }
    if not data:
        # An invisible trace keeps the category axis labelled with the action names.
        data.append(
            {"type": "bar", "x": names, "y": [0] * len(names), "hoverinfo": "skip", "showlegend": False}
        )
        if note:
            layout["annotations"] = [
                {"text": note, "xref": "paper", "yref": "paper", "x": 0.5, "y": 0.5, "showarrow": False}
            ]
    return {"data": data, "layout": layout}


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
    "step_slider",
    "token_chip",
    "token_chips",
    "token_legend",
    "window_tokens",
]
