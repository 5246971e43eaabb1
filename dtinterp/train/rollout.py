"""Seeded, vectorized rollouts of a decision transformer in its MiniGrid env.

``rollout`` steps ``num_envs`` envs together and runs ONE batched forward pass per step. Each env slot
keeps its context window as preallocated tensors of the last K timesteps, left padded and shifted by one
every step, in exactly the layout the model was trained on (:class:`~dtinterp.model.inputs.DTInputs`):

- the return-to-go starts at the target return and drops by each reward, ``rtg_{t+1} = rtg_t - r_t``;
  the model sees ``rtg / rtg_scale``;
- timesteps are the env step index ``t``, clipped to ``cfg.max_timestep - 1``;
- padded timesteps hold obs 0, direction 0, action ``model.pad_action``, rtg 0, timestep 0, mask False;
- the action at the last (current) timestep is what the model predicts; it holds ``pad_action`` when the
  model is called and is never embedded.

Determinism: episode ``i`` is played in an env reset with ``seeds[i]`` whatever slot it lands in, and
sampled actions draw from a generator owned by the episode (seeded from ``sample_seed`` and the env
seed), so results are a function of (model, seeds, sample_seed) only: identical on rerun and for any
``num_envs``. ``rollout_reference`` plays the same episodes one at a time with windows rebuilt from
Python lists each step; it exists to check ``rollout`` and to measure its speed-up.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor, nn
from tqdm.auto import tqdm

from dtinterp.data.dataset import TrajectoryDataset, make_metadata
from dtinterp.errors import ConfigError
from dtinterp.model.config import DTConfig
from dtinterp.model.inputs import DTInputs
from envs import EnvSpec, compact_obs, make_env


@dataclass
class Trajectory:
    """One played episode in the array layout of a dataset episode (T steps, no final observation)."""

    obs: np.ndarray
    """uint8 [T, W, H, 3]: compact grid observed before action t."""
    directions: np.ndarray
    """uint8 [T]: agent direction before action t."""
    actions: np.ndarray
    """uint8 [T]: action taken at step t."""
    rewards: np.ndarray
    """float32 [T]: reward received after action t."""
    terminated: np.ndarray
    """bool [T]: the env terminated after action t (only the last step can be True)."""
    truncated: np.ndarray
    """bool [T]: the episode hit its step limit after action t (only the last step can be True)."""
    rtg: np.ndarray
    """float32 [T]: return-to-go the model was conditioned on at step t (unscaled)."""


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
    trajectory: Trajectory | None = None
    """The recorded episode when ``record=True``."""

    @property
    def success(self) -> bool:
        """MiniGrid pays a positive reward only for reaching the goal."""
        return self.episode_return > 0


#: Per-step arrays a :class:`Trajectory` shares with a :class:`TrajectoryDataset`.
_DATASET_FIELDS = ("obs", "directions", "actions", "rewards", "terminated", "truncated")

#: Called as ``inspect(episode_indices, steps, inputs)`` with the exact batch fed to the model.
InputsHook = Callable[[list[int], list[int], DTInputs], None]


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's parameters (CPU for a parameter-less model)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


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


class _Recorder:
    """Per-episode lists that become a :class:`Trajectory`."""

    def __init__(self) -> None:
        self.obs: list[np.ndarray] = []
        self.directions: list[int] = []
        self.actions: list[int] = []
        self.rewards: list[float] = []
        self.rtg: list[float] = []

    def add(self, grid: np.ndarray, direction: int, action: int, reward: float, rtg: float) -> None:
        self.obs.append(grid)
        self.directions.append(direction)
        self.actions.append(action)
        self.rewards.append(reward)
        self.rtg.append(rtg)

    def finish(self, terminated: bool, truncated: bool) -> Trajectory:
        t = len(self.actions)
        done = np.zeros(t, dtype=bool)
        done[-1] = True
        return Trajectory(
            obs=np.stack(self.obs).astype(np.uint8),
            directions=np.asarray(self.directions, dtype=np.uint8),
            actions=np.asarray(self.actions, dtype=np.uint8),
            rewards=np.asarray(self.rewards, dtype=np.float32),
            terminated=done & terminated,
            truncated=done & truncated,
            rtg=np.asarray(self.rtg, dtype=np.float32),
        )


class _Windows:
    """Context windows of N env slots as preallocated [N, K, ...] tensors, left padded."""

    def __init__(self, n: int, k: int, grid_shape: tuple[int, ...], pad_action: int, device: torch.device):
        self.pad_action = pad_action
        self.obs = torch.zeros((n, k, *grid_shape), dtype=torch.uint8, device=device)  # (N, K, W, H, 3)
        self.directions = torch.zeros((n, k), dtype=torch.long, device=device)
        self.actions = torch.full((n, k), pad_action, dtype=torch.long, device=device)
        self.rtg = torch.zeros((n, k), dtype=torch.float32, device=device)
        self.timesteps = torch.zeros((n, k), dtype=torch.long, device=device)
        self.pad_mask = torch.zeros((n, k), dtype=torch.bool, device=device)

    def _all(self) -> tuple[Tensor, ...]:
        return (self.obs, self.directions, self.actions, self.rtg, self.timesteps, self.pad_mask)

    def clear(self, slot: int) -> None:
        """Pad a slot's whole window (a new episode starts there)."""
        for t in self._all():
            t[slot] = 0
        self.actions[slot] = self.pad_action

    def push(
        self,
        obs: Int[Tensor, "N W H 3"],
        directions: Int[Tensor, " N"],
        rtg: Float[Tensor, " N"],
        timesteps: Int[Tensor, " N"],
    ) -> None:
        """Shift every window left by one and write timestep t of each slot at position K-1."""
        for t in self._all():
            t[:, :-1] = t[:, 1:].clone()
        self.obs[:, -1] = obs
        self.directions[:, -1] = directions
        self.rtg[:, -1] = rtg
        self.timesteps[:, -1] = timesteps
        self.actions[:, -1] = self.pad_action
        self.pad_mask[:, -1] = True

    def inputs(self, rows: Tensor | None) -> DTInputs:
        """The model input for the given slots (all slots when ``rows`` is None)."""
        parts = self._all() if rows is None else tuple(t[rows] for t in self._all())
        obs, directions, actions, rtg, timesteps, pad_mask = parts
        return DTInputs(
            obs=obs, directions=directions, rtg=rtg, actions=actions, timesteps=timesteps, pad_mask=pad_mask
        )


