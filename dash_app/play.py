"""The Play tab: play the model's env by hand or let the decision transformer act, step by step.

Logic lives in plain functions (:func:`reset_episode`, :func:`take_action`, :func:`dt_step`,
:func:`dt_run_to_end`, :func:`play_event`, :func:`play_view`) that tests call directly; the callbacks
only unpack the browser's values and pass them on. The trajectory stays in the browser store; the env
it is at lives in :data:`dash_app.state.ENVS` under this tab's session id.
"""

from __future__ import annotations

import functools
import json
import math
from typing import Any

import gymnasium as gym
import numpy as np
import plotly.graph_objects as go
from dash import Dash, Input, Output, State, ctx, dcc, html, no_update

from dash_app import ids
from dash_app.state import (
    ENVS,
    InputError,
    ModelEntry,
    action_probs,
    check_traj,
    encode_obs,
    model_entry,
    new_traj,
    png_data_uri,
    traj_return,
    traj_rtg,
    traj_spec,
)
from dtinterp.errors import DtinterpError
from envs.encoding import ACTION_NAMES, compact_obs
from envs.errors import EnvSpecError
from envs.render import render_pov, render_world
from envs.spec import EnvSpec, make_env

#: Target returns the Play tab accepts (MiniGrid returns lie in [0, 1]; room to ask for the impossible).
TARGET_RANGE = (-10.0, 10.0)
MAX_SEED = 2**31 - 1
#: Keys the keyboard script maps to actions (see assets/keyboard.js).
KEYS = {"left": "←", "right": "→", "forward": "↑", "pickup": "p", "drop": "d", "toggle": "t", "done": ""}
TILE = 32


# ------------------------------------------------------------------ input parsing


def parse_target(value: Any) -> float:
    """The target return typed by the user: a finite number within :data:`TARGET_RANGE`."""
    lo, hi = TARGET_RANGE
    try:
        x = float(str(value).strip())
    except ValueError:
        raise InputError(f"target return {value!r} is not a number") from None
    if not math.isfinite(x) or not lo <= x <= hi:
        raise InputError(f"target return {value!r} must be a finite number between {lo:g} and {hi:g}")
    return x


def parse_seed(value: Any) -> int:
    """The env seed typed by the user: an integer in ``0 .. 2**31 - 1``."""
    text = str(value).strip()
    if not text.isdigit() or int(text) > MAX_SEED:
        raise InputError(f"seed {value!r} must be an integer between 0 and {MAX_SEED}")
    return int(text)


# ------------------------------------------------------------------ episode logic


def n_env_actions(entry: ModelEntry) -> int:
    """Size of the action space of the model's env (the actions a person may take)."""
    return _action_count(entry.spec.to_json())


@functools.lru_cache(maxsize=64)
def _action_count(spec_json: str) -> int:
    env = make_env(EnvSpec.from_dict(json.loads(spec_json)))
    try:
        return int(env.action_space.n)
    finally:
        env.close()


def reset_episode(session: str, entry: ModelEntry, seed: int, target: float) -> dict[str, Any]:
    """A new live episode of the model's env reset with ``seed``, to be played at target return ``target``."""
    env = make_env(entry.spec)
    obs, _ = env.reset(seed=seed)
    grid, direction = compact_obs(obs)
    traj = new_traj(entry.key, entry.spec, seed, target, grid, direction)
    ENVS.checkin(session, traj, env)
    return traj


def _step(traj: dict[str, Any], env: gym.Env, action: int) -> dict[str, Any]:
    """``traj`` after taking ``action`` in ``env`` (which is at the trajectory's current state)."""
    obs, reward, terminated, truncated, _ = env.step(action)
    done = bool(terminated or truncated)
    reward = float(np.float32(reward))  # dataset precision, so a saved episode reloads identical
    out = {**traj, "actions": [*traj["actions"], action], "rewards": [*traj["rewards"], reward]}
    out["done"], out["terminated"] = done, bool(terminated)
    if not done:
        grid, direction = compact_obs(obs)
        # W*H*3 bytes per grid is a multiple of 3, so base64 of the appended bytes appends exactly.
        out["obs_b64"] = traj["obs_b64"] + encode_obs(grid[None])
        out["directions"] = [*traj["directions"], direction]
    return out


