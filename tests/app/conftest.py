"""Fixtures for the app's end-to-end tests: the real app on a loopback port and headless Chromium.

``app_server`` serves :func:`dash_app.server.create_app` (threaded werkzeug, the server ``dtinterp app``
runs) from a background thread on a free port of 127.0.0.1, once per test session. ``browser`` is one
headless Chromium (selenium) shared by the session; each test gets it on a fresh page load, which is a
fresh app session (new session id, empty stores). ``new_browser`` opens extra, independent browsers
(their own profile and storage) for multi-user tests.

Without chromium/chromedriver the browser tests are skipped, except under ``CI=true``, where a missing
browser is a failure (:mod:`tests.app.harness`). A failing browser test leaves a screenshot of each of
its browsers in ``tests/app/screenshots/<test>.png`` (git-ignored).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.app.harness import ServerThread, make_driver, require_browser, wait_until_serving

SCREENSHOTS = Path(__file__).resolve().parent / "screenshots"
#: Seconds the server gets to answer its first request.
SERVER_START_TIMEOUT = 60.0


@pytest.fixture(scope="session")
def app_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of the real app (default shipped model) served for the whole test session."""
    from dash_app.server import create_app

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one access line per callback drowns reports
    app = create_app(cache_dir=str(tmp_path_factory.mktemp("app-cache")))
    server = ServerThread(app.server)
    server.start()
    try:
        wait_until_serving(server.url, SERVER_START_TIMEOUT)
        yield server.url
    finally:
        server.stop()


# ------------------------------------------------------------------ browsers


@pytest.fixture(scope="session")
def _session_driver() -> Iterator[object]:
    require_browser()
    profile = tempfile.mkdtemp(prefix="dtinterp-chrome-")
    driver = make_driver(profile)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def browser(_session_driver, app_server: str):
    """The shared headless Chromium on a fresh load of the app (a new app session)."""
    from tests.app.pages import open_app

    open_app(_session_driver, app_server)
    return _session_driver


@pytest.fixture
def new_browser(app_server: str, request: pytest.FixtureRequest) -> Iterator[Callable[[], object]]:
    """Factory of extra, independent browsers (own profile) already on a fresh app page; closed after the test."""
    require_browser()
    from tests.app.pages import open_app

    opened: list[tuple[object, str]] = []

    def factory():
        profile = tempfile.mkdtemp(prefix="dtinterp-chrome-")
        driver = make_driver(profile)
        opened.append((driver, profile))
        request.node.extra_drivers = [d for d, _ in opened]  # screenshotted if the test fails
        open_app(driver, app_server)
        return driver

    try:
        yield factory
    finally:
        for driver, profile in opened:
            driver.quit()
            shutil.rmtree(profile, ignore_errors=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Save a screenshot of every browser a failing test used, into ``tests/app/screenshots/``."""
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    drivers = [item.funcargs.get("browser")] if "browser" in getattr(item, "funcargs", {}) else []
    drivers += getattr(item, "extra_drivers", [])
    SCREENSHOTS.mkdir(exist_ok=True)
    for i, driver in enumerate(d for d in drivers if d is not None):
        suffix = "" if i == 0 else f"-{i}"
        path = SCREENSHOTS / f"{item.name}{suffix}.png"
        try:
            driver.save_screenshot(str(path))
            report.sections.append(("screenshot", str(path)))
        except Exception as exc:  # noqa: BLE001 - a dead browser must not hide the test's own failure
            report.sections.append(("screenshot", f"not saved: {exc}"))
