"""Feature dashboards: one feature over a batch of windows, and the list of its sibling features.

A *feature* is a scalar read off one hook at every real state token of every window (the tokens the
actions are read from, and where the Play tab's steering acts):

- a **direction** ``v`` at a residual-stream hook (a saved direction, e.g. a probe's; an action's
  readout): its value is the projection ``x . v / |v|``;
- a **latent** ``f`` of a TopK SAE (:class:`~dtinterp.interp.sae.TopKSAE`) at the SAE's hook: its value
  ``z_f(x)``, 0 where ``f`` is not among the token's top ``k``; read at the state tokens among the SAE's
  token positions.

Features are named as in the Play tab's interventions (:mod:`dtinterp.interp.interventions`):
``saved:NAME``, ``sae:DIR#F``, ``forward``, ``forward-left`` (:func:`resolve_feature`).

:func:`feature_dashboard` gives the histogram of the values, the top-activating tokens (one per distinct
observation at an episode step, its strongest), and the feature's **direct effect on each action logit**:
one unit of the feature writes its vector into the residual stream (the unit direction; the SAE's decoder
row, through ``W_out`` for an MLP's ``hook_post``), which the final norm and ``W_U`` read. The final norm
has no affine parameters, so with its scale ``s`` frozen (as direct logit attribution freezes it,
:mod:`dtinterp.interp.dla`) the change of the logits is exactly ``w @ centred(W_U) / s``
(:func:`~dtinterp.interp.attribution.centred_unembed`). ``logit_effect`` is its mean over the read state
tokens, i.e. at their harmonic-mean scale ``s̄``; ``logit_effect_unscaled`` has ``s = 1`` (as
:func:`dtinterp.interp.features.logit_effects`); a token's own effect is ``logit_effect_unscaled / s``.
It is the direct path only: a feature before the last layer also acts through the layers after it.

:func:`feature_list` computes the same numbers for every sibling of a feature: every latent of its SAE,
or every action readout and every saved direction that fits the model (a direction at the hook it records,
else at the dashboard's hook); :func:`sort_rows` and :func:`search_rows` order and filter them.
:func:`play_interventions` writes the lines that ablate or steer with the feature in the Play tab.

**Invariants** (tested): the histogram counts sum to the number of read (window, token) values; the top
tokens are the largest values of a fresh ``run_with_cache``; the unscaled logit effect equals
``w @ (W_U - mean(W_U))``, and adding ``e`` units of a direction at the last residual hook with each
token's final scale frozen moves the logits, averaged over the read tokens, by ``e`` times the logit
effect; each suggested line parses, and steering by 0 changes nothing.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from transformer_lens import ActivationCache

from dtinterp.errors import DtinterpError
from dtinterp.interp.attribution import centred_unembed
from dtinterp.interp.directions import DirectionLibrary, DirectionsError
from dtinterp.interp.features import logit_effects
from dtinterp.interp.interventions import (
    SAVED_PREFIX,
    check_residual_hook,
    check_sae_fits,
    direction_vector,
)
from dtinterp.interp.sae import FEATURE_PREFIX, TopKSAE, feature_ref, load_feature
from dtinterp.model.checkpoint import Checkpoint
from dtinterp.model.inputs import DTInputs

#: Orders of the feature list (descending): how often it fires, or its largest direct logit effect.
SORT_KEYS = ("frequency", "logit-effect")


class FeatureError(DtinterpError):
    """A feature that cannot be read: an unknown name, a hook that does not fit, an SAE of another model."""


@dataclass
class Feature:
    """One feature, resolved against a model."""

    text: str
    """Its name as given: ``saved:NAME``, ``sae:DIR#F``, ``forward``, ``forward-left``."""
    label: str
    """Short name for titles and the list (``f17``, the saved name, ``forward``)."""
    hook: str
    """Where it is read (and where its ablation and steering act)."""
    write: Float[Tensor, "dh"]
    """What one unit of the feature writes at the hook: the unit direction, or the SAE's decoder row."""
    steer_norm: float
    """Norm of the vector ``steer: TEXT @ HOOK x c`` adds per unit of ``c`` (a saved vector keeps its norm)."""
    sae: TopKSAE | None = None
    index: int | None = None
    """The SAE latent (None for a direction)."""
    steerable: bool = True
    """Whether its hook is the residual stream's, where the Play tab steers (an SAE at an MLP is not)."""
    boundary: float | None = None
    """A probe direction's decision boundary (the value where its classes tie), read at the probe's hook."""

    @property
    def kind(self) -> str:
        return "direction" if self.sae is None else "sae"

    @property
    def unit(self) -> Float[Tensor, "dh"]:
        return self.write / self.write.norm().clamp_min(1e-12)

    def values(self, acts: Float[Tensor, "n dh"]) -> Float[Tensor, "n"]:
        """The feature's value at each row of activations."""
        if self.sae is None:
            return acts @ self.unit.to(acts)
        return self.sae.latents(acts.to(self.sae.W_dec))[:, self.index].to(acts)


