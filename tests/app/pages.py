"""Page helpers for the browser tests: open the app, find components by their ids, read what is shown.

Every wait is an explicit :class:`WebDriverWait` on a condition with a bounded timeout; nothing sleeps.
Component ids come from :mod:`dash_app.ids`, tab labels from :data:`dash_app.layout.TABS`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.app.harness import require_browser

require_browser(module_level=True)  # every browser test module imports this one: skip (or fail in CI) here

from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.remote.webelement import WebElement  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from dash_app import ids  # noqa: E402
from dash_app.layout import TABS  # noqa: E402
from dtinterp.data.episode import Episode  # noqa: E402
from tests.app.reference import greedy_episode  # noqa: E402

__all__ = ["By", "Keys", "TIMEOUT"]  # the test modules take selenium's names from here, after the guard

#: Seconds any one condition may take (a DT forward pass on CPU is milliseconds; page loads take ~1 s).
TIMEOUT = 30.0

_GRAPH_TRACES_JS = """
const el = document.getElementById(arguments[0]);
if (!el) { return null; }
if (el.classList.contains('bar-chart')) {  // the app's action chart: an SVG image, a trace per data-series
    const svg = new DOMParser().parseFromString(atob(el.src.split(',')[1]), 'image/svg+xml');
    const traces = new Map();
    for (const b of svg.querySelectorAll('rect.bar')) {
        const name = b.getAttribute('data-series');
        if (!traces.has(name)) { traces.set(name, {type: 'bar', name: name, x: [], y: []}); }
        traces.get(name).x.push(b.getAttribute('data-action'));
        traces.get(name).y.push(parseFloat(b.getAttribute('data-p')));
    }
    return Array.from(traces.values());
}
const gd = el.classList.contains('js-plotly-plot') ? el : el.querySelector('.js-plotly-plot');
if (!gd || !gd.data) { return null; }
// plotly.js keeps typed arrays sent as {dtype, bdata} decoded in `_inputArray`
const arr = (v) => {
    if (v === undefined || v === null) { return null; }
    if (v._inputArray) { v = v._inputArray; }
    return (Array.isArray(v) || ArrayBuffer.isView(v)) ? Array.from(v) : null;
};
return gd.data.map((t) => ({type: t.type || null, name: t.name || null, x: arr(t.x), y: arr(t.y)}));
"""


def wait_for(
    driver: WebDriver, condition: Callable[[WebDriver], Any], what: str, timeout: float = TIMEOUT
) -> Any:
    """The first truthy value of ``condition(driver)``; a timeout fails naming ``what`` was awaited."""

    def attempt(d: WebDriver) -> Any:
        try:
            return condition(d)
        except StaleElementReferenceException:  # React replaced the node between find and read
            return False

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(attempt, f"waiting for {what}")


def by_id(driver: WebDriver, component_id: str) -> WebElement:
    return driver.find_element(By.ID, component_id)


def text(driver: WebDriver, component_id: str) -> str:
    """Visible text of a component ('' when it is absent or hidden)."""
    found = driver.find_elements(By.ID, component_id)
    return found[0].text if found else ""


def img_src(driver: WebDriver, component_id: str) -> str:
    return by_id(driver, component_id).get_attribute("src") or ""


def graph_traces(driver: WebDriver, graph_id: str) -> list[dict[str, Any]] | None:
    """The traces plotted in a ``dcc.Graph`` (type, name, x, y), or None before it is drawn."""
    return driver.execute_script(_GRAPH_TRACES_JS, graph_id)


def chart_title(driver: WebDriver, chart_id: str) -> str:
    """The title of one of the app's action-probability charts ("" before it is drawn)."""
    return driver.execute_script(
        "const el = document.getElementById(arguments[0]);"
        "if (!el || !el.src) { return ''; }"
        "const svg = new DOMParser().parseFromString(atob(el.src.split(',')[1]), 'image/svg+xml');"
        "const t = svg.querySelector('text.title'); return t ? t.textContent : '';",
        chart_id,
    )


def bar_probs(driver: WebDriver, graph_id: str) -> dict[str, float] | None:
    """``{action name: probability}`` of the (first) bar trace of a graph, or None if it has no bars."""
    traces = graph_traces(driver, graph_id) or []
    bars = [t for t in traces if t["type"] == "bar" and t["x"] and t["y"]]
    if not bars:
        return None
    return {str(x): float(y) for x, y in zip(bars[0]["x"], bars[0]["y"])}


def probs_match(shown: dict[str, float] | None, want: dict[str, float], tol: float = 1e-5) -> bool:
    """Whether a chart's ``{action: probability}`` is the distribution ``want``: a whole distribution
    (it sums to 1, so no action is missing) whose every bar is within ``tol`` of ``want``."""
    if not shown or not set(shown) <= set(want) or abs(sum(shown.values()) - 1.0) > 1e-4:
        return False
    return all(abs(p - want[k]) <= tol for k, p in shown.items())


def status_step(driver: WebDriver) -> int | None:
    """The step number in the Play tab's status line ("step N · ..."), or None before it is shown."""
    words = text(driver, ids.PLAY_STATUS).split()
    if len(words) >= 2 and words[0] == "step" and words[1].isdigit():
        return int(words[1])
    return None


