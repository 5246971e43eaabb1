"""Pictures for the page: the world and the agent's view as PNG data URIs.

The world of a played episode is rendered from its env, checked out of the session's env cache
(:data:`dash_app.cache.ENVS`); the agent's view is rendered from a stored observation alone.
"""

from __future__ import annotations

import base64
import io

import numpy as np

from dash_app.cache import ENVS
from dtinterp.data.episode import Episode
from envs.render import render_pov, render_world

#: Pixels per grid cell.
TILE = 32


def png_data_uri(rgb: np.ndarray) -> str:
    """RGB uint8 image ``[rows, cols, 3]`` -> ``data:image/png;base64,...`` for an ``html.Img``."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(buf, format="PNG", optimize=False)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def world_image(session: str, episode: Episode, n_actions: int | None = None) -> str | None:
    """PNG of the world after the first ``n_actions`` actions (default all), or None without a seed."""
    if episode.seed is None:
        return None
    env = ENVS.checkout(session, episode, n_actions)
    try:
        rgb = render_world(env, tile_size=TILE)
    finally:
        ENVS.checkin(session, episode, env, n_actions)
    return png_data_uri(rgb)


def pov_image(obs: np.ndarray, direction: int) -> str:
    """PNG of one stored observation as the agent sees it."""
    return png_data_uri(render_pov(obs, direction, tile_size=TILE, highlight=True))


__all__ = ["TILE", "png_data_uri", "pov_image", "world_image"]
