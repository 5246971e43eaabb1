"""Browser tests of what a researcher trying the app found (each would have caught its problem).

- an analysis states exactly what it ran on, and a new analysis never inherits another one's choices;
- the model card's images load;
- Reset right after typing a target return resets (no Enter needed);
- History plays itself, shows the action probabilities at every step, and a reload keeps the episode;
- the end of an episode keeps the chart labelled with the env's actions, and the key help lists only them;
- the Replay slider's value never covers the token strip;
- cancelling a run says so, and so does a run whose worker process dies.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

import dash_app.analyses
from dash_app import ids
from tests.app.pages import (
    By,
    bar_probs,
    by_id,
    chart_title,
    choose_option,
    click,
    graph_traces,
    history_step,
    move_slider,
    open_app,
    play_dt_episode,
    select_tab,
    status_step,
    text,
    type_into,
    wait_for,
)
from tests.app.reference import greedy_episode, step_probs

pytestmark = pytest.mark.usefixtures("app_server")


def test_an_analysis_states_what_it_ran_on_and_never_inherits_choices(browser):
    play_dt_episode(browser)
    select_tab(browser, ids.TAB_REPLAY)
    move_slider(browser, ids.REPLAY_STEP_SLIDER, 3)
    type_into(browser, ids.REPLAY_EDITS_TEXT, "R*=0", submit=False)
    click(browser, ids.REPLAY_EDIT_APPLY)
    select_tab(browser, ids.TAB_ANALYSES)
    choose_option(browser, ids.ANALYSIS_SELECT, "residual-norms")
    # Another analysis' choices: the edited windows of every step ...
    by_id(browser, ids.ANALYSIS_USE_EDITS).find_elements(By.CSS_SELECTOR, "input")[1].click()
    by_id(browser, ids.ANALYSIS_WINDOWS).find_elements(By.CSS_SELECTOR, "input")[1].click()
    wait_for(browser, lambda d: "every taken step" in text(d, ids.ANALYSIS_TARGET_INFO), "the windows choice")
    # ... are reset when another analysis is picked: it runs on the clean window at the Replay step.
    choose_option(browser, ids.ANALYSIS_SELECT, "kurtosis")
    wait_for(browser, lambda d: "step 3 of a" in text(d, ids.ANALYSIS_TARGET_INFO), "the target line")
    assert "clean windows" in text(browser, ids.ANALYSIS_TARGET_INFO)
    click(browser, ids.ANALYSIS_RUN)
    ran_on = wait_for(
        browser, lambda d: next(iter(d.find_elements(By.CSS_SELECTOR, ".ran-on")), None), "the run", 60
    )
    assert "the clean windows" in ran_on.text and "steps: 3" in ran_on.text and "edits: none" in ran_on.text


def test_model_card_images_load(browser):
    assert not browser.find_elements(By.ID, ids.MODEL_CARD)  # drawn when first opened
    click(browser, ids.MODEL_CARD_SUMMARY)
    images = wait_for(
        browser, lambda d: by_id(d, ids.MODEL_CARD).find_elements(By.TAG_NAME, "img"), "the card's images"
    )
    for img in images:
        wait_for(
            browser,
            lambda d, i=img: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", i),
            f"image {img.get_attribute('src')}",
        )
        assert "/model-card/" in img.get_attribute("src")


def test_reset_right_after_typing_a_target_return(browser):
    click(browser, ids.PLAY_DT_STEP)
    wait_for(browser, lambda d: status_step(d) == 1, "one DT step")
    type_into(browser, ids.PLAY_TARGET_RTG, "0", submit=False)  # typed, not submitted
    click(browser, ids.PLAY_RESET)
    wait_for(browser, lambda d: status_step(d) == 0 and "(target 0)" in text(d, ids.PLAY_STATUS), "the reset")


def test_history_autoplays_with_probabilities_and_survives_a_reload(browser, app_server):
    episode = play_dt_episode(browser)
    select_tab(browser, ids.TAB_HISTORY)
    move_slider(browser, ids.HISTORY_SLIDER, 0)
    click(browser, ids.HISTORY_AUTOPLAY)
    wait_for(browser, lambda d: history_step(d) == episode.length - 1, "autoplay to reach the end", 30)
    assert "Play" in text(browser, ids.HISTORY_AUTOPLAY)  # it stopped there
    want = step_probs(episode, episode.length - 1)
    wait_for(browser, lambda d: bar_probs(d, ids.HISTORY_PROBS_GRAPH) is not None, "the probabilities")
    shown = bar_probs(browser, ids.HISTORY_PROBS_GRAPH)
    assert max(shown, key=shown.get) == max(want, key=want.get)
    browser.refresh()  # the episode lives in the tab's session storage
    wait_for(browser, lambda d: status_step(d) == episode.length, "the restored episode")
    open_app(browser, app_server)  # a fresh session again for the next test


def test_end_of_episode_keeps_the_env_actions_on_the_chart_and_in_the_key_help(browser):
    episode = play_dt_episode(browser)
    traces = wait_for(browser, lambda d: graph_traces(d, ids.PLAY_PROBS_GRAPH), "the chart")
    assert list(traces[0]["x"]) == ["left", "right", "forward", "pickup", "drop", "toggle", "done"]
    assert "Last decision" in chart_title(browser, ids.PLAY_PROBS_GRAPH)
    assert "Episode over" in text(browser, ids.PLAY_BANNER)
    assert greedy_episode(0).length == episode.length
    hint = text(browser, ids.PLAY_KEYS_HINT)
    assert "p pickup" in hint and "t toggle" in hint  # Memory has all 7 actions


def test_replay_slider_value_never_covers_the_tokens(browser):
    play_dt_episode(browser)
    select_tab(browser, ids.TAB_REPLAY)
    move_slider(browser, ids.REPLAY_STEP_SLIDER, 2)
    box = browser.execute_script(
        "var t = document.querySelector('#' + arguments[0] + ' .dash-slider-tooltip');"
        "var n = document.querySelector('#' + arguments[0] + ' input[type=number]');"
        "var s = document.getElementById(arguments[1]);"
        "return [t.getBoundingClientRect().bottom, n.getBoundingClientRect().bottom, s.getBoundingClientRect().top];",
        ids.REPLAY_STEP_SLIDER,
        ids.REPLAY_TOKENS,
    )
    tooltip_bottom, value_box_bottom, tokens_top = box
    assert tooltip_bottom <= tokens_top and value_box_bottom <= tokens_top, box
    chips = by_id(browser, ids.REPLAY_TOKENS).find_elements(By.CSS_SELECTOR, ".token")
    assert chips and all(c.is_displayed() for c in chips)


def _slow_run(*_args, **_kwargs):
    time.sleep(60)


def _dying_run(*_args, **_kwargs):
    os.kill(os.getpid(), signal.SIGKILL)


def _run_with(browser, monkeypatch, fake) -> None:
    """Start a run on the Analyses tab whose work (in the forked worker) is ``fake``."""
    monkeypatch.setattr(dash_app.analyses, "run_in_app", fake)  # the worker is forked from this process
    play_dt_episode(browser)
    select_tab(browser, ids.TAB_ANALYSES)
    choose_option(browser, ids.ANALYSIS_SELECT, "kurtosis")
    click(browser, ids.ANALYSIS_RUN)


def test_cancelling_a_run_says_so(browser, monkeypatch):
    _run_with(browser, monkeypatch, _slow_run)
    wait_for(browser, lambda d: by_id(d, ids.ANALYSIS_CANCEL).is_enabled(), "the Cancel button")
    click(browser, ids.ANALYSIS_CANCEL)
    wait_for(browser, lambda d: by_id(d, ids.ANALYSIS_RUN).is_enabled(), "the Run button to come back")
    assert text(browser, ids.ANALYSIS_MESSAGE).startswith("Run cancelled"), text(
        browser, ids.ANALYSIS_MESSAGE
    )


def test_a_run_whose_worker_dies_says_so(browser, monkeypatch):
    _run_with(browser, monkeypatch, _dying_run)
    message = wait_for(browser, lambda d: text(d, ids.ANALYSIS_MESSAGE), "the failure message", 30)
    assert "ended without a result (killed by SIGKILL" in message, message
    assert by_id(browser, ids.ANALYSIS_RUN).is_enabled()
