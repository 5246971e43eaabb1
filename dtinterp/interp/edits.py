"""Interventions on a DT's input tokens: the counterfactual library shared by plugins, the CLI and the app.

An edit names one token of the context window by its label (``R3``, ``S2``, ``A1``) and what to change:

==========================  =============================================================
``R3=0.5``                  set the return-to-go token of timestep 3 to 0.5 (in return units)
``R*=0.5``                  set every real RTG token to 0.5
``A2=forward``              swap the action of timestep 2 (name or id)
``S2[4,2].object=key``      change the object at cell (x=4, y=2) of state 2 (also ``colour``/``state``)
``S2.direction=left``       change the agent's direction in state 2
``T3=10``                   change the episode timestep of timestep 3
==========================  =============================================================

Timesteps count from 1 at the left of the window, like the token labels. ``apply_edits`` returns new
inputs and never modifies its argument; an edit naming a padded timestep, a cell off the grid, an unknown
object or colour, or an RTG the model cannot represent (:data:`dtinterp.limits.MAX_MODEL_RTG`) is an
:class:`EditError` with one line naming the edit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from dtinterp.errors import DtinterpError
from dtinterp.limits import check_rtg
from dtinterp.model.config import MAX_TIMESTEP
from dtinterp.model.inputs import DTInputs
from envs.encoding import ACTION_NAMES, COLOR_NAMES, DIRECTION_NAMES, OBJECT_NAMES, STATE_NAMES

_FIELDS = {
    "object": (0, OBJECT_NAMES),
    "colour": (1, COLOR_NAMES),
    "color": (1, COLOR_NAMES),
    "state": (2, STATE_NAMES),
}


class EditError(DtinterpError):
    """An edit that cannot apply to the given inputs or cannot be parsed."""


@dataclass(frozen=True)
class SetRTG:
    """Set the RTG token of ``timestep`` (1-based; None = every real timestep) to ``value`` (return units)."""

    timestep: int | None
    value: float

    def __str__(self) -> str:
        value = float(self.value) if isinstance(self.value, (int, float)) else self.value
        return f"R{'*' if self.timestep is None else self.timestep}={value!r}"


@dataclass(frozen=True)
class SetAction:
    """Replace the action taken at ``timestep`` (1-based) with ``action``."""

    timestep: int
    action: int

    def __str__(self) -> str:
        return f"A{self.timestep}={ACTION_NAMES[self.action]}"


@dataclass(frozen=True)
class SetCell:
    """Set one field (``object``, ``colour`` or ``state``) of cell (x, y) of the state at ``timestep``."""

    timestep: int
    x: int
    y: int
    field: str
    value: int

    def __str__(self) -> str:
        names = _FIELDS[self.field][1]
        return f"S{self.timestep}[{self.x},{self.y}].{self.field}={names[self.value]}"


@dataclass(frozen=True)
class SetDirection:
    """Set the agent's direction in the state at ``timestep``."""

    timestep: int
    direction: int

    def __str__(self) -> str:
        return f"S{self.timestep}.direction={DIRECTION_NAMES[self.direction]}"


@dataclass(frozen=True)
class SetTimestep:
    """Set the episode timestep (time-embedding index) of ``timestep`` to ``value``."""

    timestep: int
    value: int

    def __str__(self) -> str:
        return f"T{self.timestep}={self.value}"


Edit = SetRTG | SetAction | SetCell | SetDirection | SetTimestep


def _lookup(text: str, names: tuple[str, ...], what: str, edit: str) -> int:
    if text.isdigit() and int(text) < len(names):
        return int(text)
    if text in names:
        return names.index(text)
    raise EditError(f"edit {edit!r}: unknown {what} {text!r} (expected one of {', '.join(names)})")


_PATTERNS = [
    (re.compile(r"^R(\d+|\*)=(.+)$"), "rtg"),
    (re.compile(r"^A(\d+)=(\w+)$"), "action"),
    (re.compile(r"^S(\d+)\[(\d+),(\d+)\]\.(object|colour|color|state)=(\w+)$"), "cell"),
    (re.compile(r"^S(\d+)\.direction=(\w+)$"), "direction"),
    (re.compile(r"^T(\d+)=(\d+)$"), "timestep"),
]


