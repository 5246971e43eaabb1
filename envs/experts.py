"""Scripted experts: near-optimal MiniGrid policies that read the full env state (no learning).

Every expert replans from ``env.unwrapped`` (grid, agent pose, carried object) at every step over
agent poses ``(x, y, direction)`` and the moves turn left, turn right and forward: a shortest-path
planner (A*, :func:`plan`), or for dynamic obstacles a cost-to-go field of the static room
(:func:`pose_distances`). So an expert recovers from any state a random or perturbed action leaves it
in. Each expert also scripts a deliberate *failure* behaviour (``fail_act``), used by the mixed data
policy so that datasets contain low-return episodes that still look purposeful.

Experts are chosen by env class (``isinstance`` on minigrid's classes), not by env id, so every size
and random variant of a family is covered:

| Family                          | Expert                          | Failure behaviour                      |
|---------------------------------|---------------------------------|----------------------------------------|
| ``EmptyEnv``                    | :class:`GoalExpert`             | random walk that never enters the goal |
| ``DoorKeyEnv``                  | :class:`DoorKeyExpert`          | fetches the key, never opens the door  |
| ``DynamicObstaclesEnv``         | :class:`DynamicObstaclesExpert` | walks into an obstacle (reward -1)     |
| ``MemoryEnv`` (and fixed start) | :class:`MemoryExpert`           | goes to the object that does not match |

Measured on seeds 0..199 (``tests/envs/test_experts.py`` checks >= 0.98): DoorKey-8x8,
Dynamic-Obstacles-8x8 and MemoryS7FixedStart all 200/200 successes, no collision.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable

import gymnasium as gym
import numpy as np
from minigrid.core.actions import Actions
from minigrid.core.constants import DIR_TO_VEC
from minigrid.envs.doorkey import DoorKeyEnv
from minigrid.envs.dynamicobstacles import DynamicObstaclesEnv
from minigrid.envs.empty import EmptyEnv
from minigrid.envs.memory import MemoryEnv
from minigrid.minigrid_env import MiniGridEnv

from envs.errors import EnvSpecError

LEFT, RIGHT, FORWARD = int(Actions.left), int(Actions.right), int(Actions.forward)
PICKUP, TOGGLE = int(Actions.pickup), int(Actions.toggle)

Pose = tuple[int, int, int]  # (x, y, direction)
Cell = tuple[int, int]


# --------------------------------------------------------------------------- planner


def walkable(env: MiniGridEnv, blocked: Iterable[Cell] = ()) -> np.ndarray:
    """Bool mask [W, H]: cells the agent can stand on (empty, goal, floor, open door), minus ``blocked``.

    Lava is never walkable (it ends the episode); objects that cannot be overlapped (walls, keys,
    balls, closed doors, moving obstacles) are not walkable.
    """
    grid = env.grid
    # grid.grid is minigrid's flat row-major cell list: index j * width + i.
    flat = [c is None or (c.type != "lava" and c.can_overlap()) for c in grid.grid]
    mask = np.array(flat, dtype=bool).reshape(grid.height, grid.width).T.copy()
    for x, y in blocked:
        mask[x, y] = False
    return mask


def poses_on(cells: Iterable[Cell]) -> set[Pose]:
    """Target poses standing on any of ``cells`` (any direction)."""
    return {(x, y, d) for x, y in cells for d in range(4)}


def poses_facing(cells: Iterable[Cell], free: np.ndarray) -> set[Pose]:
    """Target poses on a walkable cell with one of ``cells`` right in front."""
    out = set()
    for x, y in cells:
        for d, (dx, dy) in enumerate(DIR_TO_VEC):
            px, py = x - int(dx), y - int(dy)
            if 0 <= px < free.shape[0] and 0 <= py < free.shape[1] and free[px, py]:
                out.add((px, py, d))
    return out


def plan(start: Pose, targets: set[Pose], free: np.ndarray) -> list[int] | None:
    """Shortest action sequence (left/right/forward) from ``start`` to any pose in ``targets``.

    A* search over poses with the Manhattan distance to the nearest target cell as heuristic
    (admissible and consistent: a forward move changes it by at most one, a turn not at all), so
    the plan is as short as breadth-first search's while open rooms expand few poses. Forward moves
    only onto ``free`` cells. Returns ``[]`` when ``start`` is already a target and ``None`` when no
    target is reachable.
    """
    if start in targets:
        return []
    goals = sorted({(x, y) for x, y, _ in targets})
    if not goals:
        return None

    def h(x: int, y: int) -> int:
        return min(abs(x - gx) + abs(y - gy) for gx, gy in goals)

    width, height = free.shape
    parent: dict[Pose, tuple[Pose, int]] = {start: (start, -1)}
    cost = {start: 0}
    tie = 0  # FIFO among equal (f, h): deterministic and independent of pose ordering
    heap = [(h(start[0], start[1]), h(start[0], start[1]), tie, start)]
    while heap:
        _, _, _, pose = heapq.heappop(heap)
        if pose in targets:
            path = []
            while pose != start:
                pose, action = parent[pose]
                path.append(action)
            return path[::-1]
        x, y, d = pose
        g = cost[pose] + 1
        dx, dy = DIR_TO_VEC[d]
        nexts = [((x, y, (d - 1) % 4), LEFT), ((x, y, (d + 1) % 4), RIGHT)]
        fx, fy = x + int(dx), y + int(dy)
        if 0 <= fx < width and 0 <= fy < height and free[fx, fy]:
            nexts.append(((fx, fy, d), FORWARD))
        for nxt, action in nexts:
            if cost.get(nxt, g + 1) <= g:
                continue
            cost[nxt] = g
            parent[nxt] = (pose, action)
            hn = h(nxt[0], nxt[1])
            tie += 1
            heapq.heappush(heap, (g + hn, hn, tie, nxt))
    return None


def agent_pose(env: MiniGridEnv) -> Pose:
    x, y = env.agent_pos
    return (int(x), int(y), int(env.agent_dir))


def first_step(env: MiniGridEnv, targets: set[Pose], free: np.ndarray) -> int | None:
    """First action of a shortest plan to ``targets``; None if unreachable or already there."""
    path = plan(agent_pose(env), targets, free)
    return path[0] if path else None


def find_cells(env: MiniGridEnv, obj_type: str) -> list[Cell]:
    """Positions of every object of ``obj_type`` on the grid, in row-major order."""
    width = env.grid.width
    return [
        (k % width, k // width) for k, c in enumerate(env.grid.grid) if c is not None and c.type == obj_type
    ]


def front_cell(env: MiniGridEnv):
    return env.grid.get(*env.front_pos)


# --------------------------------------------------------------------------- experts


class Expert:
    """A scripted policy for one env family: ``act`` plays well, ``fail_act`` fails on purpose.

    Both read only ``env.unwrapped``'s state and replan every step, so they hold no episode state.
    """

    name: str = "expert"

    def act(self, env: MiniGridEnv) -> int:
        """The expert action in the env's current state."""
        raise NotImplementedError

    def fail_act(self, env: MiniGridEnv, rng: np.random.Generator) -> int:
        """An action of the family's deliberate-failure behaviour (randomness from ``rng``)."""
        raise NotImplementedError

    def forward_ends_episode(self, env: MiniGridEnv) -> bool:
        """Whether moving forward now would end the episode (goal or lava ahead)."""
        fwd = front_cell(env)
        return fwd is not None and fwd.type in ("goal", "lava")

    def wander_act(self, env: MiniGridEnv, rng: np.random.Generator) -> int:
        """A uniformly random action, with a left turn instead of a forward move that ends the episode.

        Random play that keeps the episode going: the mixed policy's delayed-expert mode wanders
        this way before the expert takes over, which yields episodes of any length (any return).
        """
        action = int(rng.integers(env.action_space.n))
        if action == FORWARD and self.forward_ends_episode(env):
            return LEFT
        return action

    def ready_to_take_over(self, env: MiniGridEnv) -> bool:
        """Whether the delayed-expert mode may stop wandering and hand over to the expert now.

        Always, by default. A family whose task needs something seen first (Memory's cue) waits
        until the agent sees it, so the expert's part of the episode starts from that observation.
        """
        return True


