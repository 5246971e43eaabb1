"""The bounds on numbers and sizes a user can give, each checked in one place, with the reason for it.

**Return-to-go.** The model reads a return-to-go as ``rtg / rtg_scale``, embedded as
``(rtg / rtg_scale) * W_rtg + b_rtg``. MiniGrid returns lie in [-1, 1], so a model has only ever seen
inputs of order 1 there. Far beyond that the input is meaningless, and soon harmful: the first LayerNorm
squares the token's deviation from its mean, which overflows float32 (max ~3.4e38) once
``|rtg / rtg_scale * W_rtg|`` passes ~1e19, long before the value itself stops fitting in float32
(a target of 1e30 gives NaN logits; so does 1e300, which is already ``inf`` in float32). The bound
:data:`MAX_MODEL_RTG` ``= 1e4`` leaves a margin of 10^15 below the overflow, keeps the float32 RTG token
resolved to ~1e-3, and is still four orders of magnitude beyond any return a MiniGrid env pays.
:func:`check_rtg` is the one check: every target return and every edited RTG token goes through it
(``dtinterp evaluate --rtg``, ``calibrate --min/--max``, ``analyze --rtg``/``--edit R..=``,
:func:`~dtinterp.interp.edits.apply_edits`, :class:`~dtinterp.data.episode.Episode` targets and the app).

**Sizes.** Every size-like argument is bounded by what the env and the model can use, so no argument
can make numpy or torch ask for more memory than the work needs:

- a view larger than ``2 * max(width, height) - 1`` cells sees only walls beyond the grid, whichever cell
  the agent stands on (:func:`max_view_size`); without the bound, MiniGrid allocates the view's
  observation space up front (a view of 10^5 cells asks numpy for 30 GB);
- an episode limit beyond :data:`MAX_EPISODE_STEPS` is far beyond any MiniGrid env's own (hundreds to a
  few thousand steps), and a rollout keeps that many steps of history per env;
- collected episodes, worker processes, evaluation episodes, envs stepped together and calibration
  points are capped by :data:`MAX_COLLECT_EPISODES`, :data:`MAX_WORKERS`, :data:`MAX_EVAL_EPISODES`,
  :data:`MAX_NUM_ENVS` and :data:`MAX_POINTS`;
- the windows of one analysis are bounded by the memory of their activation cache,
  :data:`MAX_CACHE_BYTES` (see :func:`cache_bytes_per_window`);
- an SAE's dictionary, steps, batch and harvested windows by :data:`MAX_SAE_LATENTS`,
  :data:`MAX_SAE_STEPS`, :data:`MAX_SAE_BATCH` and :data:`MAX_SAE_WINDOWS`.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import TYPE_CHECKING, Any

from dtinterp.errors import ConfigError, DtinterpError

if TYPE_CHECKING:
    from dtinterp.model.config import DTConfig

#: Largest ``|rtg / rtg_scale|`` the model is given (see the module docstring).
MAX_MODEL_RTG = 1e4
#: Largest finite float32.
FLOAT32_MAX = 3.4028234663852886e38
#: Longest episode accepted (``collect --max-steps``, a checkpoint's env spec).
MAX_EPISODE_STEPS = 100_000
#: Most episodes ``dtinterp collect`` gathers in one dataset.
MAX_COLLECT_EPISODES = 10_000_000
#: Most worker processes of one collection (each imports the env stack, ~100 MB).
MAX_WORKERS = 1024
#: Most episodes per target of ``dtinterp evaluate`` / ``calibrate``.
MAX_EVAL_EPISODES = 1_000_000
#: Most envs stepped together in one batched forward pass.
MAX_NUM_ENVS = 4096
#: Most targets of one calibration curve.
MAX_POINTS = 1001
#: Most memory the activation cache of one analysis run may take.
MAX_CACHE_BYTES = 4 * 2**30
#: Largest dictionary of ``dtinterp sae train`` (65,536 latents of width 1,024: 512 MB of weights).
MAX_SAE_LATENTS = 65_536
#: Most optimiser steps and tokens per step of ``dtinterp sae train``.
MAX_SAE_STEPS = 10_000_000
MAX_SAE_BATCH = 65_536
#: Most windows ``dtinterp sae train`` harvests (the store on disk holds one activation per token).
MAX_SAE_WINDOWS = 10_000_000


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else repr(value)


def check_rtg(
    value: Any,
    where: str,
    rtg_scale: float | None = None,
    error: type[DtinterpError] = ConfigError,
) -> float:
    """``value`` as a float, if it is a return-to-go the model can be given; else one-line ``error``.

    Always: a real number (not a bool), finite, within float32. With ``rtg_scale`` (the model's): also
    ``|value / rtg_scale| <= MAX_MODEL_RTG``. ``where`` names the input (``"--rtg"``, ``"edit 'R3=2'"``).
    """
    if isinstance(value, bool) or not isinstance(value, Real):
        raise error(f"{where} must be a number, got {value!r}")
    x = float(value)
    if not math.isfinite(x):
        raise error(f"{where} must be finite, got {_fmt(x)}")
    if abs(x) > FLOAT32_MAX:
        raise error(f"{where} must fit in float32 (|x| <= {FLOAT32_MAX:.3g}), got {_fmt(x)}")
    if rtg_scale is not None and abs(x / rtg_scale) > MAX_MODEL_RTG:
        bound = MAX_MODEL_RTG * rtg_scale
        raise error(
            f"{where} must be within [-{bound:g}, {bound:g}], what the model's RTG token represents "
            f"(|rtg / rtg_scale| <= {MAX_MODEL_RTG:g}, rtg_scale {rtg_scale:g}), got {_fmt(x)}"
        )
    return x


def max_view_size(env_id: str) -> int:
    """The largest egocentric view that still sees grid cells (odd): ``2 * max(width, height) - 1``.

    Never below the env's default view (7), so every default spec stays valid.
    """
    from envs.spec import EnvSpec, make_env

    env = make_env(EnvSpec(env_id))
    try:
        base = env.unwrapped
        return max(int(base.agent_view_size), 2 * max(int(base.width), int(base.height)) - 1)
    finally:
        env.close()


def check_env_sizes(
    env_id: str,
    view_size: int,
    fully_observed: bool,
    max_steps: int | None,
    where: str = "",
    error: type[DtinterpError] = ConfigError,
) -> None:
    """Refuse a view or episode limit beyond what ``env_id`` can use, before any env is built with them."""
    prefix = f"{where}: " if where else ""
    if max_steps is not None and isinstance(max_steps, int) and max_steps > MAX_EPISODE_STEPS:
        raise error(f"{prefix}max steps {max_steps} is above the limit {MAX_EPISODE_STEPS}")
    if not fully_observed and isinstance(view_size, int):
        limit = max_view_size(env_id)
        if view_size > limit:
            raise error(
                f"{prefix}view size {view_size} is larger than {env_id} can use (at most {limit}: "
                "a bigger view sees only cells beyond the grid)"
            )


def cache_bytes_per_window(cfg: DTConfig) -> int:
    """Bytes of one window's activation cache (float32): every hook of the model on ``3K - 1`` tokens.

    Per layer: the residual hooks, attention in/out, q/k/v/z, the two LayerNorms, the MLP pre/post
    activations, and the attention scores and pattern (``n_heads * P * P`` each).
    """
    P = 3 * cfg.context_len - 1
    d_head = cfg.d_head or max(1, cfg.d_model // cfg.n_heads)
    per_layer = (
        P * (8 * cfg.d_model + 4 * cfg.n_heads * d_head + (0 if cfg.attn_only else 2 * cfg.d_mlp))
        + 2 * cfg.n_heads * P * P
    )
    embeds = P * cfg.d_model * 4 + cfg.context_len * cfg.d_model * 4
    return 4 * (cfg.n_layers * per_layer + embeds + P * cfg.d_model)


def max_windows(cfg: DTConfig) -> int:
    """Most windows whose activation cache fits in :data:`MAX_CACHE_BYTES` for a model of ``cfg``."""
    return max(1, MAX_CACHE_BYTES // cache_bytes_per_window(cfg))


__all__ = [
    "FLOAT32_MAX",
    "MAX_CACHE_BYTES",
    "MAX_COLLECT_EPISODES",
    "MAX_EPISODE_STEPS",
    "MAX_EVAL_EPISODES",
    "MAX_MODEL_RTG",
    "MAX_NUM_ENVS",
    "MAX_POINTS",
    "MAX_WORKERS",
    "cache_bytes_per_window",
    "check_env_sizes",
    "check_rtg",
    "max_view_size",
    "max_windows",
]
