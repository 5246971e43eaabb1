"""Steering vectors: add a direction to the residual stream at one hook, and scan its coefficient.

A steering vector (activation addition, Turner et al. 2023; contrastive activation addition, Rimsky et al.
2024) is a ``[d_model]`` vector ``v`` added at one residual-stream hook, at chosen tokens, with a
coefficient ``c``: ``x <- x + c v``. It comes from

- a saved direction (:mod:`dtinterp.interp.directions`: an embedding row, a probe's class means, an
  unembedding column, ...), or
- the mean difference of the activations at the hook over two sets of windows (:func:`mean_difference`;
  high vs low return-to-go, cue = key vs cue = ball), over their real tokens of the chosen kind. With
  ``c = 1`` the mean of the second set moves onto the first's.

The coefficient is in units of the vector itself (its norm is kept). The edit is a
:class:`~dtinterp.interp.probes.DirectionEdit` in ``add`` mode, so its hooks work in ``model.hooks``,
``run_with_hooks``, :mod:`dtinterp.interp.effects` and rollouts (:func:`dtinterp.play.rollout.rollout`).
Tokens: ``S`` (every state token: where actions are read), ``R``, ``A``, ``last`` (the last state token) or
``all``; positions are those of full-length windows, which is what the model is fed when it plays.

:func:`steering_scan` measures, for each coefficient, the metric over windows, the window effects of
:func:`~dtinterp.interp.effects.window_effect` (loss on the recorded actions, KL from the unsteered model,
agreement of greedy actions) and played-out behaviour: the same seeds played greedily at each target return
(:func:`~dtinterp.interp.effects.play_outcomes`), with the success rate, mean return, calibration error
``|mean return - target|`` averaged over targets, and the share of episodes whose final ground-truth facts
(:mod:`envs.facts`, e.g. Memory's ``agent_side``: the side chosen) differ from the unsteered run's.

A vector is stored in the saved-directions library (:meth:`SteeringVector.saved`; its metadata records the
hook and tokens) and taken back with :meth:`SteeringVector.from_saved`, which is how the app switches one on
while playing.

**Invariants** (tested): coefficient 0 changes nothing; without a final LayerNorm, steering the last
residual stream by ``c v`` at the state tokens moves the logits by exactly ``c v @ W_U``; a saved vector
steers as the original.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from dtinterp.errors import DtinterpError
from dtinterp.interp.directions import DirectionsError, SavedDirection, from_mean_diff
from dtinterp.interp.effects import Outcomes, play_outcomes, start_facts, window_effect
from dtinterp.interp.hooknames import ComponentError, parse_component
from dtinterp.interp.metrics import Metric
from dtinterp.interp.probes import DirectionEdit
from dtinterp.model.checkpoint import Checkpoint
from dtinterp.model.hooked_dt import HookedDecisionTransformer
from dtinterp.model.inputs import DTInputs

TOKENS = ("S", "R", "A", "last", "all")
#: Hooks a steering vector can be added at: ``[batch, pos, d_model]`` activations of the residual stream.
STEERABLE_SITES = ("embed", "pos_embed", "resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")


class SteeringError(DtinterpError):
    """A steering vector that cannot be built or applied: bad hook, tokens, sizes or coefficients."""


def check_hook(hook: str, model: HookedDecisionTransformer) -> str:
    """``hook`` if it is a residual-stream hook of ``model`` (one-line :class:`SteeringError` otherwise)."""
    try:
        c = parse_component(hook, model.cfg)
    except ComponentError as exc:
        raise SteeringError(str(exc)) from None
    if c.site not in STEERABLE_SITES or c.index is not None:
        raise SteeringError(
            f"cannot steer at {hook!r}: expected a residual-stream hook (blocks.l.hook_resid_pre|mid|post, "
            "blocks.l.hook_attn_out|mlp_out, hook_embed)"
        )
    return c.hook_name


def token_positions(tokens: str, n_tokens: int) -> tuple[int, ...] | None:
    """Positions of ``tokens`` (:data:`TOKENS`) in a full window of ``n_tokens`` tokens (None: all)."""
    if tokens not in TOKENS:
        raise SteeringError(f"tokens must be one of {TOKENS}, got {tokens!r}")
    if tokens == "all":
        return None
    if tokens == "last":
        return (n_tokens - 1,)
    return tuple(range("RSA".index(tokens), n_tokens, 3))


@dataclass(frozen=True)
class SteeringVector:
    """A direction, the hook it is added at and the tokens it is added to."""

    direction: SavedDirection
    """The vector (not normalised: coefficient 1 adds it once) and its provenance."""
    hook: str
    """Residual-stream hook (``blocks.0.hook_resid_mid``)."""
    tokens: str = "S"
    """One of :data:`TOKENS`."""

    def __post_init__(self) -> None:
        token_positions(self.tokens, 2)  # checks the name
        if float(self.direction.vector.norm()) == 0:
            raise SteeringError(f"steering vector {self.direction.name!r} is zero")

    @property
    def name(self) -> str:
        return self.direction.name

    @property
    def vector(self) -> Float[Tensor, "d"]:
        return self.direction.vector

    @property
    def norm(self) -> float:
        return float(self.direction.vector.norm())

    def edit(self, model: HookedDecisionTransformer, coefficient: float) -> DirectionEdit:
        """The edit adding ``coefficient * vector`` at the hook and tokens."""
        try:
            self.direction.check_fits(model)
        except DirectionsError as exc:
            raise SteeringError(str(exc)) from None
        if not np.isfinite(coefficient):
            raise SteeringError(f"the steering coefficient must be finite, got {coefficient!r}")
        hook = check_hook(self.hook, model)
        positions = token_positions(self.tokens, model.cfg.n_tokens)
        return DirectionEdit(hook, self.vector, "add", float(coefficient) * self.norm, positions)

    def hooks(self, model: HookedDecisionTransformer, coefficient: float) -> list[tuple[str, Callable]]:
        """``[(hook, fn)]`` forward hooks that steer with ``coefficient`` (none for 0)."""
        if coefficient == 0:
            return []
        return self.edit(model, coefficient).hooks()

    def saved(self, name: str | None = None, description: str = "") -> SavedDirection:
        """The vector as a saved direction whose metadata records the hook and tokens (for the library)."""
        meta = {**self.direction.metadata, "hook": self.hook, "tokens": self.tokens, "steering": True}
        return replace(
            self.direction,
            name=name or self.direction.name,
            description=description or self.direction.description,
            metadata=meta,
            created="",
        )

    @classmethod
    def from_saved(
        cls, direction: SavedDirection, hook: str | None = None, tokens: str | None = None
    ) -> SteeringVector:
        """A saved direction as a steering vector: ``hook`` and ``tokens`` default to those its metadata
        records (every saved mean difference records its hook)."""
        hook = hook or direction.metadata.get("hook")
        if not hook:
            raise SteeringError(
                f"direction {direction.name!r} records no hook: say where to add it (e.g. blocks.0.hook_resid_mid)"
            )
        return cls(direction, str(hook), str(tokens or direction.metadata.get("tokens", "S")))


def _real_tokens(inputs: DTInputs, positions: tuple[int, ...] | None) -> Tensor:
    """``[B, P]`` bool: real tokens at ``positions``."""
    P = inputs.shape[1]
    real = inputs.pad_mask.repeat_interleave(3, dim=1)[:, :P]
    if positions is None:
        return real
    chosen = torch.zeros(P, dtype=torch.bool, device=real.device)
    chosen[list(positions)] = True
    return real & chosen


def activations_at(
    model: HookedDecisionTransformer, inputs: DTInputs, hook: str, tokens: str = "S", batch_size: int = 256
) -> Float[Tensor, "n d"]:
    """The activations at ``hook`` of every real token of kind ``tokens`` of ``inputs`` (rows)."""
    hook = check_hook(hook, model)
    positions = token_positions(tokens, inputs.shape[1])
    out = []
    with torch.no_grad():
        for b0 in range(0, inputs.batch_size, batch_size):
            batch = inputs[b0 : b0 + batch_size].to(model.W_U.device)
            _, cache = model.run_with_cache(batch, names_filter=[hook])
            out.append(cache[hook][_real_tokens(batch, positions)])
    return torch.cat(out)


def mean_difference(
    model: HookedDecisionTransformer,
    windows_a: DTInputs,
    windows_b: DTInputs,
    hook: str,
    name: str,
    *,
    tokens: str = "S",
    model_name: str = "",
    description: str = "",
) -> SteeringVector:
    """``mean(activations of a) - mean(activations of b)`` at ``hook`` over the real ``tokens`` of each set
    (:func:`~dtinterp.interp.directions.from_mean_diff`)."""
    hook = check_hook(hook, model)
    acts_a = activations_at(model, windows_a, hook, tokens)
    acts_b = activations_at(model, windows_b, hook, tokens)
    try:
        direction = from_mean_diff(
            acts_a, acts_b, name, hook=hook, model_name=model_name, description=description
        )
    except DirectionsError as exc:
        raise SteeringError(f"steering vector {name!r}: {exc}") from None
    direction.metadata["tokens"] = tokens
    return SteeringVector(direction, hook, tokens)


@dataclass
class SteeringScan:
    """A steering vector's effect for a range of coefficients."""

    name: str
    hook: str
    tokens: str
    norm: float
    """``|v|``: coefficient 1 adds this much along the direction."""
    coefficients: list[float]
    metric: list[float] | None
    """Mean metric over the windows at each coefficient (None without windows or metric)."""
    metric_per_window: Float[Tensor, "C B"] | None
    loss: list[float] | None
    """Mean cross-entropy of the windows' recorded actions at each coefficient (nats)."""
    kl: list[float] | None
    """Mean ``KL(unsteered || steered)`` of the action distributions."""
    agreement: list[float] | None
    """Share of tokens whose greedy action the steering leaves unchanged."""
    targets: list[float]
    """Target returns played at."""
    seeds: list[int]
    success: list[list[float]] = field(default_factory=list)
    """Success rate ``[coefficient][target]``."""
    mean_return: list[list[float]] = field(default_factory=list)
    """Mean return ``[coefficient][target]``."""
    calibration_error: list[float] = field(default_factory=list)
    """``|mean return - target|`` averaged over the targets, per coefficient."""
    facts_changed: dict[str, list[float]] = field(default_factory=dict)
    """Per final fact, the share of episodes (over targets) whose value differs from the unsteered run's."""
    outcomes: dict[tuple[float, float], Outcomes] = field(default_factory=dict)
    """The played episodes by ``(coefficient, target)``, coefficient 0 (unsteered) always included."""
    start_facts: dict[str, np.ndarray] = field(default_factory=dict)
    """The env's facts at each seed's start (e.g. Memory's ``cue_object``), ``{name: [n_seeds]}``."""

    def changed(self, fact: str, coefficient: float, target: float | None = None, among=None) -> float:
        """Share of the episodes at ``target`` (default: the first) whose final ``fact`` the steering with
        ``coefficient`` changed, among the seeds of the bool mask ``among`` (e.g. ``start_facts["cue_object"]
        == 1``)."""
        t = self.targets[0] if target is None else float(target)
        key, ref = (float(coefficient), t), (0.0, t)
        if key not in self.outcomes:
            raise SteeringError(f"no episodes were played with coefficient {coefficient:g} at target {t:g}")
        diff = self.outcomes[key].final_facts[fact] != self.outcomes[ref].final_facts[fact]
        if among is not None:
            diff = diff[np.asarray(among, dtype=bool)]
        return float(diff.mean()) if diff.size else float("nan")


