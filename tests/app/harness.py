"""The browser-test harness: which browser, how it is started, the app server thread, the CI rule.

Browser tests need ``/usr/bin/chromium`` and ``/usr/bin/chromedriver`` (Debian's ``chromium`` and
``chromium-driver``) and selenium. Without them the tests are skipped, except under ``CI=true``, where a
missing browser is a failure: CI must never pass by skipping its browser tests.
"""

from __future__ import annotations

import os
import threading
import time
import urllib.request

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROME_ARGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1400,1000",
)


def missing_browser() -> str | None:
    """Why no browser test can run here, or None."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            return f"{path} is missing (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test-app]')"
    return None


def require_browser(module_level: bool = False) -> None:
    """Skip the calling test (or, with ``module_level``, the importing test module) when no browser is
    available; under ``CI=true`` fail instead."""
    why = missing_browser()
    if why is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"browser tests cannot run in CI: {why}", pytrace=False)
    pytest.skip(f"browser tests need Chromium: {why}", allow_module_level=module_level)


# ------------------------------------------------------------------ the app server


class ServerThread(threading.Thread):
    """A threaded werkzeug server for a WSGI app on 127.0.0.1:<free port>, stoppable."""

    def __init__(self, wsgi_app) -> None:
        from werkzeug.serving import make_server

        super().__init__(name="dtinterp-app-test-server", daemon=True)
        # Port 0: the OS picks a free port while binding, so there is no race with other processes.
        self.server = make_server("127.0.0.1", 0, wsgi_app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}/"

    def run(self) -> None:
        self.server.serve_forever()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.join(timeout=10)


def wait_until_serving(url: str, timeout: float) -> None:
    """Block until ``url`` answers 200, polling with a short socket timeout; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError as exc:  # connection refused / reset while starting
            last = exc
        time.sleep(0.05)  # the server thread is starting; poll again
    raise RuntimeError(f"app at {url} did not answer within {timeout:.0f}s ({last})")


# ------------------------------------------------------------------ browsers


def make_driver(user_data_dir: str):
    """A headless Chromium webdriver with its own profile directory."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in CHROME_ARGS:
        options.add_argument(arg)
    options.add_argument(f"--user-data-dir={user_data_dir}")
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
