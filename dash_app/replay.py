"""The Replay & interventions tab: load an episode, pick a step, edit the model's input tokens, and
compare the predicted action before and after.

An episode comes from an uploaded ``.npz`` (a trajectory file: a one-episode dataset; a larger dataset
works too, with the episode number), from an episode of a dataset on the server's disk, or from the Play
tab. Loading one makes it the page's current episode (``ids.TRAJ_STORE``); the last played episode is
kept aside (``ids.REPLAY_PLAYED_STORE``) and "Use the played episode" brings it back.

Edits use the compact syntax of :mod:`dtinterp.interp.edits`, one per line (``R3=0.5``,
``A2=forward``, ``S4[3,6].object=key``, ``S4.direction=left``, ``T3=10``); the helper rows write such
lines for you. Timesteps count from 1 at the left of the model's context window, like the token labels
shown under the step slider. The window at the chosen step and its edits go through the same
:class:`~dtinterp.plugins.api.AnalysisContext` (from the server-side context LRU) that the Analyses tab
runs plugins on, so "before" is ``softmax(ctx.logits)`` and "after" ``softmax(ctx.cf_logits)`` at the
last state token. The step (``ids.STEP_STORE``) and the valid edits (``ids.EDITS_STORE``) are what the
Analyses tab uses.

Logic lives in plain functions (:func:`load_upload`, :func:`load_dataset_episode`, :func:`parse_edits`,
:func:`helper_edits`, :func:`predict_before_after`, :func:`replay_view`, :func:`episode_npz_bytes`); the
callbacks decode the page's episode once and pass the browser's values through.
"""

from __future__ import annotations

import base64
import binascii
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from dash import ALL, Dash, Input, Output, State, ctx, dcc, html, no_update

from dash_app import ids
from dash_app.cache import ModelEntry, model_entry
from dash_app.images import pov_image
from dash_app.inputs import InputError, load_episode, parse_episode
from dash_app.widgets import (
    action_chart,
    action_chart_box,
    step_slider,
    token_chips,
    token_legend,
    window_tokens,
)
from dtinterp.data.dataset import TrajectoryDataset, load_dataset, save_dataset
from dtinterp.data.episode import Episode
from dtinterp.errors import DtinterpError
from dtinterp.interp.edits import (
    Edit,
    EditError,
    SetAction,
    SetCell,
    SetDirection,
    SetRTG,
    apply_edits,
    parse_edit,
)
from dtinterp.model.inputs import DTInputs
from envs.encoding import ACTION_NAMES, COLOR_NAMES, DIRECTION_NAMES, OBJECT_NAMES, STATE_NAMES
from envs.errors import EnvSpecError

#: Kinds of the helper rows (each has its own add button).
HELPER_KINDS = ("rtg", "action", "cell", "direction")
#: An upload larger than this is refused before it is decoded (a trajectory file is a few kB, a
#: collected dataset tens of MB).
MAX_UPLOAD_BYTES = 256 * 2**20


# ------------------------------------------------------------------ loading episodes


def _episode(ds: TrajectoryDataset, episode: int, entry: ModelEntry, where: str, source: str) -> Episode:
    if not 0 <= episode < ds.n_episodes:
        raise InputError(f"{where} has {ds.n_episodes} episode(s): episode {episode} does not exist")
    entry.checkpoint.check_fits(ds.env_spec, tuple(ds.obs.shape[1:3]), where=where)
    return Episode.from_dataset(ds, episode, source=source, where=where)


def load_upload(contents: str | None, filename: str | None, episode: Any, entry: ModelEntry) -> Episode:
    """The episode in an uploaded ``.npz`` (``contents`` is dcc.Upload's ``data:...;base64,...`` text).

    A one-episode file is taken whole; a dataset with several episodes gives episode ``episode``. The
    file is read with :func:`~dtinterp.data.dataset.load_dataset` (no pickle, full validation); anything
    wrong is an :class:`InputError` naming the file.
    """
    name = Path(filename or "upload.npz").name
    where = f"uploaded file {name!r}"
    if not contents:
        raise InputError(f"{where} is empty")
    _, sep, b64 = contents.partition(",")
    if not sep:
        raise InputError(f"{where}: the browser sent no file data")
    if len(b64) * 3 // 4 > MAX_UPLOAD_BYTES:
        raise InputError(f"{where} is larger than {MAX_UPLOAD_BYTES // 2**20} MiB")
    try:
        raw = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"{where}: the upload is not valid base64") from None
    with tempfile.TemporaryDirectory(prefix="dtinterp-upload-") as tmp:
        path = Path(tmp) / "upload.npz"
        path.write_bytes(raw)
        try:
            ds = load_dataset(path)
        except DtinterpError as exc:
            raise InputError(str(exc).replace(f"dataset {str(path)!r}", where)) from None
    ep = 0 if ds.n_episodes == 1 else parse_episode(episode)
    out = _episode(ds, ep, entry, where, "file")
    out.info["file"] = name
    return out


