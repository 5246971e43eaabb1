"""Custom MiniGrid environments, registered with gymnasium on import.

Each env subclasses a stock MiniGrid env and changes only what its docstring says, so minigrid's
rules (rewards, termination, object semantics) stay the reference.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from minigrid.envs.memory import MemoryEnv

#: Sizes of the registered fixed-start Memory envs (``MiniGrid-MemoryS{size}FixedStart-v0``).
MEMORY_FIXED_START_SIZES: tuple[int, ...] = (7, 9, 11)


class MemoryFixedStartEnv(MemoryEnv):
    """
    ## Description

    Minigrid's Memory test with a fixed start. The agent always starts in the start room at the
    beginning of the corridor, ``(1, size // 2)``, facing up at the cue object (a green key or ball)
    directly in front of it, so the cue is in view at step 0. It must walk down the corridor to the
    far end, where a vertical hallway holds a key and a ball, and step next to the one that matches
    the cue. Once the agent has turned away the cue is out of view, so acting well requires
    remembering it. Everything but the start pose is minigrid's ``MemoryEnv`` (same grid layout,
    same random draws, same success and failure cells).

    ## Mission Space

    "go to the matching object at the end of the hallway"

    ## Action Space

    | Num | Name         | Action                           |
    |-----|--------------|----------------------------------|
    | 0   | left         | Turn left                        |
    | 1   | right        | Turn right                       |
    | 2   | forward      | Move forward                     |
    | 3   | pickup       | Treated as toggle (no effect)    |
    | 4   | drop         | Unused                           |
    | 5   | toggle       | Toggle/activate an object        |
    | 6   | done         | Unused                           |

    ## Observation Encoding

    - Each tile is encoded as a 3 dimensional tuple: `(OBJECT_IDX, COLOR_IDX, STATE)`
    - `OBJECT_TO_IDX` and `COLOR_TO_IDX` mapping can be found in `minigrid/core/constants.py`
    - `STATE` refers to the door state with 0=open, 1=closed and 2=locked
    - Walls are opaque (`see_through_walls=False`): cells hidden behind walls are "unseen".

    ## Rewards

    A reward of `1 - 0.9 * (step_count / max_steps)` is given for stepping onto the cell adjacent to
    the matching object (minigrid's `success_pos`), and `0` for stepping onto the cell adjacent to
    the other object (`failure_pos`) or running out of time.

    ## Termination

    The episode ends if any one of the following conditions is met:

    1. The agent reaches the cell next to the matching object (terminated, reward > 0).
    2. The agent reaches the cell next to the other object (terminated, reward 0).
    3. Timeout: `max_steps` (default `5 * size**2`) steps (truncated, reward 0).

    ## Registered Configurations

    S: size of the map SxS.

    - `MiniGrid-MemoryS7FixedStart-v0`
    - `MiniGrid-MemoryS9FixedStart-v0`
    - `MiniGrid-MemoryS11FixedStart-v0`
    """

    def __init__(self, size: int = 7, max_steps: int | None = None, **kwargs) -> None:
        super().__init__(size=size, random_length=False, max_steps=max_steps, **kwargs)

    @property
    def start_pos(self) -> tuple[int, int]:
        """The fixed start cell: the corridor's first cell, right below the cue."""
        return (1, self.height // 2)

    @property
    def cue_pos(self) -> tuple[int, int]:
        """Where minigrid's MemoryEnv puts the cue object (in the start room)."""
        return (1, self.height // 2 - 1)

    def _gen_grid(self, width: int, height: int) -> None:
        # Minigrid's layout and random draws first (so the objects match MemoryEnv's for a seed),
        # then the fixed start pose: facing up (direction 3) at the cue.
        super()._gen_grid(width, height)
        self.agent_pos = np.array(self.start_pos)
        self.agent_dir = 3


for _size in MEMORY_FIXED_START_SIZES:
    _env_id = f"MiniGrid-MemoryS{_size}FixedStart-v0"
    if _env_id not in gym.registry:
        gym.register(id=_env_id, entry_point="envs.custom:MemoryFixedStartEnv", kwargs={"size": _size})
