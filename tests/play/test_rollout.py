"""Rollouts: deterministic per seed, vectorized == one-at-a-time, fed exactly the training windows, hookable."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dtinterp.data.episode import episodes_to_dataset
from dtinterp.data.windows import make_batch
from dtinterp.model import DTConfig, DTInputs, HookedDecisionTransformer
from dtinterp.model.checkpoint import Checkpoint
from dtinterp.play.rollout import EpisodeResult, choose_actions, episode_generator, rollout
from envs import EnvSpec, compact_obs, make_env

# LavaGap ends early when the agent walks into lava, so episodes have different lengths and slots are
# refilled at different steps. max_steps > max_timestep exercises the timestep clipping.
SPEC = EnvSpec("MiniGrid-LavaGapS5-v0", max_steps=30)
SEEDS = [3, 0, 7, 1, 12, 5, 9]


@pytest.fixture(scope="module")
def model() -> HookedDecisionTransformer:
    """A tiny untrained DT whose large init makes its greedy actions depend on its inputs."""
    cfg = DTConfig(
        obs_shape=(7, 7), context_len=4, max_timestep=16, n_layers=1, n_heads=2, d_model=32, d_mlp=64,
        init_range=0.5, seed=0,
    )  # fmt: skip
    m = HookedDecisionTransformer(cfg)
    with torch.no_grad():
        m.b_U[2] += 2.0  # lean towards "forward" so some greedy episodes end in lava before the limit
    return m.eval()


def _ckpt(model, scale: float = 1.0) -> Checkpoint:
    return Checkpoint.from_model(model, {"env_spec": SPEC.to_dict(), "rtg_scale": scale})


def _key(results: list[EpisodeResult]) -> list[tuple]:
    return [(r.seed, r.episode_return, r.length, r.episode.actions.tolist()) for r in results]


def _reference(model, target: float, seeds, scale: float, sample: bool, sample_seed: int) -> list[tuple]:
    """The obvious, slow way, written independently of the package's window builder: one env at a time,
    each step's window rebuilt from Python lists, a batch-of-one forward."""
    cfg, K = model.cfg, model.cfg.context_len
    out = []
    env = make_env(SPEC)
    for seed in seeds:
        obs, _ = env.reset(seed=seed)
        gen = [episode_generator(sample_seed, seed)] if sample else []
        hist: dict[str, list] = {"obs": [], "dirs": [], "rtg": [], "actions": []}
        rtg, ret, done = target, 0.0, False
        while not done:
            grid, d = compact_obs(obs)
            hist["obs"].append(grid)
            hist["dirs"].append(d)
            hist["rtg"].append(float(np.float32(rtg) / np.float32(scale)))
            t = len(hist["rtg"])
            lo, n_pad = max(0, t - K), K - min(t, K)
            window = DTInputs(
                obs=torch.from_numpy(np.concatenate([np.zeros((n_pad, 7, 7, 3), np.uint8), np.stack(hist["obs"][lo:])]))[None],
                directions=torch.tensor([[0] * n_pad + hist["dirs"][lo:]]),
                rtg=torch.tensor([[0.0] * n_pad + hist["rtg"][lo:]], dtype=torch.float32),
                actions=torch.tensor([([model.pad_action] * n_pad + hist["actions"][lo:] + [model.pad_action])[:K]]),
                timesteps=torch.tensor([[0] * n_pad + [min(i, cfg.max_timestep - 1) for i in range(lo, t)]]),
                pad_mask=torch.tensor([[False] * n_pad + [True] * (t - lo)]),
            )  # fmt: skip
            with torch.inference_mode():
                (action,) = choose_actions(model(window)[:, -1], sample, gen)
            hist["actions"].append(action)
            obs, reward, terminated, truncated, _ = env.step(action)
            rtg -= float(reward)
            ret += float(reward)
            done = terminated or truncated
        out.append((seed, ret, len(hist["actions"]), hist["actions"]))
    env.close()
    return out


@pytest.mark.parametrize("sample", [False, True])
def test_rollout_deterministic_for_any_num_envs(model, sample):
    ck = _ckpt(model)
    runs = {n: rollout(ck, 1.0, SEEDS, n, sample=sample, sample_seed=5, record=True, progress=False)
            for n in (1, 3, 16)}  # fmt: skip
    first = _key(runs[1])
    assert [r.seed for r in runs[1]] == SEEDS
    assert len({r.length for r in runs[1]}) > 1, "episodes must end at different steps to test refills"
    assert _key(runs[3]) == first
    assert _key(runs[16]) == first
    rerun = rollout(ck, 1.0, SEEDS, 3, sample=sample, sample_seed=5, record=True, progress=False)
    assert _key(rerun) == first


