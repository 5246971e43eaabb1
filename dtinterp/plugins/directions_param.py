"""The ``direction`` parameter: one parser for every analysis that explains a direction.

An analysis that explains "a direction" declares :data:`DIRECTION_PARAM` (or a copy with another
default) and hands the text to :func:`parse_direction`. The accepted forms:

======================  ==========================================================================
``top-vs-runner-up``    in each window, the logit of the model's top action minus the runner-up's
                        (the decision margin); needs windows
``forward``             one action's logit (the model's own action names: a 3-action model has no
                        ``toggle``)
``forward-left``        the logit difference of two actions
``saved:NAME``          a direction from the saved-direction library
                        (:class:`~dtinterp.interp.directions.DirectionLibrary`, default directory
                        ``$DTINTERP_DIRECTIONS_DIR`` or ``~/.local/share/dtinterp/directions``)
======================  ==========================================================================

A dynamic analysis passes :attr:`ParsedDirection.spec` to :func:`dtinterp.interp.dla.resolve_direction`
(through the ``dla`` functions); a static one (weights only) asks :func:`static_vector` for the residual
vector: an action's readout is its column of the *centred* unembedding
(:func:`~dtinterp.interp.attribution.centred_unembed`), the vector the final LayerNorm actually reads.
Anything else is one :class:`~dtinterp.plugins.api.ParameterError` line naming the plugin and the text.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from dtinterp.interp.attribution import centred_unembed
from dtinterp.interp.directions import DirectionLibrary, DirectionsError, SavedDirection
from dtinterp.model.hooked_dt import HookedDecisionTransformer
from dtinterp.plugins.api import Param, ParameterError
from envs.encoding import ACTION_NAMES

TOP_VS_RUNNER_UP = "top-vs-runner-up"
SAVED_PREFIX = "saved:"
DIRECTION_HELP = (
    "What to explain: top-vs-runner-up (the top action's logit minus the runner-up's), an action's logit "
    "(e.g. forward), a logit difference (e.g. forward-left), or saved:NAME from the saved-direction library."
)
#: The declaration shared by the dynamic analyses.
DIRECTION_PARAM = Param("direction", "str", TOP_VS_RUNNER_UP, DIRECTION_HELP)


@dataclass(frozen=True)
class ParsedDirection:
    """A validated ``direction`` parameter."""

    text: str
    """The text as given."""
    spec: str | tuple[str, str] | SavedDirection | None
    """What :func:`dtinterp.interp.dla.resolve_direction` takes: None (top vs runner-up), an action,
    a pair of actions, or a saved direction."""
    label: str
    """For titles: ``top - runner-up``, ``forward``, ``forward - left`` or the saved name."""

    @property
    def needs_windows(self) -> bool:
        """Top vs runner-up depends on each window's logits."""
        return self.spec is None


def parse_direction(
    text: str,
    action_names: tuple[str, ...] | list[str],
    plugin_id: str,
    *,
    library: DirectionLibrary | None = None,
    model: HookedDecisionTransformer | None = None,
    param: str = "direction",
) -> ParsedDirection:
    """Parse ``text`` (see the module docstring) against the model's ``action_names``.

    With ``model``, a saved direction is checked against its ``d_model``.
    """
    where = f"plugin {plugin_id!r} parameter {param!r}"
    raw = str(text).strip()
    names = list(action_names)
    if raw == TOP_VS_RUNNER_UP:
        return ParsedDirection(raw, None, "top - runner-up")
    if raw.startswith(SAVED_PREFIX):
        name = raw[len(SAVED_PREFIX) :]
        lib = library or DirectionLibrary()
        try:
            saved = lib.load(name, model)
        except DirectionsError as exc:
            raise ParameterError(f"{where}: {exc}") from None
        return ParsedDirection(raw, saved, saved.name)
    parts = raw.split("-")
    if len(parts) in (1, 2) and all(parts):
        unknown = [p for p in parts if p not in names]
        if not unknown:
            if len(parts) == 1:
                return ParsedDirection(raw, parts[0], parts[0])
            if parts[0] == parts[1]:
                raise ParameterError(f"{where}: {raw!r} is the difference of an action with itself")
            return ParsedDirection(raw, (parts[0], parts[1]), f"{parts[0]} - {parts[1]}")
        if len(parts) == 1 or any(p in names for p in parts):
            raise ParameterError(
                f"{where}: unknown action {unknown[0]!r} (this model's actions: {', '.join(names)})"
            )
    raise ParameterError(
        f"{where}: {raw!r} is not {TOP_VS_RUNNER_UP}, an action ({', '.join(names)}), a difference "
        "such as forward-left, or saved:NAME"
    )


@torch.no_grad()
def static_vector(
    model: HookedDecisionTransformer, parsed: ParsedDirection, plugin_id: str, param: str = "direction"
) -> Float[Tensor, "d"]:
    """The residual-stream vector of ``parsed`` without any window (weights only).

    An action is its centred unembedding column, a difference the difference of two columns, a saved
    direction its vector (checked against the model's ``d_model``). Top vs runner-up needs windows.
    """
    if parsed.spec is None:
        raise ParameterError(
            f"plugin {plugin_id!r} parameter {param!r}: {TOP_VS_RUNNER_UP} depends on the windows' logits; "
            "this analysis reads the weights only: give an action, a difference (a-b) or saved:NAME"
        )
    if isinstance(parsed.spec, SavedDirection):
        try:
            return parsed.spec.to(model)
        except DirectionsError as exc:
            raise ParameterError(f"plugin {plugin_id!r} parameter {param!r}: {exc}") from None
    W = centred_unembed(model).detach()
    names = list(ACTION_NAMES[: model.cfg.n_actions])
    if isinstance(parsed.spec, tuple):
        a, b = (names.index(x) for x in parsed.spec)
        return W[:, a] - W[:, b]
    return W[:, names.index(parsed.spec)].clone()
