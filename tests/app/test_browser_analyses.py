"""Browser test of the Analyses tab: every registered analysis can be chosen, run, and shows its figures.

The list of analyses comes from the registry (never written here), so a plugin added later is tested
too. The episode is the model's own, with an RTG edit at its decision step, so analyses that compare a
clean and an edited run have their counterfactual.
"""

from __future__ import annotations

import pytest
from selenium.common.exceptions import TimeoutException

from dash_app import ids
from dtinterp.plugins.registry import get_registry
from tests.app.pages import (
    By,
    by_id,
    choose_option,
    click,
    move_slider,
    play_dt_episode,
    select_tab,
    text,
    type_into,
    wait_for,
)
from tests.app.reference import decision_step

pytestmark = pytest.mark.usefixtures("app_server")

EDIT = "R*=0"
#: Seconds one analysis may take to run in the background worker and be drawn.
RUN_TIMEOUT = 60.0

# the progress line is hidden once a run ends: read its text whether shown or not
_STAGE_JS = "var e = document.getElementById(arguments[0]); return e ? e.textContent : null;"

_TRACE_COUNTS_JS = """
return Array.from(document.getElementById(arguments[0]).querySelectorAll('.js-plotly-plot'))
    .map((gd) => (gd.data || []).length);
"""


def figures_shown(driver) -> int:
    return len(by_id(driver, ids.ANALYSIS_FIGURES).find_elements(By.CSS_SELECTOR, ".js-plotly-plot"))


def run_finished(driver, previous_summary: str) -> str | None:
    """The new summary once a run has finished and drawn its figures; None while it is running."""
    summary = text(driver, ids.ANALYSIS_SUMMARY)
    if text(driver, ids.ANALYSIS_MESSAGE):
        raise AssertionError(f"the run failed: {text(driver, ids.ANALYSIS_MESSAGE)}")
    run_enabled = by_id(driver, ids.ANALYSIS_RUN).is_enabled()
    if summary and summary != previous_summary and run_enabled and figures_shown(driver):
        return summary
    return None


def test_every_registered_analysis_runs_and_shows_its_figures(browser):
    plugin_ids = sorted(get_registry().plugins)
    assert plugin_ids, "the registry holds no analyses"
    episode = play_dt_episode(browser)
    step = decision_step(episode, EDIT)
    select_tab(browser, ids.TAB_REPLAY)
    move_slider(browser, ids.REPLAY_STEP_SLIDER, step)
    type_into(browser, ids.REPLAY_EDITS_TEXT, EDIT, submit=False)
    click(browser, ids.REPLAY_EDIT_APPLY)
    select_tab(browser, ids.TAB_ANALYSES)
    wait_for(
        browser, lambda d: EDIT in text(d, ids.ANALYSIS_TARGET_INFO), "the Replay edit to reach Analyses"
    )

    summary = text(browser, ids.ANALYSIS_SUMMARY)
    for plugin_id in plugin_ids:
        choose_option(browser, ids.ANALYSIS_SELECT, plugin_id)
        wait_for(
            browser,
            lambda d, p=plugin_id: p in text(d, ids.ANALYSIS_DESCRIPTION),
            f"{plugin_id}'s description",
        )
        click(browser, ids.ANALYSIS_RUN)
        try:
            summary = wait_for(
                browser, lambda d, s=summary: run_finished(d, s), f"{plugin_id}'s figures", RUN_TIMEOUT
            )
        except TimeoutException:
            stage = browser.execute_script(_STAGE_JS, ids.ANALYSIS_STATUS)
            state = "still running" if not by_id(browser, ids.ANALYSIS_RUN).is_enabled() else "ended unseen"
            raise AssertionError(
                f"{plugin_id} did not show its figures in {RUN_TIMEOUT:g} s ({state}; progress {stage!r})"
            ) from None
        traces = browser.execute_script(_TRACE_COUNTS_JS, ids.ANALYSIS_FIGURES)
        assert traces and min(traces) >= 1, f"{plugin_id} drew an empty figure: {traces}"
