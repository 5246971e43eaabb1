"""Benchmark: how well can any agent do on Dynamic-Obstacles? Three policies on the same seeds.

Obstacles move at random every step, so the return an agent can reach depends on what it may know:

- ``expert``: the scripted expert (:class:`envs.experts.DynamicObstaclesExpert`), greedy on the
  static room's cost-to-go. It sees the full current state, nothing of the future.
- ``lookahead``: one step of policy iteration over the expert. Each step, every action is scored by
  ``--samples`` simulated futures (a copy of the env with a *fresh* random generator, the action,
  then the expert to the end) and the best mean return wins (the expert's action on ties). If this
  barely beats the expert, the expert is close to the best policy that acts on the present state.
- ``clairvoyant``: knows the env's own random generator, i.e. every future obstacle move. A
  breadth-first search over action sequences on exact copies of the env finds the fewest steps to
  the goal without a collision. No causal policy can beat it: it bounds the achievable return.

Episodes are seeded ``--seed .. --seed + --episodes - 1``; each policy plays the same episodes, in
``--workers`` processes. Prints mean steps, mean return with a 95% CI, and success per policy.
Quality, not speed: it asserts nothing and times nothing.

Run by hand: ``python benchmarks/dynamic_obstacles_bound.py [--env ID] [--episodes 200] [--samples 32]``.
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from minigrid.minigrid_env import MiniGridEnv

from envs import EnvSpec, make_env
from envs.experts import FORWARD, LEFT, RIGHT, DynamicObstaclesExpert, agent_pose

ACTIONS = (LEFT, RIGHT, FORWARD)


def step(env: MiniGridEnv, action: int) -> tuple[float, bool]:
    """One env step on the unwrapped env: (reward, episode over)."""
    _, reward, terminated, truncated, _ = env.step(action)
    return float(reward), bool(terminated or truncated)


def expert_return(env: MiniGridEnv, expert: DynamicObstaclesExpert) -> float:
    """Play the expert from ``env``'s current state to the end; the return from here."""
    ret, done = 0.0, False
    while not done:
        r, done = step(env, expert.act(env))
        ret += r
    return ret


def lookahead_act(
    env: MiniGridEnv, expert: DynamicObstaclesExpert, samples: int, rng: np.random.Generator
) -> int:
    """The action with the best mean return over ``samples`` simulated futures, each then played by the expert."""
    default = expert.act(env)
    futures = rng.integers(2**63, size=samples)  # the same futures score every action (less noise)
    best, best_value = default, -math.inf
    for action in (default, *(a for a in ACTIONS if a != default)):  # the expert's action wins ties
        total = 0.0
        for future in futures:
            sim = copy.deepcopy(env)
            sim.np_random = np.random.default_rng(int(future))  # a future, not *the* future
            r, done = step(sim, action)
            total += r + (0.0 if done else expert_return(sim, expert))
        if total / samples > best_value + 1e-12:
            best, best_value = action, total / samples
    return best


def clairvoyant_steps(env: MiniGridEnv, limit: int = 64) -> int | None:
    """Fewest steps from ``env``'s state to the goal without a collision, knowing its random generator.

    Breadth-first over action sequences on deep copies of the env (the copies carry the generator, so
    each branch sees exactly the obstacle moves it would cause). Branches that reach the same agent pose,
    obstacle cells and generator state are the same future and are merged. ``None`` if none within ``limit``.
    """
    layer, seen = [env], set()
    for depth in range(1, limit + 1):
        nxt = []
        for node in layer:
            for action in ACTIONS:
                child = copy.deepcopy(node)
                reward, done = step(child, action)
                if done:
                    if reward > 0:
                        return depth
                    continue
                key = (
                    agent_pose(child),
                    tuple(sorted(tuple(o.cur_pos) for o in child.obstacles)),
                    str(child.np_random.bit_generator.state["state"]),
                )
                if key not in seen:
                    seen.add(key)
                    nxt.append(child)
        layer = nxt
    return None


def no_observation() -> None:
    """Stands in for ``gen_obs``: no policy here reads observations, and rendering them is half the cost."""
    return None


def play(job: tuple[str, str, int, int]) -> tuple[float, int, bool]:
    """One seeded episode of one policy: (return, steps, success)."""
    policy, env_id, seed, samples = job
    env = make_env(EnvSpec(env_id)).unwrapped
    env.reset(seed=seed)
    env.gen_obs = no_observation  # copies inherit it; the dynamics and the generator are untouched
    expert = DynamicObstaclesExpert()
    if policy == "clairvoyant":
        n = clairvoyant_steps(env)
        if n is None:
            return 0.0, env.max_steps, False
        return 1 - 0.9 * (n / env.max_steps), n, True
    rng = np.random.default_rng(seed)
    ret, done = 0.0, False
    while not done:
        action = lookahead_act(env, expert, samples, rng) if policy == "lookahead" else expert.act(env)
        r, done = step(env, action)
        ret += r
    return ret, env.step_count, ret > 0


def summary(name: str, results: list[tuple[float, int, bool]]) -> str:
    """One table row: mean steps, mean return with a normal 95% CI, success rate."""
    rets = [r for r, _, _ in results]
    mean = statistics.fmean(rets)
    half = 1.96 * statistics.stdev(rets) / math.sqrt(len(rets)) if len(rets) > 1 else 0.0
    steps = statistics.fmean(n for _, n, _ in results)
    success = sum(s for _, _, s in results) / len(results)
    return f"| {name} | {steps:.2f} | {mean:.4f} ({mean - half:.4f}-{mean + half:.4f}) | {success:.1%} |"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", default="MiniGrid-Dynamic-Obstacles-8x8-v0")
    p.add_argument("--episodes", type=int, default=200)
    p.add_argument("--seed", type=int, default=1000, help="first env seed")
    p.add_argument("--samples", type=int, default=32, help="simulated futures per action (lookahead)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument(
        "--policies", default="expert,lookahead,clairvoyant", help="comma-separated subset to play"
    )
    args = p.parse_args()
    policies = args.policies.split(",")
    seeds = range(args.seed, args.seed + args.episodes)
    print(f"{args.env}, seeds {seeds[0]}..{seeds[-1]}, lookahead samples {args.samples}\n")
    print("| policy | mean steps | mean return (95% CI) | success |\n| --- | --- | --- | --- |")
    with ProcessPoolExecutor(args.workers) as pool:
        for policy in policies:
            jobs = [(policy, args.env, s, args.samples) for s in seeds]
            results = list(pool.map(play, jobs, chunksize=max(1, len(jobs) // (4 * args.workers))))
            print(summary(policy, results), flush=True)


if __name__ == "__main__":
    main()