def load_dataset_episode(path: Any, episode: Any, entry: ModelEntry) -> Episode:
    """Episode ``episode`` of the dataset file at ``path`` (on the server's disk)."""
    text = "" if path is None else str(path).strip()
    if not text:
        raise InputError("type the path of a dataset file (.npz) before pressing Load")
    ep = parse_episode(episode)
    ds = load_dataset(Path(text).expanduser())
    out = _episode(ds, ep, entry, f"dataset {text!r}", "dataset")
    out.info["dataset"] = str(Path(text).expanduser().resolve())
    return out


def load_event(
    event: Any,
    model: str,
    current: Episode | None,
    played: Any,
    upload: str | None,
    filename: str | None,
    path: Any,
    episode: Any,
) -> tuple[Episode | None, Any, str]:
    """What one load button does: ``(new episode or None, played episode JSON to keep, message)``.

    Loading a file or a dataset episode keeps the current episode aside if it was played, so "Use the
    played episode" can bring it back. Bad input leaves everything as it was and says why.
    """
    try:
        entry = model_entry(model)
        if event == ids.REPLAY_USE_PLAYED:
            if current is not None and current.source == "play":
                return None, played, "the current episode is the played episode"
            if played is None:
                raise InputError("no played episode to go back to: play one in the Play tab")
            return Episode.from_json(played), played, ""
        if event == ids.REPLAY_UPLOAD:
            new = load_upload(upload, filename, episode, entry)
        elif event == ids.REPLAY_LOAD_DATASET:
            new = load_dataset_episode(path, episode, entry)
        else:
            raise ValueError(f"unknown Replay load event {event!r}")
        keep = current.to_json() if current is not None and current.source == "play" else played
        return new, keep, ""
    except (DtinterpError, EnvSpecError) as exc:
        return None, played, str(exc)


def source_text(episode: Episode | None) -> str:
    """One line on where the current episode came from and how long it is."""
    if episode is None:
        return "No episode yet: play one, upload a trajectory file or load a dataset episode."
    where = {
        "play": "played in the Play tab",
        "file": f"uploaded file {episode.info.get('file', '')}".strip(),
        "dataset": f"episode {episode.info.get('episode_index', '?')} of {episode.info.get('dataset', 'a dataset')}",
        "rollout": "model rollout",
    }[episode.source]
    state = "finished" if episode.done else "live"
    seed = "unknown" if episode.seed is None else episode.seed
    target = (
        "achieved return-to-go"
        if episode.target_return is None
        else f"target return {episode.target_return:g}"
    )
    return (
        f"Current episode: {where} · {episode.env_spec.env_id} · {episode.length} steps ({state}) · "
        f"return {episode.episode_return:.3f} · conditioned on {target} · env seed {seed}"
    )


def episode_npz_bytes(episode: Episode | None) -> bytes:
    """The episode's taken steps as the bytes of a trajectory file (a one-episode dataset ``.npz``)."""
    if episode is None:
        raise InputError("no episode to save")
    ds = episode.to_dataset()
    with tempfile.TemporaryDirectory(prefix="dtinterp-save-") as tmp:
        path = Path(tmp) / "trajectory.npz"
        save_dataset(ds, path)
        return path.read_bytes()


def save_filename(episode: Episode) -> str:
    """A descriptive file name for a downloaded episode."""
    env = episode.env_spec.env_id.replace("MiniGrid-", "").replace("-v0", "")
    seed = "" if episode.seed is None else f"-seed{episode.seed}"
    return f"trajectory-{env}{seed}-{episode.length}steps.npz"


# ------------------------------------------------------------------ edits


