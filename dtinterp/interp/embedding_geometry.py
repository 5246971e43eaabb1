"""Geometry of the input embeddings: the rows the model reads, their similarities, PCA and gridmaps.

The vocabulary of a DT's inputs is a set of embedding *rows*, one :class:`EmbeddingRows` per kind:

=========  ===================================================================================
rtg        ``W_rtg`` and ``b_rtg`` (the RTG token is ``rtg * W_rtg + b_rtg``), or with ``rtg_values``
           the embeddings of those returns, labelled ``R=0.5``
state      one row per state feature, ``W_state[x, y, c]`` flattened in ``(x, y, c)`` order to
           ``[W*H*20, d]``; ``c`` indexes the 20 one-hot channels (11 objects, 6 colours, 3 states of
           :data:`envs.encoding.CHANNEL_NAMES`); labelled ``key@(4,2)`` (``style="short"``) or
           ``object=key (4,2)`` (``style="long"``)
direction  ``W_dir``: one row per agent direction (right, down, left, up)
action     ``action_embed.weight[:n_actions]`` (the padding action's row is left out)
time       ``time_embed.weight[:T]``, labelled ``t=0, t=1, ...``
=========  ===================================================================================

A state token's embedding is ``sum of its on features' rows + W_dir[direction] + b_state``, so a
direction's dot product with every row of ``W_state`` says what each feature of the agent's view
contributes to it: :func:`state_gridmap` returns those numbers as ``[20, W, H]`` panels (indexed
``[channel, x, y]`` like the observation, ``(3, 6)`` is the agent's cell in a 7x7 egocentric view) plus
the four direction rows and ``b_state``, which together add up exactly to the state embedding's dot product.

Similarity is the cosine of rows, ordered by average-linkage hierarchical clustering
(:func:`dtinterp.interp.embeddings.cluster_order`); PCA is the SVD of the centred rows. Many state rows
belong to features the model never sees (a 7x7 egocentric view never shows the agent object, a corridor
cell is never a door): they keep their random initialisation shrunk by weight decay and crowd a 980-row
clustergram. :func:`state_feature_usage` counts how often each feature is on in a batch of observations,
and :func:`constant_rows` flags rows that are (numerically) zero or constant; both give a ``keep`` mask.

Models with ``state_encoder="cnn"`` have no per-feature state embedding; asking them for state rows
raises :class:`NoStateEmbeddingError`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from dtinterp.errors import DtinterpError
from dtinterp.interp.embeddings import action_embeddings, cluster_order, cosine_matrix, time_embeddings
from dtinterp.model.embeddings import GridStateEmbedding, one_hot_torch
from dtinterp.model.hooked_dt import HookedDecisionTransformer
from envs.encoding import (
    ACTION_NAMES,
    CHANNEL_NAMES,
    COLOR_NAMES,
    DIRECTION_NAMES,
    N_CHANNELS,
    N_COLORS,
    N_OBJECTS,
    OBJECT_NAMES,
    STATE_NAMES,
)

EMBEDDING_KINDS = ("rtg", "state", "direction", "action", "time")
#: Channel ranges of the one-hot groups: ``W_state[..., slice(*CHANNEL_GROUPS["colour"]), :]``.
CHANNEL_GROUPS: dict[str, tuple[int, int]] = {
    "object": (0, N_OBJECTS),
    "colour": (N_OBJECTS, N_OBJECTS + N_COLORS),
    "state": (N_OBJECTS + N_COLORS, N_CHANNELS),
}
#: Short name of each channel's value (``"key"``, ``"red"``, ``"locked"``): no two groups share a name.
CHANNEL_VALUES: tuple[str, ...] = OBJECT_NAMES + COLOR_NAMES + STATE_NAMES


class NoStateEmbeddingError(DtinterpError):
    """The model has no per-feature state embedding (``state_encoder="cnn"``)."""


def grid_state_embedding(model: HookedDecisionTransformer) -> GridStateEmbedding:
    """The model's :class:`GridStateEmbedding`, or a one-line :class:`NoStateEmbeddingError`."""
    if not isinstance(model.state_embed, GridStateEmbedding):
        raise NoStateEmbeddingError(
            f"this analysis needs per-feature state embeddings (W_state), but the model has "
            f"state_encoder={model.cfg.state_encoder!r}"
        )
    return model.state_embed


