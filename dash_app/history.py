"""The History tab: step through the current trajectory and see what the model saw at every step.

For each step: the world (rebuilt from the env seed when the trajectory has one), the agent's view, the
action taken, the reward, the return-to-go the model was conditioned on, and the tokens of the model's
context window at that step (``R1, S1, A1, ...`` with their values). Logic is in
:func:`window_tokens` and :func:`history_view`; the callbacks only pass values through.
"""

from __future__ import annotations

from typing import Any

from dash import Dash, Input, Output, State, dcc, html

from dash_app import ids
from dash_app.play import pov_image, world_image
from dash_app.state import check_traj, model_entry, step_window, traj_rtg
from dtinterp.errors import DtinterpError
from dtinterp.model.inputs import DTInputs, token_labels
from envs.encoding import ACTION_NAMES
from envs.errors import EnvSpecError

KIND_NAMES = {"R": "return-to-go", "S": "state", "A": "action"}


def window_tokens(inputs: DTInputs, rtg_scale: float) -> list[dict[str, Any]]:
    """One dict per token of the (batch 1) window: label, kind, value text, env timestep, padded or not.

    RTG tokens show the unscaled return-to-go, state tokens ``obs@t``, action tokens the action's name.
    """
    k_len = inputs.context_len
    out = []
    for pos, label in enumerate(token_labels(k_len)):
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


def history_view(session: str, model: str, traj: dict[str, Any] | None, step: int | None) -> dict[str, Any]:
    """What the History tab shows at ``step`` (default: the last observation) of ``traj``."""
    view: dict[str, Any] = {"world": None, "pov": None, "note": "", "info": [], "tokens": [], "message": ""}
    if traj is None:
        return view
    try:
        obs = check_traj(traj)
        step = len(obs) - 1 if step is None else int(step)
        if not 0 <= step < len(obs):
            raise DtinterpError(f"step {step} out of range 0..{len(obs) - 1}")
        entry = model_entry(model)
        view["pov"] = pov_image(obs[step], traj["directions"][step])
        if traj["seed"] is None:
            view["note"] = "This trajectory records no env seed: only the agent's view can be shown."
        else:
            view["world"] = world_image(session, traj, step)
        taken = step < len(traj["actions"])
        view["info"] = [
            ("step", f"{step} ({len(traj['actions'])} actions taken)"),
            ("action", ACTION_NAMES[traj["actions"][step]] if taken else "— (current state: no action yet)"),
            ("reward", f"{traj['rewards'][step]:.3f}" if taken else "—"),
            ("return-to-go (model input)", f"{traj_rtg(traj, step):.3f}"),
        ]
        view["tokens"] = window_tokens(step_window(traj, entry, step), entry.rtg_scale)
    except (DtinterpError, EnvSpecError) as exc:
        view["message"] = str(exc)
    return view


def _token_chip(tok: dict[str, Any]) -> html.Div:
    cls = f"token token-{tok['kind'].split('-')[0]}" + (" token-pad" if tok["pad"] else "")
    t = "" if tok["timestep"] is None else f"t={tok['timestep']}"
    return html.Div(
        [
            html.Div(tok["label"], className="token-label"),
            html.Div(tok["value"], className="token-value"),
            html.Div(t, className="token-time"),
        ],
        className=cls,
        title=f"{tok['label']}: {tok['kind']} {tok['value']} {t}".strip(),
    )


def step_slider(component_id: str) -> dcc.Slider:
    """An integer step slider starting empty (0..0) with its value always shown; callbacks set ``max``."""
    return dcc.Slider(
        id=component_id,
        min=0,
        max=0,
        step=1,
        value=0,
        marks=None,
        tooltip={"placement": "bottom", "always_visible": True},
    )


def layout() -> html.Div:
    """The History tab's components."""
    return html.Div(
        [
            step_slider(ids.HISTORY_SLIDER),
            html.Div(id=ids.HISTORY_NOTE, className="tab-message"),
            html.Div(
                [
                    html.Figure([html.Img(id=ids.HISTORY_WORLD_IMG, alt="world"), html.Figcaption("world")]),
                    html.Figure(
                        [html.Img(id=ids.HISTORY_POV_IMG, alt="agent view"), html.Figcaption("agent's view")]
                    ),
                    html.Div(id=ids.HISTORY_STEP_INFO, className="step-info"),
                ],
                className="frames-row",
            ),
            html.H4("Context window at this step (what the model reads)"),
            html.P(
                [
                    html.Span("return-to-go", className="token token-return"),
                    html.Span("state", className="token token-state"),
                    html.Span("action", className="token token-action"),
                    html.Span("pad (left padding, ignored)", className="token token-pad"),
                ],
                className="tokens legend",
            ),
            html.Div(id=ids.HISTORY_TOKENS, className="tokens"),
        ]
    )


def register(app: Dash) -> None:
    """The History tab's callbacks."""

    @app.callback(
        Output(ids.HISTORY_SLIDER, "max"),
        Output(ids.HISTORY_SLIDER, "value"),
        Input(ids.TRAJ_STORE, "data"),
    )
    def _steps(traj: dict[str, Any] | None) -> tuple[int, int]:
        try:
            last = len(check_traj(traj)) - 1 if traj is not None else 0
        except DtinterpError:
            last = 0
        return last, last

    @app.callback(
        Output(ids.HISTORY_WORLD_IMG, "src"),
        Output(ids.HISTORY_POV_IMG, "src"),
        Output(ids.HISTORY_NOTE, "children"),
        Output(ids.HISTORY_STEP_INFO, "children"),
        Output(ids.HISTORY_TOKENS, "children"),
        Input(ids.HISTORY_SLIDER, "value"),
        State(ids.TRAJ_STORE, "data"),
        State(ids.MODEL_STORE, "data"),
        State(ids.SESSION_STORE, "data"),
    )
    def _show(step: int | None, traj: dict[str, Any] | None, model: str, session: str) -> tuple[Any, ...]:
        v = history_view(session, model, traj, step)
        info = html.Table([html.Tr([html.Th(k), html.Td(val)]) for k, val in v["info"]])
        note = v["message"] or v["note"]
        return v["world"], v["pov"], note, info, [_token_chip(t) for t in v["tokens"]]
