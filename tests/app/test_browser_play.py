"""Browser tests of the Play and History tabs: keyboard play, DT steps, history scrubbing, bad input, sessions.

What the page shows is checked against the library computed independently in the test process: the
world frame must be exactly the PNG of the env replayed from the seed with the same actions, and the
probability chart exactly the model's softmax at the current window.
"""

from __future__ import annotations

import json

import pytest

from dash_app import ids
from envs.encoding import ACTION_NAMES
from tests.app.pages import (
    By,
    Keys,
    bar_probs,
    by_id,
    choose_option,
    click,
    history_info,
    history_step,
    img_src,
    page_episode,
    press_keys,
    probs_match,
    select_tab,
    status_step,
    text,
    type_into,
    wait_for,
)
from tests.app.reference import live_probs as expected_probs
from tests.app.reference import world_png as expected_world

pytestmark = pytest.mark.usefixtures("app_server")

LEFT, RIGHT, FORWARD = (ACTION_NAMES.index(a) for a in ("left", "right", "forward"))
KEY_OF = {LEFT: Keys.ARROW_LEFT, RIGHT: Keys.ARROW_RIGHT, FORWARD: Keys.ARROW_UP}


def wait_step(driver, n: int) -> None:
    wait_for(driver, lambda d: status_step(d) == n, f"the status line to read step {n}")


def play_keys(driver, actions: list[int]) -> None:
    """Play ``actions`` with the keyboard, one key at a time, each waited for on the status line."""
    for a in actions:
        before = status_step(driver)
        press_keys(driver, KEY_OF[a])
        wait_step(driver, before + 1)


def test_keyboard_steps_change_the_world_frame(browser):
    """Arrow keys on the page body take actions; the frame after them is the env replayed with them."""
    seed, _ = page_episode(browser)
    first = img_src(browser, ids.PLAY_WORLD_IMG)
    assert first == expected_world(seed, [])
    play_keys(browser, [LEFT])
    wait_for(browser, lambda d: img_src(d, ids.PLAY_WORLD_IMG) != first, "the world frame to change")
    play_keys(browser, [FORWARD, RIGHT])
    wait_for(
        browser,
        lambda d: img_src(d, ids.PLAY_WORLD_IMG) == expected_world(seed, [LEFT, FORWARD, RIGHT]),
        "the world frame after left, forward, right",
    )


def test_dt_step_shows_the_models_action_probabilities(browser):
    """The chart shows the model's distribution; "DT step" takes its argmax and the chart follows."""
    seed, target = page_episode(browser)
    want = expected_probs(seed, [], target)
    shown = wait_for(browser, lambda d: bar_probs(d, ids.PLAY_PROBS_GRAPH), "the action-probability bars")
    assert probs_match(shown, want), (shown, want)
    best = ACTION_NAMES.index(max(want, key=want.get))
    click(browser, ids.PLAY_DT_STEP)
    wait_step(browser, 1)
    after = expected_probs(seed, [best], target)
    wait_for(
        browser,
        lambda d: probs_match(bar_probs(d, ids.PLAY_PROBS_GRAPH), after),
        "the chart of the state after the model's argmax action",
    )
    assert img_src(browser, ids.PLAY_WORLD_IMG) == expected_world(seed, [best])


def test_history_slider_shows_each_step(browser):
    """Scrubbing the History slider back to step 0 shows that step's action, frame and RTG."""
    seed, target = page_episode(browser)
    actions = [LEFT, LEFT, FORWARD]
    play_keys(browser, actions)
    select_tab(browser, ids.TAB_HISTORY)
    wait_for(browser, lambda d: history_step(d) == 3, "history at the last step")
    assert img_src(browser, ids.HISTORY_WORLD_IMG) == expected_world(seed, actions)
    handle = by_id(browser, ids.HISTORY_SLIDER).find_element(By.CSS_SELECTOR, "[role=slider]")
    handle.send_keys(Keys.HOME)
    wait_for(browser, lambda d: history_step(d) == 0, "history at step 0")
    info = history_info(browser)
    assert info["action"] == "left" and info["return-to-go"] == f"{target:.3f}"  # no reward yet
    wait_for(
        browser,
        lambda d: img_src(d, ids.HISTORY_WORLD_IMG) == expected_world(seed, []),
        "the frame of step 0",
    )
    handle.send_keys(Keys.ARROW_RIGHT, Keys.ARROW_RIGHT)
    wait_for(browser, lambda d: history_step(d) == 2, "history at step 2")
    assert history_info(browser)["action"] == "forward"
    assert img_src(browser, ids.HISTORY_WORLD_IMG) == expected_world(seed, actions[:2])
    # arrow keys on the History tab move the slider, never the agent
    select_tab(browser, ids.TAB_PLAY)
    assert status_step(browser) == 3