def state_feature_labels(obs_shape: tuple[int, int], style: str = "short") -> list[str]:
    """Labels of the flattened ``W_state`` rows in ``(x, y, channel)`` order: ``key@(4,2)`` (or long form)."""
    if style not in ("short", "long"):
        raise ValueError(f"style must be 'short' or 'long', got {style!r}")
    names = CHANNEL_VALUES if style == "short" else CHANNEL_NAMES
    fmt = "{n}@({x},{y})" if style == "short" else "{n} ({x},{y})"
    W, H = obs_shape
    return [fmt.format(n=n, x=x, y=y) for x in range(W) for y in range(H) for n in names]


@dataclass
class EmbeddingRows:
    """Named embedding vectors of one kind (or several, concatenated)."""

    vectors: Float[Tensor, "n d"]
    """One row per input value (detached)."""
    labels: list[str]
    """A label per row, unique within a kind."""
    kinds: list[str]
    """The kind of each row (one of :data:`EMBEDDING_KINDS`)."""

    def __len__(self) -> int:
        return len(self.labels)

    @staticmethod
    def cat(items: list[EmbeddingRows]) -> EmbeddingRows:
        """Rows of several kinds in one matrix (for cross-kind similarity or PCA)."""
        return EmbeddingRows(
            torch.cat([r.vectors for r in items]),
            [lab for r in items for lab in r.labels],
            [k for r in items for k in r.kinds],
        )


@torch.no_grad()
def embedding_rows(
    model: HookedDecisionTransformer,
    kind: str,
    *,
    max_t: int | None = None,
    rtg_values: Float[Tensor, "n"] | None = None,
    style: str = "short",
) -> EmbeddingRows:
    """The embedding rows of ``kind`` (see the module docstring); ``max_t`` caps the time rows."""
    if kind == "rtg":
        if rtg_values is None:
            vectors = torch.stack([model.W_rtg, model.b_rtg])
            labels = ["W_rtg", "b_rtg"]
        else:
            values = torch.as_tensor(rtg_values, dtype=model.W_rtg.dtype, device=model.W_rtg.device)
            vectors = values[:, None] * model.W_rtg + model.b_rtg
            labels = [f"R={float(v):g}" for v in values]
    elif kind == "state":
        emb = grid_state_embedding(model)
        vectors = emb.W_state.reshape(-1, model.cfg.d_model)
        labels = state_feature_labels(model.cfg.obs_shape, style)
    elif kind == "direction":
        vectors = model.state_embed.W_dir
        labels = [f"dir={n}" for n in DIRECTION_NAMES]
    elif kind == "action":
        vectors = action_embeddings(model)
        labels = list(ACTION_NAMES[: model.cfg.n_actions])
    elif kind == "time":
        vectors = time_embeddings(model, max_t)
        labels = [f"t={t}" for t in range(vectors.shape[0])]
    else:
        raise ValueError(f"kind must be one of {EMBEDDING_KINDS}, got {kind!r}")
    return EmbeddingRows(vectors.detach().clone(), labels, [kind] * len(labels))


def state_feature_usage(
    obs: Int[Tensor, "... W H 3"], directions: Int[Tensor, "..."] | None = None
) -> tuple[Int[Tensor, "W H 20"], Int[Tensor, "4"]]:
    """How many of the observations ``obs`` have each state feature on, and each agent direction.

    ``(counts [W, H, 20], direction_counts [4])``; ``counts.flatten() == 0`` marks the ``W_state`` rows
    the model never read on these inputs (a ``keep`` mask for :func:`cosine_similarity` and :func:`pca`:
    ``counts.flatten() > 0``). Pass only real timesteps (``inputs.obs[inputs.pad_mask]``).
    """
    W, H = obs.shape[-3], obs.shape[-2]
    counts = one_hot_torch(obs.reshape(-1, W, H, 3)).sum(0).round().long()
    dirs = torch.zeros(len(DIRECTION_NAMES), dtype=torch.long)
    if directions is not None:
        dirs = torch.bincount(directions.reshape(-1).long().cpu(), minlength=len(DIRECTION_NAMES))
    return counts.cpu(), dirs


def constant_rows(vectors: Float[Tensor, "n d"], rel_tol: float = 1e-6) -> Bool[Tensor, "n"]:
    """Rows whose norm, or whose spread across coordinates, is below ``rel_tol`` times the largest row norm.

    A zero row has no direction (its cosine is undefined) and a constant row ``c * ones`` is erased by
    LayerNorm's centring: both are "unused" in every geometric sense.
    """
    norms = vectors.norm(dim=-1)
    spread = (vectors - vectors.mean(-1, keepdim=True)).norm(dim=-1)
    tol = rel_tol * float(norms.max()) if len(norms) else 0.0
    return (norms <= tol) | (spread <= tol)