class GoalExpert(Expert):
    """
    ## Description

    Empty rooms (``EmptyEnv``, fixed and random starts): shortest path to the green goal square.

    ## Failure behaviour

    A uniformly random walk over the env's actions that turns left instead of stepping onto the
    goal (:meth:`Expert.wander_act`), so the episode always times out with reward 0.
    """

    name = "goal"

    def act(self, env: MiniGridEnv) -> int:
        free = walkable(env)
        step = first_step(env, poses_on(find_cells(env, "goal")), free)
        return LEFT if step is None else step

    def fail_act(self, env: MiniGridEnv, rng: np.random.Generator) -> int:
        return self.wander_act(env, rng)


class DoorKeyExpert(Expert):
    """
    ## Description

    ``DoorKeyEnv`` (all sizes): go to the key and pick it up, go to the door and toggle it (unlocks
    and opens it), then take the shortest path to the goal. Each phase is read off the state, so a
    dropped key or a door closed again by a random action is handled by replanning.

    ## Failure behaviour

    Fetches the key like the expert, then wanders at random (left/right/forward) carrying it and
    never toggles the door: the episode times out with reward 0.
    """

    name = "doorkey"

    def _fetch_key(self, env: MiniGridEnv, free: np.ndarray) -> int:
        keys = find_cells(env, "key")
        fwd = front_cell(env)
        if fwd is not None and fwd.type == "key":
            return PICKUP
        step = first_step(env, poses_facing(keys, free), free)
        return LEFT if step is None else step

    def act(self, env: MiniGridEnv) -> int:
        free = walkable(env)
        carrying_key = env.carrying is not None and env.carrying.type == "key"
        doors = find_cells(env, "door")
        closed = [p for p in doors if not env.grid.get(*p).is_open]
        if closed:
            door = closed[0]
            if env.grid.get(*door).is_locked and not carrying_key:
                return self._fetch_key(env, free)
            if tuple(env.front_pos) == door:
                return TOGGLE
            step = first_step(env, poses_facing([door], free), free)
            return LEFT if step is None else step
        step = first_step(env, poses_on(find_cells(env, "goal")), free)
        if step is not None:
            return step
        # The goal is cut off (e.g. by a key dropped in a corridor): pick the obstruction up.
        if env.carrying is None and find_cells(env, "key"):
            return self._fetch_key(env, free)
        return LEFT

    def fail_act(self, env: MiniGridEnv, rng: np.random.Generator) -> int:
        if env.carrying is None and find_cells(env, "key"):
            return self._fetch_key(env, walkable(env))
        return int(rng.choice([LEFT, RIGHT, FORWARD]))