def open_app(driver: WebDriver, url: str) -> None:
    """Load the app (a new app session) and wait until the Play tab shows its first frame.

    The page keeps its model and episode in the tab's session storage (they survive a reload), so the
    storage is emptied first, from a plain page of the same origin: every test starts a fresh session.
    """
    driver.get(url.rstrip("/") + "/_favicon.ico")
    driver.execute_script("window.sessionStorage.clear();")
    driver.get(url)
    wait_for(
        driver,
        lambda d: img_src(d, ids.PLAY_WORLD_IMG).startswith("data:image/png") and status_step(d) == 0,
        "the Play tab's first frame",
    )


def click(driver: WebDriver, component_id: str) -> None:
    el = wait_for(driver, lambda d: _clickable(d, component_id), f"#{component_id} to be clickable")
    el.click()


def _clickable(driver: WebDriver, component_id: str) -> WebElement | None:
    found = driver.find_elements(By.ID, component_id)
    if found and found[0].is_displayed() and found[0].is_enabled():
        return found[0]
    return None


def type_into(driver: WebDriver, component_id: str, value: str, submit: bool = True) -> None:
    """Replace the text of an input and (by default) submit it with Enter, as a person would."""
    el = by_id(driver, component_id)
    el.click()
    el.send_keys(Keys.CONTROL, "a")
    el.send_keys(Keys.DELETE)
    el.send_keys(value)
    if submit:
        el.send_keys(Keys.ENTER)


def press_keys(driver: WebDriver, *keys: str) -> None:
    """Key presses sent to the page body (not to any input)."""
    body = driver.find_element(By.TAG_NAME, "body")
    for k in keys:
        body.send_keys(k)


def select_tab(driver: WebDriver, tab_value: str) -> None:
    """Click the tab with value ``tab_value`` (see ``ids.TAB_*``) and wait until its panel is shown."""
    label, panel = next((lab, pan) for value, pan, lab, _ in TABS if value == tab_value)
    tab = wait_for(
        driver,
        lambda d: next(
            (t for t in d.find_elements(By.CSS_SELECTOR, f"#{ids.TABS} .tab") if t.text.strip() == label),
            None,
        ),
        f"the {label!r} tab",
    )
    tab.click()
    wait_for(driver, lambda d: by_id(d, panel).is_displayed(), f"the {label!r} panel")


def history_info(driver: WebDriver) -> dict[str, str]:
    """The History tab's step table as ``{first word of the row label: value}`` (e.g. ``"step"``, ``"action"``)."""
    rows = by_id(driver, ids.HISTORY_STEP_INFO).find_elements(By.TAG_NAME, "tr")
    out = {}
    for row in rows:
        cells = row.find_elements(By.CSS_SELECTOR, "th, td")
        if len(cells) == 2 and cells[0].text.strip():
            out[cells[0].text.split()[0]] = cells[1].text.strip()
    return out


def history_step(driver: WebDriver) -> int | None:
    """The step the History tab shows (first number of its "step" row), or None before it shows one."""
    first = history_info(driver).get("step", "").split(" ")[0]
    return int(first) if first.isdigit() else None


def choose_option(driver: WebDriver, dropdown_id: str, value: str) -> None:
    """Open a ``dcc.Dropdown`` and click the option whose value is ``value``, as a person would."""
    click(driver, dropdown_id)
    option = wait_for(
        driver,
        lambda d: next(
            (
                o
                for o in d.find_elements(By.CSS_SELECTOR, ".dash-dropdown-options [role=option]")
                if o.find_elements(By.CSS_SELECTOR, f"input[value='{value}']") and o.is_displayed()
            ),
            None,
        ),
        f"option {value!r} of #{dropdown_id}",
    )
    # the list scrolls under its sticky search box: bring the option to the middle first
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", option)
    option.click()
    wait_for(
        driver,
        lambda d: by_id(d, dropdown_id).get_attribute("aria-expanded") == "false",
        f"#{dropdown_id} to close",
    )


def move_slider(driver: WebDriver, slider_id: str, value: int) -> None:
    """Move a ``dcc.Slider`` (integer steps from 0) to ``value`` with the keyboard on its thumb."""
    thumb = by_id(driver, slider_id).find_element(By.CSS_SELECTOR, "[role=slider]")
    thumb.send_keys(Keys.HOME, *([Keys.ARROW_RIGHT] * value))
    wait_for(
        driver,
        lambda d: (
            by_id(d, slider_id).find_element(By.CSS_SELECTOR, "[role=slider]").get_attribute("aria-valuenow")
            == str(value)
        ),
        f"#{slider_id} at {value}",
    )


def upload_file(driver: WebDriver, upload_id: str, path: str) -> None:
    """Give a file to a ``dcc.Upload`` through its (invisible) file input."""
    by_id(driver, upload_id).find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(path)


def page_episode(driver: WebDriver) -> tuple[int, float]:
    """``(seed, target return)`` the Play tab's inputs hold (what a fresh page's episode was reset with)."""
    seed = by_id(driver, ids.PLAY_SEED).get_attribute("value")
    target = by_id(driver, ids.PLAY_TARGET_RTG).get_attribute("value")
    return int(seed), float(target)


def play_dt_episode(driver: WebDriver) -> Episode:
    """Let the model play the page's episode to the end in the Play tab; returns the reference episode."""
    episode = greedy_episode(*page_episode(driver))
    click(driver, ids.PLAY_DT_RUN)
    wait_for(driver, lambda d: status_step(d) == len(episode.actions), "the DT episode to finish")
    return episode
