"""Interventions while playing: one line of text that names an ablation or a steering vector.

The Play tab (and anyone playing a model with hooks) switches an intervention on with one line:

==============================================================  ===============================================
``zero: blocks.1.attn.hook_z:h2, blocks.0.mlp.hook_post:n113``  zero-ablate these components
``mean: blocks.1.attn.hook_z:h2``                               replace them by their per-position mean over
                                                                reference windows (the episode so far)
``zero: saved:NAME @ blocks.1.hook_resid_post``                 project the direction out of that hook at every
                                                                state token (directional ablation)
``zero: sae:DIR#17``                                            ablate feature 17 of the SAE saved in DIR: its
                                                                contribution leaves the SAE's hook at the SAE's
                                                                token positions, the rest stays
``steer: saved:NAME @ blocks.1.hook_resid_post x 4``            add 4 x the saved direction NAME to that hook at
                                                                every state token
``steer: sae:DIR#17 @ blocks.1.hook_resid_post x 4``            ... or an SAE feature's decoder row
``steer: forward-left @ blocks.1.hook_resid_post x 2``          ... or an unembedding difference of two actions
                                                                (``forward`` alone: that action's row)
==============================================================  ===============================================

A *direction* is ``saved:NAME`` (the saved-direction library, its vector as saved), ``sae:DIR#F`` (the
unit decoder row of an SAE at a residual-stream hook, :func:`dtinterp.interp.sae.load_feature`) or an
action readout (the centred unembedding, normalised); :func:`direction_vector` resolves one. Steering and
directional ablation act at a residual-stream hook (``hook_embed`` or ``blocks.L.hook_resid_pre|mid|post``,
``hook_attn_out``, ``hook_mlp_out``). An SAE must have been trained on this model (its recorded weights
digest, when it records one) at a hook of the width its weights expect.

:func:`parse_intervention` checks the whole line against the model (component names, layers, heads,
neurons, saved direction names and sizes, action names, a finite coefficient) and returns an
:class:`Intervention` holding TransformerLens forward hooks, ready for ``rollout(..., hooks=...)`` or a
``with model.hooks(fwd_hooks=...)`` block. Bad input is a one-line :class:`InterventionError`.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from jaxtyping import Float
from torch import Tensor

from dtinterp.errors import DtinterpError
from dtinterp.interp.ablation import ablation_hooks, ablation_values
from dtinterp.interp.attribution import centred_unembed
from dtinterp.interp.hooknames import BLOCK_SITES, ComponentError
from dtinterp.interp.sae import FEATURE_PREFIX, TopKSAE, load_feature
from dtinterp.model.checkpoint import Checkpoint
from dtinterp.model.inputs import DTInputs

KINDS = ("zero", "mean", "steer")
SAVED_PREFIX = "saved:"
# A saved direction's name may hold "@" (a probe's default name does); a hook never does.
_STEER = re.compile(r"^(?P<direction>.+?)\s*@\s*(?P<hook>[^@\s]+)\s*(?:x|\*)\s*(?P<coef>\S+)$")
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
    rest = rest.strip()
    if not sep or kind not in KINDS or not rest:
        raise InterventionError(f"intervention {line!r}: expected e.g. {_EXAMPLE}")
    model = checkpoint.model
    try:
        if kind == "steer":
            return Intervention(line, [_steering_hook(rest, checkpoint)])
        if "@" in rest or rest.startswith((SAVED_PREFIX, FEATURE_PREFIX)):  # a direction, not components
            if kind != "zero":
                raise InterventionError(
                    "a direction or an SAE feature is ablated with zero: (mean: takes components)"
                )
            return Intervention(line, _direction_ablation(rest, checkpoint))
        components = [c.strip() for c in rest.split(",") if c.strip()]
        if kind == "mean":
            if reference is None:
                raise InterventionError("mean ablation needs reference windows")
            values = ablation_values(model, components, "mean", reference)
        else:
            values = None
        return Intervention(line, ablation_hooks(model, components, kind, values))
    except (ComponentError, DtinterpError) as exc:
        raise InterventionError(f"intervention {line!r}: {exc}") from None


def check_residual_hook(hook: str, checkpoint: Checkpoint) -> str:
    """``hook`` if it carries the residual stream's width (where a direction is added or projected out)."""
    L = checkpoint.config.n_layers
    m = re.match(r"^blocks\.(\d+)\.hook_(\w+)$", hook)
    if hook != "hook_embed" and not (m and int(m[1]) < L and m[2] in BLOCK_SITES):
        raise InterventionError(
            f"{hook!r} is not a residual-stream hook: use hook_embed or blocks.L.hook_resid_pre|mid|post "
            f"(or hook_attn_out, hook_mlp_out) with L < {L}"
        )
    return hook


def _state_tokens(checkpoint: Checkpoint) -> slice:
    K = checkpoint.context_len
    return slice(1, 3 * K - 1, 3)  # S1 .. SK


def _steering_hook(spec: str, checkpoint: Checkpoint) -> tuple[str, Callable]:
    m = _STEER.match(spec)
    if m is None:
        raise InterventionError("steer as DIRECTION @ HOOK x COEFFICIENT")
    try:
        coef = float(m["coef"])
    except ValueError:
        raise InterventionError(f"coefficient {m['coef']!r} is not a number") from None
    if not math.isfinite(coef) or abs(coef) > 1e3:
        raise InterventionError("coefficient must be finite and at most 1000 in size")
    hook = check_residual_hook(m["hook"], checkpoint)
    vector = direction_vector(m["direction"].strip(), checkpoint) * coef  # [d_model]
    states = _state_tokens(checkpoint)

    def steer(act: Tensor, hook: object) -> Tensor:  # TransformerLens calls it with hook=
        out = act.clone()
        out[:, states] += vector.to(act)
        return out

    return hook, steer