def _check_live(traj: dict[str, Any]) -> None:
    check_traj(traj)
    if traj["done"]:
        raise InputError("the episode is over: press Reset to play a new one")
    if traj["seed"] is None:
        raise InputError("this trajectory has no env seed, so it cannot be continued: press Reset")


def take_action(session: str, traj: dict[str, Any], action: int) -> dict[str, Any]:
    """``traj`` after one action chosen by a person (any action of the env's action space)."""
    _check_live(traj)
    env = ENVS.checkout(session, traj)
    if not 0 <= action < int(env.action_space.n):
        ENVS.checkin(session, traj, env)
        raise InputError(f"action {ACTION_NAMES[action]!r} does not exist in {traj_spec(traj).env_id}")
    traj = _step(traj, env, action)
    ENVS.checkin(session, traj, env)
    return traj


def dt_action(entry: ModelEntry, traj: dict[str, Any]) -> int:
    """The model's greedy action at the trajectory's current state."""
    return int(np.argmax(action_probs(entry, traj)))


def dt_step(session: str, entry: ModelEntry, traj: dict[str, Any]) -> dict[str, Any]:
    """``traj`` after one greedy action of the model."""
    _check_live(traj)
    return take_action(session, traj, dt_action(entry, traj))


def dt_run_to_end(
    session: str, entry: ModelEntry, traj: dict[str, Any], max_steps: int | None = None
) -> dict[str, Any]:
    """``traj`` after the model plays greedily until the episode ends (at most ``max_steps`` more actions).

    The default cap is the env's episode step limit, which ends every episode anyway.
    """
    _check_live(traj)
    env = ENVS.checkout(session, traj)
    try:
        cap = int(env.unwrapped.max_steps) if max_steps is None else max_steps
        for _ in range(cap):
            if traj["done"]:
                break
            traj = _step(traj, env, dt_action(entry, traj))
    finally:
        ENVS.checkin(session, traj, env)
    return traj


def play_event(
    event: str | None,
    session: str,
    model: str,
    traj: dict[str, Any] | None,
    seed: Any,
    target: Any,
) -> tuple[dict[str, Any] | None, str]:
    """What one Play tab event does: ``(new trajectory or None for unchanged, message)``.

    ``event`` is the id of the triggering component (``None`` on page load). Reset, a model change and a
    page load start a new episode; an action button acts; the DT buttons let the model act; editing the
    target return re-conditions an episode that has not started yet. Bad input gives a message only.
    """
    try:
        entry = model_entry(model)
        if event == ids.PLAY_TARGET_RTG:
            value = parse_target(target)
            if traj is None or traj["actions"]:
                return None, "" if traj is None else "the new target return applies from the next reset"
            check_traj(traj)
            return {**traj, "target_rtg": value}, ""
        if event in (None, ids.PLAY_RESET, ids.MODEL_STORE) or traj is None:
            return reset_episode(session, entry, parse_seed(seed), parse_target(target)), ""
        if event in ids.PLAY_ACTION_BUTTONS:
            return take_action(session, traj, ids.PLAY_ACTION_BUTTONS.index(event)), ""
        if event == ids.PLAY_DT_STEP:
            return dt_step(session, entry, traj), ""
        if event == ids.PLAY_DT_RUN:
            return dt_run_to_end(session, entry, traj), ""
        raise ValueError(f"unknown Play event {event!r}")
    except (DtinterpError, EnvSpecError) as exc:
        return None, str(exc)


# ------------------------------------------------------------------ view


def status_line(traj: dict[str, Any]) -> str:
    """Step, last reward, return so far and the RTG the model is conditioned on now."""
    t = len(traj["actions"])
    last = f"{traj['rewards'][-1]:.3f}" if t else "–"
    return (
        f"step {t} · last reward {last} · return {traj_return(traj):.3f} · "
        f"RTG {traj_rtg(traj, t):.3f} (target {traj['target_rtg']:g}) · seed {traj['seed']}"
    )


