"""The Play tab: play the model's env by hand or let the decision transformer act, step by step.

Logic lives in plain functions (:func:`reset_episode`, :func:`take_action`, :func:`dt_step`,
:func:`dt_run_to_end`, :func:`play_event`, :func:`play_view`) that tests call directly; the one callback
decodes the page's episode once (:func:`dash_app.inputs.load_episode`), applies the event, and draws the
tab from the result. The episode stays in the browser store; the env it is at lives in
:data:`dash_app.cache.ENVS` under this tab's session id.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from dash import Dash, Input, Output, State, ctx, dcc, html, no_update

from dash_app import ids
from dash_app.cache import ENVS, ModelEntry, model_entry
from dash_app.images import pov_image, world_image
from dash_app.inputs import InputError, load_episode, parse_seed, parse_target
from dash_app.widgets import action_chart, action_chart_box
from dtinterp.data.episode import Episode
from dtinterp.errors import DtinterpError
from dtinterp.interp.interventions import Intervention, parse_intervention
from envs.encoding import ACTION_NAMES, compact_obs
from envs.errors import EnvSpecError
from envs.spec import env_facts, make_env

#: Keys the keyboard script maps to actions (see assets/keyboard.js).
KEYS = {"left": "←", "right": "→", "forward": "↑", "pickup": "p", "drop": "d", "toggle": "t", "done": ""}


# ------------------------------------------------------------------ episode logic


def n_env_actions(entry: ModelEntry) -> int:
    """Size of the action space of the model's env (the actions a person may take)."""
    return env_facts(entry.checkpoint.env_spec).n_actions


def reset_episode(session: str, entry: ModelEntry, seed: int, target: float) -> Episode:
    """A new live episode of the model's env reset with ``seed``, to be played at target return ``target``."""
    spec = entry.checkpoint.env_spec
    env = make_env(spec)
    obs, _ = env.reset(seed=seed)
    grid, direction = compact_obs(obs)
    episode = Episode(
        env_spec=spec,
        obs=grid[None],
        directions=np.array([direction], dtype=np.uint8),
        actions=np.zeros(0, dtype=np.uint8),
        rewards=np.zeros(0, dtype=np.float32),
        seed=seed,
        target_return=float(target),
        source="play",
        info={"model": entry.key},
    )
    ENVS.checkin(session, episode, env)
    return episode


def _check_live(episode: Episode) -> None:
    if episode.done:
        raise InputError("the episode is over: press Reset to play a new one")
    if episode.seed is None:
        raise InputError("this episode has no env seed, so it cannot be continued: press Reset")


def take_action(session: str, episode: Episode, action: int) -> Episode:
    """``episode`` after one action chosen by a person (any action of the env's action space)."""
    _check_live(episode)
    env = ENVS.checkout(session, episode)
    if not 0 <= action < int(env.action_space.n):
        ENVS.checkin(session, episode, env)
        raise InputError(f"action {ACTION_NAMES[action]!r} does not exist in {episode.env_spec.env_id}")
    obs, reward, terminated, truncated, _ = env.step(action)
    grid, direction = compact_obs(obs)
    episode = episode.step(action, reward, grid, direction, terminated, truncated)
    ENVS.checkin(session, episode, env)
    return episode


def dt_action(entry: ModelEntry, episode: Episode, intervention: Intervention | None = None) -> int:
    """The model's greedy action at the episode's current state (with ``intervention``'s hooks on)."""
    hooks = intervention.hooks if intervention is not None else ()
    return int(np.argmax(entry.action_probs(episode, [episode.n_obs - 1], hooks)[0]))


def _record(episode: Episode, intervention: Intervention | None) -> None:
    """Note in the episode's provenance from which step the model acted under which intervention."""
    text = intervention.text if intervention is not None else None
    log = episode.info.setdefault("interventions", [])
    if (log[-1]["text"] if log else None) != text:
        log.append({"from_step": episode.length, "text": text})


def dt_step(
    session: str, entry: ModelEntry, episode: Episode, intervention: Intervention | None = None
) -> Episode:
    """``episode`` after one greedy action of the model."""
    _check_live(episode)
    _record(episode, intervention)
    return take_action(session, episode, dt_action(entry, episode, intervention))


