"""Ground-truth facts: per-step variables of the env's state that a probe can target.

A *fact* is a small number read off ``env.unwrapped`` before each action, next to the observation the
agent gets at that step: where the agent stands, what it carries, and, per env family, what the task
turns on, including what the observation may *not* show (the Memory cue once the agent has turned
away from it, the correct side it implies). Datasets store them as optional arrays
(:mod:`dtinterp.data.dataset`, ``fact_<name>``) so that linear probes can ask whether the model's
activations encode them.

Every env gets the generic facts; a family adds its own (chosen by env class, like
:mod:`envs.experts`):

==================  ===========  ==================================================================
fact                kind         meaning
==================  ===========  ==================================================================
``agent_x``         categorical  the agent's column
``agent_y``         categorical  the agent's row
``agent_dir``       categorical  the agent's direction (0 right, 1 down, 2 left, 3 up)
``carrying``        categorical  object type carried (``OBJECT_TO_IDX``), 0 for nothing
*Memory*
``cue_object``      categorical  the cue in the start room: 0 key, 1 ball
``correct_side``    categorical  which end object matches the cue: 0 up, 1 down
``agent_side``      categorical  where the agent stands: 0 upper half, 1 lower half, 2 middle row
``cue_visible``     categorical  1 if the cue's cell is in the agent's view now
*DoorKey*
``carrying_key``    categorical  1 if the agent holds the key
``door_open``       categorical  1 if the door is open
``key_x/key_y``     categorical  the key's cell, -1 while it is carried
``door_x/door_y``   categorical  the door's cell
``goal_x/goal_y``   categorical  the goal's cell
*Dynamic-Obstacles*
``obstacle_ahead``  categorical  1 if the cell in front holds an obstacle
``goal_distance``   scalar       Manhattan distance from the agent to the goal
==================  ===========  ==================================================================

*Categorical* facts are small integers (stored ``int16``; a probe classifies them), *scalar* facts real
numbers (stored ``float32``; a probe regresses them). Reading facts draws no random numbers, so
recording them never changes an episode. Only numpy and minigrid are used here (no torch).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
from minigrid.core.constants import OBJECT_TO_IDX
from minigrid.envs.doorkey import DoorKeyEnv
from minigrid.envs.dynamicobstacles import DynamicObstaclesEnv
from minigrid.envs.memory import MemoryEnv
from minigrid.minigrid_env import MiniGridEnv

from envs.encoding import DIRECTION_NAMES, OBJECT_NAMES
from envs.spec import EnvSpec, make_env

CATEGORICAL = "categorical"
SCALAR = "scalar"
#: numpy dtype of each kind of fact on disk.
FACT_DTYPES: dict[str, np.dtype] = {CATEGORICAL: np.dtype(np.int16), SCALAR: np.dtype(np.float32)}


@dataclass(frozen=True)
class Fact:
    """What one fact means."""

    name: str
    """Lower-case identifier (``cue_object``); the dataset stores it as ``fact_<name>``."""
    kind: str
    """:data:`CATEGORICAL` (small integers, classified) or :data:`SCALAR` (real numbers, regressed)."""
    description: str
    values: tuple[str, ...] = ()
    """Names of the categories ``0, 1, ...`` of a categorical fact, where they have names."""

    @property
    def dtype(self) -> np.dtype:
        return FACT_DTYPES[self.kind]

    def value_name(self, value: int | float) -> str:
        """``"ball"`` for ``cue_object == 1``; the number itself where categories have no names."""
        if self.kind == CATEGORICAL and self.values and 0 <= int(value) < len(self.values):
            return self.values[int(value)]
        return f"{value:g}" if isinstance(value, float) else str(value)


def _cat(name: str, description: str, values: Sequence[str] = ()) -> Fact:
    return Fact(name, CATEGORICAL, description, tuple(values))


GENERIC_FACTS: tuple[Fact, ...] = (
    _cat("agent_x", "the agent's column"),
    _cat("agent_y", "the agent's row"),
    _cat("agent_dir", "the agent's direction", DIRECTION_NAMES),
    _cat("carrying", "object type carried (0: nothing)", ("nothing", *OBJECT_NAMES[1:])),
)
MEMORY_FACTS: tuple[Fact, ...] = (
    _cat("cue_object", "the cue object in the start room", ("key", "ball")),
    _cat("correct_side", "which end object matches the cue", ("up", "down")),
    _cat("agent_side", "where the agent stands relative to the middle row", ("up", "down", "middle")),
    _cat("cue_visible", "the cue's cell is in the agent's view", ("no", "yes")),
)
DOORKEY_FACTS: tuple[Fact, ...] = (
    _cat("carrying_key", "the agent holds the key", ("no", "yes")),
    _cat("door_open", "the door is open", ("no", "yes")),
    _cat("key_x", "the key's column (-1 while carried)"),
    _cat("key_y", "the key's row (-1 while carried)"),
    _cat("door_x", "the door's column"),
    _cat("door_y", "the door's row"),
    _cat("goal_x", "the goal's column"),
    _cat("goal_y", "the goal's row"),
)
DYNAMIC_OBSTACLES_FACTS: tuple[Fact, ...] = (
    _cat("obstacle_ahead", "an obstacle is in the cell in front", ("no", "yes")),
    Fact("goal_distance", SCALAR, "Manhattan distance from the agent to the goal"),
)
#: Every fact by name.
FACTS: dict[str, Fact] = {
    f.name: f for f in GENERIC_FACTS + MEMORY_FACTS + DOORKEY_FACTS + DYNAMIC_OBSTACLES_FACTS
}


def _cell_of(env: MiniGridEnv, obj_type: str) -> tuple[int, int]:
    """The first cell (row-major) holding ``obj_type``, or (-1, -1)."""
    for k, c in enumerate(env.grid.grid):
        if c is not None and c.type == obj_type:
            return k % env.grid.width, k // env.grid.width
    return -1, -1


def _generic(env: MiniGridEnv) -> dict[str, int | float]:
    carried = env.carrying
    return {
        "agent_x": int(env.agent_pos[0]),
        "agent_y": int(env.agent_pos[1]),
        "agent_dir": int(env.agent_dir),
        "carrying": 0 if carried is None else OBJECT_TO_IDX[carried.type],
    }


def _memory(env: MemoryEnv) -> dict[str, int | float]:
    mid = env.height // 2
    cue = env.grid.get(1, mid - 1)  # MemoryEnv's cue cell (also MemoryFixedStartEnv.cue_pos)
    y = int(env.agent_pos[1])
    return {
        "cue_object": 0 if cue is not None and cue.type == "key" else 1,
        "correct_side": 0 if env.success_pos[1] < mid else 1,
        "agent_side": 2 if y == mid else int(y > mid),
        "cue_visible": int(bool(env.agent_sees(1, mid - 1))),
    }


def _doorkey(env: DoorKeyEnv) -> dict[str, int | float]:
    door_x, door_y = _cell_of(env, "door")
    door = env.grid.get(door_x, door_y) if door_x >= 0 else None
    key_x, key_y = _cell_of(env, "key")
    goal_x, goal_y = _cell_of(env, "goal")
    carrying_key = env.carrying is not None and env.carrying.type == "key"
    return {
        "carrying_key": int(carrying_key),
        "door_open": int(door is not None and door.is_open),
        "key_x": key_x,
        "key_y": key_y,
        "door_x": door_x,
        "door_y": door_y,
        "goal_x": goal_x,
        "goal_y": goal_y,
    }


def _dynamic_obstacles(env: DynamicObstaclesEnv) -> dict[str, int | float]:
    front = env.grid.get(*env.front_pos)
    goal_x, goal_y = _cell_of(env, "goal")
    x, y = (int(v) for v in env.agent_pos)
    return {
        "obstacle_ahead": int(front is not None and front.type == "ball"),
        "goal_distance": float(abs(x - goal_x) + abs(y - goal_y)),
    }


Reader = Callable[[MiniGridEnv], dict[str, int | float]]
#: Env class -> (its facts, their reader); the first ``isinstance`` match wins.
FAMILIES: tuple[tuple[type[MiniGridEnv], tuple[Fact, ...], Reader], ...] = (
    (MemoryEnv, MEMORY_FACTS, _memory),
    (DoorKeyEnv, DOORKEY_FACTS, _doorkey),
    (DynamicObstaclesEnv, DYNAMIC_OBSTACLES_FACTS, _dynamic_obstacles),
)


def _family(env: gym.Env) -> tuple[tuple[Fact, ...], Reader | None]:
    base = env.unwrapped
    for cls, facts, reader in FAMILIES:
        if isinstance(base, cls):
            return facts, reader
    return (), None


def facts_of(env: gym.Env) -> tuple[Fact, ...]:
    """The facts recorded for ``env``: the generic ones, then its family's."""
    return GENERIC_FACTS + _family(env)[0]


