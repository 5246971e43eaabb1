"""Browser tests of the Replay & interventions tab: a token edit changes the prediction; bad uploads are refused.

The before/after bars must equal the model's distributions on the clean and the edited window,
computed by the library from an independent greedy rollout of the same seed.
"""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

from dash_app import ids
from tests.app.pages import (
    Keys,
    click,
    graph_traces,
    move_slider,
    play_dt_episode,
    press_keys,
    probs_match,
    select_tab,
    status_step,
    text,
    type_into,
    upload_file,
    wait_for,
)
from tests.app.reference import decision_step, step_probs

pytestmark = pytest.mark.usefixtures("app_server")

EDIT = "R*=0"


def bars(driver) -> list[dict[str, float]]:
    """Each bar trace of the Replay chart as ``{action: probability}``, in plotting order."""
    traces = graph_traces(driver, ids.REPLAY_PROBS_GRAPH) or []
    return [
        {str(x): float(y) for x, y in zip(t["x"], t["y"])} for t in traces if t["type"] == "bar" and t["x"]
    ]


def test_rtg_edit_changes_the_prediction_at_the_decision_step(browser):
    """At the Memory agent's decision step, conditioning on R*=0 instead of its own RTG flips its choice."""
    episode = play_dt_episode(browser)
    step = decision_step(episode, EDIT)
    clean, edited = step_probs(episode, step), step_probs(episode, step, (EDIT,))
    select_tab(browser, ids.TAB_REPLAY)
    move_slider(browser, ids.REPLAY_STEP_SLIDER, step)
    wait_for(
        browser, lambda d: (b := bars(d)) and probs_match(b[0], clean), f"the clean prediction at step {step}"
    )
    type_into(browser, ids.REPLAY_EDITS_TEXT, EDIT, submit=False)
    click(browser, ids.REPLAY_EDIT_APPLY)
    wait_for(browser, lambda d: len(bars(d)) == 2, "before and after bars")
    before, after = bars(browser)
    assert probs_match(before, clean) and probs_match(after, edited), (before, after)
    assert max(before, key=before.get) != max(after, key=after.get)
    assert text(browser, ids.REPLAY_MESSAGE) == ""


def _garbage(path) -> None:
    path.write_bytes(b"this is not a zip archive\x00\x01\x02" * 10)


def _wrong_arrays(path) -> None:
    np.savez(path, weights=np.arange(10))  # a valid .npz that is no trajectory


def _truncated(path) -> None:
    np.savez(path, obs=np.zeros((3, 7, 7, 3), np.uint8), actions=np.zeros(3, np.uint8))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert not zipfile.is_zipfile(path)


@pytest.mark.parametrize("make", [_garbage, _wrong_arrays, _truncated], ids=lambda f: f.__name__[1:])
def test_corrupt_upload_shows_an_error_and_the_app_keeps_working(browser, tmp_path, make):
    """A corrupt trajectory file gets a message naming it; the current episode stays and play goes on."""
    path = tmp_path / f"corrupt-{make.__name__[1:]}.npz"
    make(path)
    select_tab(browser, ids.TAB_REPLAY)
    source = wait_for(browser, lambda d: text(d, ids.REPLAY_SOURCE_INFO), "the current trajectory's line")
    upload_file(browser, ids.REPLAY_UPLOAD, str(path))
    wait_for(browser, lambda d: path.name in text(d, ids.REPLAY_MESSAGE), "a message naming the file")
    assert text(browser, ids.REPLAY_SOURCE_INFO) == source  # the played episode is still current
    select_tab(browser, ids.TAB_PLAY)
    press_keys(browser, Keys.ARROW_LEFT)
    wait_for(browser, lambda d: status_step(d) == 1, "a play step after the bad upload")