def steering_scan(
    checkpoint: Checkpoint,
    vector: SteeringVector,
    coefficients: Sequence[float],
    *,
    windows: DTInputs | None = None,
    metric: Metric | None = None,
    seeds: Sequence[int] = (),
    targets: Sequence[float] = (1.0,),
    num_envs: int = 32,
    progress: bool = False,
) -> SteeringScan:
    """Steer with each coefficient: the metric and window effects on ``windows`` (if given; the window
    effects need recorded actions) and the episodes of ``seeds`` played at each of ``targets``."""
    model = checkpoint.model
    coefficients = [float(c) for c in coefficients]
    if not coefficients:
        raise SteeringError("no coefficients to scan")
    for c in coefficients:
        vector.edit(model, c)  # checks the hook, the size and the coefficient before any work
    seeds = [int(s) for s in seeds]
    targets = [float(t) for t in targets]
    if seeds and not targets:
        raise SteeringError("no target returns to play at")
    scan = SteeringScan(
        vector.name, vector.hook, vector.tokens, vector.norm, coefficients, None, None, None, None, None,
        targets, seeds,
    )  # fmt: skip
    if windows is not None:
        if metric is not None:
            rows = []
            with torch.no_grad():
                for c in coefficients:
                    with model.hooks(fwd_hooks=vector.hooks(model, c)):
                        rows.append(metric(model(windows.to(model.W_U.device))))
            scan.metric_per_window = torch.stack(rows).cpu()
            scan.metric = scan.metric_per_window.mean(-1).tolist()
        effects = [window_effect(model, windows, vector.hooks(model, c)) for c in coefficients]
        scan.loss = [e.loss_hooked for e in effects]
        scan.kl = [e.kl for e in effects]
        scan.agreement = [e.agreement for e in effects]
    if seeds:
        played: dict[tuple[float, float], Outcomes] = {}
        for t in targets:
            for c in sorted(set(coefficients) | {0.0}):
                played[(c, t)] = play_outcomes(
                    checkpoint, seeds, t, vector.hooks(model, c), num_envs, progress
                )
        scan.success = [[played[(c, t)].success_rate for t in targets] for c in coefficients]
        scan.mean_return = [[float(played[(c, t)].returns.mean()) for t in targets] for c in coefficients]
        scan.calibration_error = [
            float(np.mean([abs(played[(c, t)].returns.mean() - t) for t in targets])) for c in coefficients
        ]
        scan.outcomes = played
        scan.start_facts = start_facts(checkpoint, seeds)
        for fact in played[(0.0, targets[0])].final_facts:
            scan.facts_changed[fact] = [
                float(
                    np.mean(
                        [
                            (played[(c, t)].final_facts[fact] != played[(0.0, t)].final_facts[fact]).mean()
                            for t in targets
                        ]
                    )
                )
                for c in coefficients
            ]
    return scan


__all__ = [
    "STEERABLE_SITES",
    "TOKENS",
    "SteeringError",
    "SteeringScan",
    "SteeringVector",
    "activations_at",
    "check_hook",
    "mean_difference",
    "steering_scan",
    "token_positions",
]