def default_hook(checkpoint: Checkpoint) -> str:
    """The residual stream the actions are read from: ``blocks.{L-1}.hook_resid_post``."""
    return f"blocks.{checkpoint.config.n_layers - 1}.hook_resid_post"


def resolve_feature(text: str, checkpoint: Checkpoint, hook: str = "") -> Feature:
    """The feature ``text`` names, read at ``hook`` (a direction's; empty: the hook a saved direction
    records, else :func:`default_hook`). An SAE reads its own hook; another ``hook`` is an error."""
    raw = str(text).strip()
    hook = str(hook).strip()
    try:
        if raw.startswith(FEATURE_PREFIX):
            sae, index = load_feature(raw)
            check_sae_fits(sae, checkpoint)
            if hook and hook != sae.cfg.hook:
                raise FeatureError(f"the SAE reads {sae.cfg.hook}: leave the hook empty or give that one")
            if sae.cfg.token_kind != "S":
                raise FeatureError(
                    f"the SAE was trained on {sae.cfg.token_kind} tokens; dashboards read state tokens"
                )
            write = sae.W_dec[index].detach().float()
            try:
                steerable = bool(check_residual_hook(sae.cfg.hook, checkpoint))
            except DtinterpError:
                steerable = False
            return Feature(raw, f"f{index}", sae.cfg.hook, write, float(write.norm()), sae, index, steerable)
        vector = direction_vector(raw, checkpoint).detach().float().cpu()
        label = raw[len(SAVED_PREFIX) :] if raw.startswith(SAVED_PREFIX) else raw
        meta = DirectionLibrary().load(label).metadata if raw.startswith(SAVED_PREFIX) else {}
        recorded = _recorded_hook(meta, checkpoint)
        hook = check_residual_hook(hook or recorded or default_hook(checkpoint), checkpoint)
        norm = float(vector.norm())
        if norm == 0 or not math.isfinite(norm):
            raise FeatureError(f"the direction {raw!r} is zero")
        boundary = meta.get("boundary") if hook == recorded else None
        boundary = float(boundary) if isinstance(boundary, (int, float)) and math.isfinite(boundary) else None
        return Feature(raw, label, hook, vector / norm, norm, boundary=boundary)
    except FeatureError:
        raise
    except DtinterpError as exc:
        raise FeatureError(f"feature {raw!r}: {exc}") from None


def _recorded_hook(metadata: dict[str, Any], checkpoint: Checkpoint) -> str:
    """The residual hook a saved direction records in its metadata (a probe's, a mean difference's), or ''."""
    hook = str(metadata.get("hook") or "")
    try:
        return check_residual_hook(hook, checkpoint) if hook else ""
    except DtinterpError:
        return ""


def state_activations(cache: ActivationCache | dict[str, Tensor], hook: str) -> Float[Tensor, "B K dh"]:
    """The activations at ``hook`` at the state tokens ``S1 .. SK`` (one token's dimensions flattened)."""
    act = cache[hook]
    return act[:, 1::3].flatten(2).float()


def read_mask(feature: Feature, inputs: DTInputs) -> Bool[Tensor, "B K"]:
    """The state tokens a feature is read at: real timesteps, among an SAE's token positions if it records any."""
    mask = inputs.pad_mask.clone().cpu()
    if feature.sae is not None and feature.sae.cfg.positions:
        K = inputs.context_len
        kept = torch.tensor([3 * k + 1 in set(feature.sae.cfg.positions) for k in range(K)])
        mask &= kept[None]
    return mask