def dt_run_to_end(
    session: str,
    entry: ModelEntry,
    episode: Episode,
    max_steps: int | None = None,
    intervention: Intervention | None = None,
) -> Episode:
    """``episode`` after the model plays greedily until it ends (at most ``max_steps`` more actions).

    The default cap is the env's episode step limit, which ends every episode anyway.
    """
    _check_live(episode)
    _record(episode, intervention)
    env = ENVS.checkout(session, episode)
    try:
        cap = env_facts(episode.env_spec).max_steps if max_steps is None else max_steps
        for _ in range(cap):
            if episode.done:
                break
            action = dt_action(entry, episode, intervention)
            obs, reward, terminated, truncated, _ = env.step(action)
            grid, direction = compact_obs(obs)
            episode = episode.step(action, reward, grid, direction, terminated, truncated)
    finally:
        ENVS.checkin(session, episode, env)
    return episode


def play_event(
    event: str | None,
    session: str,
    model: str,
    episode: Episode | None,
    seed: Any,
    target: Any,
    intervention: Any = None,
) -> tuple[Episode | None, str]:
    """What one Play tab event does: ``(new episode or None for unchanged, message)``.

    ``event`` is the id of the triggering component (``None`` on page load). Reset, a model change and a
    page load start a new episode; an action button acts; the DT buttons let the model act; editing the
    target return re-conditions an episode that has not started yet. Bad input gives a message only.
    """
    try:
        entry = model_entry(model)
        if event == ids.PLAY_TARGET_RTG:
            value = parse_target(target)
            if episode is None or episode.length:
                return None, "" if episode is None else "the new target return applies from the next reset"
            return episode.with_target(value), ""
        if event in (None, ids.PLAY_RESET, ids.MODEL_STORE) or episode is None:
            return reset_episode(session, entry, parse_seed(seed), parse_target(target)), ""
        if event in ids.PLAY_ACTION_BUTTONS:
            return take_action(session, episode, ids.PLAY_ACTION_BUTTONS.index(event)), ""
        if event == ids.PLAY_DT_STEP:
            return dt_step(session, entry, episode, parse_play_intervention(intervention, entry, episode)), ""
        if event == ids.PLAY_DT_RUN:
            how = parse_play_intervention(intervention, entry, episode)
            return dt_run_to_end(session, entry, episode, intervention=how), ""
        raise ValueError(f"unknown Play event {event!r}")
    except (DtinterpError, EnvSpecError) as exc:
        return None, str(exc)


def parse_play_intervention(text: Any, entry: ModelEntry, episode: Episode | None) -> Intervention | None:
    """The intervention typed in the Play tab (None when empty); mean ablation averages over the episode."""
    if not text or not str(text).strip():
        return None
    reference = episode.windows(entry.checkpoint) if episode is not None and "mean" in str(text) else None
    return parse_intervention(str(text), entry.checkpoint, reference)


# ------------------------------------------------------------------ view


def status_line(episode: Episode) -> str:
    """Step, last reward, return so far and the RTG the model is conditioned on now."""
    t = episode.length
    last = f"{float(episode.rewards[-1]):.3f}" if t else "–"
    target = "achieved" if episode.target_return is None else f"{episode.target_return:g}"
    rtg = (
        f"RTG {episode.rtg(episode.n_obs - 1):.3f} (target {target})" if episode.live else f"target {target}"
    )
    return (
        f"step {t} · last reward {last} · return {episode.episode_return:.3f} · {rtg} · seed {episode.seed}"
    )


def episode_banner(episode: Episode) -> tuple[str, str]:
    """``(text, css class)`` of the end-of-episode banner; empty text while the episode is live."""
    if episode.live:
        return "", "banner hidden"
    ret = episode.episode_return
    how = "terminated" if episode.terminated else "time limit reached"
    outcome = "success" if ret > 0 else "failure"
    return (
        f"Episode over — {outcome} (return {ret:.3f}, {how}). The world shows the final state; the agent's "
        "view and the probabilities are those of the last decision.",
        f"banner {outcome}",
    )


