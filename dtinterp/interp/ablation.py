"""Ablation: overwrite components' activations and measure what the model loses.

Components are named as in :mod:`dtinterp.interp.hooknames` (a head ``blocks.1.attn.hook_z:h2``, a neuron
``blocks.0.mlp.hook_post:n113``, a layer output ``blocks.1.hook_attn_out``, an embedding kind
``hook_rtg_embed``, ...). Three replacements:

- ``zero``: the activation becomes 0. Simple, but 0 may be far off the distribution the model saw.
- ``mean``: the activation becomes its mean over a reference batch of windows, *per position* (each token
  position, and for attention patterns each query row, has its own mean; a vector is never averaged
  with itself or with other positions). Only real tokens of the reference windows enter a position's
  mean; a position that is padding in every reference window takes the plain mean over the windows.
  This removes what the component says about *this* window while keeping what it says about every
  window at that position.
- ``resample``: the activation becomes another window's (Chan et al. 2022's resampling ablation): row
  ``index[b]`` of the reference windows' activations for window ``b``. Without reference windows,
  :func:`ablate` resamples within the batch by a seeded derangement (no window keeps its own).

The replacement is applied by forward hooks that exist only inside a ``with model.hooks(...)`` block
(:func:`ablated`), never left on a shared model. :func:`ablation_hooks` returns the plain
``(hook_name, fn)`` pairs for callers that run their own forward passes (an env rollout): mean values
broadcast to any batch of full-length windows, and resampled activations are taken from reference row
``b % R`` unless an index is given.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from dtinterp.errors import DtinterpError
from dtinterp.interp.hooknames import Component, parse_components
from dtinterp.interp.metrics import KLDivergence, Metric
from dtinterp.model.hooked_dt import HookedDecisionTransformer
from dtinterp.model.inputs import DTInputs

ABLATIONS = ("zero", "mean", "resample")

HookFn = Callable[[Tensor, object], Tensor]


class AblationError(DtinterpError):
    """An ablation that cannot apply: unknown kind, missing or mismatched reference values."""


def _check_kind(kind: str) -> None:
    if kind not in ABLATIONS:
        raise AblationError(f"ablation kind must be one of {ABLATIONS}, got {kind!r}")


def _real_positions(component: Component, inputs: DTInputs) -> Bool[Tensor, "B n"]:
    """Which entries along the component's position axis are real tokens, per window."""
    pad = inputs.pad_mask
    if component.site in ("rtg_embed", "state_embed", "time_embed"):
        return pad  # [B, K]: one vector per timestep
    if component.site == "action_embed":
        return pad[:, :-1]  # [B, K-1]: the last action is not embedded
    return pad.repeat_interleave(3, dim=1)[:, : inputs.shape[1]]  # [B, P]


def _position_axis(component: Component) -> int:
    """Axis of the token position in the hook's activation (the query axis for patterns)."""
    return 2 if component.site == "pattern" else 1


def ablation_values(
    model: HookedDecisionTransformer,
    components: Sequence[str | Component],
    kind: str,
    reference: DTInputs,
) -> dict[str, Tensor]:
    """What ``mean`` or ``resample`` ablation writes, from the ``reference`` windows, by hook name.

    ``mean``: the per-position mean ``[1, ...]`` (see the module docstring). ``resample``: the reference
    activations ``[R, ...]``. ``zero`` needs none (an empty dict).
    """
    _check_kind(kind)
    comps = parse_components(components, model.cfg)
    if kind == "zero":
        return {}
    names = sorted({c.hook_name for c in comps})
    with torch.inference_mode():
        _, cache = model.run_with_cache(reference, names_filter=names)
    if kind == "resample":
        return {name: cache[name].detach().clone() for name in names}
    out = {}
    for name in names:
        comp = next(c for c in comps if c.hook_name == name)
        act = cache[name]
        real = _real_positions(comp, reference).to(act.dtype)  # [R, n]
        axis = _position_axis(comp)
        w = real.reshape(real.shape[0], *([1] * (axis - 1)), real.shape[1], *([1] * (act.dim() - axis - 1)))
        count = w.sum(0, keepdim=True)
        masked = (act * w).sum(0, keepdim=True) / count.clamp(min=1)
        out[name] = torch.where(count > 0, masked, act.mean(0, keepdim=True))
    return out


def _resample_rows(index: Int[Tensor, "B"] | None, B: int, R: int, name: str) -> Tensor:
    if index is None:
        return torch.arange(B) % R
    if index.shape != (B,):
        raise AblationError(
            f"resample ablation of {name}: the index has shape {tuple(index.shape)}, the batch {B} windows"
        )
    if int(index.min()) < 0 or int(index.max()) >= R:
        raise AblationError(f"resample ablation of {name}: index outside the {R} reference windows")
    return index


