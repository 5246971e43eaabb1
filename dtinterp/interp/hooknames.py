"""Component names: a TransformerLens hook name plus an optional head or neuron index.

Causal analyses (ablation, activation and path patching) name what they intervene on in the same words
as the model's hooks, so a name found in a cache, a figure or a report can be pasted back as-is:

==================================  =================================================================
``blocks.1.attn.hook_z:h2``         head 2 of layer 1 (its output, before ``W_O``); ``hook_q``,
                                    ``hook_k``, ``hook_v`` (its inputs) and ``hook_pattern`` likewise
``blocks.1.attn.hook_z``            every head of layer 1 at that hook
``blocks.0.mlp.hook_post:n113``     MLP neuron 113 of layer 0 (after the nonlinearity; ``hook_pre``:
                                    before it); without ``:n`` the whole layer's neurons
``blocks.1.hook_attn_out``          a whole layer's attention or MLP output (``hook_mlp_out``), or its
                                    residual stream (``hook_resid_pre|mid|post``)
``hook_rtg_embed``                  an input embedding by kind: ``hook_rtg_embed``,
                                    ``hook_state_embed``, ``hook_action_embed``, ``hook_time_embed``,
                                    or the summed token / time embeddings ``hook_embed``,
                                    ``hook_pos_embed``
==================================  =================================================================

Every name is checked against the model's config: an unknown hook, an index that the hook does not
take, or a layer, head or neuron out of range is a one-line :class:`ComponentError` naming the input.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from dtinterp.errors import DtinterpError
from dtinterp.model.config import DTConfig

#: Hooks before the first block, by the name after ``hook_``.
EMBED_SITES = ("embed", "pos_embed", "rtg_embed", "state_embed", "action_embed", "time_embed")
#: Block hooks on the residual stream or a layer's output: ``blocks.{l}.hook_<site>``.
BLOCK_SITES = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
#: Per-head attention hooks: ``blocks.{l}.attn.hook_<site>[:h<i>]``.
HEAD_SITES = ("q", "k", "v", "z", "pattern")
#: Per-neuron MLP hooks: ``blocks.{l}.mlp.hook_<site>[:n<i>]``.
NEURON_SITES = ("pre", "post")
_MLP_SITES = ("resid_mid", "mlp_out", *NEURON_SITES)

_NAME = re.compile(
    r"^(?:hook_(?P<embed>\w+)"
    r"|blocks\.(?P<layer>\d+)\.(?:(?P<sub>attn|mlp)\.)?hook_(?P<site>\w+))"
    r"(?::(?P<letter>[a-z])(?P<index>\d+))?$"
)
_EXAMPLES = "blocks.1.attn.hook_z:h2, blocks.0.mlp.hook_post:n113, blocks.1.hook_attn_out or hook_rtg_embed"


class ComponentError(DtinterpError):
    """A component name that is not a hook of the model, or an index out of range."""


@dataclass(frozen=True)
class Component:
    """One parsed component name."""

    site: str
    """The hook without its location: ``z``, ``post``, ``attn_out``, ``rtg_embed``, ..."""
    layer: int | None
    """Block index (None for the embedding hooks)."""
    index: int | None = None
    """Head (for :data:`HEAD_SITES`) or neuron (for :data:`NEURON_SITES`); None: all of them."""

    @property
    def hook_name(self) -> str:
        """The TransformerLens hook name (``blocks.1.attn.hook_z``)."""
        if self.layer is None:
            return f"hook_{self.site}"
        if self.site in HEAD_SITES:
            return f"blocks.{self.layer}.attn.hook_{self.site}"
        if self.site in NEURON_SITES:
            return f"blocks.{self.layer}.mlp.hook_{self.site}"
        return f"blocks.{self.layer}.hook_{self.site}"

    @property
    def is_head(self) -> bool:
        return self.site in HEAD_SITES

    @property
    def is_neuron(self) -> bool:
        return self.site in NEURON_SITES

    @property
    def unit_axis(self) -> int | None:
        """Axis of the head / neuron index in the hook's activation (batch first), or None."""
        if self.site == "pattern":
            return 1  # [B, H, Pq, Pk]
        if self.site in HEAD_SITES:
            return 2  # [B, P, H, dh]
        if self.site in NEURON_SITES:
            return 2  # [B, P, m]
        return None

    def __str__(self) -> str:
        if self.index is None:
            return self.hook_name
        return f"{self.hook_name}:{'h' if self.is_head else 'n'}{self.index}"


def parse_component(name: str, cfg: DTConfig) -> Component:
    """Parse one component name (see the module docstring) and check it against ``cfg``."""
    m = _NAME.match(name.strip())
    if m is None:
        raise ComponentError(f"unknown component {name!r}: expected a hook name like {_EXAMPLES}")
    letter, index = m["letter"], None if m["index"] is None else int(m["index"])
    if m["embed"] is not None:
        if m["embed"] not in EMBED_SITES:
            raise ComponentError(
                f"unknown component {name!r}: embedding hooks are hook_{', hook_'.join(EMBED_SITES)}"
            )
        if letter is not None:
            raise ComponentError(f"component {name!r}: hook_{m['embed']} takes no index")
        return Component(m["embed"], None)

    layer, sub, site = int(m["layer"]), m["sub"], m["site"]
    expected = {"attn": HEAD_SITES, "mlp": NEURON_SITES, None: BLOCK_SITES}[sub]
    if site not in expected:
        where = f"blocks.{layer}.{sub + '.' if sub else ''}hook_"
        raise ComponentError(f"unknown component {name!r}: expected {where}{'|'.join(expected)}")
    if not 0 <= layer < cfg.n_layers:
        raise ComponentError(f"component {name!r}: layer {layer} out of range 0..{cfg.n_layers - 1}")
    if cfg.attn_only and site in _MLP_SITES:
        raise ComponentError(f"component {name!r}: the model is attention-only (no MLP, no resid_mid)")
    if letter is None:
        return Component(site, layer)
    if site in HEAD_SITES:
        unit, size, what = "h", cfg.n_heads, "head"
    elif site in NEURON_SITES:
        unit, size, what = "n", cfg.d_mlp, "neuron"
    else:
        raise ComponentError(f"component {name!r}: hook_{site} takes no head or neuron index")
    if letter != unit:
        raise ComponentError(
            f"component {name!r}: a {what} index is written :{unit}<i>, got :{letter}{index}"
        )
    if not 0 <= index < size:
        raise ComponentError(f"component {name!r}: {what} {index} out of range 0..{size - 1}")
    return Component(site, layer, index)


def parse_components(names: Iterable[str | Component], cfg: DTConfig) -> list[Component]:
    """Parse several names (parsed :class:`Component` s are checked again); an empty list is an error."""
    out = [parse_component(str(n), cfg) for n in names]
    if not out:
        raise ComponentError("no components given")
    return out