def play_view(
    session: str, entry: ModelEntry, episode: Episode | None, intervention: Intervention | None = None
) -> dict[str, Any]:
    """Everything the Play tab shows for ``episode``: images, chart, status, banner and which buttons exist.

    While the episode is live the chart shows the distribution at the current state; once it has ended,
    the one of the last decision (the agent's view shows the observation it was made from).
    """
    names = entry.checkpoint.action_names
    view: dict[str, Any] = {
        "world": None,
        "pov": None,
        "probs": None,
        "chart_title": "DT action probabilities",
        "status": "",
        "banner": ("", "banner hidden"),
        "n_actions": n_env_actions(entry),
        "action_names": names,
        "message": "",
    }
    if episode is None:
        return view
    try:
        view["status"] = status_line(episode)
        view["banner"] = episode_banner(episode)
        view["pov"] = pov_image(episode.obs[-1], int(episode.directions[-1]))
        view["world"] = world_image(session, episode)
        last = episode.n_obs - 1
        view["probs"] = entry.action_probs(episode, [last], intervention.hooks if intervention else ())[0]
        if intervention is not None:
            view["chart_title"] = f"DT action probabilities with {intervention.text}"
        if episode.done:
            chosen = ACTION_NAMES[int(episode.actions[last])]
            view["chart_title"] = f"Last decision (step {last}): the model took {chosen}" + (
                f" ({intervention.text})" if intervention is not None else ""
            )
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
            html.Div(
                [
                    html.Label("Intervention while the DT plays", htmlFor=ids.PLAY_INTERVENTION),
                    dcc.Input(
                        id=ids.PLAY_INTERVENTION,
                        type="text",
                        debounce=True,
                        placeholder="zero: blocks.1.attn.hook_z:h2  ·  steer: saved:NAME @ blocks.1.hook_resid_post x 4",
                        className="path-input intervention-input",
                    ),
                    html.Span(
                        "ablate (zero/mean: components; zero: a direction @ hook or sae:DIR#F) or steer; DT "
                        "step / run to end and the chart use it; an analysis's suggestions fill it in",
                        className="hint",
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
                    action_chart_box(ids.PLAY_PROBS_GRAPH, ACTION_NAMES),
                ],
                className="frames-row",
            ),
            html.Div(
                [_action_button(i) for i in range(len(ACTION_NAMES))],
                id=ids.PLAY_ACTIONS_ROW,
                className=actions_row_class(len(ACTION_NAMES)),
            ),
            html.P(id=ids.PLAY_KEYS_HINT, className="hint"),
        ]
    )


def keys_hint(n_actions: int) -> str:
    """The keyboard help for the env's own actions."""
    words = {"left": "turn left", "right": "turn right", "forward": "forward"}
    parts = [f"{KEYS[a]} {words.get(a, a)}" for a in ACTION_NAMES[:n_actions] if KEYS.get(a)]
    return "Keys: " + ", ".join(parts) + " (not while typing in a field)."


#: Which of several inputs fired together is the event (a click beats the typed value it follows).
EVENT_PRIORITY = (
    ids.PLAY_RESET,
    *ids.PLAY_ACTION_BUTTONS,
    ids.PLAY_DT_STEP,
    ids.PLAY_DT_RUN,
    ids.MODEL_STORE,
    ids.PLAY_TARGET_RTG,
    ids.PLAY_INTERVENTION,
    ids.TRAJ_STORE,
    ids.TABS,
)


def actions_row_class(n_actions: int) -> str:
    """The action buttons' row shows the env's own ``n_actions`` buttons (the rest hidden by CSS)."""
    return f"controls-row actions-{n_actions}"


#: The Play tab's outputs that seldom change, as (component, property): sent only when they do.
_SHOWN = (
    (ids.PLAY_MESSAGE, "children"),
    (ids.PLAY_BANNER, "children"),
    (ids.PLAY_BANNER, "className"),
    (ids.PLAY_ACTIONS_ROW, "className"),
    (ids.PLAY_DT_STEP, "disabled"),
    (ids.PLAY_KEYS_HINT, "children"),
)


