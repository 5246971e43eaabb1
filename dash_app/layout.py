"""The page: shared stores, the top bar (model chooser, model info, messages) and the tabs.

``layout(default_model)`` is called on every page load, so each browser tab gets its own session id.
The Play panel is in the page from the start; every other panel is filled in the first time its tab is
opened (one request) and then stays, hidden while another tab is shown (a clientside callback), so what
was typed or computed there survives switching tabs. Until then the page carries none of its components:
the browser's work per play step grows with the number of components on the page, so a page that only
plays stays light. A panel's callbacks fire once it is in the page (Dash's initial call for new
components), reading the shared stores as they are then.
"""

from __future__ import annotations

import json
from typing import Any

from dash import Dash, Input, Output, State, ctx, dcc, html, no_update

from dash_app import analyses, circuit, history, ids, play, replay
from dash_app.cache import model_entry, new_session_id, shipped_names
from dash_app.card import card_markdown
from dtinterp.errors import DtinterpError
from envs.errors import EnvSpecError

#: (tab value, panel id, label, module) in page order.
TABS = (
    (ids.TAB_PLAY, ids.PANEL_PLAY, "Play", play),
    (ids.TAB_HISTORY, ids.PANEL_HISTORY, "History", history),
    (ids.TAB_REPLAY, ids.PANEL_REPLAY, "Replay & interventions", replay),
    (ids.TAB_ANALYSES, ids.PANEL_ANALYSES, "Analyses", analyses),
    (ids.TAB_CIRCUIT, ids.PANEL_CIRCUIT, "Circuit", circuit),
)


#: The episode store each tab reads (see ``ids.HISTORY_SHOWN_EPISODE``), by tab.
GATES = {
    ids.TAB_HISTORY: ids.HISTORY_SHOWN_EPISODE,
    ids.TAB_REPLAY: ids.REPLAY_SHOWN_EPISODE,
    ids.TAB_ANALYSES: ids.ANALYSES_SHOWN_EPISODE,
    ids.TAB_CIRCUIT: ids.CIRCUIT_SHOWN_EPISODE,
}


def model_line(key: str) -> list[Any]:
    """The top bar's line about a loaded model: its name and summary."""
    return [html.B(key), html.Span(f" · {model_entry(key).checkpoint.summary()}")]


def model_card(key: str) -> str:
    """A loaded model's card as Markdown, with working image links (read only when the card is opened)."""
    card = model_entry(key).card()
    return card_markdown(key, card) if card else "*This checkpoint has no model card (model_card.md).*"


def model_view(key: str) -> tuple[Any, ...]:
    """What the top bar shows for the page's model: info line, dropdown value, path field."""
    shipped = key in shipped_names()
    return model_line(key), (key if shipped else None), ("" if shipped else key)


def choose_model(event: str | None, dropdown: str | None, path: str | None, current: str) -> dict[str, Any]:
    """What picking a model in the top bar does: ``{"key", "info", "message", "dropdown", "path"}``.

    The dropdown loads a shipped model, the Load button a checkpoint path (or a shipped name). The chooser
    then shows the loaded model: its name in the dropdown, or its path in the text field. A model that
    cannot be loaded leaves the current one in place and says why in the message.
    """
    wanted = path if event == ids.MODEL_LOAD_BUTTON else dropdown
    try:
        if not wanted or not str(wanted).strip():
            raise DtinterpError("type a checkpoint directory before pressing Load")
        key = model_entry(str(wanted)).key
        shipped = key in shipped_names()
        return {
            "key": key,
            "info": model_line(key),
            "message": "",
            "dropdown": key if shipped else None,
            "path": "" if shipped else key,
        }
    except (DtinterpError, EnvSpecError) as exc:
        return {
            "key": current,
            "info": no_update,
            "message": f"Model not loaded: {exc}",
            "dropdown": no_update,
            "path": no_update,
        }


def _top_bar(default_model: str) -> html.Div:
    names = shipped_names()
    info = model_line(default_model)
    return html.Div(
        [
            html.Div(
                [
                    html.H2("dtinterp", className="brand"),
                    html.Label("Model", htmlFor=ids.MODEL_DROPDOWN),
                    dcc.Dropdown(
                        id=ids.MODEL_DROPDOWN,
                        options=[{"label": n, "value": n} for n in names],
                        value=default_model if default_model in names else None,
                        placeholder="shipped model",
                        clearable=False,
                        className="model-dropdown",
                    ),
                    dcc.Input(
                        id=ids.MODEL_PATH_INPUT,
                        type="text",
                        placeholder="or a checkpoint directory path…",
                        value="" if default_model in names else default_model,
                        className="path-input",
                    ),
                    html.Button("Load", id=ids.MODEL_LOAD_BUTTON, n_clicks=0),
                ],
                className="top-row",
            ),
            html.Div(info, id=ids.MODEL_INFO, className="model-info"),
            # the card is drawn when first opened: a page that only plays never loads the Markdown renderer
            html.Details(
                [html.Summary("Model card", id=ids.MODEL_CARD_SUMMARY), html.Div(id=ids.MODEL_CARD_BOX)]
            ),
            html.Div(id=ids.MESSAGE, className="message", role="alert"),
        ],
        className="top-bar",
    )


def mount_tab(tab: str, mounted: list[str] | None) -> tuple[list[str], Any] | None:
    """Opening ``tab``: ``(the mounted tabs after it, its panel's layout)`` the first time, else None."""
    mounted = list(mounted or [ids.TAB_PLAY])
    module = next((m for value, _, _, m in TABS if value == tab), None)
    if tab in mounted or module is None:
        return None
    return mounted + [tab], module.layout()