def parse_edits(text: str | None) -> list[Edit]:
    """The edits typed in the text box, one per line (blank lines and ``#`` comments are skipped).

    Every bad line is reported at once, in one line: ``line 2: cannot parse edit ...; line 4: ...``.
    """
    edits, errors = [], []
    for i, line in enumerate((text or "").splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            edits.append(parse_edit(line))
        except EditError as exc:
            errors.append(f"line {i}: {exc}")
    if errors:
        raise EditError("; ".join(errors))
    return edits


def _real_timestep(k: Any, context_len: int) -> int:
    if k in (None, ""):
        raise InputError("choose the timestep to edit")
    try:
        k = int(k)
    except (TypeError, ValueError):
        raise InputError(f"timestep {k!r} is not a number") from None
    if not 1 <= k <= context_len:
        raise InputError(f"timestep {k} is outside the window 1..{context_len}")
    return k


def helper_edits(kind: str, k: Any, values: dict[str, Any], context_len: int) -> list[str]:
    """The edit lines one helper row writes: ``kind`` is one of :data:`HELPER_KINDS`.

    ``k`` is the window timestep (1-based; ``"*"`` with ``rtg`` means every timestep); ``values`` holds
    ``rtg``, ``action``, ``x``, ``y``, ``object``, ``colour``, ``state`` and ``direction`` as the
    browser sends them. A missing or bad value is an :class:`InputError`.
    """
    if kind == "rtg":
        try:
            value = float(values.get("rtg"))
        except (TypeError, ValueError):
            value = math.nan
        if not math.isfinite(value) or isinstance(values.get("rtg"), bool):
            raise InputError("type a finite return-to-go value")
        step = None if k == "*" else _real_timestep(k, context_len)
        return [str(SetRTG(step, value))]
    k = _real_timestep(None if k == "*" else k, context_len)
    if kind == "action":
        if values.get("action") not in ACTION_NAMES:
            raise InputError("choose the action to put in")
        return [str(SetAction(k, ACTION_NAMES.index(values["action"])))]
    if kind == "direction":
        if values.get("direction") not in DIRECTION_NAMES:
            raise InputError("choose the direction the agent should face")
        return [str(SetDirection(k, DIRECTION_NAMES.index(values["direction"])))]
    if kind == "cell":
        x, y = values.get("x"), values.get("y")
        if x is None or y is None:
            raise InputError("choose the cell's x and y")
        out = []
        for field, names in (("object", OBJECT_NAMES), ("colour", COLOR_NAMES), ("state", STATE_NAMES)):
            name = values.get(field)
            if name is not None:
                out.append(str(SetCell(k, int(x), int(y), field, names.index(name))))
        if not out:
            raise InputError("choose an object, a colour or a state for the cell")
        return out
    raise ValueError(f"unknown helper kind {kind!r}")


def append_lines(text: str | None, lines: list[str]) -> str:
    """``text`` with ``lines`` added at the end, one per line."""
    kept = (text or "").rstrip("\n")
    return "\n".join([kept, *lines] if kept else lines)


# ------------------------------------------------------------------ predictions


def predict_before_after(
    entry: ModelEntry, inputs: DTInputs, edits: list[Edit]
) -> tuple[np.ndarray, np.ndarray | None, DTInputs | None]:
    """Action distributions at the window's last state: clean, and with ``edits`` (None without edits).

    Plain forward passes under the model's lock (this view refreshes on every play step, even while its
    tab is hidden, so it never builds an activation cache; the Analyses tab does that on demand).
    Returns ``(before [A], after [A] | None, edited inputs | None)``; an edit that does not fit the
    window is an :class:`~dtinterp.interp.edits.EditError`.
    """
    edited = apply_edits(inputs, edits, entry.checkpoint.rtg_scale) if edits else None
    with entry.lock, torch.inference_mode():
        before = torch.softmax(entry.model(inputs)[0, -1].float(), -1).cpu().numpy()
        after = (
            None if edited is None else torch.softmax(entry.model(edited)[0, -1].float(), -1).cpu().numpy()
        )
    return before, after, edited


def changed_tokens(clean: DTInputs, edited: DTInputs) -> list[bool]:
    """For each token ``R1, S1, A1, ...`` of a batch-1 window: does the edited window differ there?

    A timestep edit moves the time embedding of all three tokens of its timestep.
    """
    out = []
    for k in range(clean.context_len):
        t = bool(clean.timesteps[0, k] != edited.timesteps[0, k])
        r = bool(clean.rtg[0, k] != edited.rtg[0, k])
        s = bool(
            (clean.obs[0, k] != edited.obs[0, k]).any() or clean.directions[0, k] != edited.directions[0, k]
        )
        a = bool(clean.actions[0, k] != edited.actions[0, k])
        out += [r or t, s or t, a or t]
    return out[:-1]  # the last action is predicted, not a token


def _pov(obs: np.ndarray, direction: int) -> str | None:
    try:
        return pov_image(obs, direction)
    except ValueError:  # an edited grid minigrid cannot draw (e.g. two agents)
        return None


def replay_view(
    entry: ModelEntry, episode: Episode | None, step: Any, edits_text: str | None
) -> dict[str, Any]:
    """Everything the tab shows for ``step`` of ``episode`` with the edits in ``edits_text``.

    Keys: ``step`` (int or None), ``before``/``after`` (distributions or None), ``edits`` (the applied
    edits as strings), ``tokens`` (dicts of :func:`dash_app.widgets.window_tokens`, edited values and
    an ``edited`` flag), ``timesteps`` (the helper's ``(k, label)`` choices), ``pov``/``pov_edited``
    (PNG data URIs), ``grid`` (W, H), ``applied`` (the edits parsed and fit the window) and ``message``.
    Bad edits leave the window unedited (``before`` is still shown) and say why in ``message``; a bad
    step fills ``message`` only.
    """
    view: dict[str, Any] = {
        "step": None,
        "before": None,
        "after": None,
        "edits": [],
        "tokens": [],
        "timesteps": [],
        "pov": None,
        "pov_edited": None,
        "grid": None,
        "applied": False,
        "message": "",
    }
    if episode is None:
        return view
    try:
        step = episode.n_obs - 1 if step is None else int(step)
        if not 0 <= step < episode.n_obs:
            raise InputError(f"step {step} out of range 0..{episode.n_obs - 1}")
        view["step"] = step
        view["grid"] = tuple(int(s) for s in episode.obs.shape[1:3])
        view["pov"] = _pov(episode.obs[step], int(episode.directions[step]))
        inputs = episode.window(entry.checkpoint, step)
        K = inputs.context_len
        view["timesteps"] = [
            (k + 1, f"{k + 1} (step {int(inputs.timesteps[0, k])})")
            for k in range(K)
            if bool(inputs.pad_mask[0, k])
        ]
        tokens = window_tokens(inputs, entry.checkpoint.rtg_scale)
        view["tokens"] = [{**t, "edited": False} for t in tokens]
        try:
            edits = parse_edits(edits_text)
            before, after, edited = predict_before_after(entry, inputs, edits)
        except EditError as exc:  # the edits do not fit this window: show it unedited, say why
            view["message"] = f"Edits not applied: {exc}"
            before, after, edited = predict_before_after(entry, inputs, [])
            edits = None
        view["before"], view["after"] = before, after
        view["applied"] = edits is not None
        view["edits"] = [str(e) for e in edits or []]
        if edited is not None:
            flags = changed_tokens(inputs, edited)
            new_tokens = window_tokens(edited, entry.checkpoint.rtg_scale)
            view["tokens"] = [
                {**new, "edited": flag, "clean_value": old["value"]}
                for old, new, flag in zip(tokens, new_tokens, flags)
            ]
            if flags[-1]:  # the last state was edited: show what the model now sees
                view["pov_edited"] = _pov(edited.obs[0, -1].numpy(), int(edited.directions[0, -1]))
    except (DtinterpError, EnvSpecError) as exc:
        view["message"] = str(exc)
    return view


# ------------------------------------------------------------------ layout


def _dropdown(id_: str, names: tuple[str, ...], placeholder: str, width: str = "130px") -> dcc.Dropdown:
    return dcc.Dropdown(
        id=id_,
        options=[{"label": n, "value": n} for n in names],
        placeholder=placeholder,
        style={"width": width},
    )


def _add_button(kind: str, text: str) -> html.Button:
    return html.Button(text, id={"type": ids.REPLAY_HELPER_ADD, "kind": kind}, n_clicks=0)


def _helpers() -> html.Div:
    return html.Div(
        [
            html.Div(
                [
                    html.Label("Timestep k of the window"),
                    dcc.Dropdown(
                        id=ids.REPLAY_HELPER_TOKEN, options=[], placeholder="k", style={"width": "150px"}
                    ),
                ],
                className="controls-row",
            ),
            html.Div(
                [
                    html.Label("Return-to-go R_k"),
                    dcc.Input(
                        id=ids.REPLAY_HELPER_RTG, type="number", step="any", value=1.0, className="num-input"
                    ),
                    _add_button("rtg", "Add RTG edit"),
                    html.Span("(no timestep: every R token)", className="hint"),
                ],
                className="controls-row",
            ),
            html.Div(
                [
                    html.Label("Action A_k"),
                    _dropdown(ids.REPLAY_HELPER_ACTION, ACTION_NAMES, "action"),
                    _add_button("action", "Add action edit"),
                ],
                className="controls-row",
            ),
            html.Div(
                [
                    html.Label("Cell of S_k"),
                    dcc.Dropdown(
                        id=ids.REPLAY_HELPER_X, options=[], placeholder="x", style={"width": "80px"}
                    ),
                    dcc.Dropdown(
                        id=ids.REPLAY_HELPER_Y, options=[], placeholder="y", style={"width": "80px"}
                    ),
                    _dropdown(ids.REPLAY_HELPER_OBJECT, OBJECT_NAMES, "object"),
                    _dropdown(ids.REPLAY_HELPER_COLOR, COLOR_NAMES, "colour", "110px"),
                    _dropdown(ids.REPLAY_HELPER_STATE, STATE_NAMES, "state", "110px"),
                    _add_button("cell", "Add cell edit"),
                ],
                className="controls-row",
            ),
            html.Div(
                [
                    html.Label("Agent direction in S_k"),
                    _dropdown(ids.REPLAY_HELPER_DIRECTION, DIRECTION_NAMES, "direction"),
                    _add_button("direction", "Add direction edit"),
                ],
                className="controls-row",
            ),
        ],
        className="replay-helpers",
    )


def layout() -> html.Div:
    """The Replay & interventions tab's components."""
    return html.Div(
        [
            dcc.Store(id=ids.REPLAY_PLAYED_STORE, data=None, storage_type="memory"),
            html.H4("Trajectory"),
            html.Div(
                [
                    dcc.Upload(
                        html.Button("Upload trajectory .npz"),
                        id=ids.REPLAY_UPLOAD,
                        accept=".npz",
                        multiple=False,
                    ),
                    html.Span("or dataset on the server", className="hint"),
                    dcc.Input(
                        id=ids.REPLAY_DATASET_PATH,
                        type="text",
                        placeholder="path/to/dataset.npz",
                        className="path-input",
                    ),
                    html.Label(
                        ["episode ", dcc.Input(id=ids.REPLAY_EPISODE, type="text", value="0", size="5")]
                    ),
                    html.Button("Load episode", id=ids.REPLAY_LOAD_DATASET, n_clicks=0),
                    html.Button("Use the played episode", id=ids.REPLAY_USE_PLAYED, n_clicks=0),
                    html.Button("Save trajectory .npz", id=ids.REPLAY_SAVE_BUTTON, n_clicks=0),
                    dcc.Download(id=ids.REPLAY_DOWNLOAD),
                ],
                className="controls-row",
            ),
            html.Div(id=ids.REPLAY_SOURCE_INFO, className="status-line"),
            html.Div(id=ids.REPLAY_MESSAGE, className="tab-message", role="alert"),
            html.H4("Step (the window ends here; its action is the one predicted)"),
            step_slider(ids.REPLAY_STEP_SLIDER),
            token_legend(),
            html.Div(id=ids.REPLAY_TOKENS, className="token-strip"),
            html.Div(
                [
                    html.Div(
                        [
                            html.H4("Edits (one per line)"),
                            dcc.Textarea(
                                id=ids.REPLAY_EDITS_TEXT,
                                value="",
                                placeholder="R3=0.5\nA2=forward\nS4[3,6].object=key\nS4.direction=left\nT3=10",
                                className="edits-text",
                                style={"width": "100%", "height": "120px", "fontFamily": "monospace"},
                            ),
                            html.Div(
                                [
                                    html.Button("Apply edits", id=ids.REPLAY_EDIT_APPLY, n_clicks=0),
                                    html.Button("Clear edits", id=ids.REPLAY_EDIT_CLEAR, n_clicks=0),
                                ],
                                className="controls-row",
                            ),
                            _helpers(),
                            html.Div(id=ids.REPLAY_EDITS_LIST, className="edits-list"),
                        ],
                        className="replay-edit-column",
                    ),
                    html.Div(
                        [
                            action_chart_box(
                                ids.REPLAY_PROBS_GRAPH,
                                ACTION_NAMES,
                                title="Predicted action at the last state",
                            ),
                            html.Div(
                                [
                                    html.Img(id=ids.REPLAY_POV_IMG, alt="agent view"),
                                    html.Img(id=ids.REPLAY_POV_EDITED_IMG, alt="", style={"display": "none"}),
                                ],
                                className="frames-row",
                            ),
                            html.P(
                                "The agent's view at this step (the window's last state) and, when the edits "
                                "change that state, what the model sees instead.",
                                className="hint",
                            ),
                        ],
                        className="replay-result-column",
                    ),
                ],
                className="replay-columns",
            ),
        ]
    )


def _edits_list(edits: list[str]) -> Any:
    if not edits:
        return html.P("No edits applied: before and after are the same window.", className="hint")
    return [html.B(f"Applied edits ({len(edits)}):"), html.Ul([html.Li(html.Code(e)) for e in edits])]


# ------------------------------------------------------------------ callbacks


def register(app: Dash) -> None:
    """The Replay tab's callbacks: loading, the view (only while the tab is shown), saving."""

    @app.callback(
        Output(ids.TRAJ_STORE, "data", allow_duplicate=True),
        Output(ids.REPLAY_PLAYED_STORE, "data"),
        Output(ids.REPLAY_MESSAGE, "children", allow_duplicate=True),
        Output(ids.REPLAY_UPLOAD, "contents"),
        Input(ids.REPLAY_UPLOAD, "contents"),
        Input(ids.REPLAY_LOAD_DATASET, "n_clicks"),
        Input(ids.REPLAY_USE_PLAYED, "n_clicks"),
        State(ids.REPLAY_UPLOAD, "filename"),
        State(ids.REPLAY_DATASET_PATH, "value"),
        State(ids.REPLAY_EPISODE, "value"),
        State(ids.MODEL_STORE, "data"),
        State(ids.TRAJ_STORE, "data"),
        State(ids.REPLAY_PLAYED_STORE, "data"),
        prevent_initial_call=True,
    )
    def _load(upload, _n_load, _n_played, filename, path, episode, model, data, played):
        if ctx.triggered_id == ids.REPLAY_UPLOAD and not upload:
            return no_update, no_update, no_update, no_update  # the reset of the upload below
        try:
            current = load_episode(data)
        except DtinterpError:
            current = None
        new, keep, message = load_event(
            ctx.triggered_id, model, current, played, upload, filename, path, episode
        )
        return (no_update if new is None else new.to_json()), keep, message, None

    @app.callback(
        Output(ids.REPLAY_STEP_SLIDER, "max"),
        Output(ids.REPLAY_STEP_SLIDER, "value"),
        Output(ids.REPLAY_SOURCE_INFO, "children"),
        Output(ids.REPLAY_EDITS_TEXT, "value"),
        Output(ids.REPLAY_PROBS_GRAPH, "src"),
        Output(ids.REPLAY_EDITS_LIST, "children"),
        Output(ids.REPLAY_TOKENS, "children"),
        Output(ids.REPLAY_POV_IMG, "src"),
        Output(ids.REPLAY_POV_EDITED_IMG, "src"),
        Output(ids.REPLAY_POV_EDITED_IMG, "style"),
        Output(ids.REPLAY_HELPER_TOKEN, "options"),
        Output(ids.REPLAY_HELPER_X, "options"),
        Output(ids.REPLAY_HELPER_Y, "options"),
        Output(ids.STEP_STORE, "data"),
        Output(ids.EDITS_STORE, "data"),
        Output(ids.REPLAY_MESSAGE, "children", allow_duplicate=True),
        Input(ids.REPLAY_STEP_SLIDER, "value"),
        Input(ids.REPLAY_EDIT_APPLY, "n_clicks"),
        Input(ids.REPLAY_EDIT_CLEAR, "n_clicks"),
        Input({"type": ids.REPLAY_HELPER_ADD, "kind": ALL}, "n_clicks"),
        Input(ids.REPLAY_SHOWN_EPISODE, "data"),
        Input(ids.MODEL_STORE, "data"),
        State(ids.REPLAY_STEP_SLIDER, "max"),
        State(ids.REPLAY_EDITS_TEXT, "value"),
        State(ids.REPLAY_HELPER_TOKEN, "value"),
        State(ids.REPLAY_HELPER_RTG, "value"),
        State(ids.REPLAY_HELPER_ACTION, "value"),
        State(ids.REPLAY_HELPER_X, "value"),
        State(ids.REPLAY_HELPER_Y, "value"),
        State(ids.REPLAY_HELPER_OBJECT, "value"),
        State(ids.REPLAY_HELPER_COLOR, "value"),
        State(ids.REPLAY_HELPER_STATE, "value"),
        State(ids.REPLAY_HELPER_DIRECTION, "value"),
        prevent_initial_call="initial_duplicate",
    )
    def _view(
        step,
        _apply,
        _clear,
        _adds,
        data,
        model,
        shown_max,
        text,
        k,
        rtg,
        action,
        x,
        y,
        obj,
        colour,
        state,
        direction,
    ):
        # REPLAY_SHOWN_EPISODE is the page's episode, handed over only while this tab is shown.
        event = ctx.triggered_id
        try:
            episode = load_episode(data)
            entry = model_entry(model)
        except DtinterpError as exc:
            return 0, 0, str(exc), *(no_update,) * 12, str(exc)
        last = 0 if episode is None else episode.n_obs - 1
        if event == ids.MODEL_STORE or step is None or step > last or shown_max != last:
            step = last  # a new episode: look at its latest step
        helper_message = ""
        if event == ids.REPLAY_EDIT_CLEAR:
            text = ""
        elif isinstance(event, dict) and event.get("type") == ids.REPLAY_HELPER_ADD and any(_adds):
            values = {
                "rtg": rtg,
                "action": action,
                "x": x,
                "y": y,
                "object": obj,
                "colour": colour,
                "state": state,
                "direction": direction,
            }
            try:
                text = append_lines(
                    text,
                    helper_edits(
                        event["kind"], "*" if k is None else k, values, entry.checkpoint.context_len
                    ),
                )
            except (DtinterpError, EnvSpecError) as exc:
                helper_message = str(exc)
        v = replay_view(entry, episode, step, text)
        timestep_opts = [{"label": "all (R only)", "value": "*"}] + [
            {"label": label, "value": k_} for k_, label in v["timesteps"]
        ]
        W, H = v["grid"] or (0, 0)
        chart = action_chart(
            entry.checkpoint.action_names,
            v["before"],
            v["after"],
            title="Predicted action at the last state"
            + ("" if v["after"] is None else ": before and after the edits"),
            note="no episode" if episode is None else "",
        )
        return (
            last,
            step,
            source_text(episode),
            text,
            chart,
            _edits_list(v["edits"]) if v["applied"] else html.P("No edits applied.", className="hint"),
            token_chips(v["tokens"]),
            v["pov"],
            v["pov_edited"],
            {} if v["pov_edited"] else {"display": "none"},
            timestep_opts,
            list(range(W)),
            list(range(H)),
            v["step"],
            v["edits"],
            helper_message or v["message"],
        )

    @app.callback(
        Output(ids.REPLAY_DOWNLOAD, "data"),
        Output(ids.REPLAY_MESSAGE, "children", allow_duplicate=True),
        Input(ids.REPLAY_SAVE_BUTTON, "n_clicks"),
        State(ids.TRAJ_STORE, "data"),
        prevent_initial_call=True,
    )
    def _save(_n, data):
        try:
            episode = load_episode(data)
            payload = episode_npz_bytes(episode)
        except (DtinterpError, EnvSpecError) as exc:
            return no_update, f"Not saved: {exc}"
        return dcc.send_bytes(payload, save_filename(episode)), ""


__all__ = [
    "HELPER_KINDS",
    "append_lines",
    "changed_tokens",
    "episode_npz_bytes",
    "helper_edits",
    "layout",
    "load_dataset_episode",
    "load_event",
    "load_upload",
    "parse_edits",
    "predict_before_after",
    "register",
    "replay_view",
    "save_filename",
    "source_text",
]