def pose_distances(free: np.ndarray, targets: Iterable[Cell]) -> dict[Pose, int]:
    """Fewest left/right/forward actions from every pose to standing on any of ``targets``.

    Breadth-first search backwards from the target poses over the pose graph of ``free`` (a forward
    move enters a free cell; turns change only the direction). Unreachable poses are absent.
    """
    width, height = free.shape
    dist: dict[Pose, int] = {}
    frontier = []
    for x, y in targets:
        for d in range(4):
            dist[(x, y, d)] = 0
            frontier.append((x, y, d))
    while frontier:
        nxt = []
        for x, y, d in frontier:
            g = dist[(x, y, d)] + 1
            dx, dy = DIR_TO_VEC[d]
            px, py = x - int(dx), y - int(dy)  # the pose one forward move behind
            preds = [(x, y, (d + 1) % 4), (x, y, (d - 1) % 4)]
            if 0 <= px < width and 0 <= py < height and free[px, py]:
                preds.append((px, py, d))
            for pose in preds:
                if pose not in dist:
                    dist[pose] = g
                    nxt.append(pose)
        frontier = nxt
    return dist


class DynamicObstaclesExpert(Expert):
    """
    ## Description

    ``DynamicObstaclesEnv`` (all sizes, fixed and random starts): greedy on the cost-to-go of the
    static room. Obstacles move to a random neighbouring cell every step, so a route planned around
    where they are now is stale one step later; the expert therefore ranks its three actions by
    ``1 + distance(next pose)`` in the room *without* obstacles (forward first on ties) and rules
    out only the one move that can collide: forward with a non-goal object in front (minigrid checks
    the front cell before the obstacles move; an obstacle that moves into that cell during the step
    merely blocks the move). When the front is blocked it turns, onto a shortest route where one
    exists; turning is also the env's only way to wait (it has no no-op action).

    On Dynamic-Obstacles-8x8 (seeds 0..2999) this takes 15.3 steps on average (return 0.946);
    replanning A* around the obstacles' current cells took 17.1. For reference, an agent that
    knew every future obstacle move in advance would need 12.7 (0.955); a one-step lookahead over
    simulated obstacle moves (32 and 128 samples per action) did not beat the greedy rule
    (``benchmarks/dynamic_obstacles_bound.py`` measures all three on the same seeds).

    ## Failure behaviour

    Walks to the nearest obstacle and steps forward into it: reward -1, episode over. If no
    obstacle can be reached it steps into whatever non-free cell is in front, or turns.
    """

    name = "dynamic_obstacles"

    def __init__(self) -> None:
        # The static room of a family rarely changes between episodes: memoize its distance field.
        self._dist_cache: dict[tuple, dict[Pose, int]] = {}

    def _distances(self, room: np.ndarray, goals: list[Cell]) -> dict[Pose, int]:
        key = (room.shape, room.tobytes(), tuple(goals))
        dist = self._dist_cache.get(key)
        if dist is None:
            if len(self._dist_cache) >= 64:
                self._dist_cache.clear()
            dist = self._dist_cache[key] = pose_distances(room, goals)
        return dist

    @staticmethod
    def _front_clear(env: MiniGridEnv) -> bool:
        fwd = front_cell(env)
        return fwd is None or fwd.type == "goal"

    def forward_ends_episode(self, env: MiniGridEnv) -> bool:
        return not self._front_clear(env) or super().forward_ends_episode(env)

    def act(self, env: MiniGridEnv) -> int:
        room = walkable(env)
        for obstacle in env.obstacles:  # obstacles move every step: plan in the static room
            if obstacle.cur_pos is not None:
                room[tuple(obstacle.cur_pos)] = True
        dist = self._distances(room, find_cells(env, "goal"))
        x, y, d = agent_pose(env)
        fx, fy = (int(v) for v in env.front_pos)
        options = []
        if self._front_clear(env) and (fx, fy, d) in dist:
            options.append((dist[(fx, fy, d)], 0, FORWARD))
        for rank, (action, nd) in enumerate(((LEFT, (d - 1) % 4), (RIGHT, (d + 1) % 4)), start=1):
            if (x, y, nd) in dist:
                options.append((dist[(x, y, nd)], rank, action))
        return min(options)[2] if options else LEFT

    def fail_act(self, env: MiniGridEnv, rng: np.random.Generator) -> int:
        fwd = front_cell(env)
        if fwd is not None and fwd.type == "ball":
            return FORWARD
        free = walkable(env)
        step = first_step(env, poses_facing([tuple(o.cur_pos) for o in env.obstacles], free), free)
        if step is not None:
            return step
        if not self._front_clear(env):
            return FORWARD
        return int(rng.choice([LEFT, RIGHT]))


