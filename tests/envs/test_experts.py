"""Scripted experts: the planner is optimal, experts succeed, failure behaviours fail."""

from __future__ import annotations

from collections import deque

import gymnasium as gym
import numpy as np
import pytest
from minigrid.core.constants import DIR_TO_VEC

from envs import EnvSpec, EnvSpecError, make_env
from envs.experts import (
    FORWARD,
    RIGHT,
    DoorKeyExpert,
    DynamicObstaclesExpert,
    GoalExpert,
    MemoryExpert,
    has_expert,
    make_expert,
    plan,
    pose_distances,
    poses_on,
)
from tests.envs.helpers import run_episode

MAIN_ENVS = ["MiniGrid-DoorKey-8x8-v0", "MiniGrid-Dynamic-Obstacles-8x8-v0", "MiniGrid-MemoryS7FixedStart-v0"]


def bfs_distances(start, free):
    """Reference: plain BFS distance to every reachable pose."""
    dist = {start: 0}
    queue = deque([start])
    while queue:
        x, y, d = pose = queue.popleft()
        dx, dy = DIR_TO_VEC[d]
        nexts = [(x, y, (d - 1) % 4), (x, y, (d + 1) % 4)]
        fx, fy = x + int(dx), y + int(dy)
        if 0 <= fx < free.shape[0] and 0 <= fy < free.shape[1] and free[fx, fy]:
            nexts.append((fx, fy, d))
        for nxt in nexts:
            if nxt not in dist:
                dist[nxt] = dist[pose] + 1
                queue.append(nxt)
    return dist


def test_planner_paths_are_valid_and_shortest():
    rng = np.random.default_rng(0)
    checked_unreachable = 0
    for _ in range(60):
        free = rng.random((9, 7)) < 0.7
        cells = np.argwhere(free)
        sx, sy = cells[rng.integers(len(cells))]
        start = (int(sx), int(sy), int(rng.integers(4)))
        goal = tuple(int(v) for v in cells[rng.integers(len(cells))])
        targets = poses_on([goal])
        path = plan(start, targets, free)
        dist = bfs_distances(start, free)
        best = min((dist[t] for t in targets if t in dist), default=None)
        if best is None:
            assert path is None
            checked_unreachable += 1
            continue
        assert len(path) == best
        x, y, d = start  # replay: forward only onto free cells, ending on the goal
        for action in path:
            if action == FORWARD:
                x, y = x + int(DIR_TO_VEC[d][0]), y + int(DIR_TO_VEC[d][1])
                assert free[x, y]
            else:
                d = (d + (1 if action == RIGHT else -1)) % 4
        assert (x, y) == goal
    assert checked_unreachable > 0  # the random maps did exercise the unreachable case
    assert plan((1, 1, 0), poses_on([(1, 1)]), np.ones((3, 3), bool)) == []


def test_pose_distances_equal_forward_bfs_to_the_targets():
    """The backward distance field agrees with a forward BFS from every pose (and misses the unreachable)."""
    rng = np.random.default_rng(1)
    for _ in range(15):
        free = rng.random((6, 5)) < 0.75
        cells = [tuple(int(v) for v in c) for c in np.argwhere(free)]
        goals = [cells[int(rng.integers(len(cells)))]]
        field = pose_distances(free, goals)
        for x, y in cells:
            for d in range(4):
                dist = bfs_distances((x, y, d), free)
                best = min((dist[t] for t in poses_on(goals) if t in dist), default=None)
                assert field.get((x, y, d)) == best


def test_dynamic_obstacles_expert_takes_the_static_shortest_route_when_unblocked():
    """With no obstacle in the way the expert is as fast as the empty room allows (11 steps on 8x8)."""
    env = make_env(EnvSpec("MiniGrid-Dynamic-Obstacles-8x8-v0"))
    expert = make_expert(env)
    lengths = []
    for seed in range(200):
        length, blocked = 0, False
        env.reset(seed=seed)
        while True:
            base = env.unwrapped
            action = expert.act(base)
            pos = tuple(base.agent_pos)
            front = base.grid.get(*base.front_pos)
            blocked |= front is not None and front.type == "ball"
            _, reward, terminated, truncated, _ = env.step(action)
            blocked |= action == FORWARD and tuple(env.unwrapped.agent_pos) == pos
            length += 1
            if terminated or truncated:
                break
        assert reward > 0
        if not blocked:
            assert length == 11
        lengths.append(length)
    # Replanning around the obstacles' current cells averaged 17.1 steps here; the greedy rule ~15.3.
    assert np.mean(lengths) < 16.0
    assert sum(n == 11 for n in lengths) >= 20


@pytest.mark.parametrize("env_id", MAIN_ENVS)
def test_expert_success_over_200_seeds(env_id):
    env = make_env(EnvSpec(env_id))
    expert = make_expert(env)
    returns = np.array([run_episode(env, seed, lambda e: expert.act(e.unwrapped))[0] for seed in range(200)])
    assert np.mean(returns > 0) >= 0.98
    assert np.all(returns >= 0)  # in particular: no dynamic-obstacle collision (reward -1), ever


