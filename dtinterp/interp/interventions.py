"""Interventions while playing: one line of text that names an ablation or a steering vector.

The Play tab (and anyone playing a model with hooks) switches an intervention on with one line:

==============================================================  ===============================================
``zero: blocks.1.attn.hook_z:h2, blocks.0.mlp.hook_post:n113``  zero-ablate these components
``mean: blocks.1.attn.hook_z:h2``                               replace them by their per-position mean over
                                                                reference windows (the episode so far)
``steer: saved:NAME @ blocks.1.hook_resid_post x 4``            add 4 x the saved direction NAME to that hook at
                                                                every state token
``steer: forward-left @ blocks.1.hook_resid_post x 2``          ... or an unembedding difference of two actions
                                                                (``forward`` alone: that action's row)
==============================================================  ===============================================

:func:`parse_intervention` checks the whole line against the model (component names, layers, heads,
neurons, saved direction names and sizes, action names, a finite coefficient) and returns an
:class:`Intervention` holding TransformerLens forward hooks, ready for ``rollout(..., hooks=...)`` or a
``with model.hooks(fwd_hooks=...)`` block. Bad input is a one-line :class:`InterventionError`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from dtinterp.errors import DtinterpError
from dtinterp.interp.ablation import ablation_hooks, ablation_values
from dtinterp.interp.attribution import centred_unembed
from dtinterp.interp.hooknames import BLOCK_SITES, ComponentError
from dtinterp.model.checkpoint import Checkpoint
from dtinterp.model.inputs import DTInputs

KINDS = ("zero", "mean", "steer")
_STEER = re.compile(r"^(?P<direction>[^@]+?)\s*@\s*(?P<hook>\S+)\s*(?:x|\*)\s*(?P<coef>\S+)$")
_EXAMPLE = "zero: blocks.1.attn.hook_z:h2 | mean: blocks.0.mlp.hook_post:n5 | steer: saved:NAME @ blocks.1.hook_resid_post x 4"


class InterventionError(DtinterpError):
    """An intervention line that cannot apply to the model."""


@dataclass
class Intervention:
    """A parsed intervention: its text and the forward hooks that carry it out."""

    text: str
    """The line as given (normalised spacing): what reports and episodes record."""
    hooks: list[tuple[str, Callable[[Tensor, object], Tensor]]] = field(default_factory=list)
    """``(hook_name, fn)`` TransformerLens forward hooks."""


def parse_intervention(
    text: str | None, checkpoint: Checkpoint, reference: DTInputs | None = None
) -> Intervention | None:
    """The intervention a line names, checked against ``checkpoint``'s model; None for an empty line.

    ``reference`` windows give ``mean`` ablation its per-position means (required for ``mean``).
    """
    line = " ".join((text or "").split())
    if not line:
        return None
    kind, sep, rest = line.partition(":")
    kind = kind.strip().lower()
    if not sep or kind not in KINDS or not rest.strip():
        raise InterventionError(f"intervention {line!r}: expected e.g. {_EXAMPLE}")
    model = checkpoint.model
    if kind == "steer":
        return Intervention(line, [_steering_hook(line, rest.strip(), checkpoint)])
    components = [c.strip() for c in rest.split(",") if c.strip()]
    try:
        if kind == "mean":
            if reference is None:
                raise InterventionError(f"intervention {line!r}: mean ablation needs reference windows")
            values = ablation_values(model, components, "mean", reference)
        else:
            values = None
        return Intervention(line, ablation_hooks(model, components, kind, values))
    except (ComponentError, DtinterpError) as exc:
        if isinstance(exc, InterventionError):
            raise
        raise InterventionError(f"intervention {line!r}: {exc}") from None


def _steering_hook(line: str, spec: str, checkpoint: Checkpoint) -> tuple[str, Callable]:
    m = _STEER.match(spec)
    if m is None:
        raise InterventionError(f"intervention {line!r}: steer as DIRECTION @ HOOK x COEFFICIENT")
    try:
        coef = float(m["coef"])
    except ValueError:
        raise InterventionError(f"intervention {line!r}: coefficient {m['coef']!r} is not a number") from None
    if not math.isfinite(coef) or abs(coef) > 1e3:
        raise InterventionError(f"intervention {line!r}: coefficient must be finite and at most 1000 in size")
    hook = m["hook"]
    L = checkpoint.config.n_layers
    hm = re.match(r"^blocks\.(\d+)\.hook_(\w+)$", hook)
    if hook not in ("hook_embed",) and not (hm and int(hm[1]) < L and hm[2] in BLOCK_SITES):
        raise InterventionError(
            f"intervention {line!r}: steer at a residual-stream hook (hook_embed or blocks.L.hook_resid_pre|mid|post "
            f"with L < {L}), not {hook!r}"
        )
    vector = _direction(line, m["direction"].strip(), checkpoint) * coef  # [d_model]
    K = checkpoint.context_len

    def steer(act: Tensor, hook: object) -> Tensor:  # TransformerLens calls it with hook=
        out = act.clone()
        out[:, 1 : 3 * K - 1 : 3] += vector.to(act)  # every state token
        return out

    return hook, steer


def _direction(line: str, spec: str, checkpoint: Checkpoint) -> Tensor:
    model = checkpoint.model
    if spec.startswith("saved:"):
        from dtinterp.interp.directions import DirectionLibrary

        try:
            saved = DirectionLibrary().load(spec[len("saved:") :], model)
        except DtinterpError as exc:
            raise InterventionError(f"intervention {line!r}: {exc}") from None
        return saved.to(model).detach()
    names = checkpoint.action_names
    parts = spec.split("-")
    bad = [p for p in parts if p not in names]
    if bad or len(parts) > 2:
        raise InterventionError(
            f"intervention {line!r}: direction {spec!r}: use saved:NAME, an action or action-action "
            f"(actions: {', '.join(names)})"
        )
    with torch.no_grad():
        W_U = centred_unembed(model)  # what the final LayerNorm lets through
        v = W_U[:, names.index(parts[0])]
        if len(parts) == 2:
            v = v - W_U[:, names.index(parts[1])]
        return (v / v.norm().clamp_min(1e-12)).detach()


__all__ = ["KINDS", "Intervention", "InterventionError", "parse_intervention"]