def final_ln_scale(cache: ActivationCache | dict[str, Tensor], read: Bool[Tensor, "B K"]) -> float:
    """The final norm's scale ``s̄`` at the read state tokens, as their harmonic mean ``1 / mean(1 / s)``
    (a direct effect goes as ``1 / s``, so ``effect / s̄`` is its mean over the tokens); 1 without a norm."""
    try:
        s = cache["ln_final.hook_scale"]
    except KeyError:
        return 1.0
    return float(1.0 / (1.0 / s[:, 1::3, 0].cpu()[read].double()).mean()) if bool(read.any()) else 1.0


@dataclass
class FeatureDashboard:
    """One feature over a batch of windows."""

    feature: Feature
    values: Float[Tensor, "B K"]
    """The value at every state token (NaN where it is not read: padding, outside an SAE's positions)."""
    read: Bool[Tensor, "B K"]
    hist_edges: Float[Tensor, "nb1"]
    """Bin edges: ``n_bins`` equal bins from the smallest to the largest value read."""
    hist_counts: Int[Tensor, "nb"]
    """Values in each bin (the last bin includes its right edge): they sum to ``read.sum()``."""
    top_windows: Int[Tensor, "k"]
    top_timesteps: Int[Tensor, "k"]
    """Window and timestep (0-based, the token ``S{t+1}``) of each top token, strongest first (an SAE
    latent's only where it fires: none if it never does)."""
    top_values: Float[Tensor, "k"]
    logit_effect: Float[Tensor, "A"]
    """Direct effect of one unit of the feature on each action logit, each token's final-norm scale frozen,
    averaged over the read tokens (``logit_effect_unscaled / ln_scale``)."""
    logit_effect_unscaled: Float[Tensor, "A"] | None
    """The same with the scale 1 (``w @ centred W_U``); None where the hook is not the residual stream's
    and not an MLP's ``hook_post``."""
    ln_scale: float
    """The frozen scale ``s̄``: the harmonic mean of the read tokens' final-norm scales."""

    @property
    def n_read(self) -> int:
        return int(self.read.sum())


@torch.no_grad()
def feature_dashboard(
    checkpoint: Checkpoint,
    inputs: DTInputs,
    cache: ActivationCache | dict[str, Tensor],
    feature: Feature,
    *,
    n_bins: int = 40,
    top_k: int = 8,
) -> FeatureDashboard:
    """Histogram, top tokens and direct logit effect of ``feature`` over ``inputs`` (``cache`` is their
    run's, holding ``feature.hook`` and ``ln_final.hook_scale``)."""
    acts = state_activations(cache, feature.hook).cpu()  # [B, K, dh]
    B, K, dh = acts.shape
    if dh != feature.write.shape[0]:
        raise FeatureError(
            f"feature {feature.text!r} has width {feature.write.shape[0]} but {feature.hook} has {dh}"
        )
    read = read_mask(feature, inputs)
    if not bool(read.any()):
        raise FeatureError(f"feature {feature.text!r} is read at no real state token of these windows")
    values = torch.full((B, K), math.nan)
    values[read] = feature.values(acts[read])
    edges, counts = histogram(values[read], n_bins)
    active = (
        read & (values > 0) if feature.sae is not None else read
    )  # a latent's top tokens are where it fires
    windows, timesteps, top = top_tokens(values, active, inputs, top_k)
    scale = final_ln_scale(cache, read)
    unscaled = logit_effects(checkpoint.model, feature.hook, feature.write[None].to(checkpoint.model.W_U))
    unscaled = None if unscaled is None else unscaled[0].detach().float().cpu()
    effect = torch.full((checkpoint.config.n_actions,), math.nan) if unscaled is None else unscaled / scale
    return FeatureDashboard(
        feature, values, read, edges, counts, windows, timesteps, top, effect, unscaled, scale
    )


def histogram(values: Float[Tensor, "n"], n_bins: int) -> tuple[Float[Tensor, "nb1"], Int[Tensor, "nb"]]:
    """``(edges, counts)`` of ``n_bins`` equal bins from the smallest to the largest value (every value
    counted once: the last bin holds the maximum)."""
    v = values.double()
    lo, hi = float(v.min()), float(v.max())
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    b = ((v - lo) / (hi - lo) * n_bins).floor().long().clamp(0, n_bins - 1)
    return torch.linspace(lo, hi, n_bins + 1), torch.bincount(b, minlength=n_bins)