@dataclass
class CosineSimilarity:
    """Cosine similarities of the kept rows, and their clustered order."""

    cosine: Float[Tensor, "n n"]
    """Symmetric, unit diagonal: cosine of each pair of kept rows."""
    labels: list[str]
    """Labels of the kept rows, in the original order (``cosine`` is in this order too)."""
    order: Int[np.ndarray, "n"]
    """Leaf order of the average-linkage dendrogram on ``1 - cosine`` (a permutation of ``0..n-1``)."""
    kept: Bool[Tensor, "N"]
    """Which input rows were kept (``keep`` mask and non-constant)."""
    norms: Float[Tensor, "N"]
    """Norm of every input row (kept or not)."""

    def ordered(self) -> tuple[Float[Tensor, "n n"], list[str]]:
        """``(cosine, labels)`` permuted into cluster order, ready for a clustergram."""
        idx = torch.as_tensor(self.order)
        return self.cosine[idx][:, idx], [self.labels[i] for i in self.order]


def cosine_similarity(
    rows: EmbeddingRows, keep: Bool[Tensor, "N"] | None = None, drop_constant: bool = True
) -> CosineSimilarity:
    """Cosine matrix of ``rows`` (only ``keep`` ones; constant/zero rows dropped) with a clustered order."""
    kept = _keep_mask(rows.vectors, keep, drop_constant)
    x = rows.vectors[kept]
    cos = cosine_matrix(x, x)
    cos = (cos + cos.T) / 2
    cos.diagonal().fill_(1.0)
    return CosineSimilarity(
        cosine=cos,
        labels=[lab for lab, k in zip(rows.labels, kept.tolist()) if k],
        order=cluster_order(cos.double().cpu().numpy()),
        kept=kept,
        norms=rows.vectors.norm(dim=-1),
    )


@dataclass
class PCA:
    """Principal components of a set of rows (SVD of the centred matrix)."""

    components: Float[Tensor, "k d"]
    """Orthonormal principal axes, by decreasing variance; sign: the largest-magnitude coordinate is > 0."""
    explained_variance: Float[Tensor, "k"]
    """Variance along each axis (denominator ``n - 1``)."""
    explained_variance_ratio: Float[Tensor, "k"]
    """Share of the total variance of all components (a scree plot's numbers)."""
    coords: Float[Tensor, "n k"]
    """Each kept row's coordinates on the axes (``coords[:, :2]`` is the 2-D scatter)."""
    loadings: Float[Tensor, "k d"]
    """``components * sqrt(explained_variance)``: axis scaled by its standard deviation."""
    mean: Float[Tensor, "d"]
    """The mean row that was subtracted (zero when ``centre=False``)."""
    labels: list[str]
    """Labels of the kept rows."""
    kept: Bool[Tensor, "N"]
    """Which input rows were kept."""

    def reconstruct(self, k: int | None = None) -> Float[Tensor, "n d"]:
        """The kept rows rebuilt from the first ``k`` components (exact with all of them)."""
        k = self.components.shape[0] if k is None else k
        return self.coords[:, :k] @ self.components[:k] + self.mean


def pca(
    rows: EmbeddingRows,
    n_components: int | None = None,
    keep: Bool[Tensor, "N"] | None = None,
    drop_constant: bool = False,
    centre: bool = True,
) -> PCA:
    """PCA of ``rows`` (the ``keep`` ones): all ``min(n, d)`` components unless ``n_components``."""
    kept = _keep_mask(rows.vectors, keep, drop_constant)
    x = rows.vectors[kept].double().cpu()
    mean = x.mean(0) if centre else torch.zeros_like(x[0])
    xc = (x - mean).numpy()
    if xc.shape[0] > xc.shape[1]:
        # Many rows (the 980 state features): the eigenvectors of the d x d Gram matrix are the axes and
        # the projections the coordinates. A threaded LAPACK SVD of the tall matrix can take seconds on a
        # busy shared machine (both run in float64; the reconstruction stays exact).
        evals, evecs = np.linalg.eigh(xc.T @ xc)
        Vh = torch.from_numpy(evecs[:, ::-1].T.copy())
        S = torch.from_numpy(np.sqrt(np.clip(evals[::-1], 0.0, None)).copy())
    else:  # numpy's LAPACK SVD: torch's CPU SVD can crawl when its thread pool shares a busy machine.
        _, S, Vh = (torch.from_numpy(a) for a in np.linalg.svd(xc, full_matrices=False))
    sign = torch.sign(Vh.gather(1, Vh.abs().argmax(1, keepdim=True))).clamp_min(0) * 2 - 1  # [r, 1]
    Vh = Vh * sign
    coords = torch.from_numpy(xc) @ Vh.T  # [n, r]
    var = S**2 / max(x.shape[0] - 1, 1)
    k = S.shape[0] if n_components is None else min(int(n_components), S.shape[0])
    dtype, device = rows.vectors.dtype, rows.vectors.device
    return PCA(
        components=Vh[:k].to(device, dtype),
        explained_variance=var[:k].to(device, dtype),
        explained_variance_ratio=(var[:k] / var.sum().clamp_min(1e-300)).to(device, dtype),
        coords=coords[:, :k].to(device, dtype),
        loadings=(Vh[:k] * var[:k, None].sqrt()).to(device, dtype),
        mean=mean.to(device, dtype),
        labels=[lab for lab, m in zip(rows.labels, kept.tolist()) if m],
        kept=kept,
    )