def check_model_env(cfg: DTConfig, spec: EnvSpec, where: str = "model") -> None:
    """Raise :class:`ConfigError` unless a model with ``cfg`` can act in ``spec``'s env.

    The observation grid must have the model's (W, H) and every action the model can emit must exist.
    """
    env = make_env(spec)
    try:
        grid = tuple(env.observation_space["image"].shape[:2])
        n_env_actions = int(env.action_space.n)
    finally:
        env.close()
    if grid != tuple(cfg.obs_shape):
        raise ConfigError(
            f"{where}: expects {cfg.obs_shape[0]}x{cfg.obs_shape[1]} observations but {spec.to_json()} "
            f"gives {grid[0]}x{grid[1]}"
        )
    if cfg.n_actions > n_env_actions:
        raise ConfigError(f"{where}: has {cfg.n_actions} actions but {spec.env_id} has only {n_env_actions}")


def _check_args(model: nn.Module, seeds: Sequence[int], num_envs: int, rtg_scale: float) -> None:
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    if not rtg_scale > 0:
        raise ValueError(f"rtg_scale must be > 0, got {rtg_scale}")
    if len(seeds) == 0:
        raise ValueError("no seeds given: nothing to roll out")
    if not hasattr(model, "cfg") or not hasattr(model, "pad_action"):
        raise TypeError("model must expose .cfg (a DTConfig) and .pad_action like HookedDecisionTransformer")