@pytest.mark.parametrize("sample", [False, True])
def test_vectorized_rollout_equals_reference(model, sample):
    vec = rollout(_ckpt(model, 2.0), 0.8, SEEDS, 3, sample=sample, sample_seed=1, record=True, progress=False)
    assert _key(vec) == _reference(model, 0.8, SEEDS, 2.0, sample, 1)


def test_sample_seed_changes_sampled_episodes(model):
    a = rollout(_ckpt(model), 1.0, SEEDS, 4, sample=True, sample_seed=0, record=True, progress=False)
    b = rollout(_ckpt(model), 1.0, SEEDS, 4, sample=True, sample_seed=1, record=True, progress=False)
    assert _key(a) != _key(b)


def test_rollout_inputs_equal_training_windows(model):
    """What the model sees at step t of a played episode is the window of the recorded episode at t."""
    seen: dict[tuple[int, int], DTInputs] = {}

    def inspect(episodes, steps, inputs):
        for row, (e, t) in enumerate(zip(episodes, steps)):
            seen[(e, t)] = inputs[row].clone()

    target, scale = 0.9, 2.0
    results = rollout(
        _ckpt(model, scale), target, SEEDS, 3, sample=True, record=True, progress=False, inspect=inspect
    )
    ds = episodes_to_dataset([r.episode for r in results])
    assert ds.n_episodes == len(SEEDS) and len(seen) == ds.n_transitions
    cfg = model.cfg
    targets = [target] * ds.n_episodes
    for (e, t), inp in seen.items():
        w = make_batch(ds, [(e, t)], cfg.context_len, scale, cfg.n_actions, cfg.max_timestep, targets)
        for f in ("obs", "directions", "rtg", "timesteps", "pad_mask"):
            assert torch.equal(getattr(inp, f), getattr(w, f)), (e, t, f)
        # the last action is the one being predicted: the window has the label, the rollout a pad
        assert torch.equal(inp.actions[:, :-1], w.actions[:, :-1]), (e, t)
        assert int(inp.actions[0, -1]) == model.pad_action
    assert max(t for _, t in seen) >= cfg.max_timestep  # the clipped timesteps were compared too


def test_recorded_episode_layout(model):
    (r,) = rollout(_ckpt(model), 0.5, [4], 1, sample=True, record=True, progress=False)
    ep = r.episode
    assert ep.obs.shape == (r.length, 7, 7, 3) and ep.obs.dtype == np.uint8 and ep.done
    assert ep.actions.dtype == np.uint8 and ep.directions.dtype == np.uint8
    assert ep.target_return == 0.5 and ep.seed == 4 and ep.source == "rollout"
    assert [ep.rtg(t) for t in range(ep.length)] == pytest.approx(
        0.5 - np.concatenate([[0.0], np.cumsum(ep.rewards)[:-1]]), abs=1e-6
    )
    assert r.episode_return == pytest.approx(ep.episode_return)


def test_hooks_act_on_every_forward_and_are_removed(model):
    ck = _ckpt(model)
    calls = []

    def zero_attention(act, hook):
        calls.append(hook.name)
        return torch.zeros_like(act)

    hooked = rollout(
        ck, 1.0, SEEDS, 1, record=True, progress=False, hooks=[("blocks.0.hook_attn_out", zero_attention)]
    )
    plain = rollout(ck, 1.0, SEEDS, 1, record=True, progress=False)
    assert len(calls) == sum(r.length for r in hooked)  # one env: one forward per step, each one hooked
    assert _key(hooked) != _key(plain)  # the ablation changed what the agent did
    assert all(not hp.fwd_hooks for hp in model.hook_points())


def test_rollout_restores_training_mode(model):
    model.train()
    try:
        rollout(Checkpoint(model, SPEC, 1.0), 1.0, [0], 1, progress=False)
        assert model.training
    finally:
        model.eval()


def test_rollout_rejects_empty_seed_list(model):
    with pytest.raises(ValueError, match="no seeds"):
        rollout(_ckpt(model), 1.0, [], 4, progress=False)


def test_max_steps_cuts_episodes_to_a_prefix_of_the_full_ones(model):
    ck = _ckpt(model)
    full = rollout(ck, 1.0, SEEDS, 3, record=True, progress=False)
    cut = rollout(ck, 1.0, SEEDS, 3, record=True, progress=False, max_steps=5)
    assert any(r.length > 5 for r in full), "some episode must outlast the cap"
    for f, c in zip(full, cut):
        assert c.length == min(f.length, 5)
        assert c.episode.actions.tolist() == f.episode.actions.tolist()[: c.length]
        assert c.episode_return == pytest.approx(float(np.sum(f.episode.rewards[: c.length])))
        if f.length > 5:
            assert c.episode.truncated and not c.episode.terminated
    with pytest.raises(ValueError, match="max_steps"):
        rollout(ck, 1.0, SEEDS, 3, progress=False, max_steps=0)
