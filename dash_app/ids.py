"""Every component id of the app, defined once and imported by the modules that use them.

Ids are grouped by the part of the page they belong to. A module reads or writes another module's
component only through the constants here, so renaming an id is a one-line change. Pattern-matching
ids are dicts whose ``"type"`` is one of the ``*_TYPE`` constants below.

Shared stores (every tab may read them):

- ``SESSION_STORE``: a uuid per browser tab, the key of every server-side per-user cache entry.
- ``MODEL_STORE``: the key of the model the page works with (a shipped name or a checkpoint path).
- ``TRAJ_STORE``: the current episode as ``Episode.to_json()`` (``dtinterp.data.episode``), written by Play
  and Replay.
- ``STEP_STORE``: the step of the current trajectory that Replay and Analyses look at (int).
- ``EDITS_STORE``: the Replay tab's token edits as a list of edit strings (``dtinterp.interp.edits``).

Several callbacks write ``TRAJ_STORE.data`` and ``MESSAGE.children``. The primary writers are the Play
tab's event callback (``TRAJ_STORE``; it also runs on page load to start an episode) and the top bar's
model chooser (``MESSAGE``); every other writer declares ``Output(..., allow_duplicate=True)`` with
``prevent_initial_call=True``.
"""

from __future__ import annotations

from envs.encoding import ACTION_NAMES

# ------------------------------------------------------------------ shared stores and page frame
SESSION_STORE = "session-store"
#: The episode as each tab sees it: a copy of ``TRAJ_STORE`` made in the browser only while that tab is
#: shown (and when it is opened), so hidden tabs send no requests and compute nothing.
HISTORY_SHOWN_EPISODE = "history-shown-episode"
REPLAY_SHOWN_EPISODE = "replay-shown-episode"
ANALYSES_SHOWN_EPISODE = "analyses-shown-episode"
MODEL_STORE = "model-store"
#: The tabs whose panels are in the page (Play from the start, any other once opened), a list of tab values.
MOUNTED_TABS_STORE = "mounted-tabs-store"
TRAJ_STORE = "traj-store"
STEP_STORE = "step-store"
EDITS_STORE = "edits-store"

#: Global message area for errors and notices (any callback may write it, with allow_duplicate).
MESSAGE = "message"
TABS = "tabs"
#: ``value`` of each tab in ``TABS``.
TAB_PLAY = "tab-play"
TAB_HISTORY = "tab-history"
TAB_REPLAY = "tab-replay"
TAB_ANALYSES = "tab-analyses"
#: The content panel of each tab; all stay in the page (hidden when not selected) so every callback's
#: components always exist.
PANEL_PLAY = "panel-play"
PANEL_HISTORY = "panel-history"
PANEL_REPLAY = "panel-replay"
PANEL_ANALYSES = "panel-analyses"

# ------------------------------------------------------------------ top bar: model chooser and info
MODEL_DROPDOWN = "model-dropdown"
MODEL_PATH_INPUT = "model-path-input"
MODEL_LOAD_BUTTON = "model-load-button"
MODEL_INFO = "model-info"
MODEL_CARD = "model-card"
#: The card's "Model card" toggle, and the box its Markdown (``MODEL_CARD``) is drawn into when opened.
MODEL_CARD_SUMMARY = "model-card-summary"
MODEL_CARD_BOX = "model-card-box"

# ------------------------------------------------------------------ Play tab
PLAY_WORLD_IMG = "play-world-img"
PLAY_POV_IMG = "play-pov-img"
PLAY_TARGET_RTG = "play-target-rtg"
PLAY_SEED = "play-seed"
PLAY_RESET = "play-reset"
PLAY_DT_STEP = "play-dt-step"
PLAY_DT_RUN = "play-dt-run"
PLAY_PROBS_GRAPH = "play-probs-graph"
PLAY_STATUS = "play-status"
PLAY_BANNER = "play-banner"
PLAY_MESSAGE = "play-message"
PLAY_ACTIONS_ROW = "play-actions-row"
#: The keyboard help under the action buttons (only the env's own actions).
PLAY_KEYS_HINT = "play-keys-hint"
#: The intervention (ablation or steering) the DT plays with, one line (``dtinterp.interp.interventions``).
PLAY_INTERVENTION = "play-intervention"