def episode_banner(traj: dict[str, Any]) -> tuple[str, str]:
    """``(text, css class)`` of the end-of-episode banner; empty text while the episode is live."""
    if not traj["done"]:
        return "", "banner hidden"
    ret = traj_return(traj)
    how = "terminated" if traj["terminated"] else "time limit reached"
    if ret > 0:
        return f"Episode over — success (return {ret:.3f}, {how})", "banner success"
    return f"Episode over — failure (return {ret:.3f}, {how})", "banner failure"


def probs_figure(probs: np.ndarray | None, title: str = "DT action probabilities") -> go.Figure:
    """Bar chart of an action distribution, the most likely action highlighted."""
    fig = go.Figure()
    if probs is not None:
        names = list(ACTION_NAMES[: len(probs)])
        colors = ["#d62728" if i == int(np.argmax(probs)) else "#1f77b4" for i in range(len(probs))]
        fig.add_bar(
            x=names, y=probs, marker_color=colors, text=[f"{p:.2f}" for p in probs], textposition="outside"
        )
    fig.update_layout(
        title=title,
        yaxis={"range": [0, 1.1], "title": "probability"},
        height=300,
        margin={"l": 50, "r": 10, "t": 40, "b": 40},
        template="plotly_white",
    )
    return fig


def world_image(session: str, traj: dict[str, Any], n_actions: int | None = None) -> str | None:
    """PNG data URI of the world after the first ``n_actions`` actions (default all), or None without a seed."""
    if traj.get("seed") is None:
        return None
    env = ENVS.checkout(session, traj, n_actions)
    try:
        rgb = render_world(env, tile_size=TILE)
    finally:
        ENVS.checkin(session, traj, env, n_actions)
    return png_data_uri(rgb)


def pov_image(obs: np.ndarray, direction: int) -> str:
    """PNG data URI of one stored observation as the agent sees it."""
    return png_data_uri(render_pov(obs, direction, tile_size=TILE, highlight=True))


def play_view(session: str, model: str, traj: dict[str, Any] | None) -> dict[str, Any]:
    """Everything the Play tab shows for ``traj``: images, chart, status, banner and which buttons exist."""
    view: dict[str, Any] = {
        "world": None,
        "pov": None,
        "probs": None,
        "status": "",
        "banner": ("", "banner hidden"),
        "n_actions": len(ACTION_NAMES),
        "message": "",
    }
    try:
        entry = model_entry(model)
        view["n_actions"] = n_env_actions(entry)
        if traj is None:
            return view
        obs = check_traj(traj)
        view["status"] = status_line(traj)
        view["banner"] = episode_banner(traj)
        view["pov"] = pov_image(obs[-1], traj["directions"][-1])
        view["world"] = world_image(session, traj)
        if not traj["done"]:
            view["probs"] = action_probs(entry, traj)
    except (DtinterpError, EnvSpecError) as exc:
        view["message"] = str(exc)
    return view


# ------------------------------------------------------------------ layout and callbacks


def _action_button(i: int) -> html.Button:
    name = ACTION_NAMES[i]
    key = KEYS.get(name, "")
    return html.Button(
        f"{name} ({key})" if key else name,
        id=ids.play_action_button(i),
        n_clicks=0,
        className="action-button",
        title=f"take action {name}" + (f" (key {key})" if key else ""),
    )


