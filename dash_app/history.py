"""The History tab: step through the current episode and see what the model saw at every step.

For each step: the world (rebuilt from the env seed when the episode has one), the agent's view, the
action taken, the reward, the return-to-go the model was conditioned on, the model's action
distribution there, and the tokens of the model's context window at that step (``R1, S1, A1, ...`` with
their values). Autoplay steps through the episode (in the browser: a timer moves the slider). Logic is in
:func:`history_view`; the one callback decodes the episode once and runs only while the tab is shown (``ids.HISTORY_SHOWN_EPISODE``).
"""

from __future__ import annotations

from typing import Any

import torch
from dash import Dash, Input, Output, State, dcc, html, no_update

from dash_app import ids
from dash_app.cache import ModelEntry, model_entry
from dash_app.images import pov_image, world_image
from dash_app.inputs import load_episode
from dash_app.widgets import (
    action_chart,
    action_chart_box,
    step_slider,
    token_chips,
    token_legend,
    window_tokens,
)
from dtinterp.data.episode import Episode
from dtinterp.errors import DtinterpError
from envs.encoding import ACTION_NAMES
from envs.errors import EnvSpecError


def history_view(
    session: str, entry: ModelEntry, episode: Episode | None, step: int | None
) -> dict[str, Any]:
    """What the History tab shows at ``step`` (default: the last observation) of ``episode``."""
    view: dict[str, Any] = {
        "world": None,
        "pov": None,
        "note": "",
        "info": [],
        "tokens": [],
        "probs": None,
        "chart_title": "Model's action distribution",
        "message": "",
    }
    if episode is None:
        return view
    try:
        step = episode.n_obs - 1 if step is None else int(step)
        if not 0 <= step < episode.n_obs:
            raise DtinterpError(f"step {step} out of range 0..{episode.n_obs - 1}")
        view["pov"] = pov_image(episode.obs[step], int(episode.directions[step]))
        if episode.seed is None:
            view["note"] = "This episode records no env seed: only the agent's view can be shown."
        else:
            view["world"] = world_image(session, episode, step)
        taken = step < episode.length
        view["info"] = [
            ("step", f"{step} ({episode.length} actions taken)"),
            (
                "action",
                ACTION_NAMES[int(episode.actions[step])] if taken else "— (current state: no action yet)",
            ),
            ("reward", f"{float(episode.rewards[step]):.3f}" if taken else "—"),
            ("return-to-go (model input)", f"{episode.rtg(step):.3f}"),
        ]
        window = episode.window(entry.checkpoint, step)
        view["tokens"] = window_tokens(window, entry.checkpoint.rtg_scale)
        view["probs"] = torch.softmax(entry.predict(window)[0], -1).numpy()
        took = f": it took {ACTION_NAMES[int(episode.actions[step])]}" if taken else " (current state)"
        view["chart_title"] = f"Model's action distribution at step {step}{took}"
    except (DtinterpError, EnvSpecError) as exc:
        view["message"] = str(exc)
    return view


def layout() -> html.Div:
    """The History tab's components."""
    return html.Div(
        [
            html.Div(
                [
                    html.Button(
                        "▶ Play", id=ids.HISTORY_AUTOPLAY, n_clicks=0, title="step through the episode"
                    ),
                    html.Div(step_slider(ids.HISTORY_SLIDER), className="grow"),
                ],
                className="controls-row",
            ),
            dcc.Interval(id=ids.HISTORY_TIMER, interval=700, disabled=True),
            html.Div(id=ids.HISTORY_NOTE, className="tab-message"),
            html.Div(
                [
                    html.Figure([html.Img(id=ids.HISTORY_WORLD_IMG, alt="world"), html.Figcaption("world")]),
                    html.Figure(
                        [html.Img(id=ids.HISTORY_POV_IMG, alt="agent view"), html.Figcaption("agent's view")]
                    ),
                    html.Div(id=ids.HISTORY_STEP_INFO, className="step-info"),
                    action_chart_box(ids.HISTORY_PROBS_GRAPH, ACTION_NAMES),
                ],
                className="frames-row",
            ),
            html.H4("Context window at this step (what the model reads)"),
            token_legend(),
            html.Div(id=ids.HISTORY_TOKENS, className="token-strip"),
        ]
    )


