"""What the browser sends, checked once: typed values, and the episode in the page's store.

Every value typed or uploaded into the app goes through one of these parsers; a bad one is an
:class:`InputError` whose one-line message the page shows. The episode comes back from the browser as
``Episode.to_json()`` and is decoded and validated once per request by :func:`load_episode`.
"""

from __future__ import annotations

from typing import Any

from dtinterp.data.episode import Episode
from dtinterp.errors import DtinterpError
from dtinterp.limits import check_rtg

#: Target returns the app accepts (MiniGrid returns lie in [0, 1]; room to ask for the impossible).
TARGET_RANGE = (-10.0, 10.0)
MAX_SEED = 2**31 - 1


class InputError(DtinterpError):
    """A bad value typed or uploaded into the app; its message is shown on the page."""


def load_episode(data: Any) -> Episode | None:
    """The page's episode (``None`` when there is none yet), decoded and validated once."""
    return None if data is None else Episode.from_json(data)


def parse_target(value: Any, rtg_scale: float | None = None) -> float:
    """The target return typed by the user: a finite number within :data:`TARGET_RANGE`.

    Checked by :func:`dtinterp.limits.check_rtg` like every target return (with ``rtg_scale``, the
    model's, also against what its RTG token represents).
    """
    lo, hi = TARGET_RANGE
    text = str(value).strip()
    try:
        x = float(text)
    except ValueError:
        raise InputError(f"target return {value!r} is not a number") from None
    x = check_rtg(x, f"target return {text!r}", rtg_scale, error=InputError)
    if not lo <= x <= hi:
        raise InputError(f"target return {value!r} must be a finite number between {lo:g} and {hi:g}")
    return x


def parse_seed(value: Any) -> int:
    """The env seed typed by the user: an integer in ``0 .. 2**31 - 1``."""
    text = str(value).strip()
    if not text.isdigit() or int(text) > MAX_SEED:
        raise InputError(f"seed {value!r} must be an integer between 0 and {MAX_SEED}")
    return int(text)


def parse_episode(value: Any) -> int:
    """The episode number typed by the user: a non-negative integer."""
    text = "" if value is None else str(value).strip()
    if not text.isdigit():
        raise InputError(f"episode {value!r} must be a non-negative integer")
    return int(text)


__all__ = [
    "MAX_SEED",
    "TARGET_RANGE",
    "InputError",
    "load_episode",
    "parse_episode",
    "parse_seed",
    "parse_target",
]