def top_tokens(
    values: Float[Tensor, "B K"], read: Bool[Tensor, "B K"], inputs: DTInputs, k: int
) -> tuple[Int[Tensor, "k"], Int[Tensor, "k"], Float[Tensor, "k"]]:
    """The ``k`` largest read values, one per distinct observation at an episode step (overlapping
    windows hold the same step several times): window, timestep and value of each, strongest first."""
    K = values.shape[1]
    flat = values.masked_fill(~read, -math.inf).flatten()
    order = torch.argsort(flat, descending=True, stable=True)
    obs, heading, step = inputs.obs.cpu(), inputs.directions.cpu(), inputs.timesteps.cpu()
    seen: set[bytes] = set()
    chosen: list[int] = []
    for i in order.tolist():
        if len(chosen) == k or not math.isfinite(float(flat[i])):
            break
        b, t = divmod(i, K)
        key = (
            obs[b, t].numpy().tobytes() + bytes([int(heading[b, t])]) + int(step[b, t]).to_bytes(4, "little")
        )
        if key not in seen:
            seen.add(key)
            chosen.append(i)
    idx = torch.tensor(chosen, dtype=torch.long)
    return idx // K, idx % K, flat[idx]


# ------------------------------------------------------------------ the feature list


@dataclass
class FeatureRow:
    """One feature of the list."""

    id: str
    """``f17`` (an SAE latent), a saved name, ``readout:forward``."""
    text: str
    """Its name as the dashboard and the Play tab take it."""
    hook: str
    frequency: float
    """Share of the read tokens where the value is positive (an SAE latent: where it fires)."""
    mean: float
    max: float
    top_action: str
    """The action whose logit its direct effect moves most (either way)."""
    top_logit_effect: float
    """That effect, signed, per unit at the frozen final-norm scale (NaN where it is not defined)."""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@torch.no_grad()
def feature_list(
    checkpoint: Checkpoint,
    cache: ActivationCache | dict[str, Tensor],
    feature: Feature,
    read: Bool[Tensor, "B K"],
    ln_scale: float,
) -> tuple[list[FeatureRow], str]:
    """Every sibling of ``feature`` (see the module docstring) with its statistics over the ``read``
    tokens, in their natural order, and a note on what could not be listed ('' if nothing)."""
    names = checkpoint.action_names
    if feature.sae is not None:
        sae = feature.sae
        z = sae.latents(state_activations(cache, sae.cfg.hook).cpu()[read].to(sae.W_dec)).cpu()  # [n, L]
        effects = logit_effects(checkpoint.model, sae.cfg.hook, sae.W_dec.detach().to(checkpoint.model.W_U))
        effects = None if effects is None else effects.float().cpu() / ln_scale
        path = feature.text[len(FEATURE_PREFIX) :].rpartition("#")[0]
        ids = [f"f{i}" for i in range(sae.cfg.n_latents)]
        texts = [feature_ref(path, i) for i in range(sae.cfg.n_latents)]
        return _rows(ids, texts, [sae.cfg.hook] * len(ids), z.float(), effects, names), ""
    W = centred_unembed(checkpoint.model).detach().float().cpu()  # [d, A]
    entries: list[tuple[str, str, str, Tensor]] = [(feature.label, feature.text, feature.hook, feature.unit)]
    for a, name in enumerate(names):
        if name == feature.text:
            continue
        entries.append((f"readout:{name}", name, feature.hook, W[:, a] / W[:, a].norm().clamp_min(1e-12)))
    note = ""
    try:
        saved = DirectionLibrary().list()
    except DirectionsError as exc:
        saved, note = [], f"the saved directions are not listed ({exc})"
    for s in saved:
        text = f"{SAVED_PREFIX}{s.name}"
        if s.d_model != checkpoint.config.d_model or text == feature.text:
            continue
        hook = _recorded_hook(s.metadata, checkpoint) or feature.hook
        entries.append((s.name, text, hook, s.vector / s.vector.norm().clamp_min(1e-12)))
    by_hook: dict[str, Tensor] = {}
    columns = []
    for _, _, hook, u in entries:
        if hook not in by_hook:
            by_hook[hook] = state_activations(cache, hook).cpu()[read]  # [n, d]
        columns.append(by_hook[hook] @ u)
    units = torch.stack([u for *_, u in entries])
    rows = _rows(
        [e[0] for e in entries],
        [e[1] for e in entries],
        [e[2] for e in entries],
        torch.stack(columns, 1),
        units @ W / ln_scale,
        names,
    )
    return rows, note