def parse_edit(text: str) -> Edit:
    """Parse the compact edit syntax of the module docstring (``R3=0.5``, ``A2=forward``, ...)."""
    s = text.replace(" ", "")
    for pattern, kind in _PATTERNS:
        m = pattern.match(s)
        if not m:
            continue
        g = m.groups()
        if kind == "rtg":
            try:
                value = float(g[1])
            except ValueError:
                raise EditError(f"edit {text!r}: RTG value {g[1]!r} is not a number") from None
            value = check_rtg(value, f"edit {text!r}: RTG value", error=EditError)
            return SetRTG(None if g[0] == "*" else int(g[0]), value)
        if kind == "action":
            return SetAction(int(g[0]), _lookup(g[1], ACTION_NAMES, "action", text))
        if kind == "cell":
            field = "colour" if g[3] == "color" else g[3]
            return SetCell(
                int(g[0]), int(g[1]), int(g[2]), field, _lookup(g[4], _FIELDS[field][1], field, text)
            )
        if kind == "direction":
            return SetDirection(int(g[0]), _lookup(g[1], DIRECTION_NAMES, "direction", text))
        if int(g[1]) > MAX_TIMESTEP:
            raise EditError(
                f"edit {text!r}: timestep {g[1]} is above {MAX_TIMESTEP}, past any time embedding"
            )
        return SetTimestep(int(g[0]), int(g[1]))
    raise EditError(
        f"cannot parse edit {text!r}: expected e.g. R3=0.5, R*=0.5, A2=forward, S2[4,2].object=key, "
        "S2.direction=left or T3=10"
    )


def apply_edits(inputs: DTInputs, edits: list[Edit], rtg_scale: float = 1.0) -> DTInputs:
    """A copy of ``inputs`` with ``edits`` applied to every batch row.

    RTG values are given in return units and divided by ``rtg_scale`` like the model's inputs; one the
    model's RTG token cannot represent (:func:`dtinterp.limits.check_rtg`) is an :class:`EditError`.
    """
    out = inputs.clone()
    K = inputs.context_len
    _, _, W, H, _ = inputs.obs.shape
    for edit in edits:
        k = edit.timestep
        if k is not None:
            if not 1 <= k <= K:
                raise EditError(f"edit {edit}: timestep {k} is outside the window 1..{K}")
            if not bool(inputs.pad_mask[:, k - 1].all()):
                raise EditError(f"edit {edit}: timestep {k} is padding in this window")
        i = None if k is None else k - 1
        if isinstance(edit, SetRTG):
            value = check_rtg(edit.value, f"edit {edit}", rtg_scale, error=EditError) / rtg_scale
            if i is None:
                out.rtg[:] = torch.where(out.pad_mask, torch.as_tensor(value, dtype=out.rtg.dtype), out.rtg)
            else:
                out.rtg[:, i] = value
        elif isinstance(edit, SetAction):
            if k == K:
                raise EditError(f"edit {edit}: the last action is the one predicted; it is not an input")
            out.actions[:, i] = edit.action
        elif isinstance(edit, SetCell):
            if not (0 <= edit.x < W and 0 <= edit.y < H):
                raise EditError(f"edit {edit}: cell ({edit.x}, {edit.y}) is outside the {W}x{H} grid")
            out.obs[:, i, edit.x, edit.y, _FIELDS[edit.field][0]] = edit.value
        elif isinstance(edit, SetDirection):
            out.directions[:, i] = edit.direction
        elif isinstance(edit, SetTimestep):
            if not 0 <= edit.value <= MAX_TIMESTEP:
                raise EditError(f"edit {edit}: timestep must be in 0..{MAX_TIMESTEP}")
            out.timesteps[:, i] = edit.value
        else:  # pragma: no cover - Edit is a closed union
            raise TypeError(f"not an edit: {edit!r}")
    return out