def layout(default_model: str) -> html.Div:
    """The whole page for one browser tab (a fresh session id each load)."""
    return html.Div(
        [
            dcc.Store(id=ids.SESSION_STORE, data=new_session_id(), storage_type="memory"),
            # The model and the episode survive a page reload (the browser tab's session storage).
            dcc.Store(id=ids.MODEL_STORE, data=default_model, storage_type="session"),
            dcc.Store(id=ids.TRAJ_STORE, data=None, storage_type="session"),
            dcc.Store(id=ids.STEP_STORE, data=None, storage_type="memory"),
            *[dcc.Store(id=gate, data=None, storage_type="memory") for gate in GATES.values()],
            dcc.Store(id=ids.EDITS_STORE, data=[], storage_type="memory"),
            _top_bar(default_model),
            dcc.Tabs(
                id=ids.TABS,
                value=ids.TAB_PLAY,
                children=[dcc.Tab(label=label, value=value) for value, _, label, _ in TABS],
            ),
            dcc.Store(id=ids.MOUNTED_TABS_STORE, data=[ids.TAB_PLAY], storage_type="memory"),
            *[
                html.Div(
                    module.layout()
                    if value == ids.TAB_PLAY
                    else html.P("Opening the tab…", className="hint"),
                    id=panel,
                    className="panel",
                    style={} if value == ids.TAB_PLAY else {"display": "none"},
                )
                for value, panel, _, module in TABS
            ],
        ],
        className="page",
    )


def register(app: Dash) -> None:
    """The page's own callbacks (model chooser, tab switching) and every tab's."""

    @app.callback(
        Output(ids.MODEL_STORE, "data"),
        Output(ids.MESSAGE, "children"),
        Input(ids.MODEL_DROPDOWN, "value"),
        Input(ids.MODEL_LOAD_BUTTON, "n_clicks"),
        State(ids.MODEL_PATH_INPUT, "value"),
        State(ids.MODEL_STORE, "data"),
        prevent_initial_call=True,
    )
    def _choose(dropdown: str | None, _clicks: int, path: str | None, current: str) -> tuple[Any, ...]:
        r = choose_model(ctx.triggered_id, dropdown, path, current)
        return (no_update if r["key"] == current else r["key"]), r["message"]

    @app.callback(
        Output(ids.MODEL_INFO, "children"),
        Output(ids.MODEL_DROPDOWN, "value"),
        Output(ids.MODEL_PATH_INPUT, "value"),
        Input(ids.MODEL_STORE, "data"),
    )
    def _show_model(key: str) -> tuple[Any, ...]:
        # The page's model changed (chosen, or restored by a reload): the top bar follows it.
        try:
            return model_view(key)
        except (DtinterpError, EnvSpecError):
            return (no_update,) * 3

    @app.callback(
        Output(ids.MODEL_CARD_BOX, "children"),
        Input(ids.MODEL_CARD_SUMMARY, "n_clicks"),
        Input(ids.MODEL_STORE, "data"),
        prevent_initial_call=True,
    )
    def _show_card(opened: int | None, key: str) -> Any:
        # Drawn once the card has been opened, and again for another model.
        if not opened:
            return no_update
        try:
            return dcc.Markdown(model_card(key), id=ids.MODEL_CARD, className="model-card")
        except (DtinterpError, EnvSpecError) as exc:
            return str(exc)

    lazy = [(value, panel) for value, panel, _, _ in TABS if value != ids.TAB_PLAY]

    @app.callback(
        Output(ids.MOUNTED_TABS_STORE, "data"),
        *[Output(panel, "children") for _, panel in lazy],
        Input(ids.TABS, "value"),
        State(ids.MOUNTED_TABS_STORE, "data"),
        prevent_initial_call=True,
    )
    def _mount(tab: str, mounted: list[str] | None) -> tuple[Any, ...]:
        opened = mount_tab(tab, mounted)
        if opened is None:
            return (no_update,) * (1 + len(lazy))
        return (opened[0], *[opened[1] if value == tab else no_update for value, _ in lazy])

    values = json.dumps([value for value, *_ in TABS])
    app.clientside_callback(
        f"function(tab) {{ return {values}.map(function (v) {{ return v === tab ? {{}} : {{display: 'none'}}; }}); }}",
        [Output(panel, "style") for _, panel, _, _ in TABS],
        Input(ids.TABS, "value"),
    )
    # Hidden tabs stay idle: the browser hands the episode to a tab only while it is shown (and when it is
    # opened), so a play step sends one request, the Play tab's. A changed episode resets the Replay step.
    # One clientside callback for both, which leaves alone what it need not change: on a play step each
    # callback and each applied output is work for every component on the page.
    gate_tabs = json.dumps(list(GATES))
    app.clientside_callback(
        f"""function(data, tab, step) {{
            const noUpdate = window.dash_clientside.no_update;
            const trig = (window.dash_clientside.callback_context.triggered || []).map(function (t) {{
                return t.prop_id;
            }});
            const newEpisode = trig.indexOf("{ids.TRAJ_STORE}.data") >= 0 && step !== null && step !== undefined;
            return {gate_tabs}.map(function (t) {{ return t === tab ? data : noUpdate; }})
                .concat([newEpisode ? null : noUpdate]);
        }}""",
        [Output(gate, "data") for gate in GATES.values()],
        Output(ids.STEP_STORE, "data", allow_duplicate=True),
        Input(ids.TRAJ_STORE, "data"),
        Input(ids.TABS, "value"),
        State(ids.STEP_STORE, "data"),
        prevent_initial_call=True,
    )
    for *_, module in TABS:
        module.register(app)
