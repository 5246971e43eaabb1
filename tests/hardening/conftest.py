"""Fixtures of the bad-input suite (helpers in :mod:`tests.hardening.helpers`)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from tests.hardening.helpers import tiny_checkpoint


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory) -> Path:
    """A 7-action checkpoint of MiniGrid-Empty-5x5 (do not modify)."""
    return tiny_checkpoint(tmp_path_factory.mktemp("hardening") / "model")


@pytest.fixture
def unwritable_dir(tmp_path) -> Path:
    """A directory in which no file can be created, even by root (then a ``/proc`` directory)."""
    d = tmp_path / "read-only"
    d.mkdir()
    d.chmod(0o555)
    try:
        fd, probe = tempfile.mkstemp(dir=d)
    except OSError:
        yield d
    else:  # root ignores permissions: use a directory of the proc filesystem instead
        os.close(fd)
        os.unlink(probe)
        proc = Path("/proc/self")
        if not proc.is_dir():
            pytest.skip("no directory here refuses new files to this user")
        yield proc
    finally:
        d.chmod(0o755)