def rollout(
    model: nn.Module,
    spec: EnvSpec,
    target_rtg: float,
    seeds: Sequence[int],
    num_envs: int = 32,
    rtg_scale: float = 1.0,
    sample: bool = False,
    sample_seed: int = 0,
    record: bool = False,
    progress: bool = True,
    on_episode: Callable[[EpisodeResult], None] | None = None,
    inspect: InputsHook | None = None,
) -> list[EpisodeResult]:
    """Play one episode per seed at ``target_rtg``, ``num_envs`` at a time; results in seed-list order.

    ``on_episode`` is called as each episode finishes (e.g. to advance a shared progress bar);
    ``inspect`` sees every batch exactly as the model is called with it (for tests and debugging).
    """
    _check_args(model, seeds, num_envs, rtg_scale)
    cfg = model.cfg
    check_model_env(cfg, spec)
    device = model_device(model)
    n = min(num_envs, len(seeds))
    envs = [make_env(spec) for _ in range(n)]
    grid_shape = envs[0].observation_space["image"].shape
    win = _Windows(n, cfg.context_len, grid_shape, model.pad_action, device)
    scale = torch.tensor(rtg_scale, dtype=torch.float32, device=device)  # float32 division, as in training

    results: list[EpisodeResult | None] = [None] * len(seeds)
    slot_ep = [-1] * n  # episode index played in each slot; -1 = idle
    slot_t = [0] * n
    slot_rtg = [0.0] * n
    slot_ret = [0.0] * n
    slot_obs: list[tuple[np.ndarray, int]] = [(np.zeros(grid_shape, np.uint8), 0)] * n
    slot_gen: list[torch.Generator | None] = [None] * n
    slot_rec: list[_Recorder | None] = [None] * n
    next_ep = 0
    bar = tqdm(total=len(seeds), desc=f"rollout rtg={target_rtg:g}", disable=not progress, leave=False)

    def start(slot: int) -> None:
        nonlocal next_ep
        win.clear(slot)
        if next_ep == len(seeds):
            slot_ep[slot] = -1
            return
        i, next_ep = next_ep, next_ep + 1
        obs, _ = envs[slot].reset(seed=int(seeds[i]))
        slot_ep[slot], slot_t[slot], slot_rtg[slot], slot_ret[slot] = i, 0, float(target_rtg), 0.0
        slot_obs[slot] = compact_obs(obs)
        slot_gen[slot] = episode_generator(sample_seed, int(seeds[i])) if sample else None
        slot_rec[slot] = _Recorder() if record else None

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for slot in range(n):
                start(slot)
            while True:
                active = [s for s in range(n) if slot_ep[s] >= 0]
                if not active:
                    break
                # Every slot's window moves one step; idle slots carry junk that is never read.
                obs = torch.zeros((n, *grid_shape), dtype=torch.uint8)
                obs[active] = torch.from_numpy(np.stack([slot_obs[s][0] for s in active]))
                win.push(
                    obs.to(device),
                    torch.tensor([slot_obs[s][1] for s in range(n)], device=device),
                    torch.tensor(slot_rtg, dtype=torch.float32, device=device) / scale,
                    torch.tensor([min(slot_t[s], cfg.max_timestep - 1) for s in range(n)], device=device),
                )
                rows = None if len(active) == n else torch.tensor(active, device=device)
                inputs = win.inputs(rows)
                if inspect is not None:
                    inspect([slot_ep[s] for s in active], [slot_t[s] for s in active], inputs)
                logits = model(inputs)[:, -1]  # (B, n_actions): prediction at the current state
                actions = choose_actions(logits, sample, [slot_gen[s] for s in active])
                win.actions[active, -1] = torch.tensor(actions, device=device)

                for s, a in zip(active, actions):
                    obs_next, reward, terminated, truncated, _ = envs[s].step(a)
                    reward = float(reward)
                    if slot_rec[s] is not None:
                        slot_rec[s].add(*slot_obs[s], a, reward, slot_rtg[s])
                    slot_rtg[s] -= reward
                    slot_ret[s] += reward
                    slot_t[s] += 1
                    slot_obs[s] = compact_obs(obs_next)
                    if terminated or truncated:
                        i = slot_ep[s]
                        rec = slot_rec[s]
                        results[i] = EpisodeResult(
                            seed=int(seeds[i]),
                            target_rtg=float(target_rtg),
                            episode_return=slot_ret[s],
                            length=slot_t[s],
                            trajectory=rec.finish(bool(terminated), bool(truncated)) if rec else None,
                        )
                        bar.update(1)
                        if on_episode is not None:
                            on_episode(results[i])
                        start(s)
    finally:
        model.train(was_training)
        bar.close()
        for env in envs:
            env.close()
    return results  # type: ignore[return-value]  (every slot is filled when the loop ends)


