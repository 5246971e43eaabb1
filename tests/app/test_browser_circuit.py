"""Browser test of the Circuit tab: score the graph, see its nodes and edges, knock nodes out with a click
on the graph and with the checklist, and read what the ablation did to the metric and the rollout."""

from __future__ import annotations

import pytest
from selenium.webdriver.common.action_chains import ActionChains

from dash_app import ids
from tests.app.pages import By, by_id, click, select_tab, text, wait_for

pytestmark = pytest.mark.usefixtures("app_server")

#: Seconds a background run (fork, compute, poll) may take.
RUN_TIMEOUT = 60.0

# Cytoscape.js keeps its instance on its container element (``_cyreg``).
_CY_JS = """
const root = document.getElementById(arguments[0]);
const el = root && [root, ...root.querySelectorAll('div')].find((e) => e._cyreg && e._cyreg.cy);
if (!el) { return null; }
const cy = el._cyreg.cy;
const box = el.getBoundingClientRect();
return {
    nodes: cy.nodes().map((n) => ({id: n.id(), classes: n.classes(), x: n.renderedPosition('x'),
                                   y: n.renderedPosition('y')})),
    edges: cy.edges().map((e) => e.id()),
    width: box.width, height: box.height,
};
"""


def graph(driver) -> dict | None:
    return driver.execute_script(_CY_JS, ids.CIRCUIT_GRAPH)


def click_node(driver, node_id: str) -> None:
    """A real click on the graph's canvas where the node is drawn."""
    container = by_id(driver, ids.CIRCUIT_GRAPH)
    # selenium's offsets are from the centre of the element's part in view: bring all of it into view
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", container)
    g = graph(driver)
    node = next(n for n in g["nodes"] if n["id"] == node_id)
    ActionChains(driver).move_to_element_with_offset(
        container, int(node["x"] - g["width"] / 2), int(node["y"] - g["height"] / 2)
    ).click().perform()


def result_changed(driver, previous: str, want: str) -> str | None:
    message = text(driver, ids.CIRCUIT_MESSAGE)
    if message:
        raise AssertionError(f"the tab says: {message}")
    shown = text(driver, ids.CIRCUIT_RESULT)
    return shown if shown != previous and want in shown else None


def test_score_then_knock_out_nodes_and_see_the_metric_and_the_rollout(browser):
    select_tab(browser, ids.TAB_CIRCUIT)
    wait_for(browser, lambda d: "step 0" in text(d, ids.CIRCUIT_TARGET_INFO), "what scoring will use")
    before = graph(browser)
    assert before and len(before["nodes"]) == 15 and not before["edges"]  # 14 senders + logits, unscored

    click(browser, ids.CIRCUIT_SCORE)
    summary = wait_for(
        browser,
        lambda d: text(d, ids.CIRCUIT_SUMMARY) or text(d, ids.CIRCUIT_MESSAGE),
        "the scores",
        RUN_TIMEOUT,
    )
    assert summary.startswith("Scored 191 edges by EAP on the window at step 0"), summary
    assert "other cue object" in summary
    g = wait_for(browser, lambda d: (g := graph(d)) and len(g["edges"]) == 25 and g, "the top 25 edges")
    assert {"state", "L0H0", "MLP1", "logits"} <= {n["id"] for n in g["nodes"]}

    # A click shows a node's scores; in toggle mode it knocks the node out.
    click_node(browser, "L1H0")
    wait_for(browser, lambda d: "rank" in text(d, ids.CIRCUIT_DETAILS), "L1H0's scores")
    assert text(browser, ids.CIRCUIT_DETAILS).startswith("L1H0")
    by_id(browser, ids.CIRCUIT_CLICK_MODE).find_elements(By.CSS_SELECTOR, "input")[1].click()
    click_node(browser, "L1H0")
    first = wait_for(
        browser, lambda d: result_changed(d, "", "with L1H0 ablated"), "L1H0 ablated", RUN_TIMEOUT
    )
    assert "Quick rollout: success 100%" in first and "8 episodes on the same seeds" in first
    assert "mean ablation" in first and "seeds 1000..1007" in first and "window at step 0" in first
    assert "ablated" in next(n["classes"] for n in graph(browser)["nodes"] if n["id"] == "L1H0")

    # The checklist does the same: knocking out the state embedding loses every episode.
    checklist = by_id(browser, ids.CIRCUIT_ABLATED)
    next(
        i for i in checklist.find_elements(By.CSS_SELECTOR, "input") if i.get_attribute("value") == "state"
    ).click()
    second = wait_for(
        browser,
        lambda d: result_changed(d, first, "with state, L1H0 ablated"),
        "state ablated too",
        RUN_TIMEOUT,
    )
    assert "success 100% → 0%" in second, second