@dataclass
class StateGridmap:
    """Dot products of direction(s) with every state feature, laid out over the agent's view."""

    values: Float[Tensor, "*n 20 W H"]
    """``values[..., c, x, y] = W_state[x, y, c] . v``: one ``[W, H]`` panel per channel."""
    direction_values: Float[Tensor, "*n 4"]
    """``W_dir[i] . v`` for the agent directions :data:`DIRECTION_NAMES`."""
    bias: Float[Tensor, "*n"]
    """``b_state . v``."""

    channel_names: tuple[str, ...] = CHANNEL_NAMES
    direction_names: tuple[str, ...] = DIRECTION_NAMES

    def group(self, name: str) -> tuple[Float[Tensor, "*n g W H"], list[str]]:
        """The panels of one channel group (``object``, ``colour`` or ``state``) and their value names."""
        if name not in CHANNEL_GROUPS:
            raise ValueError(f"group must be one of {tuple(CHANNEL_GROUPS)}, got {name!r}")
        lo, hi = CHANNEL_GROUPS[name]
        return self.values[..., lo:hi, :, :], list(CHANNEL_VALUES[lo:hi])

    def of_observation(self, obs: Int[Tensor, "W H 3"], direction: int) -> Float[Tensor, "*n"]:
        """``v . state_embed(obs, direction)``: the on features' panels + direction row + bias."""
        onehot = one_hot_torch(obs.to(self.values.device)).permute(2, 0, 1)  # [20, W, H]
        cells = (self.values * onehot.to(self.values.dtype)).sum((-3, -2, -1))
        return cells + self.direction_values[..., int(direction)] + self.bias


@torch.no_grad()
def state_gridmap(
    model: HookedDecisionTransformer, vectors: Float[Tensor, "*n d"], centre: bool = False
) -> StateGridmap:
    """Gridmap of the residual direction(s) ``vectors`` over the state features.

    With ``centre`` the rows are centred first (what a LayerNorm reading the stream sees: a constant
    offset over ``d_model`` is erased by its centring).
    """
    emb = grid_state_embedding(model)
    W, H = model.cfg.obs_shape
    table = emb.W_state.reshape(-1, model.cfg.d_model)
    rows = torch.cat([table, emb.W_dir, emb.b_state[None]])
    if centre:
        rows = rows - rows.mean(-1, keepdim=True)
    dots = vectors.to(rows) @ rows.T  # [*n, W*H*20 + 4 + 1]
    n_cells = W * H * N_CHANNELS
    return StateGridmap(
        values=rows_to_gridmap(dots[..., :n_cells], (W, H)),
        direction_values=dots[..., n_cells : n_cells + 4],
        bias=dots[..., -1],
    )


def rows_to_gridmap(
    values: Float[Tensor, "*n WH20"], obs_shape: tuple[int, int]
) -> Float[Tensor, "*n 20 W H"]:
    """Per-state-feature numbers in ``W_state`` row order -> ``[..., 20, W, H]`` panels."""
    W, H = obs_shape
    return values.reshape(*values.shape[:-1], W, H, N_CHANNELS).movedim(-1, -3)


def _keep_mask(vectors: Tensor, keep: Tensor | None, drop_constant: bool) -> Bool[Tensor, "N"]:
    n = vectors.shape[0]
    kept = torch.ones(n, dtype=torch.bool, device=vectors.device)
    if keep is not None:
        keep = torch.as_tensor(keep, dtype=torch.bool, device=vectors.device).reshape(-1)
        if keep.shape[0] != n:
            raise ValueError(f"keep mask has {keep.shape[0]} entries for {n} rows")
        kept &= keep
    if drop_constant:
        kept &= ~constant_rows(vectors)
    if int(kept.sum()) == 0:
        raise ValueError("no rows left after the keep mask and dropping constant rows")
    return kept