def ablation_hooks(
    model: HookedDecisionTransformer,
    components: Sequence[str | Component],
    kind: str = "zero",
    values: Mapping[str, Tensor] | None = None,
    *,
    resample_index: Int[Tensor, "B"] | None = None,
) -> list[tuple[str, HookFn]]:
    """``(hook_name, fn)`` forward hooks that ablate ``components`` (one hook per hook name).

    ``values`` comes from :func:`ablation_values` (``mean``: broadcast to any batch; ``resample``: row
    ``resample_index[b]``, default ``b % R``, of the reference activations for window ``b``).
    """
    _check_kind(kind)
    comps = parse_components(components, model.cfg)
    by_hook: dict[str, list[Component]] = {}
    for c in comps:
        by_hook.setdefault(c.hook_name, []).append(c)
    if kind != "zero":
        missing = [name for name in by_hook if values is None or name not in values]
        if missing:
            raise AblationError(
                f"{kind} ablation needs reference values for {', '.join(missing)} (see ablation_values)"
            )
    return [(name, _make_hook(name, group, kind, values, resample_index)) for name, group in by_hook.items()]


def _make_hook(
    name: str,
    group: list[Component],
    kind: str,
    values: Mapping[str, Tensor] | None,
    resample_index: Tensor | None,
) -> HookFn:
    def hook(act: Tensor, hook: object) -> Tensor:
        if kind == "zero":
            replacement = torch.zeros_like(act)
        else:
            ref = values[name]  # type: ignore[index]
            if ref.shape[1:] != act.shape[1:]:
                raise AblationError(
                    f"{kind} ablation of {name}: reference activations are {tuple(ref.shape[1:])} "
                    "per window, "
                    f"this run's are {tuple(act.shape[1:])} (windows of another length?)"
                )
            if kind == "mean":
                replacement = ref.to(act).expand_as(act)
            else:
                rows = _resample_rows(resample_index, act.shape[0], ref.shape[0], name)
                replacement = ref.to(act)[rows.to(ref.device)]
        if any(c.index is None for c in group):
            return replacement.clone()
        out = act.clone()
        for c in group:
            sel = (slice(None),) * c.unit_axis + (c.index,)
            out[sel] = replacement[sel]
        return out

    return hook


@contextmanager
def ablated(
    model: HookedDecisionTransformer,
    components: Sequence[str | Component],
    kind: str = "zero",
    values: Mapping[str, Tensor] | None = None,
    *,
    resample_index: Int[Tensor, "B"] | None = None,
) -> Iterator[HookedDecisionTransformer]:
    """Every forward pass of ``model`` inside the block runs with ``components`` ablated."""
    with model.hooks(
        fwd_hooks=ablation_hooks(model, components, kind, values, resample_index=resample_index)
    ):
        yield model


def derangement(n: int, seed: int = 0) -> Int[Tensor, "n"]:
    """A seeded random permutation of ``0..n-1`` without fixed points (``n >= 2``)."""
    if n < 2:
        raise AblationError("resampling within the batch needs at least 2 windows (or reference windows)")
    g = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(n, generator=g)
        if not bool((perm == torch.arange(n)).any()):
            return perm


@dataclass
class AblationResult:
    """The effect of ablating a set of components together on a metric, per window."""

    components: list[str]
    """Canonical names of the ablated components."""
    kind: str
    """``zero``, ``mean`` or ``resample``."""
    clean: Float[Tensor, "B"]
    """Metric of the unablated run."""
    ablated: Float[Tensor, "B"]
    """Metric of the ablated run."""
    effect: Float[Tensor, "B"]
    """``ablated - clean`` per window."""
    mean_effect: float
    """``effect`` averaged over the windows."""
    logits: Float[Tensor, "B K A"]
    """Action logits of the ablated run."""
    resample_index: Int[Tensor, "B"] | None = None
    """For ``resample``: the reference window each window's activations came from."""


def ablate(
    model: HookedDecisionTransformer,
    inputs: DTInputs,
    components: Sequence[str | Component],
    metric: Metric | None = None,
    kind: str = "zero",
    reference: DTInputs | None = None,
    seed: int = 0,
) -> AblationResult:
    """Ablate ``components`` together on ``inputs`` and measure ``metric`` (default: the KL divergence
    of the action distribution at the last state token from the unablated run's).

    ``reference``: windows for ``mean`` (default: ``inputs`` themselves) and ``resample`` (default:
    ``inputs``, resampled by a seeded derangement; given reference windows are drawn uniformly with the
    seed).
    """
    _check_kind(kind)
    names = [str(c) for c in parse_components(components, model.cfg)]
    B = inputs.batch_size
    index = None
    if kind == "resample":
        if reference is None:
            index = derangement(B, seed)
        else:
            g = torch.Generator().manual_seed(seed)
            index = torch.randint(reference.batch_size, (B,), generator=g)
    values = ablation_values(model, names, kind, inputs if reference is None else reference)
    with torch.inference_mode():
        clean_logits = model(inputs)
        with ablated(model, names, kind, values, resample_index=index):
            logits = model(inputs)
        metric = metric if metric is not None else KLDivergence(clean_logits)
        clean, abl = metric(clean_logits), metric(logits)
    if clean.shape != (B,):
        raise AblationError(f"metric must return one value per window ({B},), got {tuple(clean.shape)}")
    effect = abl - clean
    return AblationResult(names, kind, clean, abl, effect, float(effect.mean()), logits, index)