def play_action_button(action: int | str) -> str:
    """Id of the Play tab's button for an action (by id or name), e.g. ``"play-action-forward"``.

    The keyboard script (``assets/keyboard.js``) clicks these buttons by id.
    """
    name = ACTION_NAMES[action] if isinstance(action, int) else action
    if name not in ACTION_NAMES:
        raise ValueError(f"unknown action {action!r}; expected one of {ACTION_NAMES}")
    return f"play-action-{name}"


#: The action buttons' ids in action-id order (one per MiniGrid action; the env's own are shown).
PLAY_ACTION_BUTTONS: tuple[str, ...] = tuple(play_action_button(i) for i in range(len(ACTION_NAMES)))

# ------------------------------------------------------------------ History tab
HISTORY_SLIDER = "history-slider"
HISTORY_WORLD_IMG = "history-world-img"
HISTORY_POV_IMG = "history-pov-img"
HISTORY_NOTE = "history-note"
HISTORY_STEP_INFO = "history-step-info"
HISTORY_TOKENS = "history-tokens"
#: The model's action distribution at the shown step (History tab).
HISTORY_PROBS_GRAPH = "history-probs-graph"
#: Autoplay: the play/pause button and the timer that advances the slider.
HISTORY_AUTOPLAY = "history-autoplay"
HISTORY_TIMER = "history-timer"

# ------------------------------------------------------------------ Replay & interventions tab
REPLAY_UPLOAD = "replay-upload"
REPLAY_DATASET_PATH = "replay-dataset-path"
REPLAY_EPISODE = "replay-episode"
REPLAY_LOAD_DATASET = "replay-load-dataset"
REPLAY_USE_PLAYED = "replay-use-played"
REPLAY_SOURCE_INFO = "replay-source-info"
REPLAY_STEP_SLIDER = "replay-step-slider"
REPLAY_POV_IMG = "replay-pov-img"
REPLAY_TOKENS = "replay-tokens"
REPLAY_EDITS_TEXT = "replay-edits-text"
REPLAY_EDIT_APPLY = "replay-edit-apply"
REPLAY_EDIT_CLEAR = "replay-edit-clear"
REPLAY_HELPER_TOKEN = "replay-helper-token"
REPLAY_HELPER_RTG = "replay-helper-rtg"
REPLAY_HELPER_ACTION = "replay-helper-action"
REPLAY_HELPER_X = "replay-helper-x"
REPLAY_HELPER_Y = "replay-helper-y"
REPLAY_HELPER_OBJECT = "replay-helper-object"
REPLAY_HELPER_COLOR = "replay-helper-color"
#: Pattern-matching type of the helper rows' add buttons: ``{"type": REPLAY_HELPER_ADD, "kind": k}``
#: with ``k`` one of ``rtg``, ``action``, ``cell``, ``direction``.
REPLAY_HELPER_ADD = "replay-helper-add"
REPLAY_SAVE_BUTTON = "replay-save-button"
REPLAY_DOWNLOAD = "replay-download"
REPLAY_MESSAGE = "replay-message"
#: The grouped before/after bar chart of the predicted action (Replay tab).
REPLAY_PROBS_GRAPH = "replay-probs-graph"
#: The list of edits applied to the window (Replay tab).
REPLAY_EDITS_LIST = "replay-edits-list"
#: The agent's view of the window's last state with the edits applied (cell/direction edits).
REPLAY_POV_EDITED_IMG = "replay-pov-edited-img"
REPLAY_HELPER_STATE = "replay-helper-state"
REPLAY_HELPER_DIRECTION = "replay-helper-direction"
#: The last played trajectory, kept while a file or dataset episode replaces it (``REPLAY_USE_PLAYED``).
REPLAY_PLAYED_STORE = "replay-played-store"

