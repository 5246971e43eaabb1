"""Return-to-go and the context windows a decision transformer sees: the one window builder.

A *window* holds the K timesteps ``max(0, t-K+1) .. t`` of one episode, ending at step ``t`` (whose
action is the one predicted). Windows shorter than K (near an episode's start) are padded on the left:
padded timesteps have ``pad_mask`` False, observation 0, direction 0, RTG 0, timestep 0 and the pad
action ``n_actions`` (an id no real action has).

:func:`gather_windows` builds every window in the package: training batches (:class:`WindowSampler`),
windows at chosen steps of a dataset or an episode (:func:`make_batch`, used by
:meth:`dtinterp.data.episode.Episode.windows`), and the windows fed to the model while it plays
(:mod:`dtinterp.play.rollout` keeps the played steps in flat arrays and gathers from them).

Everything here works on plain numpy arrays: the data only needs ``obs [N, W, H, 3]``,
``directions [N]``, ``actions [N]`` (and, for :func:`make_batch`, ``rewards [N]`` and
``episode_starts [E+1]``: step ``i`` of the flat arrays belongs to episode ``e`` iff
``episode_starts[e] <= i < episode_starts[e+1]``). Windows are gathered with numpy fancy indexing, one
gather per field for the whole batch, and converted to tensors without copying, since data loading
sits in the training loop's hot path.

**Return-to-go.** A window is conditioned either on the episode's achieved return-to-go (demonstrations,
as in training: :func:`returns_to_go`) or on a target return minus the rewards collected so far, exactly
as in a rollout at that target (:func:`conditioned_rtg`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch

from dtinterp.errors import DatasetError
from dtinterp.model.inputs import DTInputs


class StepArrays(Protocol):
    """The per-step arrays a window is gathered from."""

    obs: np.ndarray  # uint8 [N, W, H, 3]
    directions: np.ndarray  # uint8 [N]
    actions: np.ndarray  # uint8 [N]


class EpisodeArrays(StepArrays, Protocol):
    """Flat episodes (a :class:`~dtinterp.data.dataset.TrajectoryDataset` has these arrays)."""

    rewards: np.ndarray  # float32 [N]
    episode_starts: np.ndarray  # int64 [E+1]


def returns_to_go(rewards: np.ndarray, episode_starts: np.ndarray) -> np.ndarray:
    """Undiscounted return-to-go: ``rtg[i] = sum(rewards[i:end_of_episode(i)])``, float32 ``[N]``.

    Computed for all episodes at once from one suffix sum in float64 (``rtg[i] = S[i] - S[end]`` with
    ``S[i] = sum(rewards[i:])``), so dense rewards are handled exactly up to float32 rounding.
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    starts = np.asarray(episode_starts, dtype=np.int64)
    n = rewards.shape[0]
    if (
        starts.ndim != 1
        or starts.size < 1
        or starts[0] != 0
        or starts[-1] != n
        or np.any(np.diff(starts) < 0)
    ):
        raise DatasetError(f"episode_starts must rise from 0 to {n} (the number of steps), got {starts!r}")
    suffix = np.zeros(n + 1, dtype=np.float64)  # suffix[i] = sum(rewards[i:])
    suffix[:n] = np.cumsum(rewards[::-1])[::-1]
    lengths = np.diff(starts)
    episode_end = np.repeat(starts[1:], lengths)  # [N] one past the last step of each step's episode
    return (suffix[:n] - suffix[episode_end]).astype(np.float32)


def conditioned_rtg(
    rewards: np.ndarray, episode_starts: np.ndarray, targets: Sequence[float | None]
) -> np.ndarray:
    """The return-to-go each step is conditioned on, float32 ``[N]``.

    Episode ``e`` with a target return ``targets[e]`` is conditioned on ``target - sum(rewards before
    the step)``, as in a rollout at that target; with ``None`` on its achieved return-to-go.
    """
    rtg = returns_to_go(rewards, episode_starts).astype(np.float64)
    starts = np.asarray(episode_starts, dtype=np.int64)
    if len(targets) != starts.size - 1:
        raise ValueError(f"{len(targets)} targets for {starts.size - 1} episodes")
    r = np.asarray(rewards, dtype=np.float64)
    for e, target in enumerate(targets):
        if target is not None:
            s, t = int(starts[e]), int(starts[e + 1])
            rtg[s:t] = float(target) - np.concatenate([[0.0], np.cumsum(r[s:t])[:-1]])
    return rtg.astype(np.float32)


def _check_episodes(starts: np.ndarray) -> None:
    if starts.size < 2:
        raise DatasetError("the dataset has no episodes")
    if np.any(np.diff(starts) < 1):
        raise DatasetError("the dataset has an empty episode (episode_starts must strictly increase)")


