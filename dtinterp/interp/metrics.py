"""Metrics of the model's output for causal analyses (patching, ablation, path patching).

A metric reads the action logits at one state token ``S_k`` (``k`` indexes the window's timesteps, ``-1``
the last, whose action is the one the model is about to take) and returns one number per window:

    ``metric(logits: [..., B, K, A]) -> [..., B]``

Leading axes are allowed and kept: the patching engine stacks its patches in front of the window axis
and evaluates every patch with one call. A metric that takes per-window arguments (an action per window,
a clean distribution per window) broadcasts them over those leading axes. TransformerLens' patching
functions want a scalar: pass ``lambda logits: metric(logits).mean()``.

- :class:`LogitDiff`: ``logit[good] - logit[bad]``; :func:`logit_diff` builds the usual one from a
  clean and a corrupted run (the clean run's top action minus the corrupted run's top action).
- :class:`LogProb`: the log-probability of one action.
- :class:`KLDivergence`: ``KL(reference || patched)`` of the action distributions, 0 when unchanged.

:func:`normalised_score` maps a metric onto the scale of a patching experiment: 0 is the corrupted run,
1 the clean run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from jaxtyping import Float, Int
from torch import Tensor

from dtinterp.errors import DtinterpError


class MetricError(DtinterpError):
    """A metric's arguments do not fit the logits it is given."""


class Metric(Protocol):
    """Logits ``[..., B, K, A]`` -> one value per window ``[..., B]``."""

    def __call__(self, logits: Float[Tensor, "... B K A"]) -> Float[Tensor, "... B"]: ...


def _at(logits: Float[Tensor, "... B K A"], k: int) -> Float[Tensor, "... B A"]:
    K = logits.shape[-2]
    if not -K <= k < K:
        raise MetricError(f"metric reads state token {k}, but the window has {K} timesteps")
    return logits[..., k, :]


def _take(x: Float[Tensor, "... B A"], action: int | Int[Tensor, "B"], what: str) -> Float[Tensor, "... B"]:
    """``x[..., b, action]`` (``action`` one id, or one id per window)."""
    B, A = x.shape[-2:]
    if isinstance(action, Tensor) and action.dim() > 0:
        if action.shape != (B,):
            raise MetricError(
                f"{what} has shape {tuple(action.shape)}, expected one action per window ({B},)"
            )
        idx = action.to(x.device).long()
        if int(idx.min()) < 0 or int(idx.max()) >= A:
            raise MetricError(f"{what} holds an action outside 0..{A - 1}")
        return x.gather(-1, idx.expand(x.shape[:-1]).unsqueeze(-1)).squeeze(-1)
    a = int(action)
    if not 0 <= a < A:
        raise MetricError(f"{what} {a} is outside 0..{A - 1}")
    return x[..., a]


@dataclass(frozen=True, eq=False)
class LogitDiff:
    """``logit[good] - logit[bad]`` at state token ``k``."""

    good: int | Int[Tensor, "B"]
    """Action id (or one per window) whose logit counts positively."""
    bad: int | Int[Tensor, "B"]
    """Action id (or one per window) whose logit is subtracted."""
    k: int = -1
    """Timestep of the window whose state token is read (-1: the last)."""

    def __call__(self, logits: Float[Tensor, "... B K A"]) -> Float[Tensor, "... B"]:
        x = _at(logits, self.k)
        return _take(x, self.good, "good action") - _take(x, self.bad, "bad action")


@dataclass(frozen=True, eq=False)
class LogProb:
    """Log-probability of ``action`` at state token ``k``."""

    action: int | Int[Tensor, "B"]
    """Action id, or one per window."""
    k: int = -1
    """Timestep of the window whose state token is read (-1: the last)."""

    def __call__(self, logits: Float[Tensor, "... B K A"]) -> Float[Tensor, "... B"]:
        return _take(_at(logits, self.k).log_softmax(-1), self.action, "action")


@dataclass(frozen=True, eq=False)
class KLDivergence:
    """``KL(reference || patched)`` of the action distributions at state token ``k`` (nats, >= 0)."""

    reference: Float[Tensor, "B K A"]
    """Logits of the run to compare with (usually the clean run), one row per window."""
    k: int = -1
    """Timestep of the window whose state token is read (-1: the last)."""

    def __call__(self, logits: Float[Tensor, "... B K A"]) -> Float[Tensor, "... B"]:
        if self.reference.shape[-3:] != logits.shape[-3:]:
            raise MetricError(
                f"KL reference logits have shape {tuple(self.reference.shape)}, "
                f"the logits {tuple(logits.shape)}"
            )
        ref = _at(self.reference, self.k).to(logits).log_softmax(-1)  # [B, A]
        return (ref.exp() * (ref - _at(logits, self.k).log_softmax(-1))).sum(-1)


def logit_diff(
    clean_logits: Float[Tensor, "B K A"], corrupted_logits: Float[Tensor, "B K A"], k: int = -1
) -> LogitDiff:
    """The default logit difference of a clean/corrupted pair, per window.

    ``good`` is the clean run's top action and ``bad`` the corrupted run's top action. Where both runs
    pick the same action the difference would be identically 0, so ``bad`` is then the corrupted run's
    runner-up (the action it would switch to).
    """
    clean, corrupted = _at(clean_logits, k), _at(corrupted_logits, k)
    if clean.shape != corrupted.shape:
        raise MetricError(
            f"clean logits {tuple(clean_logits.shape)} and corrupted {tuple(corrupted_logits.shape)} differ"
        )
    good = clean.argmax(-1)
    top2 = corrupted.topk(2, dim=-1).indices  # [B, 2]
    bad = torch.where(top2[:, 0] == good, top2[:, 1], top2[:, 0])
    return LogitDiff(good, bad, k)


def normalised_score(
    patched: Float[Tensor, "..."], clean: Float[Tensor, "..."], corrupted: Float[Tensor, "..."]
) -> Float[Tensor, "..."]:
    """``(patched - corrupted) / (clean - corrupted)``: 0 = the corrupted run, 1 = the clean run.

    Broadcasts; NaN where the clean and corrupted metrics coincide (no scale to measure recovery on).
    """
    scale = clean - corrupted
    nan = torch.full_like(scale, float("nan"))
    return torch.where(scale != 0, (patched - corrupted) / torch.where(scale != 0, scale, 1.0), nan)