# ------------------------------------------------------------------ Analyses tab
ANALYSES_CATEGORY = "analyses-category"
ANALYSIS_SELECT = "analysis-select"
ANALYSIS_DESCRIPTION = "analysis-description"
ANALYSIS_PARAMS = "analysis-params"
#: Pattern-matching type of a plugin parameter control: ``{"type": ANALYSIS_PARAM_TYPE, "plugin": id,
#: "name": param_name}``.
ANALYSIS_PARAM_TYPE = "analysis-param"
ANALYSIS_USE_EDITS = "analysis-use-edits"
ANALYSIS_RUN = "analysis-run"
ANALYSIS_CANCEL = "analysis-cancel"
ANALYSIS_PROGRESS = "analysis-progress"
ANALYSIS_STATUS = "analysis-status"
ANALYSIS_SUMMARY = "analysis-summary"
ANALYSIS_FIGURES = "analysis-figures"
ANALYSIS_RESULT_STORE = "analysis-result-store"
ANALYSIS_DOWNLOAD_HTML_BUTTON = "analysis-download-html-button"
ANALYSIS_DOWNLOAD_JSON_BUTTON = "analysis-download-json-button"
ANALYSIS_DOWNLOAD = "analysis-download"
ANALYSIS_BROKEN = "analysis-broken"
ANALYSIS_MESSAGE = "analysis-message"
#: Which windows an analysis runs on: the selected step, or every step of the episode.
ANALYSIS_WINDOWS = "analysis-windows"
#: What the run will use (model, step, edits), shown beside the Run button.
ANALYSIS_TARGET_INFO = "analysis-target-info"
#: Pattern-matching type of each result figure: ``{"type": ANALYSIS_FIGURE_TYPE, "index": i}``.
ANALYSIS_FIGURE_TYPE = "analysis-figure"
#: The buttons of the Play-tab interventions a result suggests (``PlayIntervention``), one per suggestion:
#: ``{"type": ANALYSIS_INTERVENTION_TYPE, "index": i}``; a click fills in ``PLAY_INTERVENTION`` and shows Play.
ANALYSIS_INTERVENTIONS = "analysis-interventions"
ANALYSIS_INTERVENTION_TYPE = "analysis-intervention"

# ------------------------------------------------------------------ Circuit tab
TAB_CIRCUIT = "tab-circuit"
PANEL_CIRCUIT = "panel-circuit"
#: The episode as the Circuit tab sees it (a gate like ``HISTORY_SHOWN_EPISODE``).
CIRCUIT_SHOWN_EPISODE = "circuit-shown-episode"
#: How edges are scored (eap, eap-ig, exact), the integrated-gradients steps, the pair and the metric.
CIRCUIT_METHOD = "circuit-method"
CIRCUIT_IG_STEPS = "circuit-ig-steps"
CIRCUIT_PAIR = "circuit-pair"
CIRCUIT_METRIC = "circuit-metric"
CIRCUIT_SCORE = "circuit-score"
CIRCUIT_SCORE_STATUS = "circuit-score-status"
#: What scoring and ablating will use (model, step, pair rule, edits), shown beside the Score button.
CIRCUIT_TARGET_INFO = "circuit-target-info"
#: The scores of the last scoring run (``CircuitScores.to_json()`` plus the model key and timing).
CIRCUIT_SCORES_STORE = "circuit-scores-store"
CIRCUIT_SUMMARY = "circuit-summary"
#: The graph (dash-cytoscape), how many edges it shows, and what clicking a node does.
CIRCUIT_GRAPH = "circuit-graph"
CIRCUIT_TOP_N = "circuit-top-n"
CIRCUIT_CLICK_MODE = "circuit-click-mode"
#: The side panel: the clicked node's or edge's scores and figure.
CIRCUIT_DETAILS = "circuit-details"
CIRCUIT_DETAILS_GRAPH = "circuit-details-graph"
#: The ablated nodes (a checklist of every node; clicks in toggle mode change it), the ablation kind,
#: the quick rollout's episodes and first seed, and the Clear button.
CIRCUIT_ABLATED = "circuit-ablated"
CIRCUIT_ABLATION = "circuit-ablation"
CIRCUIT_EPISODES = "circuit-episodes"
CIRCUIT_SEED = "circuit-seed"
CIRCUIT_CLEAR = "circuit-clear"
CIRCUIT_ABLATE_STATUS = "circuit-ablate-status"
#: What ablating the nodes did: the metric, faithfulness and the quick rollout, and exactly what ran.
CIRCUIT_RESULT = "circuit-result"
CIRCUIT_MESSAGE = "circuit-message"
