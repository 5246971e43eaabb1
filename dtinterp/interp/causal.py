"""The causal toolkit's shared pieces: a metric chosen by name, component lists, ablation effects, and
ablation hooks for rollouts.

**Metrics by name** (:func:`build_metric`), read at one state token of each window, for a clean run and a
corrupted one (a patching pair, or the unablated and the ablated run):

- ``logit-diff``: ``logit[good] - logit[bad]``. By default ``good`` is the clean run's top action and
  ``bad`` the corrupted run's top action (its runner-up where both runs pick the same action), per window,
  as :func:`dtinterp.interp.metrics.logit_diff`; either can be fixed to one action instead;
- ``logprob``: the log-probability of ``good`` (default: the clean run's top action);
- ``kl``: ``KL(clean || run)`` of the action distributions (0 on the clean run).

**Ablation effects** (:func:`ablation_effects`): zero, mean or resample ablation of a set of components
(names as in :mod:`dtinterp.interp.hooknames`), together and each alone, on a batch of windows. Mean and
resample take their values from the *other* windows of the batch (a window never supplies its own
replacement): ``mean`` writes, per position, the mean over the other windows whose token there is real
(:func:`leave_one_out_means`); ``resample`` writes the activation of another window, drawn with a seed
among the windows that are real wherever this one is (:func:`resample_partners`), so a real token never
receives a padded token's junk.

**Ablations played out** (:func:`ablation_hooks_for`): one line ``KIND: components`` (``zero``, ``mean``,
``resample``, ``patch``) becomes TransformerLens forward hooks for every forward pass of a rollout
(``rollout(..., hooks=...)``, ``evaluate(..., hooks=...)``). ``mean`` uses the per-position mean over the
reference windows, ``resample`` reference window ``b % R`` for env slot ``b``, and ``patch`` the
activation of the one reference window given (a fixed activation, e.g. from the other-cue run). A
``steer: ...`` line is handed to :func:`dtinterp.interp.interventions.parse_intervention`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from dtinterp.interp.ablation import (  # positions of a component as the ablation library reads them
    AblationError,
    _position_axis,
    _real_positions,
    ablation_hooks,
    ablation_values,
)
from dtinterp.interp.hooknames import Component, ComponentError, parse_components
from dtinterp.interp.metrics import KLDivergence, LogitDiff, LogProb, Metric, MetricError
from dtinterp.model.checkpoint import Checkpoint
from dtinterp.model.hooked_dt import HookedDecisionTransformer
from dtinterp.model.inputs import DTInputs

#: Metrics by name (see the module docstring).
METRICS = ("logit-diff", "logprob", "kl")
#: Ablations of :func:`ablation_effects`.
EFFECT_KINDS = ("zero", "mean", "resample")
#: Ablations :func:`ablation_hooks_for` plays out.
PLAYED_KINDS = ("zero", "mean", "resample", "patch")

HookFn = Callable[[Tensor, object], Tensor]


# ------------------------------------------------------------------------------------------- metrics


@dataclass(frozen=True, eq=False)
class ChosenMetric:
    """A metric built for one clean/corrupted pair of runs, with the words that describe it."""

    name: str
    """``logit-diff``, ``logprob`` or ``kl``."""
    metric: Metric
    """Logits ``[..., B, K, A]`` -> ``[..., B]``."""
    good: Int[Tensor, "B"] | None
    """The action counted (logit-diff, logprob) per window; None for kl."""
    bad: Int[Tensor, "B"] | None
    """The action subtracted (logit-diff) per window; None otherwise."""

    def label(
        self,
        action_names: Sequence[str],
        rows: Sequence[int] | None = None,
        runs: tuple[str, str] = ("clean", "corrupted"),
    ) -> str:
        """``logit(right) - logit(left)``, ``log p(right)`` or ``KL(clean || run)``; where the actions differ
        between the windows ``rows``, words naming the ``runs`` they come from (``clean top``)."""

        def one(ids: Tensor | None, generic: str) -> str:
            assert ids is not None
            chosen = ids.tolist() if rows is None else [ids[int(r)].item() for r in rows]
            return action_names[chosen[0]] if len(set(chosen)) == 1 else generic

        if self.name == "kl":
            return f"KL({runs[0]} || run)"
        good = one(self.good, f"{runs[0]} top")
        if self.name == "logprob":
            return f"log p({good})"
        return f"logit({good}) - logit({one(self.bad, f'{runs[1]} top or runner-up')})"


def build_metric(
    name: str,
    clean_logits: Float[Tensor, "B K A"],
    corrupted_logits: Float[Tensor, "B K A"],
    k: int = -1,
    good: int | None = None,
    bad: int | None = None,
) -> ChosenMetric:
    """The metric ``name`` (:data:`METRICS`) at timestep ``k`` for this pair of runs.

    ``good`` / ``bad`` fix the actions (ids) of ``logit-diff`` (``good`` also ``logprob``'s); None takes
    them from the runs (see the module docstring).
    """
    if name not in METRICS:
        raise MetricError(f"unknown metric {name!r}; expected one of {', '.join(METRICS)}")
    if clean_logits.shape != corrupted_logits.shape:
        raise MetricError(
            f"clean logits {tuple(clean_logits.shape)} and corrupted {tuple(corrupted_logits.shape)} differ"
        )
    K, A = clean_logits.shape[-2:]
    if not -K <= k < K:
        raise MetricError(f"metric reads state token {k}, but the window has {K} timesteps")
    for what, a in (("action", good), ("versus action", bad)):
        if a is not None and not 0 <= a < A:
            raise MetricError(f"{what} {a} is outside the model's actions 0..{A - 1}")
    if name == "kl":
        return ChosenMetric(name, KLDivergence(clean_logits.detach(), k), None, None)
    clean, corrupted = clean_logits[:, k].detach(), corrupted_logits[:, k].detach()
    B = clean.shape[0]
    g = clean.argmax(-1) if good is None else torch.full((B,), good, dtype=torch.long, device=clean.device)
    if name == "logprob":
        return ChosenMetric(name, LogProb(g, k), g, None)
    if bad is None:
        top2 = corrupted.topk(2, dim=-1).indices  # the corrupted run's choice, or its runner-up
        b = torch.where(top2[:, 0] == g, top2[:, 1], top2[:, 0])
    else:
        b = torch.full((B,), bad, dtype=torch.long, device=clean.device)
    if bool((g == b).any()):
        raise MetricError("the logit difference of an action with itself is 0: choose two different actions")
    return ChosenMetric(name, LogitDiff(g, b, k), g, b)


# ------------------------------------------------------------------------------------------- components


def parse_component_list(text: str | Sequence[str], model: HookedDecisionTransformer) -> list[Component]:
    """Components written ``blocks.1.attn.hook_z:h2, blocks.0.mlp.hook_post:n113`` (commas or spaces),
    each checked against the model; duplicates kept once; none at all is a :class:`ComponentError`."""
    names = re.split(r"[,\s]+", text.strip()) if isinstance(text, str) else [str(t) for t in text]
    names = [n for n in names if n]
    if not names:
        raise ComponentError("no components given: nothing to ablate (e.g. blocks.1.attn.hook_z:h2)")
    out: list[Component] = []
    for c in parse_components(names, model.cfg):
        if c not in out:
            out.append(c)
    return out


# ------------------------------------------------------------------------------------------- ablation


def leave_one_out_means(
    model: HookedDecisionTransformer, components: Sequence[Component], inputs: DTInputs
) -> dict[str, Tensor]:
    """For each hook of ``components``: ``[B, ...]``, row ``b`` the per-position mean over the *other*
    windows (real tokens only; a position padded in every other window takes their plain mean)."""
    B = inputs.batch_size
    if B < 2:
        raise AblationError("mean ablation over the other windows needs at least 2 windows")
    names = sorted({c.hook_name for c in components})
    with torch.inference_mode():
        _, cache = model.run_with_cache(inputs, names_filter=names)
    out = {}
    for name in names:
        comp = next(c for c in components if c.hook_name == name)
        act = cache[name].double()
        real = _real_positions(comp, inputs).to(act)  # [B, n]
        axis = _position_axis(comp)
        w = real.reshape(B, *([1] * (axis - 1)), real.shape[1], *([1] * (act.dim() - axis - 1)))
        total, count = (act * w).sum(0, keepdim=True), w.sum(0, keepdim=True)
        others, n_others = total - act * w, count - w  # leave window b out
        plain = (act.sum(0, keepdim=True) - act) / (B - 1)
        out[name] = torch.where(n_others > 0, others / n_others.clamp(min=1), plain).to(cache[name].dtype)
    return out


def resample_partners(inputs: DTInputs, seed: int = 0) -> Int[Tensor, "B"]:
    """For each window, another window of the batch that is real wherever it is (drawn with ``seed``)."""
    pad = inputs.pad_mask.cpu()
    B = pad.shape[0]
    g = torch.Generator().manual_seed(seed)
    out = []
    for b in range(B):
        ok = [c for c in range(B) if c != b and bool((pad[c] | ~pad[b]).all())]
        if not ok:
            raise AblationError(
                f"resample ablation: no other window is real wherever window {b} is (it needs a window "
                "at least as long to take activations from)"
            )
        out.append(ok[int(torch.randint(len(ok), (1,), generator=g))])
    return torch.as_tensor(out)


@dataclass
class AblationEffects:
    """Ablating several sets of components (each alone, all together) on the same windows."""

    labels: list[str]
    """One per set: a component's name, or ``together`` for all of them."""
    components: list[list[str]]
    """The canonical names in each set."""
    kind: str
    """``zero``, ``mean`` or ``resample``."""
    clean_logits: Float[Tensor, "B K A"]
    ablated_logits: Float[Tensor, "G B K A"]
    """Logits with each set ablated."""
    resample_index: Int[Tensor, "B"] | None = None
    """``resample``: the window each window's activations came from."""


def ablation_effects(
    model: HookedDecisionTransformer,
    inputs: DTInputs,
    components: str | Sequence[str | Component],
    kind: str = "zero",
    *,
    each: bool = True,
    seed: int = 0,
) -> AblationEffects:
    """Logits with ``components`` (names, or one text as :func:`parse_component_list` reads it) ablated
    together (last) and, with ``each``, each alone (first).

    ``mean`` and ``resample`` take their replacements from the other windows of ``inputs`` (see the
    module docstring).
    """
    if kind not in EFFECT_KINDS:
        raise AblationError(f"ablation kind must be one of {EFFECT_KINDS}, got {kind!r}")
    comps = parse_component_list(
        components if isinstance(components, str) else [str(c) for c in components], model
    )
    names = [str(c) for c in comps]
    B = inputs.batch_size
    values, index = None, None
    if kind == "mean":
        values, index = leave_one_out_means(model, comps, inputs), torch.arange(B)
    elif kind == "resample":
        if B < 2:
            raise AblationError("resample ablation takes activations from another window: give at least 2")
        values, index = ablation_values(model, names, "resample", inputs), resample_partners(inputs, seed)
    groups = ([[n] for n in names] if each and len(names) > 1 else []) + [names]
    labels = [g[0] for g in groups[:-1]] + ["together" if len(names) > 1 else names[0]]
    how = "resample" if kind != "zero" else "zero"  # per-window replacements are rows of ``values``
    with torch.inference_mode():
        clean = model(inputs)
        runs = []
        for group in groups:
            hooks = ablation_hooks(model, group, how, values, resample_index=index)
            with model.hooks(fwd_hooks=hooks):
                runs.append(model(inputs))
    return AblationEffects(
        labels, groups, kind, clean, torch.stack(runs), index if kind == "resample" else None
    )


# ------------------------------------------------------------------------------------------- played out


def parse_ablation_spec(text: str, model: HookedDecisionTransformer) -> tuple[str, list[Component]]:
    """``"KIND: components"`` -> ``(kind, components)``; KIND one of :data:`PLAYED_KINDS` (default zero)."""
    line = " ".join(str(text).split())
    m = re.match(r"^(?P<kind>[a-z]+)\s*:\s*(?P<rest>.*)$", line)  # a hook name never matches
    kind, rest = (m["kind"], m["rest"]) if m else ("zero", line)
    if kind not in PLAYED_KINDS:
        raise AblationError(
            f"ablation {line!r}: unknown kind {kind!r}; expected {' | '.join(PLAYED_KINDS)}: components"
        )
    try:
        return kind, parse_component_list(rest, model)
    except ComponentError as exc:
        raise ComponentError(f"ablation {line!r}: {exc}") from None


def ablation_hooks_for(
    checkpoint: Checkpoint, spec_text: str, reference_windows: DTInputs | None = None
) -> list[tuple[str, HookFn]]:
    """Forward hooks that carry out ``spec_text`` in every forward pass (see the module docstring).

    ``"zero: blocks.1.attn.hook_z:h2, blocks.0.mlp.hook_post:n113"``, ``"mean: ..."`` (per-position mean
    over ``reference_windows``), ``"resample: ..."`` (reference window ``b % R`` for batch row ``b``),
    ``"patch: ..."`` (the activation of the single reference window), or a ``steer:`` line
    (:func:`~dtinterp.interp.interventions.parse_intervention`). The reference windows must have the
    model's context length (a rollout's windows always do). Bad input is a one-line
    :class:`~dtinterp.errors.DtinterpError`.
    """
    model = checkpoint.model
    line = " ".join(str(spec_text).split())
    if line.startswith("steer:"):
        from dtinterp.interp.interventions import parse_intervention

        how = parse_intervention(line, checkpoint, reference_windows)
        return [] if how is None else list(how.hooks)
    kind, comps = parse_ablation_spec(line, model)
    names = [str(c) for c in comps]
    if kind == "zero":
        return ablation_hooks(model, names, "zero")
    if reference_windows is None or reference_windows.batch_size == 0:
        raise AblationError(f"ablation {line!r}: {kind} needs reference windows")
    K = model.cfg.context_len
    if reference_windows.context_len != K:
        raise AblationError(
            f"ablation {line!r}: the reference windows hold {reference_windows.context_len} timesteps, "
            f"the model's windows {K}"
        )
    reference = reference_windows.to(model.W_U.device)
    if kind == "mean":
        return ablation_hooks(model, names, "mean", ablation_values(model, names, "mean", reference))
    if kind == "patch" and reference.batch_size != 1:
        raise AblationError(
            f"ablation {line!r}: patch fixes the activation of one window; got {reference.batch_size} windows"
        )
    return ablation_hooks(model, names, "resample", ablation_values(model, names, "resample", reference))


__all__ = [
    "EFFECT_KINDS",
    "METRICS",
    "PLAYED_KINDS",
    "AblationEffects",
    "ChosenMetric",
    "ablation_effects",
    "ablation_hooks_for",
    "build_metric",
    "leave_one_out_means",
    "parse_ablation_spec",
    "parse_component_list",
    "resample_partners",
]
