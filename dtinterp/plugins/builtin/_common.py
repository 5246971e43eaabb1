"""Parameters and helpers shared by the built-in analyses (a private module: the registry skips it).

**One window or many.** Every dynamic analysis runs on a batch of windows (one trajectory step, every
step of an episode, or ``--data F --episodes N``). ``window = -1`` (the default) reports the mean and the
spread (sample standard deviation) over every window whose read timestep is real; ``window = b`` shows
window ``b`` alone. ``position`` names the state token ``S_k`` that is read (``0``: the last one, which is
real in every window the window builder makes).

**Where.** ``where`` keeps the windows where every condition holds (``agent_x=5, agent_y=3,
agent_dir=right``): the window's last ``timestep`` or ``prev_action``, and on Memory what the window pins down
of its episode (:func:`dtinterp.interp.pairs.window_facts`: the cue, the correct side, the agent's pose at the
last step). Analyses that compare windows with each other use it to study one situation of many episodes.

**The episode clock.** :func:`trained_time_range` is the default range of the time-embedding analyses:
the longest episode of the training data (``dataset_lengths`` in the checkpoint metadata, recorded by the
trainer), else the env's step limit, else the model's time-embedding size.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from transformer_lens import ActivationCache

from dtinterp.interp.dla import spread
from dtinterp.interp.pairs import WINDOW_FACTS, PairError, window_facts
from dtinterp.plugins.api import AnalysisContext, Param, ParameterError
from envs.facts import FACTS
from envs.spec import env_facts

WINDOW_PARAM = Param(
    "window",
    "int",
    -1,
    "Window of the batch to show (row index); -1: the mean and spread over every window.",
    min=-1,
)
POSITION_PARAM = Param("position", "int", 0, "State token S_k read, k = 1..K (0: the last state).", min=0)


#: Conditions of ``where`` read off the windows themselves (any env); Memory adds :data:`WINDOW_FACTS`.
WHERE_NAMES = ("timestep", "prev_action", *WINDOW_FACTS)
WHERE_PARAM = Param(
    "where",
    "str",
    "",
    "Only the windows where every condition holds, e.g. agent_x=5, agent_y=3, agent_dir=right (Memory's "
    "junction): timestep, prev_action and on Memory cue_object, correct_side, agent_x, agent_y, agent_dir; "
    "empty: every window.",
)


def parse_where(text: str, action_names: tuple[str, ...], plugin_id: str) -> dict[str, int]:
    """``"agent_x=5, agent_dir=right"`` -> ``{"agent_x": 5, "agent_dir": 0}`` (a fact's value names and the
    model's action names stand for their numbers)."""
    where = f"plugin {plugin_id!r} parameter 'where'"
    out: dict[str, int] = {}
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        name, sep, value = (x.strip() for x in part.partition("="))
        if not sep or not name or not value:
            raise ParameterError(f"{where}: {part!r} is not NAME=VALUE (e.g. agent_x=5)")
        if name not in WHERE_NAMES:
            raise ParameterError(f"{where}: unknown name {name!r}; expected one of {', '.join(WHERE_NAMES)}")
        names = (
            list(action_names) if name == "prev_action" else list(FACTS[name].values) if name in FACTS else []
        )
        if value in names:
            out[name] = names.index(value)
        elif value.lstrip("-").isdigit():
            out[name] = int(value)
        else:
            choices = f" or one of {', '.join(names)}" if names else ""
            raise ParameterError(f"{where}: {name}={value!r} is not an integer{choices}")
    return out


def where_windows(
    ctx: AnalysisContext, params: dict[str, Any], plugin_id: str, facts_wanted: bool = False
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The batch rows that ``where`` keeps, and the Memory window facts (computed if a condition or the
    caller, ``facts_wanted``, needs them; empty where the env has none)."""
    conditions = parse_where(params["where"], ctx.action_names, plugin_id)
    facts: dict[str, np.ndarray] = {}
    if facts_wanted or set(conditions) & set(WINDOW_FACTS):
        try:
            facts = window_facts(ctx.inputs, ctx.checkpoint.env_spec)
        except PairError as exc:
            if set(conditions) & set(WINDOW_FACTS):
                raise ParameterError(f"plugin {plugin_id!r} parameter 'where': {exc}") from None
    columns = {"timestep": ctx.inputs.timesteps[:, -1], "prev_action": ctx.inputs.actions[:, -2]}
    rows = np.arange(ctx.inputs.batch_size)
    for name, value in conditions.items():
        values = facts[name] if name in facts else columns[name].cpu().numpy()
        rows = rows[values[rows] == value]
    return rows, facts


def state_timestep(ctx: AnalysisContext, params: dict[str, Any], plugin_id: str) -> int:
    """The 0-based timestep ``k`` named by ``position`` (the token read is ``S_{k+1}``)."""
    K = ctx.inputs.context_len
    pos = params["position"]
    if pos > K:
        raise ParameterError(
            f"plugin {plugin_id!r} parameter 'position': {pos} is outside the window of {K} timesteps"
        )
    return K - 1 if pos == 0 else pos - 1


def selected_rows(
    ctx: AnalysisContext, params: dict[str, Any], plugin_id: str, k: int | None = None
) -> Int[Tensor, "n"]:
    """Batch rows shown: ``window`` alone, or (``-1``) every window whose timestep ``k`` is real."""
    B = ctx.inputs.batch_size
    b = params["window"]
    real = ctx.inputs.pad_mask[:, -1 if k is None else k].cpu()
    if b >= B:
        raise ParameterError(
            f"plugin {plugin_id!r} parameter 'window': {b} is outside the batch of {B} windows"
        )
    if b >= 0:
        if not bool(real[b]):
            raise ParameterError(
                f"plugin {plugin_id!r} parameter 'position': timestep {k + 1} is padding in window {b}"
            )
        return torch.tensor([b])
    rows = torch.nonzero(real).flatten()
    if rows.numel() == 0:
        raise ParameterError(
            f"plugin {plugin_id!r} parameter 'position': timestep {k + 1} is padding in every window"
        )
    return rows


def window_label(params: dict[str, Any], n: int) -> str:
    """``window 3`` or ``mean over 256 windows`` for titles and summaries."""
    return f"window {params['window']}" if params["window"] >= 0 else f"mean over {n} window{'s' * (n != 1)}"


def mean_std(x: Float[Tensor, "B ..."], rows: Int[Tensor, "n"]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample std (0 for one window) over the batch rows ``rows``, as float64 arrays."""
    s = spread(x[rows.to(x.device)].double())
    return s.mean.cpu().numpy(), s.std.cpu().numpy()


def masked_mean(
    x: Float[Tensor, "B ..."], mask: Bool[Tensor, "B ..."]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and sample std of ``x`` over the batch where ``mask`` holds, elementwise, and the counts.

    Entries with no window are NaN (a figure leaves them blank).
    """
    m = mask.to(x.device, torch.float64)
    x = x.double() * m
    n = m.sum(0)
    mean = x.sum(0) / n.clamp_min(1)
    var = (((x - mean) * m) ** 2).sum(0) / (n - 1).clamp_min(1)
    nan = torch.full_like(mean, float("nan"))
    return (
        torch.where(n > 0, mean, nan).cpu().numpy(),
        torch.where(n > 0, var.sqrt(), nan).cpu().numpy(),
        n.cpu().numpy().astype(np.int64),
    )


def trained_time_range(ctx: AnalysisContext) -> tuple[int, str]:
    """``(T, why)``: study timesteps ``0 .. T-1`` by default, and where ``T`` comes from."""
    cap = ctx.model.cfg.max_timestep
    lengths = ctx.meta.get("dataset_lengths")
    if isinstance(lengths, dict) and lengths.get("max"):
        T = min(int(lengths["max"]), cap)
        return T, (
            f"the training episodes (longest {int(lengths['max'])} steps, mean {float(lengths['mean']):.3g})"
        )
    spec = ctx.checkpoint.env_spec
    if spec is not None:
        T = min(env_facts(spec).max_steps, cap)
        return T, f"the env's step limit ({T}; this checkpoint records no training episode lengths)"
    return cap, f"the model's time-embedding size ({cap})"


def check_layer(ctx: AnalysisContext, layer: int, plugin_id: str, param: str = "layer") -> None:
    """One-line ParameterError unless ``0 <= layer < n_layers``."""
    L = ctx.model.cfg.n_layers
    if not 0 <= layer < L:
        raise ParameterError(
            f"plugin {plugin_id!r} parameter {param!r}: {layer} is outside the model's layers 0..{L - 1}"
        )


def check_head(ctx: AnalysisContext, head: int, plugin_id: str, param: str = "head") -> None:
    """One-line ParameterError unless ``0 <= head < n_heads``."""
    H = ctx.model.cfg.n_heads
    if not 0 <= head < H:
        raise ParameterError(
            f"plugin {plugin_id!r} parameter {param!r}: {head} is outside the model's heads 0..{H - 1}"
        )


def one_window_run(
    ctx: AnalysisContext, b: int, plugin_id: str
) -> tuple[ActivationCache, Float[Tensor, "1 K A"], Bool[Tensor, "1 K"]]:
    """``(cache, logits, pad_mask)`` of window ``b`` alone, sliced from the context's shared run."""
    B = ctx.inputs.batch_size
    if not 0 <= b < B:
        raise ParameterError(
            f"plugin {plugin_id!r} parameter 'window': {b} is outside the batch of {B} windows"
        )
    cache = ActivationCache({k: v[b : b + 1] for k, v in ctx.cache.cache_dict.items()}, ctx.model)
    return cache, ctx.logits[b : b + 1], ctx.inputs.pad_mask[b : b + 1]


def readout_label(generic: str, per_window: list[str], rows: Int[Tensor, "n"]) -> str:
    """The readout's name for titles: the shared label of the shown windows (``forward - left``), else
    the generic one (``top - runner-up`` differs between windows)."""
    labels = {per_window[int(b)] for b in rows}
    return labels.pop() if len(labels) == 1 else generic
