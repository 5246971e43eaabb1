"""Data-collection policies: the collector's interface, determinism, and the mixed policy's spread."""

from __future__ import annotations

import json

import numpy as np
import pytest

from envs import EnvSpec, EnvSpecError, make_env, make_policy
from envs.policies import DEFAULT_WEIGHTS, MODES, POLICY_NAMES


def rollout(env, policy, seed: int, rng_seed: int) -> tuple[list[int], float]:
    """One episode as the collector plays it: env.reset, then policy.reset, then act/step."""
    env.reset(seed=seed)
    policy.reset(env, np.random.default_rng(rng_seed))
    actions, ret = [], 0.0
    while True:
        actions.append(policy.act(env))
        _, reward, terminated, truncated, _ = env.step(actions[-1])
        ret += float(reward)
        if terminated or truncated:
            return actions, ret


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_same_seeds_same_actions(name):
    env = make_env(EnvSpec("MiniGrid-Dynamic-Obstacles-6x6-v0"))
    runs = []
    for _ in range(2):
        policy = make_policy(name, env, **({"epsilon": 0.3} if name == "expert" else {}))
        np.random.seed(len(runs))  # global numpy state must not matter
        runs.append([(rollout(env, policy, seed, 100 + seed), policy.current_mode) for seed in range(8)])
    assert runs[0] == runs[1]
    other = make_policy(name, env, **({"epsilon": 0.3} if name == "expert" else {}))
    shifted = [(rollout(env, other, seed, 999 + seed), other.current_mode) for seed in range(8)]
    assert shifted != runs[0]  # the rng passed to reset is what drives the randomness


def test_interface_and_describe_are_json():
    env = make_env(EnvSpec("MiniGrid-MemoryS7FixedStart-v0"))
    for name in POLICY_NAMES:
        policy = make_policy(name, env)
        assert policy.name == name
        env.reset(seed=0)
        policy.reset(env, np.random.default_rng(0))
        assert policy.current_mode in policy.MODES
        assert 0 <= policy.act(env) < env.action_space.n
        desc = policy.describe()
        assert json.loads(json.dumps(desc)) == desc and desc["name"] == name
    mixed = make_policy("mixed", env)
    assert mixed.MODES == MODES and mixed.describe()["weights"] == DEFAULT_WEIGHTS
    assert make_policy("expert", env, epsilon=0.25).MODES == ("expert_eps0.25",)


def test_random_policy_is_uniform_over_the_action_space():
    env = make_env(EnvSpec("MiniGrid-Dynamic-Obstacles-5x5-v0"))  # 3 actions only
    policy = make_policy("random", env)
    env.reset(seed=0)
    policy.reset(env, np.random.default_rng(0))
    counts = np.bincount([policy.act(env) for _ in range(3000)], minlength=3)
    assert len(counts) == 3 and np.all(np.abs(counts / 3000 - 1 / 3) < 0.04)


@pytest.mark.parametrize(
    "env_id",
    ["MiniGrid-DoorKey-8x8-v0", "MiniGrid-Dynamic-Obstacles-8x8-v0", "MiniGrid-MemoryS7FixedStart-v0"],
)
def test_mixed_policy_spreads_returns(env_id):
    env = make_env(EnvSpec(env_id))
    policy = make_policy("mixed", env)
    returns, modes = [], []
    for seed in range(60):
        returns.append(rollout(env, policy, seed, seed)[1])
        modes.append(policy.current_mode)
    returns = np.array(returns)
    assert np.mean(returns <= 0) >= 0.1  # failures
    assert np.mean(returns >= 0.85) >= 0.3  # near-optimal
    assert np.sum((returns > 0.1) & (returns < 0.8)) >= 1  # mediocre
    assert set(modes) == set(MODES)
    # Modes do what they say: pure expert always succeeds, deliberate failure never does.
    by_mode = {m: returns[[x == m for x in modes]] for m in MODES}
    assert np.all(by_mode["expert"] > 0.85) and np.all(by_mode["failure"] <= 0)


def test_mixed_weights_select_modes():
    env = make_env(EnvSpec("MiniGrid-MemoryS7FixedStart-v0"))
    policy = make_policy("mixed", env, weights={"failure": 2.0, "expert": 0})
    assert policy.describe()["weights"] == {m: (2.0 if m == "failure" else 0.0) for m in MODES}
    for seed in range(10):
        _, ret = rollout(env, policy, seed, seed)
        assert policy.current_mode == "failure" and ret == 0