def _rows(
    ids: Sequence[str],
    texts: Sequence[str],
    hooks: Sequence[str],
    values: Float[Tensor, "n F"],
    effects: Float[Tensor, "F A"] | None,
    action_names: Sequence[str],
) -> list[FeatureRow]:
    v = values.double()
    frequency = (v > 0).double().mean(0)
    mean, vmax = v.mean(0), v.amax(0)
    rows = []
    for f, fid in enumerate(ids):
        if effects is None:
            a, e = 0, math.nan
        else:
            a = int(effects[f].abs().argmax())
            e = float(effects[f, a])
        rows.append(
            FeatureRow(
                fid,
                texts[f],
                hooks[f],
                float(frequency[f]),
                float(mean[f]),
                float(vmax[f]),
                action_names[a] if effects is not None else "",
                e,
            )
        )
    return rows


def sort_rows(rows: Sequence[FeatureRow], by: str) -> list[FeatureRow]:
    """``rows`` by ``frequency`` or ``logit-effect`` (the size of the top logit effect), largest first;
    ties keep their order."""
    if by not in SORT_KEYS:
        raise FeatureError(f"sort must be one of {SORT_KEYS}, got {by!r}")
    if by == "frequency":
        return sorted(rows, key=lambda r: -r.frequency)
    return sorted(
        rows, key=lambda r: -abs(r.top_logit_effect) if math.isfinite(r.top_logit_effect) else math.inf
    )


_LATENT_ID = re.compile(r"f(\d+)")
_LATENT_TERM = re.compile(r"f?(\d+)")


def search_rows(rows: Sequence[FeatureRow], query: str) -> list[FeatureRow]:
    """The rows any term of ``query`` matches (terms split at spaces and commas; an empty query keeps all).

    A term ``17`` or ``f17`` matches latent ``f17`` exactly; an action name matches the features whose top
    action it is; any other term matches the ids that contain it (case-insensitive).
    """
    terms = [t for t in re.split(r"[\s,]+", str(query).strip().lower()) if t]
    if not terms:
        return list(rows)

    def hit(row: FeatureRow, term: str) -> bool:
        latent, asked = _LATENT_ID.fullmatch(row.id), _LATENT_TERM.fullmatch(term)
        if latent is not None and asked is not None:
            return int(latent[1]) == int(asked[1])
        return term == row.top_action or term in row.id.lower()

    return [r for r in rows if any(hit(r, t) for t in terms)]


# ------------------------------------------------------------------ Play-tab interventions


def play_interventions(
    feature: Feature, dashboard: FeatureDashboard, coefficient: float = 0.0
) -> list[tuple[str, str]]:
    """``(label, line)`` pairs that ablate the feature and steer with it in the Play tab.

    The steering coefficient is ``coefficient``, or (0) the one that moves the feature by the largest size
    of its values seen: that size over the norm of the vector steering adds. Steering needs a
    residual-stream hook (an SAE at an MLP has only its ablation).
    """
    c = coefficient
    if c == 0:
        size = float(dashboard.values[dashboard.read].abs().max())
        c = size / feature.steer_norm if size > 0 else 1.0
    c = float(f"{min(abs(c), 1000.0):.3g}")  # both signs are offered
    out = []
    if feature.steerable:
        out += [
            (
                f"Steer +{abs(c):g} along {feature.label}",
                f"steer: {feature.text} @ {feature.hook} x {abs(c):g}",
            ),
            (
                f"Steer -{abs(c):g} along {feature.label}",
                f"steer: {feature.text} @ {feature.hook} x {-abs(c):g}",
            ),
        ]
    if feature.sae is not None:
        out.append((f"Ablate {feature.label} (zero the latent)", f"zero: {feature.text}"))
    else:
        out.append((f"Ablate {feature.label} (project it out)", f"zero: {feature.text} @ {feature.hook}"))
    return out


__all__ = [
    "SORT_KEYS",
    "Feature",
    "FeatureDashboard",
    "FeatureError",
    "FeatureRow",
    "default_hook",
    "feature_dashboard",
    "feature_list",
    "histogram",
    "play_interventions",
    "read_mask",
    "resolve_feature",
    "search_rows",
    "sort_rows",
    "state_activations",
    "top_tokens",
]
