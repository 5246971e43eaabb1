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
from envs.encoding import compact_obs
from envs.render import render_pov, render_world
from envs.spec import EnvSpec, make_env

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


__all__ = ["TILE", "png_data_uri", "pov_image", "warm_tile_cache", "world_image"]


def warm_tile_cache(spec: EnvSpec, seeds: int = 2) -> None:
    """Draw the tiles of ``spec``'s env into minigrid's tile cache before anyone plays it.

    minigrid draws a tile the first time it meets it (in pure Python: tens of milliseconds each, and the
    first frame of an episode meets dozens) and reuses it afterwards. Rendering a few reset worlds, with
    the agent turned to every heading, and their agent's views keeps those draws off the first key presses.
    """
    env = make_env(spec)
    try:
        for seed in range(seeds):
            obs, _ = env.reset(seed=seed)
            for _ in range(4):  # every heading of the agent, highlighted field of view and plain
                render_world(env, tile_size=TILE)
                render_world(env, tile_size=TILE, highlight=False)
                grid, direction = compact_obs(obs)
                render_pov(grid, direction, tile_size=TILE, highlight=True)
                obs, *_ = env.step(0)  # turn left
    finally:
        env.close()
