"""Geometry of the learned input embeddings: similarity matrices, clustered orderings, unembedding projections.

The time embedding of a decision transformer is added to every token of a timestep, so how its rows
relate to each other (smooth in t? clustered into phases?) and to the RTG and action embeddings and the
action unembedding tells whether and how the model reads the episode clock.
"""

from __future__ import annotations

import numpy as np
import torch
from jaxtyping import Float, Int
from scipy.cluster.hierarchy import dendrogram, leaves_list, linkage
from scipy.spatial.distance import squareform
from torch import Tensor

from dtinterp.interp.attribution import centred_unembed
from dtinterp.model.hooked_dt import HookedDecisionTransformer


@torch.no_grad()
def time_embeddings(model: HookedDecisionTransformer, max_t: int | None = None) -> Float[Tensor, "T d"]:
    """The time embedding rows of timesteps ``0 .. T-1``, ``T = min(max_t, cfg.max_timestep)``."""
    n = model.cfg.max_timestep if max_t is None else max(1, min(int(max_t), model.cfg.max_timestep))
    return model.time_embed.weight[:n].detach()


@torch.no_grad()
def action_embeddings(model: HookedDecisionTransformer) -> Float[Tensor, "A d"]:
    """Embedding rows of the real actions (the padding action's row is left out)."""
    return model.action_embed.weight[: model.cfg.n_actions].detach()


def dot_matrix(a: Float[Tensor, "m d"], b: Float[Tensor, "n d"]) -> Float[Tensor, "m n"]:
    """Pairwise dot products ``a @ b.T``."""
    return a @ b.T


def cosine_matrix(
    a: Float[Tensor, "m d"], b: Float[Tensor, "n d"], eps: float = 1e-12
) -> Float[Tensor, "m n"]:
    """Pairwise cosine similarities of the rows of ``a`` and ``b`` (a zero row has similarity 0)."""
    an = a / a.norm(dim=-1, keepdim=True).clamp_min(eps)
    bn = b / b.norm(dim=-1, keepdim=True).clamp_min(eps)
    return an @ bn.T


def cluster_order(cos: Float[np.ndarray, "n n"]) -> Int[np.ndarray, "n"]:
    """A permutation of ``0..n-1`` that puts similar rows next to each other.

    Average-linkage hierarchical clustering (scipy) of the cosine distance ``1 - cos``; the leaf order
    of its dendrogram. Deterministic for a given matrix.
    """
    cos = np.asarray(cos, dtype=np.float64)
    n = cos.shape[0]
    if n < 3:
        return np.arange(n)
    dist = np.clip(1.0 - (cos + cos.T) / 2.0, 0.0, 2.0)
    np.fill_diagonal(dist, 0.0)
    return leaves_list(linkage(squareform(dist, checks=False), method="average")).astype(np.int64)


def cluster_tree(cos: Float[np.ndarray, "n n"]) -> dict[str, list]:
    """The clustering of :func:`cluster_order` with its dendrogram, for a clustergram.

    ``{"order": leaf order, "icoord": ..., "dcoord": ...}`` as scipy's ``dendrogram(no_plot=True)`` gives
    them (see :func:`dtinterp.viz.clustergram.clustergram`); fewer than 2 rows have no links.
    """
    cos = np.asarray(cos, dtype=np.float64)
    n = cos.shape[0]
    if n < 2:
        return {"order": list(range(n)), "icoord": [], "dcoord": []}
    dist = np.clip(1.0 - (cos + cos.T) / 2.0, 0.0, 2.0)
    np.fill_diagonal(dist, 0.0)
    tree = dendrogram(linkage(squareform(dist, checks=False), method="average"), no_plot=True)
    return {"order": [int(i) for i in tree["leaves"]], "icoord": tree["icoord"], "dcoord": tree["dcoord"]}


@torch.no_grad()
def unembed_projections(
    model: HookedDecisionTransformer, vectors: Float[Tensor, "n d"]
) -> Float[Tensor, "n A"]:
    """``vectors @ centred W_U``: how much each vector, added to the final residual stream, pushes each logit.

    The final LayerNorm centres the residual stream before ``W_U`` reads it, so a vector's push is its
    product with the centred unembedding (:func:`dtinterp.interp.attribution.centred_unembed`, the same
    readout the direct logit attribution uses); a constant offset over ``d_model`` pushes nothing. This is
    the direct path only, without the norm's per-token scale (the vectors are directions, not positions).
    """
    return vectors @ centred_unembed(model).detach()