def test_expert_epsilon_one_is_random_and_zero_is_expert():
    env = make_env(EnvSpec("MiniGrid-DoorKey-6x6-v0"))
    greedy = [rollout(env, make_policy("expert", env), s, s)[1] for s in range(10)]
    assert min(greedy) > 0.9
    noisy = make_policy("expert", env, epsilon=1.0)
    env.reset(seed=0)
    noisy.reset(env, np.random.default_rng(0))
    acts = [noisy.act(env) for _ in range(700)]
    assert set(acts) == set(range(7))  # the expert alone would never drop or press done


@pytest.mark.parametrize(
    ("name", "params", "match"),
    [
        ("greedy", {}, "unknown policy 'greedy': expected one of expert, mixed, random"),
        ("random", {"epsilon": 0.1}, "unknown parameter\\(s\\) \\['epsilon'\\] for policy 'random'"),
        ("expert", {"weights": {}}, "unknown parameter\\(s\\) \\['weights'\\] for policy 'expert'"),
        ("expert", {"epsilon": 1.5}, "invalid epsilon 1.5"),
        ("expert", {"epsilon": "0.1"}, "invalid epsilon '0.1'"),
        ("mixed", {"weights": {"sloppy": 1}}, "unknown mode\\(s\\) \\['sloppy'\\] in weights"),
        ("mixed", {"weights": {"random": -1}}, "invalid weight -1 for mode 'random'"),
        ("mixed", {"weights": {"random": 0}}, "at least one mode needs a weight > 0"),
        ("mixed", {"weights": [0.5, 0.5]}, "invalid weights \\[0.5, 0.5\\]"),
    ],
)
def test_bad_policy_input_is_one_clear_error(name, params, match):
    env = make_env(EnvSpec("MiniGrid-Empty-5x5-v0"))
    with pytest.raises(EnvSpecError, match=match) as info:
        make_policy(name, env, **params)
    assert "\n" not in str(info.value)


def test_expert_policies_need_an_expert_random_does_not():
    env = make_env(EnvSpec("MiniGrid-FourRooms-v0"))
    for name in ("expert", "mixed"):
        with pytest.raises(EnvSpecError, match="no scripted expert for env 'MiniGrid-FourRooms-v0'"):
            make_policy(name, env)
    assert make_policy("random", env).name == "random"


def test_act_before_reset_is_a_programming_error():
    env = make_env(EnvSpec("MiniGrid-Empty-5x5-v0"), seed=0)
    with pytest.raises(RuntimeError, match="before reset"):
        make_policy("random", env).act(env)


def test_memory_delayed_expert_keeps_the_cue_within_a_short_context():
    """Delayed Memory episodes wander in the start room and hand over only with the cue in view.

    So a successful episode of any length saw the cue a few steps before its end: a decision
    transformer with a 10-step context can read the cue whatever return it is asked for.
    """
    env = make_env(EnvSpec("MiniGrid-MemoryS7FixedStart-v0"))
    base = env.unwrapped
    policy = make_policy("mixed", env, weights={"delayed_expert": 1.0})
    expert = policy.expert
    gaps, returns, seed = [], [], 0
    while len(returns) < 150:
        env.reset(seed=seed)
        policy.reset(env, np.random.default_rng(seed))
        seed += 1
        last_seen, took_over_at, ret = None, None, 0.0
        while True:
            if base.agent_sees(*expert.cue_cell(base)):
                last_seen = base.step_count
            action = policy.act(env)
            if policy.took_over and took_over_at is None:
                took_over_at = base.step_count
                assert took_over_at >= policy.delay and base.agent_sees(*expert.cue_cell(base))
            if took_over_at is None:
                assert expert.in_start_room(tuple(base.agent_pos))
            _, reward, terminated, truncated, _ = env.step(action)
            ret += float(reward)
            if terminated or truncated:
                break
        returns.append(ret)
        if ret > 0:
            gaps.append(base.step_count - last_seen)
        else:  # a delayed episode only fails by running out of time
            assert truncated and not terminated
    assert len(gaps) >= 100 and max(gaps) <= 9, max(gaps)
    returns = np.array(returns)
    # returns cover the range: every fifth of (0, 1) holds some episodes
    assert all(np.sum((returns > lo) & (returns <= lo + 0.2)) >= 5 for lo in (0.0, 0.2, 0.4, 0.6, 0.8))
