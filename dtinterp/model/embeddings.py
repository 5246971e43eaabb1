"""Input embeddings of the decision transformer.

The grid state embedding is the interpretable vocabulary of the model: one learned vector per
(x, y, feature) of the one-hot observation (11 objects + 6 colours + 3 states per cell) plus one per
agent direction, summed. ``W_state[4, 2, CHANNEL("object=key")]`` *is* "key at (4, 2)".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from dtinterp.model.config import DTConfig
from envs.encoding import AGENT_IDX, N_CHANNELS, N_COLORS, N_DIRECTIONS, N_OBJECTS, N_STATES


class GridStateEmbedding(nn.Module):
    """Sum of learned (x, y, feature) vectors of the one-hot observation, plus a direction vector.

    Equivalent to ``one_hot(obs).flatten() @ W_state.flatten(0, 2) + W_dir[direction] + b_state`` but
    computed as a bag of 3 lookups per cell (no one-hot tensor is materialized).
    """

    def __init__(self, cfg: DTConfig):
        super().__init__()
        W, H = cfg.obs_shape
        self.W_state = nn.Parameter(torch.empty(W, H, N_CHANNELS, cfg.d_model))
        self.W_dir = nn.Parameter(torch.empty(N_DIRECTIONS, cfg.d_model))
        self.b_state = nn.Parameter(torch.zeros(cfg.d_model))
        cell = torch.arange(W * H).view(W, H) * N_CHANNELS
        self.register_buffer("cell_offset", cell, persistent=False)  # [W, H]

    def forward(
        self, obs: Int[Tensor, "B K W H 3"], directions: Int[Tensor, "B K"]
    ) -> Float[Tensor, "B K d"]:
        B, K, W, H, _ = obs.shape
        obs = obs.long()
        obj, col, st = obs[..., 0], obs[..., 1], obs[..., 2]
        base = self.cell_offset  # [W, H]
        idx = torch.stack(
            [base + obj, base + N_OBJECTS + col, base + N_OBJECTS + N_COLORS + st.clamp(max=N_STATES - 1)], -1
        )  # [B, K, W, H, 3]
        # The agent cell of a fully observed grid stores its direction in the state field: no state feature.
        weight = torch.ones(idx.shape, dtype=self.W_state.dtype, device=obs.device)
        weight[..., 2] = ((obj != AGENT_IDX) & (st < N_STATES)).to(weight.dtype)
        table = self.W_state.reshape(W * H * N_CHANNELS, -1)
        emb = F.embedding_bag(
            idx.reshape(B * K, -1), table, mode="sum", per_sample_weights=weight.reshape(B * K, -1)
        ).view(B, K, -1)
        return emb + self.W_dir[directions.long()] + self.b_state


class CNNStateEmbedding(nn.Module):
    """A small conv encoder over the one-hot observation (less interpretable, sometimes easier to train)."""

    def __init__(self, cfg: DTConfig, channels: int = 32):
        super().__init__()
        W, H = cfg.obs_shape
        self.conv = nn.Sequential(
            nn.Conv2d(N_CHANNELS, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(),
        )
        self.proj = nn.Linear(channels * W * H, cfg.d_model)
        self.W_dir = nn.Parameter(torch.empty(N_DIRECTIONS, cfg.d_model))

    def forward(
        self, obs: Int[Tensor, "B K W H 3"], directions: Int[Tensor, "B K"]
    ) -> Float[Tensor, "B K d"]:
        B, K, W, H, _ = obs.shape
        x = one_hot_torch(obs).reshape(B * K, W, H, N_CHANNELS).permute(0, 3, 1, 2)
        x = self.conv(x).reshape(B * K, -1)
        return self.proj(x).view(B, K, -1) + self.W_dir[directions.long()]


def one_hot_torch(obs: Int[Tensor, "... 3"]) -> Float[Tensor, "... 20"]:
    """Torch twin of :func:`envs.encoding.one_hot` (same channels, agent cells have no state channel)."""
    obs = obs.long()
    obj, col, st = obs[..., 0], obs[..., 1], obs[..., 2]
    out = torch.cat(
        [
            F.one_hot(obj, N_OBJECTS),
            F.one_hot(col, N_COLORS),
            F.one_hot(st.clamp(max=N_STATES - 1), N_STATES)
            * ((obj != AGENT_IDX) & (st < N_STATES))[..., None],
        ],
        -1,
    )
    return out.float()