def _direction_ablation(spec: str, checkpoint: Checkpoint) -> list[tuple[str, Callable]]:
    """``zero: DIRECTION @ HOOK`` (projected out at every state token) or ``zero: sae:DIR#F``."""
    if "@" not in spec:
        if not spec.startswith(FEATURE_PREFIX):
            raise InterventionError("a direction is ablated at a hook: zero: DIRECTION @ HOOK")
        sae, feature = _sae_feature(spec, checkpoint)
        device = checkpoint.model.W_U.device
        if sae.W_dec.device != device:  # the loaded SAE is shared: move a copy to the model
            sae = copy.deepcopy(sae).to(device)
        return sae.feature_hooks(feature, 0.0)
    direction, _, hook = (part.strip() for part in spec.rpartition("@"))
    hook = check_residual_hook(hook, checkpoint)
    v = direction_vector(direction, checkpoint)
    u = v / v.norm().clamp_min(1e-12)
    states = _state_tokens(checkpoint)

    def ablate(act: Tensor, hook: object) -> Tensor:
        out = act.clone()
        x = out[:, states]
        uu = u.to(act)
        out[:, states] = x - (x @ uu)[..., None] * uu
        return out

    return [(hook, ablate)]


def _sae_feature(spec: str, checkpoint: Checkpoint) -> tuple[TopKSAE, int]:
    """The SAE feature ``sae:DIR#F``, checked to fit ``checkpoint``'s model."""
    sae, feature = load_feature(spec)
    check_sae_fits(sae, checkpoint)
    return sae, feature


def check_sae_fits(sae: TopKSAE, checkpoint: Checkpoint) -> None:
    """One-line :class:`InterventionError` unless ``sae`` reads a hook of this model, of its width, at token
    positions inside a window, and (when it records one) was trained on this model's weights."""
    cfg = checkpoint.config
    hook = sae.cfg.hook
    if hook not in checkpoint.model.hook_dict:
        raise InterventionError(f"the SAE reads {hook!r}, which is not a hook of this model")
    width = hook_width(hook, checkpoint)
    if width is not None and width != sae.cfg.d_in:
        raise InterventionError(
            f"the SAE reads width {sae.cfg.d_in} but {hook} has width {width} in this model"
        )
    n_tokens = 3 * cfg.context_len - 1
    if any(not 0 <= p < n_tokens for p in sae.cfg.positions):
        raise InterventionError(
            f"the SAE's token positions {sae.cfg.positions} do not fit windows of {n_tokens} tokens"
        )
    trained_on = (sae.cfg.model or {}).get("weights_sha256")
    if trained_on and checkpoint.weights_sha256 and trained_on != checkpoint.weights_sha256:
        name = (sae.cfg.model or {}).get("name") or "another model"
        raise InterventionError(
            f"the SAE was trained on the activations of {name}, not of this model ({checkpoint.name})"
        )


def hook_width(hook: str, checkpoint: Checkpoint) -> int | None:
    """Width of one token's activation at ``hook`` (None for a hook with heads or an unknown shape)."""
    cfg = checkpoint.config
    if re.fullmatch(r"blocks\.\d+\.mlp\.hook_(pre|post)", hook):
        return cfg.d_mlp
    try:
        check_residual_hook(hook, checkpoint)
    except InterventionError:
        return None
    return cfg.d_model


def direction_vector(spec: str, checkpoint: Checkpoint) -> Float[Tensor, "d"]:
    """The ``[d_model]`` vector a direction names (see the module docstring), on the model's device.

    ``saved:NAME`` is the saved vector as it is; ``sae:DIR#F`` the SAE's (unit) decoder row; an action
    ``a`` or a difference ``a-b`` the normalised centred unembedding (what the final LayerNorm lets through).
    """
    model = checkpoint.model
    if spec.startswith(SAVED_PREFIX):
        from dtinterp.interp.directions import DirectionLibrary

        return DirectionLibrary().load(spec[len(SAVED_PREFIX) :], model).to(model).detach()
    if spec.startswith(FEATURE_PREFIX):
        sae, feature = _sae_feature(spec, checkpoint)
        check_residual_hook(sae.cfg.hook, checkpoint)  # its decoder row lives in the residual stream
        return sae.W_dec[feature].detach().to(model.W_U)
    names = checkpoint.action_names
    parts = spec.split("-")
    bad = [p for p in parts if p not in names]
    if bad or len(parts) > 2:
        raise InterventionError(
            f"direction {spec!r}: use saved:NAME, sae:DIR#F, an action or action-action "
            f"(actions: {', '.join(names)})"
        )
    with torch.no_grad():
        W_U = centred_unembed(model)  # what the final LayerNorm lets through
        v = W_U[:, names.index(parts[0])]
        if len(parts) == 2:
            v = v - W_U[:, names.index(parts[1])]
        return (v / v.norm().clamp_min(1e-12)).detach()


__all__ = [
    "KINDS",
    "Intervention",
    "InterventionError",
    "check_residual_hook",
    "check_sae_fits",
    "direction_vector",
    "hook_width",
    "parse_intervention",
]
