"""Browser test of suggested interventions: a result's Play-tab buttons fill in the Play tab's intervention.

The feature dashboard on the shipped model suggests steering along its feature; clicking that button shows
the Play tab with the line filled in, and the Play tab plays with it (its chart names the intervention).
"""

from __future__ import annotations

import pytest

from dash_app import ids
from tests.app.pages import By, by_id, chart_title, choose_option, click, select_tab, text, wait_for
from tests.app.test_browser_analyses import RUN_TIMEOUT, run_finished

pytestmark = pytest.mark.usefixtures("app_server")


def suggestion_buttons(driver) -> list:
    return by_id(driver, ids.ANALYSIS_INTERVENTIONS).find_elements(By.TAG_NAME, "button")


def test_steer_button_fills_in_the_play_tabs_intervention(browser):
    select_tab(browser, ids.TAB_ANALYSES)
    choose_option(browser, ids.ANALYSIS_SELECT, "feature-dashboard")
    wait_for(browser, lambda d: "feature-dashboard" in text(d, ids.ANALYSIS_DESCRIPTION), "its description")
    assert not suggestion_buttons(browser)  # no result yet, no buttons
    click(browser, ids.ANALYSIS_RUN)
    wait_for(browser, lambda d: run_finished(d, ""), "the dashboard's figures", RUN_TIMEOUT)

    steer = wait_for(
        browser,
        lambda d: next((b for b in suggestion_buttons(d) if b.text.startswith("Steer +")), None),
        "the steer button",
    )
    line = steer.get_attribute("title").split("with: ", 1)[1]
    assert line.startswith("steer: forward @ blocks.") and " x " in line
    steer.click()

    wait_for(browser, lambda d: by_id(d, ids.PANEL_PLAY).is_displayed(), "the Play tab")
    wait_for(
        browser,
        lambda d: by_id(d, ids.PLAY_INTERVENTION).get_attribute("value") == line,
        "the intervention input to hold the suggested line",
    )
    wait_for(
        browser,
        lambda d: line in chart_title(d, ids.PLAY_PROBS_GRAPH),
        "the Play tab's chart to play with it",
    )
    assert not text(browser, ids.PLAY_MESSAGE)