def register(app: Dash) -> None:
    """The Play tab's one callback: apply the event, then draw the tab (the episode is decoded once)."""

    @app.callback(
        Output(ids.TRAJ_STORE, "data"),
        Output(ids.PLAY_MESSAGE, "children"),
        Output(ids.PLAY_WORLD_IMG, "src"),
        Output(ids.PLAY_POV_IMG, "src"),
        Output(ids.PLAY_PROBS_GRAPH, "src"),
        Output(ids.PLAY_STATUS, "children"),
        Output(ids.PLAY_BANNER, "children"),
        Output(ids.PLAY_BANNER, "className"),
        Output(ids.PLAY_ACTIONS_ROW, "className"),
        Output(ids.PLAY_DT_STEP, "disabled"),
        Output(ids.PLAY_DT_RUN, "disabled"),
        Output(ids.PLAY_KEYS_HINT, "children"),
        Input(ids.PLAY_RESET, "n_clicks"),
        *[Input(b, "n_clicks") for b in ids.PLAY_ACTION_BUTTONS],
        Input(ids.PLAY_DT_STEP, "n_clicks"),
        Input(ids.PLAY_DT_RUN, "n_clicks"),
        Input(ids.PLAY_TARGET_RTG, "value"),
        Input(ids.MODEL_STORE, "data"),
        Input(ids.TRAJ_STORE, "data"),
        Input(ids.TABS, "value"),
        Input(ids.PLAY_INTERVENTION, "value"),
        State(ids.SESSION_STORE, "data"),
        State(ids.PLAY_SEED, "value"),
        # what the page shows now, so outputs that stay the same are not sent again (each output the
        # browser applies is work for every component on the page)
        *[State(c, p) for c, p in _SHOWN],
    )
    def _play(*args: Any) -> tuple[Any, ...]:
        shown_now = args[-len(_SHOWN) :]
        target, model, data, tab, intervention, session, seed = args[-7 - len(_SHOWN) : -len(_SHOWN)]
        n_out = 12
        # Several inputs can fire together (typing a target, then clicking Reset): the click wins.
        fired = set(ctx.triggered_prop_ids.values())
        event = next((e for e in EVENT_PRIORITY if e in fired), None)
        if event in (ids.TRAJ_STORE, ids.TABS) and tab != ids.TAB_PLAY and data is not None:
            return (no_update,) * n_out  # another tab changed the episode: redraw when Play is shown
        try:
            episode = load_episode(data)
        except DtinterpError as exc:
            episode, message = None, str(exc)
        else:
            message = ""
        new = None
        if episode is None:  # no episode yet (a first page load) or an unreadable one: start one
            new, reset_message = play_event(None, session, model, None, seed, target)
            message = message or reset_message
        elif event not in (None, ids.TRAJ_STORE, ids.TABS, ids.PLAY_INTERVENTION):  # None: a reload
            new, message = play_event(event, session, model, episode, seed, target, intervention)
        shown = new if new is not None else episode
        try:
            entry = model_entry(model)
        except DtinterpError as exc:
            return (no_update, str(exc), *(no_update,) * (n_out - 2))
        try:
            how = parse_play_intervention(intervention, entry, shown)
        except DtinterpError as exc:
            how, message = None, str(exc)
        v = play_view(session, entry, shown, how)
        text, cls = v["banner"]
        if v["message"]:
            text, cls = v["message"], "banner failure"
        chart = action_chart(
            v["action_names"], v["probs"], title=v["chart_title"], note="no episode" if shown is None else ""
        )
        over = shown is None or shown.done
        wanted = (message, text, cls, actions_row_class(v["n_actions"]), over, keys_hint(v["n_actions"]))
        m, text, cls, row, over_, hint = (no_update if w == now else w for w, now in zip(wanted, shown_now))
        return (
            no_update if new is None else new.to_json(),
            m,
            v["world"],
            v["pov"],
            chart,
            v["status"],
            text,
            cls,
            row,
            over_,
            over_,
            hint,
        )
