"""Observation encodings.

The *compact* observation is what MiniGrid emits and what datasets store: a uint8 grid
``[W, H, 3]`` indexed ``[x, y, (object, colour, state)]`` plus the agent's direction (0..3).
The *one-hot* encoding expands each cell into 20 channels (11 objects + 6 colours + 3 states) and is
computed on the fly in the model's input path, never stored. In a fully observed grid the agent's cell
carries its direction in the state field; that is not a door state, so the one-hot leaves the agent
cell's state channels at zero (the direction is a separate input).
"""

from __future__ import annotations

import numpy as np
from minigrid.core.actions import Actions
from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX, STATE_TO_IDX

OBJECT_NAMES: tuple[str, ...] = tuple(sorted(OBJECT_TO_IDX, key=OBJECT_TO_IDX.get))
COLOR_NAMES: tuple[str, ...] = tuple(sorted(COLOR_TO_IDX, key=COLOR_TO_IDX.get))
STATE_NAMES: tuple[str, ...] = tuple(sorted(STATE_TO_IDX, key=STATE_TO_IDX.get))
DIRECTION_NAMES: tuple[str, ...] = ("right", "down", "left", "up")
#: MiniGrid's action names, indexed by action id: left, right, forward, pickup, drop, toggle, done.
ACTION_NAMES: tuple[str, ...] = tuple(a.name for a in sorted(Actions, key=int))
N_ACTIONS = len(ACTION_NAMES)  # 7

N_OBJECTS = len(OBJECT_NAMES)  # 11
N_COLORS = len(COLOR_NAMES)  # 6
N_STATES = len(STATE_NAMES)  # 3
N_DIRECTIONS = 4
N_CHANNELS = N_OBJECTS + N_COLORS + N_STATES  # 20
AGENT_IDX = OBJECT_TO_IDX["agent"]

#: Name of each one-hot channel, e.g. ``"object=key"``, ``"colour=red"``, ``"state=locked"``.
CHANNEL_NAMES: tuple[str, ...] = (
    tuple(f"object={n}" for n in OBJECT_NAMES)
    + tuple(f"colour={n}" for n in COLOR_NAMES)
    + tuple(f"state={n}" for n in STATE_NAMES)
)


def compact_obs(obs: dict) -> tuple[np.ndarray, int]:
    """MiniGrid observation dict -> (uint8 grid [W, H, 3], direction)."""
    grid = np.asarray(obs["image"], dtype=np.uint8)
    return grid, int(obs["direction"])


def one_hot(grid: np.ndarray) -> np.ndarray:
    """Compact grids ``[..., W, H, 3]`` -> one-hot ``[..., W, H, 20]`` (float32), vectorized over batches."""
    grid = np.asarray(grid)
    if grid.shape[-1] != 3:
        raise ValueError(f"compact grid must end in 3 channels, got shape {grid.shape}")
    obj = grid[..., 0].astype(np.int64)
    col = grid[..., 1].astype(np.int64)
    st = grid[..., 2].astype(np.int64)
    if obj.size and (obj.max() >= N_OBJECTS or col.max() >= N_COLORS):
        raise ValueError("compact grid holds an object or colour index out of range")
    out = np.zeros((*grid.shape[:-1], N_CHANNELS), dtype=np.float32)
    np.put_along_axis(out, obj[..., None], 1.0, axis=-1)
    np.put_along_axis(out, (N_OBJECTS + col)[..., None], 1.0, axis=-1)
    # Agent cells (fully observed grids) carry the direction in the state field: no state channel.
    st_ok = (obj != AGENT_IDX) & (st < N_STATES)
    st_onehot = np.zeros_like(out)
    np.put_along_axis(st_onehot, (N_OBJECTS + N_COLORS + np.where(st_ok, st, 0))[..., None], 1.0, axis=-1)
    out += st_onehot * st_ok[..., None]
    return out


def from_one_hot(x: np.ndarray, direction: int | None = None) -> np.ndarray:
    """One-hot ``[..., W, H, 20]`` -> compact uint8 grid ``[..., W, H, 3]`` (inverse of :func:`one_hot`).

    For agent cells the state field is restored from ``direction`` when given (fully observed grids).
    """
    x = np.asarray(x)
    obj = x[..., :N_OBJECTS].argmax(-1)
    col = x[..., N_OBJECTS : N_OBJECTS + N_COLORS].argmax(-1)
    st = x[..., N_OBJECTS + N_COLORS :].argmax(-1)
    if direction is not None:
        st = np.where(obj == AGENT_IDX, direction, st)
    return np.stack([obj, col, st], axis=-1).astype(np.uint8)


def describe_cell(cell: np.ndarray) -> str:
    """Human-readable name of one compact cell, e.g. ``"red key"`` or ``"locked yellow door"``."""
    obj = OBJECT_NAMES[int(cell[0])]
    if obj in ("empty", "unseen", "wall", "floor", "goal", "lava"):
        return obj
    col = COLOR_NAMES[int(cell[1])]
    if obj == "door":
        return f"{STATE_NAMES[int(cell[2])]} {col} door"
    if obj == "agent":
        return f"agent facing {DIRECTION_NAMES[int(cell[2]) % 4]}"
    return f"{col} {obj}"
