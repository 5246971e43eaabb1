"""The browser-test harness's rule: no browser means skip locally, but fail under ``CI=true``."""

from __future__ import annotations

import sys

import pytest

from tests.app import harness


def only_missing(monkeypatch, binary: str, missing: str) -> None:
    """Make ``binary`` the one missing program: the other points at a real executable."""
    for name in ("CHROMIUM", "CHROMEDRIVER"):
        monkeypatch.setattr(harness, name, sys.executable)
    monkeypatch.setattr(harness, binary, missing)


@pytest.mark.parametrize("binary", ["CHROMIUM", "CHROMEDRIVER"])
def test_missing_browser_is_a_skip_outside_ci(monkeypatch, tmp_path, binary):
    missing = str(tmp_path / "no-such-binary")
    only_missing(monkeypatch, binary, missing)
    monkeypatch.delenv("CI", raising=False)
    assert missing in harness.missing_browser()
    with pytest.raises(pytest.skip.Exception, match="no-such-binary"):
        harness.require_browser()


@pytest.mark.parametrize("binary", ["CHROMIUM", "CHROMEDRIVER"])
def test_missing_browser_is_a_failure_in_ci(monkeypatch, tmp_path, binary):
    missing = str(tmp_path / "no-such-binary")
    only_missing(monkeypatch, binary, missing)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="cannot run in CI.*no-such-binary"):
        harness.require_browser()
    with pytest.raises(pytest.fail.Exception):
        harness.require_browser(module_level=True)  # a whole module is never skipped in CI either


def test_a_non_executable_file_is_no_browser(monkeypatch, tmp_path):
    fake = tmp_path / "chromium"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o644)
    monkeypatch.setattr(harness, "CHROMIUM", str(fake))
    assert str(fake) in harness.missing_browser()