class MemoryExpert(Expert):
    """
    ## Description

    ``MemoryEnv`` and :class:`envs.custom.MemoryFixedStartEnv`: reads the cue object in the start
    room (the key or ball furthest left) and walks to the cell next to the end-of-hallway object of
    the same type (minigrid's success cell). The cell next to the other object is never entered.

    ## Failure behaviour

    Walks to the cell next to the object that does *not* match the cue: reward 0, episode over.

    ## Delayed play

    The mixed policy's delayed-expert mode wanders inside the start room and hands over only once
    the cue is in view, so a long successful episode still shows the cue shortly before its end.
    """

    name = "memory"

    @staticmethod
    def end_cells(env: MiniGridEnv) -> tuple[Cell, Cell]:
        """(matching, other): the cells next to the matching and the non-matching end objects."""
        cue = MemoryExpert.cue_cell(env)
        ends = [p for p in find_cells(env, "key") + find_cells(env, "ball") if p != cue]
        cue_type = env.grid.get(*cue).type
        mid = env.height // 2

        def beside(p: Cell) -> Cell:  # the hallway cell adjacent to an end object
            return (p[0], p[1] + 1) if p[1] < mid else (p[0], p[1] - 1)

        match = [beside(p) for p in ends if env.grid.get(*p).type == cue_type]
        other = [beside(p) for p in ends if env.grid.get(*p).type != cue_type]
        return match[0], other[0]

    @staticmethod
    def cue_cell(env: MiniGridEnv) -> Cell:
        """The cue object's cell in the start room (the key or ball furthest left)."""
        return min(find_cells(env, "key") + find_cells(env, "ball"))

    @staticmethod
    def in_start_room(cell: Cell) -> bool:
        """Whether ``cell`` lies in the start room (left of the corridor's opening at x = 4)."""
        return cell[0] < 4

    def forward_ends_episode(self, env: MiniGridEnv) -> bool:
        return tuple(env.front_pos) in self.end_cells(env)

    def wander_act(self, env: MiniGridEnv, rng: np.random.Generator) -> int:
        """A uniformly random action that stays in the start room (a left turn replaces leaving it).

        The delayed-expert mode wanders here, near the cue, and hands over to the expert only once
        the cue is in view (:meth:`ready_to_take_over`). So every delayed episode that succeeds saw
        the cue a few steps before its end, within a short context, whatever its length.
        """
        action = int(rng.integers(env.action_space.n))
        if action == FORWARD and not self.in_start_room(tuple(env.front_pos)):
            return LEFT
        return action

    def ready_to_take_over(self, env: MiniGridEnv) -> bool:
        return bool(env.agent_sees(*self.cue_cell(env)))

    def _go(self, env: MiniGridEnv, target: Cell, avoid: Cell) -> int:
        free = walkable(env, blocked=[avoid])
        step = first_step(env, poses_on([target]), free)
        return LEFT if step is None else step

    def act(self, env: MiniGridEnv) -> int:
        match, other = self.end_cells(env)
        return self._go(env, match, avoid=other)

    def fail_act(self, env: MiniGridEnv, rng: np.random.Generator) -> int:
        match, other = self.end_cells(env)
        return self._go(env, other, avoid=match)