def _window_from_lists(
    hist: dict[str, list], k: int, grid_shape: tuple[int, ...], pad_action: int, max_timestep: int
) -> DTInputs:
    """A left-padded batch-of-one window from full-episode history lists (the obvious, slow way)."""
    t_end = len(hist["rtg"])
    lo = max(0, t_end - k)
    n_real, n_pad = t_end - lo, k - (t_end - lo)
    obs = np.zeros((k, *grid_shape), dtype=np.uint8)
    obs[n_pad:] = np.stack(hist["obs"][lo:])
    actions = [pad_action] * n_pad + hist["actions"][lo:] + [pad_action]
    return DTInputs(
        obs=torch.from_numpy(obs)[None],
        directions=torch.tensor([[0] * n_pad + hist["directions"][lo:]]),
        rtg=torch.tensor([[0.0] * n_pad + hist["rtg"][lo:]], dtype=torch.float32),
        actions=torch.tensor([actions[:k]]),
        timesteps=torch.tensor([[0] * n_pad + [min(t, max_timestep - 1) for t in range(lo, t_end)]]),
        pad_mask=torch.tensor([[False] * n_pad + [True] * n_real]),
    )


def rollout_reference(
    model: nn.Module,
    spec: EnvSpec,
    target_rtg: float,
    seeds: Sequence[int],
    rtg_scale: float = 1.0,
    sample: bool = False,
    sample_seed: int = 0,
    record: bool = False,
) -> list[EpisodeResult]:
    """One env, one episode at a time, batch-of-one forwards: the reference :func:`rollout` must match."""
    _check_args(model, seeds, 1, rtg_scale)
    cfg = model.cfg
    check_model_env(cfg, spec)
    device = model_device(model)
    env = make_env(spec)
    grid_shape = env.observation_space["image"].shape
    results = []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for seed in seeds:
                obs, _ = env.reset(seed=int(seed))
                gen = [episode_generator(sample_seed, int(seed))] if sample else []
                hist: dict[str, list] = {"obs": [], "directions": [], "rtg": [], "actions": []}
                rec = _Recorder() if record else None
                rtg, ret, done = float(target_rtg), 0.0, False
                while not done:
                    grid, direction = compact_obs(obs)
                    hist["obs"].append(grid)
                    hist["directions"].append(direction)
                    hist["rtg"].append(float(np.float32(rtg) / np.float32(rtg_scale)))
                    inputs = _window_from_lists(
                        hist, cfg.context_len, grid_shape, model.pad_action, cfg.max_timestep
                    )
                    (action,) = choose_actions(model(inputs.to(device))[:, -1], sample, gen)
                    hist["actions"].append(action)
                    obs, reward, terminated, truncated, _ = env.step(action)
                    if rec is not None:
                        rec.add(grid, direction, action, float(reward), rtg)
                    rtg -= float(reward)
                    ret += float(reward)
                    done = terminated or truncated
                traj = rec.finish(bool(terminated), bool(truncated)) if rec else None
                results.append(EpisodeResult(int(seed), float(target_rtg), ret, len(hist["rtg"]), traj))
    finally:
        model.train(was_training)
        env.close()
    return results


def episodes_dataset(results: Sequence[EpisodeResult], spec: EnvSpec) -> TrajectoryDataset:
    """Recorded episodes (``record=True``) as a validated :class:`TrajectoryDataset`, in the given order.

    This is how a played episode is replayed or analysed later: ``window_at`` on episode ``i`` with
    ``rtg_override=results[i].target_rtg`` rebuilds exactly the inputs the model saw while playing it.
    """
    if not results:
        raise ValueError("no episodes to turn into a dataset")
    trajs = [r.trajectory for r in results]
    if any(t is None for t in trajs):
        raise ValueError("every episode must be recorded (rollout(..., record=True))")
    starts = np.zeros(len(trajs) + 1, dtype=np.int64)
    np.cumsum([len(t.actions) for t in trajs], out=starts[1:])
    policy = {
        "name": "decision_transformer",
        "params": {"seeds": [r.seed for r in results], "target_rtg": [r.target_rtg for r in results]},
        "modes": ["dt"],
    }
    meta = make_metadata(spec, policy, seed=results[0].seed, episodes=len(results))
    meta["created_by"] = "dtinterp rollout"
    ds = TrajectoryDataset(
        **{k: np.concatenate([getattr(t, k) for t in trajs]) for k in _DATASET_FIELDS},
        episode_starts=starts,
        episode_modes=np.zeros(len(trajs), dtype=np.uint8),
        metadata=meta,
    )
    ds.validate("recorded episodes")
    return ds