@pytest.mark.parametrize("bad", ["abc", "1e9", "nan"])
def test_bad_target_return_shows_a_message(browser, bad):
    """A non-numeric or out-of-range target return is named in a message; play goes on unchanged."""
    type_into(browser, ids.PLAY_TARGET_RTG, bad)
    wait_for(browser, lambda d: repr(bad) in text(d, ids.PLAY_MESSAGE), f"a message naming {bad!r}")
    assert status_step(browser) == 0
    click(browser, ids.PLAY_RESET)  # a reset needs a valid target too
    wait_for(browser, lambda d: "target return" in text(d, ids.PLAY_MESSAGE), "the reset to be refused")
    play_keys(browser, [RIGHT])
    wait_for(browser, lambda d: text(d, ids.PLAY_MESSAGE) == "", "the message to clear")


def test_two_sessions_never_share_state(browser, new_browser):
    """Two browsers play different seeds, interleaved; each sees only its own episode."""
    seed, _ = page_episode(browser)
    other, other_seed = new_browser(), seed + 3
    type_into(other, ids.PLAY_SEED, str(other_seed))
    click(other, ids.PLAY_RESET)
    wait_for(other, lambda d: f"seed {other_seed}" in text(d, ids.PLAY_STATUS), "the second browser's reset")
    a_actions, b_actions = [], []
    for a, b in [(LEFT, FORWARD), (FORWARD, RIGHT), (RIGHT, None)]:
        play_keys(browser, [a])
        a_actions.append(a)
        if b is not None:
            play_keys(other, [b])
            b_actions.append(b)
    wait_for(
        browser,
        lambda d: img_src(d, ids.PLAY_WORLD_IMG) == expected_world(seed, a_actions),
        "browser 1's world",
    )
    wait_for(
        other,
        lambda d: img_src(d, ids.PLAY_WORLD_IMG) == expected_world(other_seed, b_actions),
        "browser 2's world",
    )
    assert status_step(browser) == 3 and f"seed {seed}" in text(browser, ids.PLAY_STATUS)
    assert status_step(other) == 2 and f"seed {other_seed}" in text(other, ids.PLAY_STATUS)


def stored_actions(driver) -> list[int]:
    """The actions of the page's episode as the browser keeps it (the tab's session storage)."""
    data = driver.execute_script("return window.sessionStorage.getItem(arguments[0]);", ids.TRAJ_STORE)
    return json.loads(data)["actions"] if data else []


def test_a_tab_is_built_when_first_opened_and_keeps_what_was_typed(browser):
    """Only the Play tab is in a fresh page; another tab is built when opened and then stays as left."""
    assert not browser.find_elements(By.ID, ids.REPLAY_DATASET_PATH)
    assert not browser.find_elements(By.ID, ids.HISTORY_SLIDER)
    select_tab(browser, ids.TAB_REPLAY)
    wait_for(browser, lambda d: d.find_elements(By.ID, ids.REPLAY_DATASET_PATH), "the Replay tab's fields")
    type_into(browser, ids.REPLAY_DATASET_PATH, "runs/some.npz", submit=False)
    select_tab(browser, ids.TAB_HISTORY)
    wait_for(browser, lambda d: history_step(d) == 0, "the History tab")
    select_tab(browser, ids.TAB_REPLAY)
    assert by_id(browser, ids.REPLAY_DATASET_PATH).get_attribute("value") == "runs/some.npz"


def test_an_env_with_three_actions_shows_three_buttons_and_takes_no_other_key(browser):
    """Dynamic obstacles has left, right and forward only: the other buttons are hidden and their keys
    do nothing, while the arrow keys play."""
    choose_option(browser, ids.MODEL_DROPDOWN, "dynamic-obstacles-8x8")
    wait_for(browser, lambda d: "pickup" not in text(d, ids.PLAY_KEYS_HINT), "the env's own key help")
    shown = [b.text.split()[0] for b in by_id(browser, ids.PLAY_ACTIONS_ROW).find_elements(By.TAG_NAME, "button")
             if b.is_displayed()]  # fmt: skip
    assert shown == ["left", "right", "forward"]
    wait_step(browser, 0)
    press_keys(browser, "p", "t", "d")  # pickup, toggle, drop: not this env's actions
    play_keys(browser, [LEFT, RIGHT])
    assert stored_actions(browser) == [LEFT, RIGHT]