def layout() -> html.Div:
    """The Play tab's components."""
    return html.Div(
        [
            html.Div(
                [
                    html.Label(
                        [
                            "Target return ",
                            dcc.Input(
                                id=ids.PLAY_TARGET_RTG, value="1", type="text", debounce=True, size="6"
                            ),
                        ]
                    ),
                    html.Label(
                        [
                            "Seed ",
                            dcc.Input(id=ids.PLAY_SEED, value="0", type="text", debounce=True, size="8"),
                        ]
                    ),
                    html.Button("Reset", id=ids.PLAY_RESET, n_clicks=0),
                    html.Button(
                        "DT step", id=ids.PLAY_DT_STEP, n_clicks=0, title="the model takes one action"
                    ),
                    html.Button(
                        "DT run to end",
                        id=ids.PLAY_DT_RUN,
                        n_clicks=0,
                        title="the model plays greedily until the episode ends",
                    ),
                ],
                className="controls-row",
            ),
            html.Div(id=ids.PLAY_MESSAGE, className="tab-message"),
            html.Div(id=ids.PLAY_BANNER, className="banner hidden"),
            html.Div(id=ids.PLAY_STATUS, className="status-line"),
            html.Div(
                [
                    html.Figure([html.Img(id=ids.PLAY_WORLD_IMG, alt="world"), html.Figcaption("world")]),
                    html.Figure(
                        [
                            html.Img(id=ids.PLAY_POV_IMG, alt="agent view"),
                            html.Figcaption("agent's view (model input)"),
                        ]
                    ),
                    dcc.Graph(
                        id=ids.PLAY_PROBS_GRAPH,
                        figure=probs_figure(None),
                        config={"displayModeBar": False},
                        className="probs-graph",
                    ),
                ],
                className="frames-row",
            ),
            html.Div(
                [_action_button(i) for i in range(len(ACTION_NAMES))],
                id=ids.PLAY_ACTIONS_ROW,
                className="controls-row",
            ),
            html.P(
                "Keys: ← → turn, ↑ forward, p pickup, d drop, t toggle (not while typing in a field).",
                className="hint",
            ),
        ]
    )


def register(app: Dash) -> None:
    """The Play tab's callbacks."""

    @app.callback(
        Output(ids.TRAJ_STORE, "data"),
        Output(ids.PLAY_MESSAGE, "children"),
        Input(ids.PLAY_RESET, "n_clicks"),
        *[Input(b, "n_clicks") for b in ids.PLAY_ACTION_BUTTONS],
        Input(ids.PLAY_DT_STEP, "n_clicks"),
        Input(ids.PLAY_DT_RUN, "n_clicks"),
        Input(ids.PLAY_TARGET_RTG, "value"),
        Input(ids.MODEL_STORE, "data"),
        State(ids.TRAJ_STORE, "data"),
        State(ids.SESSION_STORE, "data"),
        State(ids.PLAY_SEED, "value"),
    )
    def _on_event(*args: Any) -> tuple[Any, str]:
        target, model, traj, session, seed = args[-5:]
        event = ctx.triggered_id if ctx.triggered_id is not None and traj is not None else None
        new, message = play_event(event, session, model, traj, seed, target)
        return (no_update if new is None else new), message

    @app.callback(
        Output(ids.PLAY_WORLD_IMG, "src"),
        Output(ids.PLAY_POV_IMG, "src"),
        Output(ids.PLAY_PROBS_GRAPH, "figure"),
        Output(ids.PLAY_STATUS, "children"),
        Output(ids.PLAY_BANNER, "children"),
        Output(ids.PLAY_BANNER, "className"),
        *[Output(b, "style") for b in ids.PLAY_ACTION_BUTTONS],
        Output(ids.PLAY_DT_STEP, "disabled"),
        Output(ids.PLAY_DT_RUN, "disabled"),
        Input(ids.TRAJ_STORE, "data"),
        State(ids.MODEL_STORE, "data"),
        State(ids.SESSION_STORE, "data"),
    )
    def _render(traj: dict[str, Any] | None, model: str, session: str) -> tuple[Any, ...]:
        v = play_view(session, model, traj)
        text, cls = v["banner"]
        if v["message"]:
            text, cls = v["message"], "banner failure"
        styles = [{} if i < v["n_actions"] else {"display": "none"} for i in range(len(ACTION_NAMES))]
        over = traj is None or bool(traj.get("done"))
        return (v["world"], v["pov"], probs_figure(v["probs"]), v["status"], text, cls, *styles, over, over)