#: Env class -> expert class; the first ``isinstance`` match wins.
EXPERTS: tuple[tuple[type[MiniGridEnv], type[Expert]], ...] = (
    (DoorKeyEnv, DoorKeyExpert),
    (DynamicObstaclesEnv, DynamicObstaclesExpert),
    (EmptyEnv, GoalExpert),
    (MemoryEnv, MemoryExpert),
)


def env_name(env: gym.Env) -> str:
    """The env's registered id, or its class name for an unregistered env."""
    spec = getattr(env, "spec", None) or getattr(env.unwrapped, "spec", None)
    return spec.id if spec is not None else type(env.unwrapped).__name__


def make_expert(env: gym.Env) -> Expert:
    """The scripted expert for ``env``'s family; :class:`EnvSpecError` if there is none."""
    base = env.unwrapped
    for env_cls, expert_cls in EXPERTS:
        if isinstance(base, env_cls):
            return expert_cls()
    families = ", ".join(c.__name__ for c, _ in EXPERTS)
    raise EnvSpecError(f"no scripted expert for env {env_name(env)!r}: experts exist for {families}")


def has_expert(env: gym.Env) -> bool:
    """Whether :func:`make_expert` supports ``env``."""
    return any(isinstance(env.unwrapped, c) for c, _ in EXPERTS)
