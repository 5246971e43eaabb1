"""Neuron congruence: how MLP neurons' weights line up with the embeddings, the unembedding and each other.

Weights only. A neuron ``n`` of layer ``l`` reads ``ln2(resid) @ W_in[:, n]`` and writes
``post[n] * W_out[n]``. Three dot-product tables, each ``[rows, cols]`` with labels:

- input congruence ``fold(E_kind) @ W_in`` [n_rows, m]: how strongly each embedding row (a state feature,
  an action, a timestep, the RTG direction) drives each neuron's pre-activation if it were the whole
  residual stream;
- output congruence ``W_out @ W_U_centred`` [m, n_actions]: how each neuron's firing pushes each action
  logit directly;
- MLP-to-MLP ``W_out[l] @ fold(W_in[l'])`` [m, m] for ``l < l'``: how each earlier neuron's output drives
  each later neuron's input.

``fold`` is the LN approximation of :mod:`dtinterp.interp.circuits`: rows entering a norm are centred and
multiplied by its weight (``ln2`` of the reading layer), its per-token scale is ignored; the final norm's
centring folds exactly into ``W_U``. ``normalize=True`` gives cosine similarities instead of dot products.
:meth:`Congruence.top` and :meth:`Congruence.order` sort the tables.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from dtinterp.interp.attribution import centred_unembed
from dtinterp.interp.circuits import fold_ln
from dtinterp.interp.embedding_geometry import EmbeddingRows, embedding_rows, rows_to_gridmap
from dtinterp.model.hooked_dt import HookedDecisionTransformer
from envs.encoding import ACTION_NAMES

SORT_KEYS = ("abs", "max", "min")


@dataclass
class Congruence:
    """A labelled table of dot products (or cosines) between two sets of weight vectors."""

    values: Float[Tensor, "n_rows n_cols"]
    rows: list[str]
    """Row labels (embedding rows, or neurons ``L{l}N{n}``)."""
    cols: list[str]
    """Column labels (neurons ``L{l}N{n}``, or action names)."""
    row_kinds: list[str]
    """What each row is: an embedding kind, or ``"neuron"``."""

    def top(self, k: int = 10, by: str = "abs") -> list[tuple[str, str, float]]:
        """Top ``k`` entries: largest ``|value|`` (``by="abs"``), value (``max``) or lowest (``min``)."""
        flat = self.values.reshape(-1)
        key = {"abs": flat.abs(), "max": flat, "min": -flat}.get(by)
        if key is None:
            raise ValueError(f"by must be one of {SORT_KEYS}, got {by!r}")
        idx = key.topk(min(k, flat.numel())).indices
        n_cols = self.values.shape[1]
        return [(self.rows[int(i) // n_cols], self.cols[int(i) % n_cols], float(flat[i])) for i in idx]

    def order(self, axis: int = 1, by: str = "abs") -> Int[Tensor, "n"]:
        """Rows (``axis=0``) or columns (``axis=1``) sorted by largest ``|value|`` / value / lowest value."""
        v = self.values if axis == 1 else self.values.T  # reduce over the other axis
        key = {"abs": v.abs().amax(0), "max": v.amax(0), "min": -v.amin(0)}.get(by)
        if key is None:
            raise ValueError(f"by must be one of {SORT_KEYS}, got {by!r}")
        return key.argsort(descending=True)

    def gridmap(self, obs_shape: tuple[int, int]) -> Float[Tensor, "n_cols 20 W H"]:
        """State-feature rows as ``[20, W, H]`` panels per column (rows: exactly the state features)."""
        W, H = obs_shape
        if self.row_kinds != ["state"] * (W * H * 20):
            raise ValueError("gridmap() needs a table whose rows are the W*H*20 state features")
        return rows_to_gridmap(self.values.T, obs_shape)


def _neuron_labels(layer: int, d_mlp: int) -> list[str]:
    return [f"L{layer}N{n}" for n in range(d_mlp)]


def _check_layer(model: HookedDecisionTransformer, layer: int) -> None:
    if model.cfg.attn_only:
        raise ValueError("the model is attention-only: it has no MLP neurons")
    if not 0 <= layer < model.cfg.n_layers:
        raise ValueError(f"layer {layer} is out of range 0..{model.cfg.n_layers - 1}")


def _table(a: Tensor, b: Tensor, normalize: bool) -> Tensor:
    """``a @ b`` with ``a`` [n, d] rows and ``b`` [d, m] columns; cosines with ``normalize``."""
    if normalize:
        a = a / a.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        b = b / b.norm(dim=0, keepdim=True).clamp_min(1e-12)
    return a @ b


@torch.no_grad()
def neuron_input_congruence(
    model: HookedDecisionTransformer,
    layer: int,
    rows: str | EmbeddingRows = "state",
    *,
    fold: bool = True,
    normalize: bool = False,
    **row_kw,
) -> Congruence:
    """``fold(E) @ W_in[layer]``: each embedding row against each neuron's input weights [n_rows, d_mlp]."""
    _check_layer(model, layer)
    E = embedding_rows(model, rows, **row_kw) if isinstance(rows, str) else rows
    x = E.vectors.to(model.W_U)
    x = fold_ln(model, x, layer, "ln2") if fold else x
    mlp = model.blocks[layer].mlp
    return Congruence(
        _table(x, mlp.W_in.detach(), normalize),
        list(E.labels),
        _neuron_labels(layer, model.cfg.d_mlp),
        list(E.kinds),
    )


@torch.no_grad()
def neuron_output_congruence(
    model: HookedDecisionTransformer, layer: int, *, normalize: bool = False
) -> Congruence:
    """``W_out[layer] @ W_U_centred``: each neuron's direct push on each action logit [d_mlp, n_actions]."""
    _check_layer(model, layer)
    W_out = model.blocks[layer].mlp.W_out.detach()
    return Congruence(
        _table(W_out, centred_unembed(model).detach(), normalize),
        _neuron_labels(layer, model.cfg.d_mlp),
        list(ACTION_NAMES[: model.cfg.n_actions]),
        ["neuron"] * model.cfg.d_mlp,
    )


@torch.no_grad()
def mlp_to_mlp_congruence(
    model: HookedDecisionTransformer, src: int, dst: int, *, fold: bool = True, normalize: bool = False
) -> Congruence:
    """``W_out[src] @ fold(W_in[dst])``: earlier neurons' outputs against later neurons' inputs [m, m]."""
    _check_layer(model, src)
    _check_layer(model, dst)
    if not src < dst:
        raise ValueError(f"the source layer must come before the destination layer, got {src} -> {dst}")
    W_out = model.blocks[src].mlp.W_out.detach()
    x = fold_ln(model, W_out, dst, "ln2") if fold else W_out
    return Congruence(
        _table(x, model.blocks[dst].mlp.W_in.detach(), normalize),
        _neuron_labels(src, model.cfg.d_mlp),
        _neuron_labels(dst, model.cfg.d_mlp),
        ["neuron"] * model.cfg.d_mlp,
    )