def register(app: Dash) -> None:
    """The History tab's one callback: slider range and view, computed only while the tab is shown."""

    @app.callback(
        Output(ids.HISTORY_SLIDER, "max"),
        Output(ids.HISTORY_SLIDER, "value"),
        Output(ids.HISTORY_WORLD_IMG, "src"),
        Output(ids.HISTORY_POV_IMG, "src"),
        Output(ids.HISTORY_NOTE, "children"),
        Output(ids.HISTORY_STEP_INFO, "children"),
        Output(ids.HISTORY_TOKENS, "children"),
        Output(ids.HISTORY_PROBS_GRAPH, "src"),
        Input(ids.HISTORY_SLIDER, "value"),
        Input(ids.HISTORY_SHOWN_EPISODE, "data"),
        State(ids.HISTORY_SLIDER, "max"),
        State(ids.MODEL_STORE, "data"),
        State(ids.SESSION_STORE, "data"),
    )
    def _show(
        step: int | None, data: Any, shown_max: int | None, model: str, session: str
    ) -> tuple[Any, ...]:
        # HISTORY_SHOWN_EPISODE is the page's episode, handed over only while this tab is shown.
        try:
            episode = load_episode(data)
            entry = model_entry(model)
        except DtinterpError as exc:
            return 0, 0, None, None, str(exc), None, [], no_update
        last = 0 if episode is None else episode.n_obs - 1
        if step is None or step > last or shown_max != last:
            step = last  # a new or longer episode than the one shown: show its latest step
        v = history_view(session, entry, episode, step)
        info = html.Table([html.Tr([html.Th(k), html.Td(val)]) for k, val in v["info"]])
        chart = action_chart(entry.checkpoint.action_names, v["probs"], title=v["chart_title"])
        note = v["message"] or v["note"]
        return last, step, v["world"], v["pov"], note, info, token_chips(v["tokens"]), chart

    # Autoplay runs in the browser: the button starts and stops a timer, each tick moves the slider one
    # step (the view callback above draws it), and the timer stops itself at the last step.
    app.clientside_callback(
        """function(n, disabled, value, max) {
            var playing = !disabled;
            if (!playing && (value || 0) >= (max || 0)) { return [false, "⏸ Pause", 0]; }
            return [playing, playing ? "▶ Play" : "⏸ Pause", window.dash_clientside.no_update];
        }""",
        Output(ids.HISTORY_TIMER, "disabled"),
        Output(ids.HISTORY_AUTOPLAY, "children"),
        Output(ids.HISTORY_SLIDER, "value", allow_duplicate=True),
        Input(ids.HISTORY_AUTOPLAY, "n_clicks"),
        State(ids.HISTORY_TIMER, "disabled"),
        State(ids.HISTORY_SLIDER, "value"),
        State(ids.HISTORY_SLIDER, "max"),
        prevent_initial_call=True,
    )
    app.clientside_callback(
        """function(ticks, value, max) {
            var next = Math.min((value || 0) + 1, max || 0);
            return [next, next >= (max || 0), next >= (max || 0) ? "▶ Play" : "⏸ Pause"];
        }""",
        Output(ids.HISTORY_SLIDER, "value", allow_duplicate=True),
        Output(ids.HISTORY_TIMER, "disabled", allow_duplicate=True),
        Output(ids.HISTORY_AUTOPLAY, "children", allow_duplicate=True),
        Input(ids.HISTORY_TIMER, "n_intervals"),
        State(ids.HISTORY_SLIDER, "value"),
        State(ids.HISTORY_SLIDER, "max"),
        prevent_initial_call=True,
    )
