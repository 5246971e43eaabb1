"""The model's input object: a batch of left-padded context windows.

A window holds K timesteps; timestep k contributes the tokens R_k, S_k, A_k, except the last, whose
action is the one predicted, so a window is ``3K - 1`` tokens: ``R1, S1, A1, ..., RK, SK``.
Padding is on the left: ``pad_mask[b, k]`` is True for real timesteps, which are right-aligned.
``DTInputs.shape == (batch, n_tokens)`` so ``transformer_lens.patching`` can treat it like tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

#: Name of the token kinds in order within one timestep.
TOKEN_KINDS = ("R", "S", "A")


def token_labels(context_len: int) -> list[str]:
    """``["R1", "S1", "A1", ..., "RK", "SK"]`` — the one definition of token labels."""
    labels = [f"{kind}{k + 1}" for k in range(context_len) for kind in TOKEN_KINDS]
    return labels[:-1]


def state_positions(context_len: int) -> list[int]:
    """Token positions of S1..SK (where actions are predicted)."""
    return [3 * k + 1 for k in range(context_len)]


@dataclass
class DTInputs:
    """A batch of context windows (tensors on one device)."""

    obs: Int[Tensor, "batch K W H 3"]
    """Compact uint8 observation grids."""
    directions: Int[Tensor, "batch K"]
    rtg: Float[Tensor, "batch K"]
    """Return-to-go already divided by the model's RTG scale."""
    actions: Int[Tensor, "batch K"]
    """Action taken at each timestep; the last one is what is predicted and is not embedded."""
    timesteps: Int[Tensor, "batch K"]
    pad_mask: Bool[Tensor, "batch K"]
    """True at real timesteps (left padding is False)."""

    def __post_init__(self) -> None:
        b, k = self.rtg.shape
        for f in fields(self):
            t = getattr(self, f.name)
            if t.shape[:2] != (b, k):
                raise ValueError(f"DTInputs.{f.name} has shape {tuple(t.shape)}, expected ({b}, {k}, ...)")

    @property
    def batch_size(self) -> int:
        return self.rtg.shape[0]

    @property
    def context_len(self) -> int:
        return self.rtg.shape[1]

    @property
    def shape(self) -> tuple[int, int]:
        """(batch, n_tokens): lets TL's patching treat inputs like a token tensor."""
        return (self.batch_size, 3 * self.context_len - 1)

    @property
    def device(self) -> torch.device:
        return self.rtg.device

    def to(self, device: str | torch.device) -> DTInputs:
        return DTInputs(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def __getitem__(self, idx: int | slice | Tensor) -> DTInputs:
        """Select batch rows (keeps the batch dimension for int indices)."""
        if isinstance(idx, int):
            idx = slice(idx, idx + 1)
        return DTInputs(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})

    def clone(self) -> DTInputs:
        return DTInputs(**{f.name: getattr(self, f.name).clone() for f in fields(self)})

    @staticmethod
    def cat(items: list[DTInputs]) -> DTInputs:
        """Concatenate along the batch dimension."""
        return DTInputs(**{f.name: torch.cat([getattr(x, f.name) for x in items]) for f in fields(DTInputs)})