def gather_windows(
    data: StepArrays,
    rtg: np.ndarray,
    ends: np.ndarray,
    first: np.ndarray,
    context_len: int,
    rtg_scale: float,
    n_actions: int,
    max_timestep: int,
) -> DTInputs:
    """The window builder: windows ending at flat step indices ``ends [B]`` whose episodes start at
    ``first [B]`` (so a window never reaches into the previous episode).

    ``rtg[i]`` is the (unscaled) return-to-go of flat step ``i``; the model sees it divided by
    ``rtg_scale`` in float32. Timesteps are the step's index in its episode, clipped to
    ``max_timestep - 1``.
    """
    offsets = np.arange(-(context_len - 1), 1, dtype=np.int64)  # [K]: -K+1 .. 0
    idx = ends[:, None] + offsets[None, :]  # [B, K] flat step index of every window slot
    real = idx >= first[:, None]  # [B, K] pad_mask: slots inside the episode
    idx = np.maximum(idx, first[:, None])  # padded slots read a valid row, then get blanked
    obs = data.obs[idx]  # [B, K, W, H, 3] uint8
    obs *= real[:, :, None, None, None]
    directions = np.where(real, data.directions[idx], 0).astype(np.int64)
    actions = np.where(real, data.actions[idx], n_actions).astype(np.int64)
    rtg_w = np.where(real, rtg[idx] / np.float32(rtg_scale), 0).astype(np.float32)
    timesteps = np.where(real, np.minimum(idx - first[:, None], max_timestep - 1), 0).astype(np.int64)
    return DTInputs(
        obs=torch.from_numpy(obs),
        directions=torch.from_numpy(directions),
        rtg=torch.from_numpy(rtg_w),
        actions=torch.from_numpy(actions),
        timesteps=torch.from_numpy(timesteps),
        pad_mask=torch.from_numpy(real),
    )


def _check_ends(starts: np.ndarray, episodes: np.ndarray, ts: np.ndarray) -> None:
    n_ep = starts.size - 1
    if np.any((episodes < 0) | (episodes >= n_ep)):
        raise IndexError(
            f"episode index out of range [0, {n_ep}): {episodes[(episodes < 0) | (episodes >= n_ep)]}"
        )
    lengths = starts[episodes + 1] - starts[episodes]
    bad = (ts < 0) | (ts >= lengths)
    if np.any(bad):
        i = int(np.argmax(bad))
        raise IndexError(
            f"step {int(ts[i])} is outside episode {int(episodes[i])} of length {int(lengths[i])}"
        )


def make_batch(
    data: EpisodeArrays,
    ends: Sequence[tuple[int, int]],
    context_len: int,
    rtg_scale: float,
    n_actions: int,
    max_timestep: int,
    targets: Sequence[float | None] | None = None,
) -> DTInputs:
    """Windows ending at ``(episode, t)`` pairs (``t`` = step index within the episode), batch ``len(ends)``.

    Each window is the exact input the model sees when predicting the action at step ``t``. Episodes
    are conditioned on their achieved return-to-go, or on ``targets[e]`` where given (see
    :func:`conditioned_rtg`).
    """
    starts = np.asarray(data.episode_starts, dtype=np.int64)
    pairs = np.asarray(ends, dtype=np.int64).reshape(-1, 2)
    episodes, ts = pairs[:, 0], pairs[:, 1]
    _check_ends(starts, episodes, ts)
    if targets is None or all(t is None for t in targets):
        rtg = returns_to_go(data.rewards, starts)
    else:
        rtg = conditioned_rtg(data.rewards, starts, targets)
    first = starts[episodes]
    return gather_windows(data, rtg, first + ts, first, context_len, rtg_scale, n_actions, max_timestep)


class WindowSampler:
    """Draws random training windows from a dataset.

    A window's last step is, with probability ``p_episode_end``, the last step of an episode drawn
    uniformly (so the model sees episode ends, where RTG is smallest, often enough); otherwise a step drawn
    uniformly over all transitions. RTG is computed once here. Every draw takes the same number of random
    numbers from ``rng`` whatever ``p_episode_end`` is, so a batch is a pure function of the generator state.
    """

    def __init__(
        self,
        data: EpisodeArrays,
        context_len: int,
        rtg_scale: float,
        n_actions: int,
        max_timestep: int,
        p_episode_end: float = 0.0,
    ) -> None:
        self.data = data
        self.starts = np.asarray(data.episode_starts, dtype=np.int64)
        _check_episodes(self.starts)
        if not 0.0 <= p_episode_end <= 1.0:
            raise ValueError(f"p_episode_end must be in [0, 1], got {p_episode_end}")
        if rtg_scale <= 0:
            raise ValueError(f"rtg_scale must be > 0, got {rtg_scale}")
        self.context_len = context_len
        self.rtg_scale = float(rtg_scale)
        self.n_actions = n_actions
        self.max_timestep = max_timestep
        self.p_episode_end = float(p_episode_end)
        self.rtg = returns_to_go(data.rewards, self.starts)  # [N]
        lengths = np.diff(self.starts)
        self.episode_of = np.repeat(np.arange(lengths.size, dtype=np.int64), lengths)  # [N]

    @property
    def n_steps(self) -> int:
        return int(self.starts[-1])

    @property
    def n_episodes(self) -> int:
        return self.starts.size - 1

    def sample_ends(self, batch_size: int, rng: np.random.Generator) -> np.ndarray:
        """Flat step indices ``[B]`` at which the sampled windows end."""
        at_end = rng.random(batch_size) < self.p_episode_end
        uniform_step = rng.integers(0, self.n_steps, size=batch_size)
        episode = rng.integers(0, self.n_episodes, size=batch_size)
        return np.where(at_end, self.starts[episode + 1] - 1, uniform_step)

    def batch_at(self, ends: np.ndarray) -> DTInputs:
        """Windows ending at flat step indices ``ends [B]``."""
        ends = np.asarray(ends, dtype=np.int64)
        first = self.starts[self.episode_of[ends]]
        return gather_windows(
            self.data,
            self.rtg,
            ends,
            first,
            self.context_len,
            self.rtg_scale,
            self.n_actions,
            self.max_timestep,
        )

    def sample(self, batch_size: int, rng: np.random.Generator) -> DTInputs:
        """A random batch of ``batch_size`` windows (CPU tensors)."""
        return self.batch_at(self.sample_ends(batch_size, rng))
