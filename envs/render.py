"""Headless rendering to numpy RGB images (uint8, ``[rows, cols, 3]``), with minigrid's own tiles.

``render_pov`` draws what a *stored* compact observation shows, so a dataset or a model's input
history can be rendered without the env that produced it. ``render_world`` draws a live env's full
state. Both use minigrid's ``Grid.render``, so the pictures are the ones MiniGrid users know.

How ``render_pov`` relates to minigrid's ``env.get_pov_render`` / ``get_frame(agent_pov=True)``:
with ``highlight=True`` it is pixel-identical to them in every state (minigrid also blanks the cells
hidden behind walls before drawing its POV, and it always highlights the visible cells). The default
``highlight=False`` draws the same picture without the lightening.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from minigrid.core.grid import Grid

from envs.encoding import AGENT_IDX, N_COLORS, N_OBJECTS

#: Heading the agent is drawn with in an egocentric view: the view is rotated so it faces up.
EGOCENTRIC_DIR = 3


def render_pov(
    grid: np.ndarray, direction: int | None = None, tile_size: int = 32, highlight: bool = False
) -> np.ndarray:
    """RGB image ``[H * tile_size, W * tile_size, 3]`` of a compact observation grid ``[W, H, 3]``.

    - Egocentric views (no agent cell in the grid): the agent is drawn at the bottom centre facing
      up, over the object it carries if any (minigrid puts that in the agent's cell). ``direction``
      is not needed and is ignored: the view is already rotated to the agent's heading.
    - Fully observed grids (one agent cell): the agent is drawn on its cell facing ``direction``,
      which defaults to the heading stored in the agent cell's state field.

    ``highlight`` lightens every cell the observation shows (not "unseen"), minigrid's look for the
    agent's view; off by default so the image shows the observation and nothing else (then unseen
    and empty cells look alike, both dark).
    """
    grid = np.asarray(grid)
    if grid.ndim != 3 or grid.shape[2] != 3:
        raise ValueError(f"compact grid must have shape [W, H, 3], got {grid.shape}")
    if grid.size and (grid[..., 0].max() >= N_OBJECTS or grid[..., 1].max() >= N_COLORS):
        raise ValueError("compact grid holds an object or colour index out of range")
    agents = np.argwhere(grid[..., 0] == AGENT_IDX)
    if len(agents) > 1:
        raise ValueError(f"compact grid holds {len(agents)} agent cells; at most one is allowed")
    width, height = grid.shape[:2]
    if len(agents) == 0:
        agent_pos, agent_dir = (width // 2, height - 1), EGOCENTRIC_DIR
    else:
        agent_pos = (int(agents[0][0]), int(agents[0][1]))
        agent_dir = int(grid[agent_pos][2]) if direction is None else int(direction)
        if not 0 <= agent_dir < 4:
            raise ValueError(f"invalid agent direction {agent_dir}: must be 0..3")
    decoded, seen = Grid.decode(grid.astype(np.uint8))  # agent cells decode to empty
    return decoded.render(tile_size, agent_pos, agent_dir, highlight_mask=seen if highlight else None)


def render_world(env: gym.Env, tile_size: int = 32, highlight: bool = True) -> np.ndarray:
    """RGB image of the env's whole world state; ``highlight`` lightens the agent's field of view."""
    return env.unwrapped.get_frame(highlight=highlight, tile_size=tile_size, agent_pov=False)
