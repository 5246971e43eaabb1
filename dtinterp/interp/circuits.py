"""OV and QK circuits of every head, their SVDs, and composition scores between heads.

Weights only: these analyses read no activations. Following Elhage et al. (2021), "A Mathematical
Framework for Transformer Circuits", a head ``(l, h)`` moves information with its OV matrix
``W_V[l, h] @ W_O[l, h]`` (``[d, d]``, what it writes given what it reads) and decides where to read with
its QK matrix ``W_Q[l, h] @ W_K[l, h].T`` (``[d, d]``, a bilinear form between the query's and the key's
residual stream). Both are TransformerLens ``FactoredMatrix`` objects (``model.OV``, ``model.QK``), which
give their SVDs without forming the ``d x d`` products.

**The full circuits** put the model's input vocabulary on both ends:

- ``ov_circuit``: ``E_kind @ W_V @ W_O @ W_U`` [L, H, n_rows, n_actions]: if a head attended only to a
  token whose residual stream were one embedding row, how that row would push each action logit through
  this head alone (the "direct path through one head"; for a layer-1 head it ignores what layer 0 did).
- ``qk_circuit``: ``E_query @ W_Q @ W_K.T @ E_key.T / sqrt(d_head)`` [L, H, n_q, n_k]: the attention
  score a query row gives a key row. ``key_bias`` adds the one bias term that changes which key wins
  (``b_Q . (E_key @ W_K)``; the others are the same for every key and cancel in the softmax).

**LayerNorms (the standard approximation).** The attention input is ``ln1(x) = centre(x) / s * w + b``
with a per-token scale ``s``. We fold the *linear* parts into the weights: embedding rows are centred
(LN/LNPre) and multiplied by ``ln1.w`` (LN) of the head's layer, and the scale ``s`` is ignored, i.e. the
circuits are exact up to one positive factor per token (``1 / s``), which rescales a row's effect but
never flips its sign. ``ln1.b`` and ``b_V`` make a constant the head writes whatever it reads; it is
reported separately as ``OVCircuit.value_bias``. The final LayerNorm has no affine parameters and its
centring folds exactly into the unembedding (:func:`dtinterp.interp.attribution.centred_unembed`); its
scale is ignored too. ``fold_ln=False`` uses the raw embedding rows instead. For a head at position 0
(which attends only to itself) the OV circuit applied to the *actual* ``ln1`` output is exactly the
head's output minus its bias: the test of this module checks that.

**SVD** (:func:`head_svd`): per head, ``U diag(S) V.T`` of the OV or QK matrix with the ln1 weight and
centring folded into its input side(s) (``fold_ln``) or of the raw ``model.OV`` / ``model.QK``. The
top-``k`` singular directions are mapped back into the vocabulary: left (read / query) vectors onto state
features as gridmaps, OV's right (write) vectors onto the actions through ``W_U``, QK's right (key)
vectors onto state features. Signs are fixed so the results are deterministic: OV's largest action
effect and QK's largest query-side coordinate are positive.

**Composition** (:func:`composition_scores`), exactly as TransformerLens defines it:
``||W_A W_B||_F / (||W_A||_F ||W_B||_F)`` with ``W_A`` the OV matrix of an earlier head and ``W_B`` the
QK matrix (Q-composition), its transpose (K-composition) or the OV matrix (V-composition) of a later head,
equal to ``transformer_lens.utilities.composition_scores`` on the ``FactoredMatrix`` forms.
Scores are ``[L, H, L, H]`` (source layer, head, destination layer, head) and 0 unless the source
layer is earlier. Random matrices already compose at a level set by their shapes (about 0.09 for
``d_model=128, d_head=32``): :func:`composition_baseline` gives the scores of freshly initialised models
of the same shape to compare against.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor
from transformer_lens.FactoredMatrix import FactoredMatrix

from dtinterp.interp.attribution import centred_unembed
from dtinterp.interp.embedding_geometry import EmbeddingRows, StateGridmap, embedding_rows, state_gridmap
from dtinterp.model.config import DTConfig
from dtinterp.model.hooked_dt import HookedDecisionTransformer
from envs.encoding import ACTION_NAMES

COMPOSITION_MODES = ("Q", "K", "V")
CIRCUITS = ("OV", "QK")


def head_labels(cfg: DTConfig) -> list[str]:
    """``["L0H0", "L0H1", ...]``: one label per head, layer-major (the order of ``[L, H]`` flattened)."""
    return [f"L{l}H{h}" for l in range(cfg.n_layers) for h in range(cfg.n_heads)]


def _centres(model: HookedDecisionTransformer) -> bool:
    return model.cfg.normalization_type in ("LN", "LNPre")


def ln_weight(model: HookedDecisionTransformer, layer: int, which: str = "ln1") -> Float[Tensor, "d"]:
    """The learned weight of ``blocks[layer].<which>`` (ones for LNPre or no norm)."""
    norm = getattr(model.blocks[layer], which)
    w = getattr(norm, "w", None)
    return w.detach() if w is not None else torch.ones(model.cfg.d_model, device=model.W_U.device)


def fold_ln(
    model: HookedDecisionTransformer, x: Float[Tensor, "... n d"], layer: int, which: str = "ln1"
) -> Float[Tensor, "... n d"]:
    """Rows ``x`` as ``blocks[layer].<which>`` sees them, up to its per-token scale: ``centre(x) * w``."""
    if _centres(model):
        x = x - x.mean(-1, keepdim=True)
    return x * ln_weight(model, layer, which)


def _fold_factor(model: HookedDecisionTransformer, A: Float[Tensor, "L H d x"]) -> Float[Tensor, "L H d x"]:
    """Input factor ``A`` (rows index the residual) with each layer's ``ln1`` weight and centring folded in:
    ``P diag(w) A`` where ``P`` projects out the all-ones direction (LN's centring)."""
    w = torch.stack([ln_weight(model, l) for l in range(model.cfg.n_layers)])  # [L, d]
    A = A * w[:, None, :, None]
    return A - A.mean(-2, keepdim=True) if _centres(model) else A


def _rows(model: HookedDecisionTransformer, rows: str | EmbeddingRows, **kw) -> EmbeddingRows:
    return embedding_rows(model, rows, **kw) if isinstance(rows, str) else rows


@dataclass
class OVCircuit:
    """Each head's full OV circuit from embedding rows to the action logits."""

    values: Float[Tensor, "L H n A"]
    """``fold(E) @ W_V[l, h] @ W_O[l, h] @ W_U_centred``: what row ``i`` pushes into each action logit."""
    value_bias: Float[Tensor, "L H A"]
    """``(ln1.b @ W_V + b_V) @ W_O @ W_U_centred``: written whatever the head attends to."""
    rows: list[str]
    """Labels of the input rows."""
    kinds: list[str]
    """Embedding kind of each input row."""
    actions: list[str]
    """Action names (columns)."""
    heads: list[str]
    """``L{l}H{h}`` labels of the ``[L, H]`` grid flattened."""
    obs_shape: tuple[int, int]

    def gridmap(self) -> Float[Tensor, "L H A 20 W H"]:
        """The state-feature rows as ``[20, W, H]`` panels per head and action (rows: state features)."""
        W, H = self.obs_shape
        n = W * H * 20
        if self.kinds[:n] != ["state"] * n or len(self.kinds) < n:
            raise ValueError("gridmap() needs the W*H*20 state-feature rows first (kind='state')")
        v = self.values[:, :, :n].movedim(-1, 2)  # [L, H, A, n]
        return v.reshape(*v.shape[:3], W, H, 20).movedim(-1, -3)


@torch.no_grad()
def ov_circuit(
    model: HookedDecisionTransformer, rows: str | EmbeddingRows = "state", *, fold: bool = True, **row_kw
) -> OVCircuit:
    """Full OV circuit of every head from ``rows`` (a kind or :class:`EmbeddingRows`) to the logits.

    ``row_kw`` go to :func:`~dtinterp.interp.embedding_geometry.embedding_rows` (``max_t``, ``rtg_values``).
    """
    E = _rows(model, rows, **row_kw)
    x = E.vectors.to(model.W_U)
    W_U = centred_unembed(model).detach()
    L = model.cfg.n_layers
    W_OU = model.W_O.detach() @ W_U  # [L, H, dh, A]
    xs = torch.stack([fold_ln(model, x, l) if fold else x for l in range(L)])  # [L, n, d]
    values = torch.einsum("lnd,lhde,lhea->lhna", xs, model.W_V.detach(), W_OU)
    ln_b = torch.stack([_ln_bias(model, l) for l in range(L)])  # [L, d]
    b_V = torch.stack([b.attn.b_V.detach() for b in model.blocks])  # [L, H, dh]
    value_in = torch.einsum("ld,lhde->lhe", ln_b, model.W_V.detach()) + b_V
    return OVCircuit(
        values=values,
        value_bias=torch.einsum("lhe,lhea->lha", value_in, W_OU),
        rows=list(E.labels),
        kinds=list(E.kinds),
        actions=list(ACTION_NAMES[: model.cfg.n_actions]),
        heads=head_labels(model.cfg),
        obs_shape=model.cfg.obs_shape,
    )


def _ln_bias(model: HookedDecisionTransformer, layer: int) -> Float[Tensor, "d"]:
    b = getattr(model.blocks[layer].ln1, "b", None)
    return b.detach() if b is not None else torch.zeros(model.cfg.d_model, device=model.W_U.device)


@dataclass
class QKCircuit:
    """Each head's attention scores between query rows and key rows."""

    scores: Float[Tensor, "L H nq nk"]
    """``fold(E_q) @ W_Q @ W_K.T @ fold(E_k).T / sqrt(d_head)`` (pre-softmax scores, scale ignored)."""
    key_bias: Float[Tensor, "L H nk"]
    """``(ln1.b @ W_Q + b_Q) . (fold(E_k) @ W_K) / sqrt(d_head)``: the bias term that depends on the key."""
    query_rows: list[str]
    key_rows: list[str]
    query_kinds: list[str]
    key_kinds: list[str]
    heads: list[str]
    """``L{l}H{h}`` labels of the ``[L, H]`` grid flattened."""


@torch.no_grad()
def qk_circuit(
    model: HookedDecisionTransformer,
    query: str | EmbeddingRows = "state",
    key: str | EmbeddingRows = "state",
    *,
    fold: bool = True,
    **row_kw,
) -> QKCircuit:
    """Full QK circuit of every head between ``query`` and ``key`` rows (kinds or :class:`EmbeddingRows`)."""
    Eq, Ek = _rows(model, query, **row_kw), _rows(model, key, **row_kw)
    L = model.cfg.n_layers
    xq, xk = Eq.vectors.to(model.W_U), Ek.vectors.to(model.W_U)
    fq = torch.stack([fold_ln(model, xq, l) if fold else xq for l in range(L)])  # [L, nq, d]
    fk = torch.stack([fold_ln(model, xk, l) if fold else xk for l in range(L)])
    scale = model.blocks[0].attn.attn_scale
    q = torch.einsum("lnd,lhde->lhne", fq, model.W_Q.detach())
    k = torch.einsum("lnd,lhde->lhne", fk, model.W_K.detach())
    ln_b = torch.stack([_ln_bias(model, l) for l in range(L)])
    b_Q = torch.stack([b.attn.b_Q.detach() for b in model.blocks])  # [L, H, dh]
    q_bias = torch.einsum("ld,lhde->lhe", ln_b, model.W_Q.detach()) + b_Q
    return QKCircuit(
        scores=q @ k.transpose(-1, -2) / scale,
        key_bias=torch.einsum("lhe,lhne->lhn", q_bias, k) / scale,
        query_rows=list(Eq.labels),
        key_rows=list(Ek.labels),
        query_kinds=list(Eq.kinds),
        key_kinds=list(Ek.kinds),
        heads=head_labels(model.cfg),
    )


def head_matrix(model: HookedDecisionTransformer, circuit: str = "OV", fold: bool = True) -> FactoredMatrix:
    """``[L, H, d, d]`` OV or QK matrices, with ln1's weight and centring folded into the input side(s)."""
    W_Q, W_K, W_V, W_O = (w.detach() for w in (model.W_Q, model.W_K, model.W_V, model.W_O))
    if circuit == "OV":
        return FactoredMatrix(_fold_factor(model, W_V) if fold else W_V, W_O)
    if circuit == "QK":
        if fold:
            W_Q, W_K = _fold_factor(model, W_Q), _fold_factor(model, W_K)
        return FactoredMatrix(W_Q, W_K.transpose(-2, -1))
    raise ValueError(f"circuit must be one of {CIRCUITS}, got {circuit!r}")


@dataclass
class HeadSVD:
    """SVD of each head's OV or QK matrix, with the top singular directions in the model's vocabulary."""

    circuit: str
    """``"OV"`` or ``"QK"``."""
    U: Float[Tensor, "L H d r"]
    """Left singular vectors (columns): directions read (OV) or the query side (QK)."""
    S: Float[Tensor, "L H r"]
    """Singular values, decreasing (``r = d_head``)."""
    V: Float[Tensor, "L H d r"]
    """Right singular vectors (columns): directions written (OV) or the key side (QK)."""
    heads: list[str]
    """``L{l}H{h}`` labels of the ``[L, H]`` grid flattened."""
    left_gridmap: StateGridmap | None
    """The top-k left vectors against every state feature (``[L, H, k, 20, W, H]``; None for a CNN)."""
    right_gridmap: StateGridmap | None
    """QK only: the top-k key-side vectors against every state feature (``[L, H, k, 20, W, H]``)."""
    right_actions: Float[Tensor, "L H k A"] | None
    """OV only: the top-k written vectors through the centred unembedding (their push on each action)."""
    actions: list[str]

    def matrix(self) -> Float[Tensor, "L H d d"]:
        """``U diag(S) V.T``: the decomposed matrices."""
        return (self.U * self.S[..., None, :]) @ self.V.transpose(-1, -2)

    @property
    def explained(self) -> Float[Tensor, "L H r"]:
        """Share of each head's squared Frobenius norm per singular value (``S**2 / sum S**2``)."""
        s2 = self.S**2
        return s2 / s2.sum(-1, keepdim=True).clamp_min(1e-30)


def _factored_svd(fm: FactoredMatrix) -> tuple[Tensor, Tensor, Tensor]:
    """``FactoredMatrix.svd()`` computed with numpy's LAPACK (same algorithm, same numbers up to signs).

    torch's batched CPU SVD can crawl (seconds for 12 heads) when its thread pool shares a busy machine,
    as in :func:`~dtinterp.interp.embedding_geometry.pca`. SVD each factor, then the small middle matrix.
    """
    A, B = (x.detach().double().cpu().numpy() for x in (fm.A, fm.B))
    Ua, Sa, Vha = np.linalg.svd(A, full_matrices=False)
    Ub, Sb, Vhb = np.linalg.svd(B, full_matrices=False)
    middle = Sa[..., :, None] * (Vha @ Ub) * Sb[..., None, :]
    Um, Sm, Vhm = np.linalg.svd(middle, full_matrices=False)
    U, V = Ua @ Um, np.swapaxes(Vhb, -1, -2) @ np.swapaxes(Vhm, -1, -2)
    return tuple(torch.from_numpy(x).to(fm.A) for x in (U, Sm, V))  # type: ignore[return-value]


@torch.no_grad()
def head_svd(model: HookedDecisionTransformer, circuit: str = "OV", k: int = 4, fold: bool = True) -> HeadSVD:
    """SVD of every head's ``circuit`` matrix (:func:`head_matrix`), top-``k`` directions mapped back."""
    U, S, V = _factored_svd(head_matrix(model, circuit, fold))
    # Deterministic signs: flip (u_i, v_i) together so the chosen side's largest entry is positive.
    W_U = centred_unembed(model).detach().to(V)
    ref = torch.einsum("lhdr,da->lhra", V, W_U) if circuit == "OV" else U.transpose(-1, -2)  # [L, H, r, *]
    sign = torch.sign(ref.gather(-1, ref.abs().argmax(-1, keepdim=True)))[..., 0]  # [L, H, r]
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    U, V = U * sign[..., None, :], V * sign[..., None, :]
    k = min(k, S.shape[-1])
    grid = model.cfg.state_encoder == "grid"
    left = state_gridmap(model, U[..., :k].transpose(-1, -2)) if grid else None
    right = state_gridmap(model, V[..., :k].transpose(-1, -2)) if grid and circuit == "QK" else None
    actions = torch.einsum("lhdk,da->lhka", V[..., :k], W_U) if circuit == "OV" else None
    return HeadSVD(
        circuit=circuit,
        U=U,
        S=S,
        V=V,
        heads=head_labels(model.cfg),
        left_gridmap=left,
        right_gridmap=right,
        right_actions=actions,
        actions=list(ACTION_NAMES[: model.cfg.n_actions]),
    )


# -------------------------------------------------------------- composition


def composition_scores(
    model: HookedDecisionTransformer, mode: str, fold: bool = False
) -> Float[Tensor, "L H L H"]:
    """Q-, K- or V-composition scores of every (earlier head, later head) pair (0 elsewhere).

    ``fold`` folds the later head's ln1 weight and centring into its input side (the raw weights, as
    TransformerLens computes them on a model whose LayerNorms were folded, when False).
    """
    return _composition(model, (mode,), fold)[mode]


@torch.no_grad()
def _composition(model: HookedDecisionTransformer, modes: tuple[str, ...], fold: bool) -> dict[str, Tensor]:
    """The scores of ``modes`` from the factors of each head's ``FactoredMatrix``, without any SVD.

    For ``W_A = A1 B1`` and ``W_B = A2 B2`` (``A [d, dh]``, ``B [dh, d]``), with ``M = B1 A2`` and the Gram
    matrices ``G = A.T A``, ``K = B B.T`` (all ``[dh, dh]``): ``||W_A W_B||_F^2 = tr(M.T G1 M K2)`` and
    ``||W_A||_F^2 = tr(G1 K1)``. Exact (in float64), the same number TL's utility gets from SVDs of the
    pairs broadcast to ``[L, H, L, H]``, and cheap and thread-safe on a busy CPU.
    """
    bad = [m for m in modes if m not in COMPOSITION_MODES]
    if bad:
        raise ValueError(f"mode must be one of {COMPOSITION_MODES}, got {bad[0]!r}")

    def factors(fm: FactoredMatrix) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        A, B = fm.A.double(), fm.B.double()
        G, K = A.transpose(-1, -2) @ A, B @ B.transpose(-1, -2)  # [L, H, dh, dh]
        return A, B, G, K

    _, B1, G1, K1 = factors(head_matrix(model, "OV", fold=False))
    left_norm = (G1 * K1).sum((-2, -1)).sqrt()  # [L, H]
    right = {"Q": lambda: head_matrix(model, "QK", fold), "K": lambda: head_matrix(model, "QK", fold).T}
    right["V"] = lambda: head_matrix(model, "OV", fold)
    mask = composition_mask(model.cfg).to(B1.device)
    out = {}
    for m in modes:
        A2, _, G2, K2 = factors(right[m]())
        M = B1[:, :, None, None] @ A2[None, None]  # [L, H, L, H, dh, dh]
        comp = ((G1[:, :, None, None] @ M) * (M @ K2[None, None])).sum((-2, -1)).clamp_min(0).sqrt()
        scores = comp / left_norm[:, :, None, None] / (G2 * K2).sum((-2, -1)).sqrt()[None, None]
        scores = scores.to(model.W_U.dtype)
        out[m] = torch.where(mask, scores, torch.zeros_like(scores))
    return out


def composition_mask(cfg: DTConfig) -> Bool[Tensor, "L H L H"]:
    """True where the source head's layer is earlier than the destination head's."""
    layer = torch.arange(cfg.n_layers)
    mask = layer[:, None] < layer[None, :]
    return mask[:, None, :, None].expand(cfg.n_layers, cfg.n_heads, cfg.n_layers, cfg.n_heads)


@dataclass
class Composition:
    """Q-, K- and V-composition scores between every pair of heads, with a random-model baseline."""

    scores: dict[str, Float[Tensor, "L H L H"]]
    """``scores[mode][l1, h1, l2, h2]``: how much head (l1, h1)'s output feeds head (l2, h2)'s mode input."""
    valid: Bool[Tensor, "L H L H"]
    """Pairs with ``l1 < l2`` (the only ones that can compose); scores are 0 elsewhere."""
    heads: list[str]
    """``L{l}H{h}`` labels of each ``[L, H]`` grid flattened."""
    baseline_mean: dict[str, float]
    """Mean score over valid pairs of freshly initialised models of the same shape (empty if not asked)."""
    baseline_std: dict[str, float]
    """Standard deviation of those baseline scores."""

    def matrix(self, mode: str) -> Float[Tensor, "LH LH"]:
        """``[L*H, L*H]`` source x destination matrix for a heatmap labelled by :attr:`heads`."""
        s = self.scores[mode]
        n = s.shape[0] * s.shape[1]
        return s.reshape(n, n)


def all_composition_scores(
    model: HookedDecisionTransformer, fold: bool = False, baseline_samples: int = 4, seed: int = 0
) -> Composition:
    """Every composition mode, and (with ``baseline_samples > 0``) :func:`composition_baseline`."""
    scores = _composition(model, COMPOSITION_MODES, fold)
    mean, std = composition_baseline(model.cfg, baseline_samples, seed) if baseline_samples > 0 else ({}, {})
    return Composition(scores, composition_mask(model.cfg), head_labels(model.cfg), mean, std)


def composition_baseline(
    cfg: DTConfig, n_samples: int = 4, seed: int = 0
) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and std of each mode's scores over the valid pairs of ``n_samples`` freshly initialised models.

    Models are built with the package's own initialisation (seeds ``seed .. seed + n - 1``) on the CPU,
    without touching the global random state. The result depends only on the architecture, so it is
    memoised per (architecture, ``n_samples``, ``seed``).
    """
    key = (json.dumps({**cfg.to_dict(), "seed": None}, sort_keys=True), int(n_samples), int(seed))
    if key not in _BASELINES:
        _BASELINES[key] = _baseline(cfg, n_samples, seed)
    mean, std = _BASELINES[key]
    return dict(mean), dict(std)


_BASELINES: dict[tuple[str, int, int], tuple[dict[str, float], dict[str, float]]] = {}


def _baseline(cfg: DTConfig, n_samples: int, seed: int) -> tuple[dict[str, float], dict[str, float]]:
    if cfg.n_layers < 2 or n_samples < 1:
        return {m: float("nan") for m in COMPOSITION_MODES}, {m: float("nan") for m in COMPOSITION_MODES}
    valid = composition_mask(cfg)
    samples: dict[str, list[Tensor]] = {m: [] for m in COMPOSITION_MODES}
    with torch.random.fork_rng(devices=[]):
        for i in range(n_samples):
            model = HookedDecisionTransformer(cfg.replace(seed=seed + i, device="cpu"))
            for m, scores in _composition(model, COMPOSITION_MODES, fold=False).items():
                samples[m].append(scores[valid])
    mean = {m: float(torch.cat(v).mean()) for m, v in samples.items()}
    std = {m: float(torch.cat(v).std()) for m, v in samples.items()}
    return mean, std
