"""Fixtures of the bad-input suite (helpers in :mod:`tests.hardening.helpers`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.hardening.helpers import tiny_checkpoint


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory) -> Path:
    """A 7-action checkpoint of MiniGrid-Empty-5x5 (do not modify)."""
    return tiny_checkpoint(tmp_path_factory.mktemp("hardening") / "model")
