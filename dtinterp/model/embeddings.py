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

    Computed literally as ``one_hot(obs).flatten() @ W_state.flatten(0, 2) + W_dir[direction] + b_state``:
    one dense GEMM forward and backward, faster than an embedding bag on CPU and GPU.
    """

    def __init__(self, cfg: DTConfig):
        super().__init__()
        W, H = cfg.obs_shape
        self.W_state = nn.Parameter(torch.empty(W, H, N_CHANNELS, cfg.d_model))
        self.W_dir = nn.Parameter(torch.empty(N_DIRECTIONS, cfg.d_model))
        self.b_state = nn.Parameter(torch.zeros(cfg.d_model))

    def forward(
        self, obs: Int[Tensor, "B K W H 3"], directions: Int[Tensor, "B K"]
    ) -> Float[Tensor, "B K d"]:
        B, K, W, H, _ = obs.shape
        table = self.W_state.reshape(W * H * N_CHANNELS, -1)  # [W*H*20, d]
        onehot = one_hot_torch(obs).to(table.dtype).reshape(B * K, -1)  # [B*K, W*H*20], cells in (x, y) order
        emb = (onehot @ table).view(B, K, -1)  # one GEMM forward and backward
        return emb + F.embedding(directions.long(), self.W_dir) + self.b_state


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
        return self.proj(x).view(B, K, -1) + F.embedding(directions.long(), self.W_dir)


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