@pytest.mark.parametrize(
    ("env_id", "expert_cls"),
    [
        ("MiniGrid-Empty-5x5-v0", GoalExpert),
        ("MiniGrid-Empty-Random-6x6-v0", GoalExpert),
        ("MiniGrid-Empty-16x16-v0", GoalExpert),
        ("MiniGrid-DoorKey-5x5-v0", DoorKeyExpert),
        ("MiniGrid-DoorKey-16x16-v0", DoorKeyExpert),
        ("MiniGrid-Dynamic-Obstacles-Random-6x6-v0", DynamicObstaclesExpert),
        ("MiniGrid-Dynamic-Obstacles-16x16-v0", DynamicObstaclesExpert),
        ("MiniGrid-MemoryS11FixedStart-v0", MemoryExpert),
        ("MiniGrid-MemoryS13Random-v0", MemoryExpert),
    ],
)
def test_expert_covers_other_sizes_of_each_family(env_id, expert_cls):
    env = make_env(EnvSpec(env_id))
    expert = make_expert(env)
    assert type(expert) is expert_cls
    returns = np.array([run_episode(env, seed, lambda e: expert.act(e.unwrapped))[0] for seed in range(20)])
    assert np.mean(returns > 0) >= 0.95 and np.all(returns >= 0)


def test_memory_expert_targets_minigrid_success_cell():
    env = make_env(EnvSpec("MiniGrid-MemoryS9FixedStart-v0"))
    for seed in range(20):
        env.reset(seed=seed)
        match, other = MemoryExpert.end_cells(env.unwrapped)
        assert (match, other) == (env.unwrapped.success_pos, env.unwrapped.failure_pos)


def test_dynamic_obstacles_expert_never_steps_into_a_blocked_cell():
    """The only collision is moving forward with a non-goal object in front: the expert never does."""
    env = make_env(EnvSpec("MiniGrid-Dynamic-Obstacles-6x6-v0"))
    expert = make_expert(env)
    for seed in range(50):
        env.reset(seed=seed)
        while True:
            base = env.unwrapped
            action = expert.act(base)
            front = base.grid.get(*base.front_pos)
            assert not (action == FORWARD and front is not None and front.type != "goal")
            _, reward, terminated, truncated, _ = env.step(action)
            assert reward >= 0
            if terminated or truncated:
                break


@pytest.mark.parametrize(
    ("env_id", "episodes", "expected"),
    [
        ("MiniGrid-MemoryS7FixedStart-v0", 20, "terminated_zero"),
        ("MiniGrid-Dynamic-Obstacles-8x8-v0", 20, "collision"),
        ("MiniGrid-DoorKey-5x5-v0", 5, "timeout"),
        ("MiniGrid-Empty-5x5-v0", 5, "timeout"),
    ],
)
def test_failure_behaviour_fails(env_id, episodes, expected):
    env = make_env(EnvSpec(env_id))
    expert = make_expert(env)
    rng = np.random.default_rng(0)
    for seed in range(episodes):
        ret, _, terminated, truncated = run_episode(env, seed, lambda e: expert.fail_act(e.unwrapped, rng))
        if expected == "terminated_zero":
            assert terminated and ret == 0
        elif expected == "collision":
            assert terminated and ret == -1
        else:
            assert truncated and not terminated and ret == 0
    if env_id.startswith("MiniGrid-DoorKey"):  # it fetched the key, the door stayed locked
        base = env.unwrapped
        door = next(c for c in base.grid.grid if c is not None and c.type == "door")
        assert base.carrying is not None and base.carrying.type == "key" and door.is_locked


def test_wander_never_ends_the_episode_early():
    env = make_env(EnvSpec("MiniGrid-Dynamic-Obstacles-5x5-v0"))
    expert = make_expert(env)
    rng = np.random.default_rng(1)
    for seed in range(3):
        ret, n, terminated, truncated = run_episode(env, seed, lambda e: expert.wander_act(e.unwrapped, rng))
        assert truncated and not terminated and ret == 0 and n == env.unwrapped.max_steps


def test_env_without_expert_is_a_clear_error():
    env = make_env(EnvSpec("MiniGrid-FourRooms-v0"))
    with pytest.raises(EnvSpecError, match="no scripted expert for env 'MiniGrid-FourRooms-v0'"):
        make_expert(env)
    assert not has_expert(env) and has_expert(make_env(EnvSpec("MiniGrid-MemoryS7FixedStart-v0")))


def test_expert_only_reads_the_unwrapped_state():
    """Fully observed and partial views of one env give the same expert actions."""
    partial = make_env(EnvSpec("MiniGrid-DoorKey-6x6-v0"))
    full = make_env(EnvSpec("MiniGrid-DoorKey-6x6-v0", fully_observed=True))
    expert = make_expert(partial)
    for seed in range(5):
        acts = []
        for env in (partial, full):
            env.reset(seed=seed)
            seq = []
            for _ in range(200):
                seq.append(expert.act(env.unwrapped))
                _, _, terminated, truncated, _ = env.step(seq[-1])
                if terminated or truncated:
                    break
            acts.append(seq)
        assert acts[0] == acts[1]
    assert isinstance(full, gym.Wrapper)  # the fully observed env really is a different wrapper stack
