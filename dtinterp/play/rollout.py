"""Seeded, vectorized rollouts of a decision transformer in its MiniGrid env.

``rollout`` steps ``num_envs`` envs together and runs ONE batched forward pass per step. The steps
played so far are kept in flat per-slot history arrays, and each step's input is cut from them by the
package's one window builder (:func:`~dtinterp.data.windows.gather_windows`), so the model is fed
exactly the layout it was trained on:

- the return-to-go starts at the target return and drops by each reward, ``rtg_{t+1} = rtg_t - r_t``;
  the model sees ``rtg / rtg_scale``;
- timesteps are the env step index ``t``, clipped to ``cfg.max_timestep - 1``;
- padded timesteps hold obs 0, direction 0, action ``model.pad_action``, rtg 0, timestep 0, mask False;
- the action at the last (current) timestep is what the model predicts; it holds ``pad_action`` when the
  model is called and is never embedded.

Determinism: episode ``i`` is played in an env reset with ``seeds[i]`` whatever slot it lands in, and
sampled actions draw from a generator owned by the episode (seeded from ``sample_seed`` and the env
seed), so results are a function of (model, seeds, sample_seed) only: identical on rerun and for any
``num_envs``. ``hooks`` (TransformerLens ``(hook_name, fn)`` pairs, e.g. an ablation) are attached to
every forward pass of the rollout and removed when it ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from dtinterp.data.episode import Episode
from dtinterp.data.windows import gather_windows
from dtinterp.model.checkpoint import Checkpoint
from dtinterp.model.inputs import DTInputs
from envs import compact_obs, env_facts, make_env


@dataclass
class EpisodeResult:
    """Outcome of one seeded episode."""

    seed: int
    """Env seed of the episode (``env.reset(seed=seed)``)."""
    target_rtg: float
    """Return the model was asked for at t = 0 (unscaled)."""
    episode_return: float
    """Sum of rewards."""
    length: int
    """Number of steps taken."""
    episode: Episode | None = None
    """The recorded episode when ``record=True``."""

    @property
    def success(self) -> bool:
        """MiniGrid pays a positive reward only for reaching the goal."""
        return self.episode_return > 0


#: Called as ``inspect(episode_indices, steps, inputs)`` with the exact batch fed to the model.
InputsHook = Callable[[list[int], list[int], DTInputs], None]
#: TransformerLens forward hooks: ``(hook_name, fn(activation, hook))``.
ForwardHooks = Sequence[tuple[str, Callable]]


def episode_generator(sample_seed: int, env_seed: int) -> torch.Generator:
    """The CPU generator that draws an episode's sampled actions (a function of both seeds only)."""
    state = np.random.SeedSequence([sample_seed, env_seed]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def choose_actions(
    logits: Float[Tensor, "B n_actions"], sample: bool, generators: Sequence[torch.Generator]
) -> list[int]:
    """Greedy (argmax) or sampled actions, one per row; row ``b`` samples with ``generators[b]``."""
    if not sample:
        return logits.argmax(-1).tolist()
    cdf = torch.softmax(logits.float(), dim=-1).cumsum(-1).cpu()  # (B, n_actions)
    u = torch.cat([torch.rand(1, generator=g) for g in generators])  # (B,) one uniform per episode
    return (cdf < u[:, None]).sum(-1).clamp(max=logits.shape[-1] - 1).tolist()


class _History:
    """The steps played in each env slot, as flat arrays ``[slots * capacity, ...]`` for the window builder.

    Slot ``s`` holds its episode's step ``t`` at row ``s * capacity + t``; the row of the current state
    holds the pad action until the model has chosen.
    """

    def __init__(self, n: int, capacity: int, grid: tuple[int, ...], pad_action: int) -> None:
        self.capacity = capacity
        self.obs = np.zeros((n * capacity, *grid), dtype=np.uint8)
        self.directions = np.zeros(n * capacity, dtype=np.uint8)
        self.actions = np.full(n * capacity, pad_action, dtype=np.int64)
        self.rtg = np.zeros(n * capacity, dtype=np.float32)

    def row(self, slot: int, t: int) -> int:
        return slot * self.capacity + t


def _check_args(seeds: Sequence[int], num_envs: int) -> None:
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    if len(seeds) == 0:
        raise ValueError("no seeds given: nothing to roll out")


def rollout(
    checkpoint: Checkpoint,
    target_rtg: float,
    seeds: Sequence[int],
    num_envs: int = 32,
    sample: bool = False,
    sample_seed: int = 0,
    record: bool = False,
    progress: bool = True,
    on_episode: Callable[[EpisodeResult], None] | None = None,
    inspect: InputsHook | None = None,
    hooks: ForwardHooks = (),
    max_steps: int | None = None,
) -> list[EpisodeResult]:
    """Play one episode per seed at ``target_rtg`` in the checkpoint's env, ``num_envs`` at a time.

    Results come in seed-list order. ``on_episode`` is called as each episode finishes (e.g. to advance
    a shared progress bar); ``inspect`` sees every batch exactly as the model is called with it;
    ``hooks`` are attached to the model for the whole rollout (ablations and patches played out).
    ``max_steps`` cuts every episode after that many steps (marked truncated, its return so far), before
    the env's own step limit; the env and its rewards are unchanged.
    """
    _check_args(seeds, num_envs)
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    model, spec = checkpoint.model, checkpoint.env_spec
    cfg = model.cfg
    device = model.W_U.device
    n = min(num_envs, len(seeds))
    facts = env_facts(spec)
    envs = [make_env(spec) for _ in range(n)]
    hist = _History(n, facts.max_steps + 1, facts.obs_shape, model.pad_action)

    results: list[EpisodeResult | None] = [None] * len(seeds)
    slot_ep = [-1] * n  # episode index played in each slot; -1 = idle
    slot_t = [0] * n
    slot_rtg = [0.0] * n
    slot_ret = [0.0] * n
    slot_gen: list[torch.Generator | None] = [None] * n
    slot_rewards: list[list[float]] = [[] for _ in range(n)]
    next_ep = 0
    bar = tqdm(total=len(seeds), desc=f"rollout rtg={target_rtg:g}", disable=not progress, leave=False)

    def observe(slot: int, obs: dict) -> None:
        grid, direction = compact_obs(obs)
        r = hist.row(slot, slot_t[slot])
        hist.obs[r], hist.directions[r], hist.rtg[r] = grid, direction, slot_rtg[slot]
        hist.actions[r] = model.pad_action

    def start(slot: int) -> None:
        nonlocal next_ep
        if next_ep == len(seeds):
            slot_ep[slot] = -1
            return
        i, next_ep = next_ep, next_ep + 1
        obs, _ = envs[slot].reset(seed=int(seeds[i]))
        slot_ep[slot], slot_t[slot], slot_rtg[slot], slot_ret[slot] = i, 0, float(target_rtg), 0.0
        slot_gen[slot] = episode_generator(sample_seed, int(seeds[i])) if sample else None
        slot_rewards[slot] = []
        observe(slot, obs)

    def finish(slot: int, terminated: bool, truncated: bool) -> Episode | None:
        if not record:
            return None
        lo = hist.row(slot, 0)
        t = slot_t[slot]
        return Episode(
            env_spec=spec,
            obs=hist.obs[lo : lo + t].copy(),
            directions=hist.directions[lo : lo + t].copy(),
            actions=hist.actions[lo : lo + t].astype(np.uint8),
            rewards=np.asarray(slot_rewards[slot], dtype=np.float32),
            terminated=terminated,
            truncated=truncated,
            seed=int(seeds[slot_ep[slot]]),
            target_return=float(target_rtg),
            source="rollout",
            info={"model": checkpoint.name, "policy": {"name": "decision_transformer", "modes": ["dt"]}},
        )

    was_training = model.training
    model.eval()
    try:
        attached = model.hooks(fwd_hooks=list(hooks)) if hooks else contextlib.nullcontext()
        with torch.inference_mode(), attached:
            for slot in range(n):
                start(slot)
            while True:
                active = [s for s in range(n) if slot_ep[s] >= 0]
                if not active:
                    break
                ends = np.array([hist.row(s, slot_t[s]) for s in active], dtype=np.int64)
                first = np.array([hist.row(s, 0) for s in active], dtype=np.int64)
                inputs = gather_windows(
                    hist, hist.rtg, ends, first, cfg.context_len, checkpoint.rtg_scale, cfg.n_actions,
                    cfg.max_timestep,
                ).to(device)  # fmt: skip
                if inspect is not None:
                    inspect([slot_ep[s] for s in active], [slot_t[s] for s in active], inputs)
                logits = model(inputs)[:, -1]  # (B, n_actions): prediction at the current state
                actions = choose_actions(logits, sample, [slot_gen[s] for s in active])

                for s, a in zip(active, actions):
                    hist.actions[hist.row(s, slot_t[s])] = a
                    obs_next, reward, terminated, truncated, _ = envs[s].step(a)
                    reward = float(reward)
                    slot_rewards[s].append(reward)
                    slot_rtg[s] -= reward
                    slot_ret[s] += reward
                    slot_t[s] += 1
                    truncated = truncated or (max_steps is not None and slot_t[s] >= max_steps)
                    if terminated or truncated:
                        i = slot_ep[s]
                        results[i] = EpisodeResult(
                            seed=int(seeds[i]),
                            target_rtg=float(target_rtg),
                            episode_return=slot_ret[s],
                            length=slot_t[s],
                            episode=finish(s, bool(terminated), bool(truncated)),
                        )
                        bar.update(1)
                        if on_episode is not None:
                            on_episode(results[i])
                        start(s)
                    else:
                        observe(s, obs_next)
    finally:
        model.train(was_training)
        bar.close()
        for env in envs:
            env.close()
    return results  # type: ignore[return-value]  (every slot is filled when the loop ends)


def play_episode(
    checkpoint: Checkpoint, target_rtg: float, seed: int, progress: bool = False, hooks: ForwardHooks = ()
) -> Episode:
    """One greedy episode of the model at ``target_rtg`` from env seed ``seed``, recorded.

    :meth:`Episode.windows` on it rebuilds exactly the inputs the model saw at each step.
    """
    (result,) = rollout(
        checkpoint, float(target_rtg), [int(seed)], num_envs=1, record=True, progress=progress, hooks=hooks
    )
    assert result.episode is not None
    return result.episode


__all__ = ["EpisodeResult", "choose_actions", "episode_generator", "play_episode", "rollout"]