def read_facts(env: gym.Env) -> dict[str, int | float]:
    """The value of every fact of :func:`facts_of` in the env's current state (draws no randomness)."""
    base = env.unwrapped
    values = _generic(base)
    reader = _family(env)[1]
    if reader is not None:
        values.update(reader(base))
    return values


class FactRecorder:
    """Collects the facts of one env step by step and returns them as typed arrays ``{name: [n]}``."""

    def __init__(self, env: gym.Env) -> None:
        self.facts = facts_of(env)
        self._rows: dict[str, list[int | float]] = {f.name: [] for f in self.facts}

    def record(self, env: gym.Env) -> None:
        """Append the facts of the env's current state (call before each action)."""
        values = read_facts(env)
        for name, rows in self._rows.items():
            rows.append(values[name])

    def arrays(self) -> dict[str, np.ndarray]:
        """``{name: array [n]}`` of the rows recorded so far, each in its fact's dtype."""
        return {f.name: np.asarray(self._rows[f.name], dtype=f.dtype) for f in self.facts}


def spec_facts(spec: EnvSpec) -> tuple[Fact, ...]:
    """:func:`facts_of` for the env ``spec`` builds."""
    env = make_env(spec)
    try:
        return facts_of(env)
    finally:
        env.close()


__all__ = [
    "CATEGORICAL",
    "FACTS",
    "FACT_DTYPES",
    "SCALAR",
    "Fact",
    "FactRecorder",
    "facts_of",
    "read_facts",
    "spec_facts",
]
