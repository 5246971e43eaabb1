"""Activation patching: a batched engine that recomputes only what a patch can change.

Two runs of the model, on *clean* and *corrupted* windows (same shapes: usually one token edited, e.g.
``R*=0``). A patch overwrites one activation of one run (the *base*) with the same activation of the
other (the *source*) and reads a metric (:mod:`dtinterp.interp.metrics`) off the patched logits:

- ``denoise`` (default; TransformerLens' convention): base = corrupted, source = clean. A patch that
  restores the clean metric marks an activation that *suffices* to carry the difference.
- ``noise``: base = clean, source = corrupted. A patch that destroys the clean metric marks an
  activation the clean behaviour *needs*.

Every sweep equals the matching ``transformer_lens.patching`` function (``get_act_patch_resid_pre`` ...,
with base inputs as its ``corrupted_tokens``, the source run's cache as its ``clean_cache`` and
``metric(logits).mean()`` as its metric) to float round-off, in the same layout:

=========================  ============================  ===================================================
sweep                      axes                          TransformerLens
=========================  ============================  ===================================================
``resid_pre|mid``          layer, pos                    ``get_act_patch_resid_pre``, ``..._resid_mid``
``resid_post``             layer, pos                    (generic patch of ``hook_resid_post``)
``attn_out``, ``mlp_out``  layer, pos                    ``get_act_patch_attn_out``, ``..._mlp_out``
``head_out_by_pos``        layer, pos, head              ``get_act_patch_attn_head_out_by_pos`` (``hook_z``)
``head_out_all_pos``       layer, head                   ``get_act_patch_attn_head_out_all_pos``
``head_{q,k,v}_by_pos``    layer, pos, head              ``get_act_patch_attn_head_{q,k,v}_by_pos``
``head_{q,k,v}_all_pos``   layer, head                   ``get_act_patch_attn_head_{q,k,v}_all_pos``
``head_pattern_by_pos``    layer, head, dest_pos         ``get_act_patch_attn_head_pattern_by_pos``
``head_pattern_all_pos``   layer, head                   ``get_act_patch_attn_head_pattern_all_pos``
``neuron_by_pos``          layer, pos, neuron            (generic patch of one ``mlp.hook_post`` entry)
``neuron_all_pos``         layer, neuron                 (generic patch of one neuron at every position)
``block_every``            patch_type, layer, pos        ``get_act_patch_block_every``
``head_all_pos_every``     patch_type, layer, head       ``get_act_patch_attn_head_all_pos_every``
``head_by_pos_every``      patch_type, layer, pos, head  ``get_act_patch_attn_head_by_pos_every``
=========================  ============================  ===================================================

TransformerLens runs one full forward per patch. This engine runs the clean and corrupted windows once
(recording every activation), then evaluates many patches per forward, stacked in front of the window
axis (``[patch, window, ...]``), in chunks that respect ``max_bytes`` / ``max_batch``, and skips what a
patch cannot change:

- *no-op patches*: where the source activation equals the base's (bit for bit, in every window; e.g. an
  input edit at R3 leaves every activation before R3 and the other tokens' embeddings unchanged), the
  patched run is the base run and its metric is taken without a forward;
- *layers before the patch*: a patch in layer l starts from the recorded ``blocks.{l}.hook_resid_pre``
  of the base run; the patches of a chunk are ordered by layer and join the stacked batch at their own
  layer, so a layer-1 patch never runs block 0. In its first layer nothing before the patched site has
  changed, so the queries, keys and values are the recorded base run's (the source's at an overwritten
  ``resid_pre`` row: same row, same ``ln1``, same GEMM) rather than recomputed;
- *positions before the patch*: attention is causal (a padded query attends to itself only), so a patch
  at token p leaves every token before p unchanged in every layer. A chunk recomputes only the rows from
  its earliest patched position on; the keys and values of earlier rows come from the base run, and so
  do the logits of earlier state tokens. Patches are sorted by position and cut into chunks by dynamic
  programming, trading the fixed cost of a forward against the rows it recomputes;
- *the rest of the patched layer*: a patch of a query, pattern, head output (``z``), attention or MLP
  output, neuron or ``resid_mid``/``resid_post`` at one token changes only that token's row in its
  layer. That row alone is computed (its query over the base run's keys and values), for all such
  patches at once; the patch then continues from the next layer with one changed row;
- *the last layer's other rows*: only the state tokens' final residual streams reach the logits, so the
  last block computes keys and values for every row but everything else only at the state tokens (and a
  patch of a last-layer query, pattern, head output or MLP at another token has no effect at all).

The engine computes the blocks from the model's weights (fused Q/K/V GEMM as the model's own fast path,
``scaled_dot_product_attention`` unless a pattern is patched, the model's norm modules); it bypasses the
attention and MLP hook points, so do not run it inside a hook context meant to change the model. Results
carry labels (``L0``; ``R3``/``S3``/``A3`` from :func:`~dtinterp.model.inputs.token_labels`; ``H1``;
``N113``) and both per-window values and their mean.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor

from dtinterp.errors import DtinterpError
from dtinterp.interp.hooknames import HEAD_SITES, NEURON_SITES, Component, parse_components
from dtinterp.interp.metrics import Metric, normalised_score
from dtinterp.model.hooked_dt import HookedDecisionTransformer
from dtinterp.model.inputs import DTInputs, token_labels

DIRECTIONS = ("denoise", "noise")
#: Default memory budget of one patched forward (activations of a chunk of patches).
DEFAULT_MAX_BYTES = 64 * 2**20

#: Where each site's position axis is in a batch-first activation (the query axis for patterns).
_POS_DIM = {
    "embed": 1, "pos_embed": 1, "resid_pre": 1, "q": 1, "k": 1, "v": 1, "pattern": 2, "z": 1,
    "attn_out": 1, "resid_mid": 1, "pre": 1, "post": 1, "mlp_out": 1, "resid_post": 1,
}  # fmt: skip
_MLP_SITES = ("resid_mid", "pre", "post", "mlp_out")
_EMBED_SITES = ("embed", "pos_embed")


class PatchingError(DtinterpError):
    """Patching inputs that do not fit together (shapes, sweep names, indices, metric output)."""


def hook_name(layer: int, site: str) -> str:
    """The TransformerLens hook name of an engine site (``(1, "z")`` -> ``blocks.1.attn.hook_z``)."""
    if site in _EMBED_SITES:
        return f"hook_{site}"
    if site in HEAD_SITES:
        return f"blocks.{layer}.attn.hook_{site}"
    if site in NEURON_SITES:
        return f"blocks.{layer}.mlp.hook_{site}"
    return f"blocks.{layer}.hook_{site}"


# ----------------------------------------------------------------------------- recorded runs


@dataclass
class Activations:
    """Every activation of one forward pass, batch first, keyed by ``(layer, site)``.

    Sites are the hook names without their location (``resid_pre``, ``q``, ``pattern``, ``post``, ...);
    the embeddings ``embed`` and ``pos_embed`` (recorded on request) are filed under layer 0.
    """

    acts: dict[tuple[int, str], Tensor]
    """``(layer, site)`` -> activation ``[B, ...]`` laid out as the model's hook of that name."""
    logits: Float[Tensor, "B K A"]
    allowed: Bool[Tensor, "B 1 P P"]
    """The attention mask of the inputs (from :meth:`HookedDecisionTransformer.embed`)."""

    def __getitem__(self, key: tuple[int, str]) -> Tensor:
        return self.acts[key]

    @property
    def n_tokens(self) -> int:
        return self.allowed.shape[-1]


def record_activations(
    model: HookedDecisionTransformer, inputs: DTInputs, embeddings: bool = False
) -> Activations:
    """One forward pass of ``inputs`` through the engine's own block code, recording every site.

    ``embeddings`` also records ``hook_embed`` and ``hook_pos_embed`` (through the model's hooks, inside
    a ``with`` block).
    """
    acts: dict[tuple[int, str], Tensor] = {}
    with torch.inference_mode():
        if embeddings:
            store: dict[str, Tensor] = {}

            def save(t: Tensor, hook) -> None:
                store[hook.name] = t

            with model.hooks(fwd_hooks=[("hook_embed", save), ("hook_pos_embed", save)]):
                resid, allowed = model.embed(inputs)
            acts[(0, "embed")], acts[(0, "pos_embed")] = store["hook_embed"], store["hook_pos_embed"]
        else:
            resid, allowed = model.embed(inputs)
        x = resid[None]
        fused = _fused_weights(model)
        for l in range(model.cfg.n_layers):

            def record(site: str, t: Tensor, rows: Tensor, l: int = l) -> Tensor:
                acts[(l, site)] = t[0]
                return t

            x = _block(model, l, x, 0, False, allowed, None, record, True, fused[l])
        logits = _unembed(model, x[0][:, 1::3])
    return Activations(acts, logits, allowed)


# ----------------------------------------------------------------------------- the block, functionally

SiteFn = Callable[[str, Tensor, Tensor], Tensor]


def _fused_weights(model: HookedDecisionTransformer) -> list[tuple[Tensor, Tensor, Tensor]]:
    """Per layer ``(W_QKV [d, 3*H*dh], b_QKV [3*H*dh], W_O [H*dh, d])``: one GEMM for Q, K and V."""
    out = []
    for blk in model.blocks:
        a = blk.attn
        H, d, dh = a.W_Q.shape
        W = torch.cat([a.W_Q, a.W_K, a.W_V], 0).permute(1, 0, 2).reshape(d, 3 * H * dh)
        b = torch.cat([a.b_Q, a.b_K, a.b_V], 0).reshape(3 * H * dh)
        out.append((W, b, a.W_O.reshape(H * dh, d)))
    return out


def _block(
    model: HookedDecisionTransformer,
    l: int,
    x: Float[Tensor, "N B R d"],
    s: int,
    last: bool,
    allowed: Bool[Tensor, "B 1 P P"],
    prefix: tuple[Tensor, Tensor] | None,
    site: SiteFn,
    explicit: bool,
    fused: tuple[Tensor, Tensor, Tensor],
    qkv_join: Float[Tensor, "Nj B R 3 H dh"] | None = None,
) -> Float[Tensor, "N B Ro d"]:
    """Block ``l`` on the rows ``s..P-1`` of ``N`` stacked runs.

    ``prefix`` holds the keys and values ``[B, s, H, dh]`` of the rows before ``s`` (unchanged by every
    patch). With ``last``, only the state tokens' rows come out (every row still gives its key and
    value). ``site(name, t, rows)`` sees, and may replace, each activation as the model's hook of that name
    would (``rows``: the absolute positions of ``t``'s position axis). ``explicit`` computes the attention
    pattern (to patch or record it) instead of calling ``scaled_dot_product_attention``. ``qkv_join``:
    the queries, keys and values of the last ``Nj`` runs, known without computing them (see
    :func:`_run_chunk`).
    """
    blk = model.blocks[l]
    W_qkv, b_qkv, W_O = fused
    N, B, R, d = x.shape
    H, dh = blk.attn.W_Q.shape[0], blk.attn.W_Q.shape[2]
    P = s + R
    rows = torch.arange(s, P, device=x.device)
    x = site("resid_pre", x, rows)
    # GEMMs with the bias fused, on 2-D views, as the model's own fast path computes them (same rounding)
    nj = 0 if qkv_join is None else qkv_join.shape[0]
    parts = [] if nj == N else [torch.addmm(b_qkv, blk.ln1(x[: N - nj]).reshape(-1, d), W_qkv)]
    parts = [t.view(N - nj, B, R, 3, H, dh) for t in parts] + ([qkv_join] if nj else [])
    qkv = parts[0] if len(parts) == 1 else torch.cat(parts)
    q = site("q", qkv[..., 0, :, :], rows)  # [N, B, R, H, dh]
    k = site("k", qkv[..., 1, :, :], rows)
    v = site("v", qkv[..., 2, :, :], rows)
    out_rows = rows
    if last:  # only the state tokens' queries reach the logits: rows 3k+1 >= s, a strided view
        first = 3 * ((s + 1) // 3) + 1 - s
        q, x, out_rows = q[:, :, first::3], x[:, :, first::3], rows[first::3]
    if prefix is not None:
        k = torch.cat([prefix[0].expand(N, *prefix[0].shape), k], 2)  # [N, B, P, H, dh]
        v = torch.cat([prefix[1].expand(N, *prefix[1].shape), v], 2)
    mask = allowed[:, :, out_rows]  # [B, 1, Rq, P]
    Rq = mask.shape[-2]
    if explicit:
        scores = torch.einsum("nbqhe,nbkhe->nbhqk", q, k) / math.sqrt(dh)
        pattern = site("pattern", scores.masked_fill(~mask, float("-inf")).softmax(-1), out_rows)
        z = torch.einsum("nbhqk,nbkhe->nbqhe", pattern, v)
    else:
        z = F.scaled_dot_product_attention(
            q.flatten(0, 1).transpose(1, 2),  # [N*B, H, Rq, dh], strided views where possible
            k.flatten(0, 1).transpose(1, 2),
            v.flatten(0, 1).transpose(1, 2),
            attn_mask=mask.expand(N, B, 1, Rq, P).reshape(N * B, 1, Rq, P),
        )
        z = z.view(N, B, H, Rq, dh).transpose(2, 3)
    z = site("z", z, out_rows)  # [N, B, Rq, H, dh]
    attn_out = torch.addmm(blk.attn.b_O, z.reshape(N * B * Rq, H * dh), W_O).view(N, B, Rq, d)
    x = x + site("attn_out", attn_out, out_rows)
    if model.cfg.attn_only:
        return site("resid_post", x, out_rows)
    x = site("resid_mid", x, out_rows)
    mlp = blk.mlp
    pre = site("pre", _mlp_pre(model, l, x), out_rows)
    post = site("post", mlp.act_fn(pre), out_rows)
    return site("resid_post", x + site("mlp_out", _mlp_out(model, l, post), out_rows), out_rows)


def _mlp_pre(
    model: HookedDecisionTransformer, l: int, resid_mid: Float[Tensor, "... d"]
) -> Float[Tensor, "... m"]:
    """``hook_pre`` of block ``l`` from its ``resid_mid``, computed as the model's MLP does."""
    blk = model.blocks[l]
    h = blk.ln2(resid_mid)
    return h @ blk.mlp.W_in + blk.mlp.b_in


def _mlp_out(
    model: HookedDecisionTransformer, l: int, post: Float[Tensor, "... m"]
) -> Float[Tensor, "... d"]:
    """``hook_mlp_out`` of block ``l`` from its neurons, computed as the model's MLP does."""
    mlp = model.blocks[l].mlp
    return post @ mlp.W_out + mlp.b_out


def _unembed(model: HookedDecisionTransformer, x: Float[Tensor, "... d"]) -> Float[Tensor, "... A"]:
    return model.ln_final(x) @ model.W_U + model.b_U


def unembed(model: HookedDecisionTransformer, resid: Float[Tensor, "... d"]) -> Float[Tensor, "... A"]:
    """Action logits from final residual streams (at state tokens): ``ln_final(resid) @ W_U + b_U``."""
    return _unembed(model, resid)


def head_inputs(
    model: HookedDecisionTransformer, layer: int, resid_pre: Float[Tensor, "B P d"]
) -> tuple[Float[Tensor, "B P H dh"], Float[Tensor, "B P H dh"], Float[Tensor, "B P H dh"]]:
    """``hook_q``, ``hook_k``, ``hook_v`` of block ``layer`` given its residual stream, as the engine
    computes them (same operations, same rounding)."""
    B, P, d = resid_pre.shape
    blk = model.blocks[layer]
    H, dh = blk.attn.W_Q.shape[0], blk.attn.W_Q.shape[2]
    W_qkv, b_qkv, _ = _fused_weights(model)[layer]
    qkv = torch.addmm(b_qkv, blk.ln1(resid_pre[None]).reshape(B * P, d), W_qkv).view(B, P, 3, H, dh)
    return qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]


def mlp_input(
    model: HookedDecisionTransformer, layer: int, resid_mid: Float[Tensor, "B P d"]
) -> Float[Tensor, "B P m"]:
    """``hook_pre`` of block ``layer``'s MLP given its ``resid_mid``, as the engine computes it."""
    return _mlp_pre(model, layer, resid_mid[None])[0]


# ----------------------------------------------------------------------------- patches and the engine


@dataclass(frozen=True)
class PatchSite:
    """One activation a patch overwrites with the source's: ``site`` of ``layer`` at token ``pos``
    (None: every token; the query token for ``pattern``) and head / neuron ``unit`` (None: all)."""

    layer: int
    site: str
    pos: int | None = None
    unit: int | None = None


#: Order of the sites within the model: a site can only affect sites that come later.
_SITE_ORDER = {
    "embed": 0, "pos_embed": 0, "resid_pre": 1, "q": 2, "k": 2, "v": 2, "pattern": 3, "z": 4,
    "attn_out": 5, "resid_mid": 6, "pre": 7, "post": 8, "mlp_out": 9, "resid_post": 10,
}  # fmt: skip
#: A patch: the sites it overwrites together (usually one).
Patch = Sequence[PatchSite]

#: Sites of the last block that only act on their own query row: at a non-state token they cannot
#: reach the logits (``k``/``v`` and ``resid_pre`` can, through later queries).
_ROW_LOCAL = ("q", "pattern", "z", "attn_out", "resid_mid", "pre", "post", "mlp_out", "resid_post")
#: The fixed cost of one patched forward, in units of one window's row through one block (measured on
#: CPU); chunk planning trades it against the rows a chunk recomputes.
_FORWARD_OVERHEAD_ROWS = 200


def _mask_shape(model: HookedDecisionTransformer, site: str, P: int) -> tuple[int, ...]:
    """Per-patch mask layout: the activation's layout without batch, with singleton feature axes."""
    cfg = model.cfg
    if site == "pattern":
        return (cfg.n_heads, P, 1)
    if site in HEAD_SITES:
        return (P, cfg.n_heads, 1)
    if site in NEURON_SITES:
        return (P, cfg.d_mlp)
    return (P, 1)


def _check_site(model: HookedDecisionTransformer, ps: PatchSite, P: int) -> None:
    cfg = model.cfg
    if ps.site not in _POS_DIM:
        raise PatchingError(f"unknown patch site {ps.site!r}; expected one of {sorted(_POS_DIM)}")
    layers = 1 if ps.site in _EMBED_SITES else cfg.n_layers
    if not 0 <= ps.layer < layers:
        raise PatchingError(f"patch site {ps}: layer out of range 0..{layers - 1}")
    if cfg.attn_only and ps.site in _MLP_SITES:
        raise PatchingError(f"patch site {ps}: the model is attention-only")
    if ps.pos is not None and not 0 <= ps.pos < P:
        raise PatchingError(f"patch site {ps}: position out of range 0..{P - 1}")
    size = cfg.n_heads if ps.site in HEAD_SITES else cfg.d_mlp if ps.site in NEURON_SITES else 0
    if ps.unit is not None and not 0 <= ps.unit < size:
        raise PatchingError(f"patch site {ps}: head / neuron index out of range 0..{size - 1}")


def _bytes_per_patch(model: HookedDecisionTransformer, B: int, P: int, elt: int) -> int:
    """A generous estimate of the activations one patch of ``B`` windows holds during a forward."""
    c = model.cfg
    H, dh, d, m = c.n_heads, c.d_head, c.d_model, c.d_mlp
    per_window = P * (8 * d + 8 * H * dh + 3 * m) + 3 * H * P * P
    return max(1, elt * B * per_window)


def _differs(base: Activations, source: Mapping[tuple[int, str], Tensor], key: tuple[int, str]) -> Tensor:
    """Bool ``[P, U]``: where the source's activation differs from the base's in any window
    (``U`` heads, neurons, or 1)."""
    t = source[key] != base[key]
    site = key[1]
    if site == "pattern":
        return t.any(-1).any(0).transpose(0, 1)  # [B, H, Pq, Pk] -> [Pq, H]
    if site in HEAD_SITES:
        return t.any(-1).any(0)
    if site in NEURON_SITES:
        return t.any(0)
    return t.any(-1).any(0)[:, None]


def _effective(
    model: HookedDecisionTransformer,
    base: Activations,
    source: Mapping[tuple[int, str], Tensor],
    patches: Sequence[Patch],
) -> list[list[PatchSite]]:
    """Each patch without the sites that cannot change the logits.

    Dropped: the row-local sites of the last block at non-state tokens, and no-ops: sites whose source
    activation equals the base's while every site of the patch upstream of them is a no-op too (until
    then the patched run is the base run). Downstream of a site that changes the run, writing the base's
    value pins the activation against that change, which is not a no-op, so such sites are kept.
    """
    L = model.cfg.n_layers
    live = [
        [
            ps
            for ps in patch
            if not (ps.layer == L - 1 and ps.site in _ROW_LOCAL and ps.pos is not None and ps.pos % 3 != 1)
        ]
        for patch in patches
    ]
    groups: dict[tuple[int, str], list[tuple[int, int]]] = {}  # (layer, site) -> [(patch, entry)]
    for i, patch in enumerate(live):
        for e, ps in enumerate(patch):
            groups.setdefault((ps.layer, ps.site), []).append((i, e))
    changed = [[False] * len(patch) for patch in live]
    for key, entries in groups.items():
        d = _differs(base, source, key)  # [P, U]
        sites = [live[i][e] for i, e in entries]
        pos = torch.as_tensor([-1 if ps.pos is None else ps.pos for ps in sites], device=d.device)
        unit = torch.as_tensor([-1 if ps.unit is None else ps.unit for ps in sites], device=d.device)
        pc, uc = pos.clamp(min=0), unit.clamp(min=0)
        by_pos = torch.where(unit >= 0, d[pc, uc], d.any(1)[pc])
        whole = torch.where(unit >= 0, d.any(0)[uc], d.any())
        for (i, e), c in zip(entries, torch.where(pos >= 0, by_pos, whole).tolist()):
            changed[i][e] = c
    out = []
    for patch, flags in zip(live, changed):
        order = sorted(range(len(patch)), key=lambda e: (patch[e].layer, _SITE_ORDER[patch[e].site]))
        # the first site that changes anything, then every site downstream of it
        first = next(((patch[e].layer, _SITE_ORDER[patch[e].site]) for e in order if flags[e]), None)
        out.append(
            []
            if first is None
            else [ps for ps, c in zip(patch, flags) if c or (ps.layer, _SITE_ORDER[ps.site]) > first]
        )
    return out


def _plan_chunks(starts: Sequence[int], cap: int, B: int, P: int) -> list[tuple[int, int]]:
    """Split patches sorted by start position into ``[begin, end)`` chunks of at most ``cap`` patches
    that minimise (forwards x overhead + patched rows), by dynamic programming over start positions."""
    bounds = [i for i in range(len(starts)) if i == 0 or starts[i] != starts[i - 1]] + [len(starts)]
    G = len(bounds) - 1
    best = [0.0] + [math.inf] * G
    cut = [0] * (G + 1)
    for j in range(1, G + 1):
        for i in range(j):
            n = bounds[j] - bounds[i]
            cost = best[i] + math.ceil(n / cap) * _FORWARD_OVERHEAD_ROWS + n * B * (P - starts[bounds[i]])
            if cost < best[j]:
                best[j], cut[j] = cost, i
    segments, j = [], G
    while j > 0:
        segments.append((bounds[cut[j]], bounds[j]))
        j = cut[j]
    chunks = []
    for begin, end in reversed(segments):
        k = math.ceil((end - begin) / cap)
        edges = [begin + round(i * (end - begin) / k) for i in range(k + 1)]
        chunks.extend(zip(edges[:-1], edges[1:]))
    return chunks


def run_patches(
    model: HookedDecisionTransformer,
    base: Activations,
    source: Mapping[tuple[int, str], Tensor],
    patches: Sequence[Patch],
    metric: Metric,
    *,
    max_batch: int | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Float[Tensor, "n B"]:
    """The metric of the ``base`` run with each patch applied (one row per patch, one column per window).

    ``source`` maps ``(layer, site)`` to the activations ``[B, ...]`` patched in (an
    :class:`Activations`' ``acts``, or computed values as in path patching). Patches run in chunks of at
    most ``max_batch`` patched windows and about ``max_bytes`` of activations (at least one patch per
    chunk); patches that cannot change the logits take the base run's value without a forward. See the
    module docstring for what each chunk skips.
    """
    P = base.n_tokens
    B = base.logits.shape[0]
    for i, patch in enumerate(patches):
        if not patch:
            raise PatchingError(f"patch {i} overwrites nothing")
        for ps in patch:
            _check_site(model, ps, P)
            if (ps.layer, ps.site) not in source or (ps.layer, ps.site) not in base.acts:
                raise PatchingError(f"patch site {ps}: no recorded activation {hook_name(ps.layer, ps.site)}")
    with torch.inference_mode():
        base_value = metric(base.logits)
        if not isinstance(base_value, Tensor) or base_value.shape != (B,):
            shape = tuple(base_value.shape) if isinstance(base_value, Tensor) else type(base_value).__name__
            raise PatchingError(
                f"metric must map logits [B, K, A] to one value per window ({B},), got {shape}"
            )
        out = base_value.expand(len(patches), B).clone()

        def store(ids: list[int], logits: Tensor) -> None:
            values = metric(logits)
            if values.shape != (len(ids), B):
                raise PatchingError(
                    f"metric returned shape {tuple(values.shape)} for logits {tuple(logits.shape)}; "
                    "it must map [..., B, K, A] to [..., B]"
                )
            out[torch.as_tensor(ids, device=out.device)] = values.to(out.dtype)

        L = model.cfg.n_layers
        effective = _effective(model, base, source, patches)
        todo = [i for i, patch in enumerate(effective) if patch]
        cap = max(1, max_bytes // _bytes_per_patch(model, B, P, base.logits.element_size()))
        if max_batch is not None:
            cap = max(1, min(cap, max_batch // B))
        fused = _fused_weights(model)
        qkv = [(_stack_qkv(base.acts, l), _stack_qkv(source, l)) for l in range(L)]

        # Row-local patches: in their layer only their own row changes. That row is computed for all of
        # them at once; in the last layer it gives the logits, else the patch continues from the next layer.
        overrides: dict[int, tuple[int, Tensor, Tensor]] = {}
        row_local = {i for i in todo if _is_row_local(effective[i])}
        for l in range(L):
            group = sorted(i for i in row_local if effective[i][0].layer == l)
            for c in range(0, len(group), cap * P):
                ids = group[c : c + cap * P]
                rows = [effective[i][0].pos for i in ids]
                resid = _row_block(model, l, base, source, [effective[i] for i in ids], rows, fused[l])
                if l == L - 1:  # a state token's final residual stream: its logits
                    logits = base.logits.expand(len(ids), -1, -1, -1).clone()
                    k = torch.as_tensor([(p - 1) // 3 for p in rows], device=logits.device)
                    logits[torch.arange(len(ids), device=logits.device), :, k] = _unembed(model, resid)
                    store(ids, logits)
                    continue
                nxt = _head_inputs_rows(model, l + 1, resid, fused[l + 1])  # [m, B, 3, H, dh]
                overrides.update({i: (p, resid[j], nxt[j]) for j, (i, p) in enumerate(zip(ids, rows))})
        todo = [i for i in todo if i not in row_local or i in overrides]
        start_layer = {
            i: effective[i][0].layer + 1 if i in overrides else min(ps.layer for ps in effective[i])
            for i in todo
        }
        start_pos = {i: min(ps.pos or 0 for ps in effective[i]) for i in todo}
        todo.sort(key=lambda i: (start_pos[i], start_layer[i]))

        for begin, end in _plan_chunks([start_pos[i] for i in todo], cap, B, P):
            chunk = sorted(todo[begin:end], key=lambda i: start_layer[i])
            logits = _run_chunk(
                model,
                base,
                source,
                [[] if i in overrides else effective[i] for i in chunk],
                [start_layer[i] for i in chunk],
                min(start_pos[i] for i in chunk),
                [overrides.get(i) for i in chunk],
                fused,
                qkv,
            )
            store(chunk, logits)
    return out


def _is_row_local(patch: Sequence[PatchSite]) -> bool:
    """Whether every site of the patch is at one token of one layer and acts on that token's row only."""
    first = patch[0]
    return first.pos is not None and all(
        ps.site in _ROW_LOCAL and ps.layer == first.layer and ps.pos == first.pos for ps in patch
    )


def _row_block(
    model: HookedDecisionTransformer,
    l: int,
    base: Activations,
    source: Mapping[tuple[int, str], Tensor],
    patches: Sequence[Patch],
    rows: Sequence[int],
    fused: tuple[Tensor, Tensor, Tensor],
) -> Float[Tensor, "m B d"]:
    """``resid_post`` of block ``l`` at row ``rows[i]`` under row-local patch ``i``, for all patches at once.

    Everything before the patched sites is the base run's, and the row's query attends to the base run's
    keys and values (no other row of the block changes).
    """
    device = base.logits.device
    P = base.n_tokens
    m = len(patches)
    p = torch.as_tensor(rows, device=device)
    ar = torch.arange(m, device=device)
    masks = _chunk_masks(model, patches, P, device)

    def site(name: str, t: Tensor) -> Tensor:
        mask = masks.get((l, name))
        if mask is None:
            return t
        src = source[(l, name)]
        if name == "pattern":
            row_mask, row_src = mask[ar, :, p], src[:, :, p].permute(2, 0, 1, 3)  # [m, H, 1], [m, B, H, P]
        else:
            row_mask, row_src = mask[ar, p], src[:, p].movedim(1, 0)  # [m, ...], [m, B, ...]
        return torch.where(row_mask.unsqueeze(1), row_src, t)

    blk = model.blocks[l]
    _, _, W_O = fused
    B, d = base.logits.shape[0], model.cfg.d_model
    H, dh = blk.attn.W_Q.shape[0], blk.attn.W_Q.shape[2]
    x = base[(l, "resid_pre")][:, p].movedim(1, 0)  # [m, B, d]
    if (l, "q") in masks or (l, "pattern") in masks:
        q = site("q", base[(l, "q")][:, p].movedim(1, 0))  # [m, B, H, dh]
        scores = torch.einsum("mbhe,bkhe->mbhk", q, base[(l, "k")]) / math.sqrt(dh)
        allowed = base.allowed[:, 0, p].movedim(1, 0)[:, :, None]  # [m, B, 1, P]
        pattern = site("pattern", scores.masked_fill(~allowed, float("-inf")).softmax(-1))
        z = torch.einsum("mbhk,bkhe->mbhe", pattern, base[(l, "v")])
    else:
        z = base[(l, "z")][:, p].movedim(1, 0)
    z = site("z", z)
    x = x + site("attn_out", torch.addmm(blk.attn.b_O, z.reshape(m * B, H * dh), W_O).view(m, B, d))
    if model.cfg.attn_only:
        return site("resid_post", x)
    x = site("resid_mid", x)
    mlp = blk.mlp
    post = site("post", mlp.act_fn(site("pre", _mlp_pre(model, l, x))))
    return site("resid_post", x + site("mlp_out", _mlp_out(model, l, post)))


def _head_inputs_rows(
    model: HookedDecisionTransformer,
    l: int,
    resid: Float[Tensor, "m B d"],
    fused: tuple[Tensor, Tensor, Tensor],
) -> Float[Tensor, "m B 3 H dh"]:
    """Queries, keys and values of block ``l`` for single residual-stream rows (the engine's GEMM)."""
    m, B, d = resid.shape
    attn = model.blocks[l].attn
    W_qkv, b_qkv, _ = fused
    return torch.addmm(b_qkv, model.blocks[l].ln1(resid).reshape(m * B, d), W_qkv).view(
        m, B, 3, attn.W_Q.shape[0], attn.W_Q.shape[2]
    )


def _stack_qkv(acts: Mapping[tuple[int, str], Tensor], l: int) -> Tensor | None:
    """``hook_q|k|v`` of layer ``l`` stacked ``[B, P, 3, H, dh]``, or None if not all recorded."""
    if not all((l, name) in acts for name in ("q", "k", "v")):
        return None
    return torch.stack([acts[(l, "q")], acts[(l, "k")], acts[(l, "v")]], 2)


def _chunk_masks(
    model: HookedDecisionTransformer, patches: Sequence[Patch], P: int, device: torch.device
) -> dict[tuple[int, str], Tensor]:
    """``(layer, site)`` -> bool ``[n, *mask_shape]``: True where patch i overwrites the activation."""
    groups: dict[tuple[int, str], list[tuple[int, PatchSite]]] = {}
    for i, patch in enumerate(patches):
        for ps in patch:
            groups.setdefault((ps.layer, ps.site), []).append((i, ps))
    masks = {}
    for (l, site), entries in groups.items():
        m = torch.zeros(len(patches), *_mask_shape(model, site, P), dtype=torch.bool, device=device)
        for whole_pos, whole_unit in itertools.product((False, True), repeat=2):
            sel = [
                (i, ps)
                for i, ps in entries
                if (ps.pos is None) == whole_pos and (ps.unit is None) == whole_unit
            ]
            if not sel:
                continue
            i, pos, unit = (
                torch.as_tensor(v, device=device)
                for v in zip(*[(i, ps.pos or 0, ps.unit or 0) for i, ps in sel])
            )
            p_ix = slice(None) if whole_pos else pos
            u_ix = slice(None) if whole_unit else unit
            if site == "pattern":
                m[i, u_ix, p_ix] = True
            elif site in HEAD_SITES or site in NEURON_SITES:
                m[i, p_ix, u_ix] = True
            else:
                m[i, p_ix] = True
        masks[(l, site)] = m
    return masks


def _run_chunk(
    model: HookedDecisionTransformer,
    base: Activations,
    source: Mapping[tuple[int, str], Tensor],
    patches: Sequence[Patch],
    start_layer: Sequence[int],
    s: int,
    overrides: Sequence[tuple[int, Tensor, Tensor] | None],
    fused: list[tuple[Tensor, Tensor, Tensor]],
    qkv: list[tuple[Tensor | None, Tensor | None]],
) -> Float[Tensor, "n B K A"]:
    """Logits of the base run under each of ``patches`` (ordered by start layer), run together.

    ``qkv[l]``: the base's and (if recorded) the source's queries, keys and values of layer l, stacked
    ``[B, P, 3, H, dh]``. In the layer where a patch starts, nothing before its sites has changed, so its
    queries, keys and values are the base's, except at a ``resid_pre`` row it overwrites, which has the
    source's (the same row through the same ``ln1`` and GEMM): the block skips computing them.
    ``overrides[i]``: for a row-local patch, ``(p, resid, qkv)``: the row ``p`` of the residual stream
    entering its start layer and that row's queries, keys and values; every other row is the base's.
    ``s``: the first row any patch changes.
    """
    device = base.logits.device
    P, n, L = base.n_tokens, len(patches), model.cfg.n_layers
    B = base.logits.shape[0]
    masks = _chunk_masks(model, patches, P, device)
    rows = torch.arange(s, P, device=device)
    k0 = (s + 1) // 3  # the first state token at or after position s is S_{k0+1}, at 3*k0 + 1
    joining = torch.bincount(torch.as_tensor(start_layer), minlength=L).tolist()

    def patch_site(l: int, name: str, t: Tensor, at: Tensor) -> Tensor:
        m = masks.get((l, name))
        if m is None:
            return t
        dim = _POS_DIM[name]
        m = m[: t.shape[0]].index_select(dim, at).unsqueeze(1)  # [N, 1, ...]: active patches only
        return torch.where(m, source[(l, name)].index_select(dim, at), t)

    x = None
    for l in range(min(start_layer), L):
        qkv_join = None
        if joining[l]:  # patches starting in this layer join the stack with the base run's resid_pre
            nj, before = joining[l], 0 if x is None else x.shape[0]
            if l == 0 and ((0, "embed") in masks or (0, "pos_embed") in masks):
                emb = base[(0, "embed")][:, s:].expand(nj, -1, -1, -1)
                pos = base[(0, "pos_embed")][:, s:].expand(nj, -1, -1, -1)
                new = patch_site(0, "embed", emb, rows) + patch_site(0, "pos_embed", pos, rows)
            else:
                new = base[(l, "resid_pre")][:, s:].expand(nj, -1, -1, -1)
                qkv_join = _joining_qkv(masks.get((l, "resid_pre")), qkv[l], before, nj, s)
                given = [(k, o) for k, o in enumerate(overrides[before : before + nj]) if o is not None]
                if given:
                    ks = torch.as_tensor([k for k, _ in given], device=device)
                    ps = torch.as_tensor([o[0] - s for _, o in given], device=device)
                    new = new.clone()
                    new[ks, :, ps] = torch.stack([o[1] for _, o in given])
                    if qkv_join is not None:
                        qkv_join = qkv_join.clone()
                        qkv_join[ks, :, ps] = torch.stack([o[2] for _, o in given])
            x = new if x is None else torch.cat([x, new])
        prefix = None if s == 0 else (base[(l, "k")][:, :s], base[(l, "v")][:, :s])
        last, explicit = l == L - 1, (l, "pattern") in masks
        site = partial(patch_site, l)
        x = _block(model, l, x, s, last, base.allowed, prefix, site, explicit, fused[l], qkv_join)
    assert x is not None and x.shape[0] == n
    logits = _unembed(model, x)  # [n, B, K - k0, A]
    if k0:
        logits = torch.cat([base.logits[:, :k0].expand(n, B, -1, -1), logits], 2)
    return logits


def _joining_qkv(
    resid_mask: Tensor | None, qkv: tuple[Tensor | None, Tensor | None], before: int, nj: int, s: int
) -> Tensor | None:
    """Queries, keys and values ``[nj, B, R, 3, H, dh]`` of the patches joining the stack at positions
    ``before..before+nj`` (None when they were not recorded: the block computes them)."""
    base_qkv, source_qkv = qkv
    if base_qkv is None:
        return None
    out = base_qkv[:, s:].expand(nj, *base_qkv[:, s:].shape)
    if resid_mask is None:
        return out
    m = resid_mask[before : before + nj, s:]  # [nj, R, 1]
    if not bool(m.any()):
        return out
    if source_qkv is None:
        return None
    return torch.where(m[:, None, :, :, None, None], source_qkv[:, s:], out)


# ----------------------------------------------------------------------------- sweeps


@dataclass(frozen=True)
class _Sweep:
    site: str
    axes: tuple[str, ...]
    """Result axes, TransformerLens' order; ``pos``/``dest_pos`` index tokens, ``head``/``neuron`` units."""


_SWEEPS: dict[str, _Sweep] = {
    "resid_pre": _Sweep("resid_pre", ("layer", "pos")),
    "resid_mid": _Sweep("resid_mid", ("layer", "pos")),
    "resid_post": _Sweep("resid_post", ("layer", "pos")),
    "attn_out": _Sweep("attn_out", ("layer", "pos")),
    "mlp_out": _Sweep("mlp_out", ("layer", "pos")),
    "head_out_by_pos": _Sweep("z", ("layer", "pos", "head")),
    "head_out_all_pos": _Sweep("z", ("layer", "head")),
    "head_q_by_pos": _Sweep("q", ("layer", "pos", "head")),
    "head_k_by_pos": _Sweep("k", ("layer", "pos", "head")),
    "head_v_by_pos": _Sweep("v", ("layer", "pos", "head")),
    "head_q_all_pos": _Sweep("q", ("layer", "head")),
    "head_k_all_pos": _Sweep("k", ("layer", "head")),
    "head_v_all_pos": _Sweep("v", ("layer", "head")),
    "head_pattern_by_pos": _Sweep("pattern", ("layer", "head", "dest_pos")),
    "head_pattern_all_pos": _Sweep("pattern", ("layer", "head")),
    "neuron_by_pos": _Sweep("post", ("layer", "pos", "neuron")),
    "neuron_all_pos": _Sweep("post", ("layer", "neuron")),
}
#: Stacked sweeps (a leading ``patch_type`` axis), as TransformerLens' ``*_every`` helpers.
_EVERY: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "block_every": (("resid_pre", "attn_out", "mlp_out"), ("layer", "pos")),
    "head_all_pos_every": (
        ("head_out_all_pos", "head_q_all_pos", "head_k_all_pos", "head_v_all_pos", "head_pattern_all_pos"),
        ("layer", "head"),
    ),
    "head_by_pos_every": (
        ("head_out_by_pos", "head_q_by_pos", "head_k_by_pos", "head_v_by_pos", "head_pattern_by_pos"),
        ("layer", "pos", "head"),
    ),
}
SWEEPS = (*_SWEEPS, *_EVERY)


@dataclass
class PatchResult:
    """Metric of the base run under each patch of a sweep (or of a list of patches)."""

    name: str
    """The sweep (``resid_pre``, ``head_by_pos_every``, ...) or experiment that produced the values."""
    direction: str
    """``denoise`` (base = corrupted run, source = clean) or ``noise`` (the reverse)."""
    values: Float[Tensor, "..."]
    """Metric averaged over the windows, one entry per patch, laid out along ``axis_names``."""
    per_window: Float[Tensor, "... B"]
    """The metric of each window (last axis); ``values == per_window.mean(-1)``."""
    axis_names: tuple[str, ...]
    """Names of the axes of ``values`` (``layer``, ``pos``, ``dest_pos``, ``head``, ``neuron``,
    ``patch_type``, ``patch``, ``sender``)."""
    axis_labels: dict[str, list[str]] = field(default_factory=dict)
    """Labels along each axis: ``L0``; ``R1, S1, A1, ...``; ``H0``; ``N0``; patch types or component names."""
    clean: Float[Tensor, "B"] | None = None
    """Metric of the unpatched clean run per window."""
    corrupted: Float[Tensor, "B"] | None = None
    """Metric of the unpatched corrupted run per window."""

    def normalised(self, per_window: bool = False) -> Float[Tensor, "..."]:
        """``(values - corrupted) / (clean - corrupted)``: 0 = corrupted run, 1 = clean run.

        On the window means (as one would with TransformerLens' scalar outputs), or per window.
        """
        if self.clean is None or self.corrupted is None:
            raise PatchingError(f"{self.name}: no clean/corrupted baseline recorded")
        if per_window:
            return normalised_score(self.per_window, self.clean, self.corrupted)
        return normalised_score(self.values, self.clean.mean(), self.corrupted.mean())


def _axis_size(model: HookedDecisionTransformer, axis: str, P: int) -> int:
    c = model.cfg
    return {"layer": c.n_layers, "pos": P, "dest_pos": P, "head": c.n_heads, "neuron": c.d_mlp}[axis]


def _axis_labels(model: HookedDecisionTransformer, axis: str, P: int) -> list[str]:
    c = model.cfg
    if axis in ("pos", "dest_pos"):
        return token_labels((P + 1) // 3)
    prefix = {"layer": "L", "head": "H", "neuron": "N"}[axis]
    return [f"{prefix}{i}" for i in range({"layer": c.n_layers, "head": c.n_heads, "neuron": c.d_mlp}[axis])]


def sweep_patches(
    model: HookedDecisionTransformer, sweep: str, n_tokens: int
) -> tuple[list[Patch], tuple[int, ...]]:
    """The patches of a single (not ``*_every``) sweep in TransformerLens' order, and the result shape."""
    if sweep not in _SWEEPS:
        raise PatchingError(f"unknown sweep {sweep!r}; expected one of {', '.join(SWEEPS)}")
    spec = _SWEEPS[sweep]
    if model.cfg.attn_only and spec.site in _MLP_SITES:
        raise PatchingError(f"sweep {sweep!r} patches MLPs, but the model is attention-only")
    shape = tuple(_axis_size(model, a, n_tokens) for a in spec.axes)
    patches: list[Patch] = []
    for cell in itertools.product(*(range(n) for n in shape)):
        ix = dict(zip(spec.axes, cell))
        pos = ix.get("pos", ix.get("dest_pos"))
        unit = ix.get("head", ix.get("neuron"))
        patches.append((PatchSite(ix["layer"], spec.site, pos, unit),))
    return patches, shape


class PatchingEngine:
    """A clean and a corrupted run, recorded once, and every sweep over them.

    Build one per pair of inputs and run several sweeps on it: the two recorded runs are shared.
    """

    def __init__(
        self,
        model: HookedDecisionTransformer,
        clean: DTInputs,
        corrupted: DTInputs,
        direction: str = "denoise",
        *,
        max_batch: int | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
        embeddings: bool = False,
    ):
        if direction not in DIRECTIONS:
            raise PatchingError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        if clean.shape != corrupted.shape:
            raise PatchingError(
                f"clean inputs {clean.shape} and corrupted inputs {corrupted.shape} differ in shape"
            )
        self.model = model
        self.direction = direction
        self.max_batch = max_batch
        self.max_bytes = max_bytes
        self.clean_run = record_activations(model, clean, embeddings)
        self.corrupted_run = record_activations(model, corrupted, embeddings)
        noise = direction == "noise"
        self.base = self.clean_run if noise else self.corrupted_run
        self.source = self.corrupted_run if noise else self.clean_run
        self.n_tokens = clean.shape[1]

    def run(self, patches: Sequence[Patch], metric: Metric) -> Float[Tensor, "n B"]:
        """Metric of the base run under each patch, per window."""
        return run_patches(
            self.model, self.base, self.source.acts, patches, metric,
            max_batch=self.max_batch, max_bytes=self.max_bytes,
        )  # fmt: skip

    def run_with_source(
        self, source: Mapping[tuple[int, str], Tensor], patches: Sequence[Patch], metric: Metric
    ) -> Float[Tensor, "n B"]:
        """Like :meth:`run`, patching in ``source`` (computed activations, as in path patching)."""
        return run_patches(
            self.model, self.base, source, patches, metric, max_batch=self.max_batch, max_bytes=self.max_bytes
        )

    def baselines(self, metric: Metric) -> tuple[Float[Tensor, "B"], Float[Tensor, "B"]]:
        """The metric of the unpatched clean and corrupted runs."""
        return metric(self.clean_run.logits), metric(self.corrupted_run.logits)

    def sweep(self, sweep: str, metric: Metric) -> PatchResult:
        """One of :data:`SWEEPS` (see the module docstring), every patch of it in a few forwards."""
        P = self.n_tokens
        if sweep in _EVERY:
            parts, axes = _EVERY[sweep]
            built = [sweep_patches(self.model, part, P) for part in parts]
            values = self.run([p for patches, _ in built for p in patches], metric)
            out, i = [], 0
            for part, (patches, shape) in zip(parts, built):
                block = values[i : i + len(patches)].reshape(*shape, -1)
                i += len(patches)
                if _SWEEPS[part].axes == ("layer", "head", "dest_pos") and "pos" in axes:
                    block = block.transpose(1, 2)  # TL rearranges pattern sweeps to (layer, pos, head)
                out.append(block)
            per_window = torch.stack(out)
            axes = ("patch_type", *axes)
            labels = {"patch_type": [_type_name(p) for p in parts]}
        else:
            patches, shape = sweep_patches(self.model, sweep, P)
            per_window = self.run(patches, metric).reshape(*shape, -1)
            axes = _SWEEPS[sweep].axes
            labels = {}
        labels.update({a: _axis_labels(self.model, a, P) for a in axes if a != "patch_type"})
        clean, corrupted = self.baselines(metric)
        return PatchResult(
            sweep, self.direction, per_window.mean(-1), per_window, axes, labels, clean, corrupted
        )


def _type_name(sweep: str) -> str:
    if sweep.startswith("head_"):
        return sweep.split("_")[1]  # out, q, k, v, pattern
    return sweep


def activation_patching(
    model: HookedDecisionTransformer,
    clean: DTInputs,
    corrupted: DTInputs,
    metric: Metric,
    sweep: str = "resid_pre",
    *,
    direction: str = "denoise",
    max_batch: int | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> PatchResult:
    """Patch every activation of a ``sweep`` (see the module docstring) and read ``metric``."""
    engine = PatchingEngine(model, clean, corrupted, direction, max_batch=max_batch, max_bytes=max_bytes)
    return engine.sweep(sweep, metric)


patch_resid_pre = partial(activation_patching, sweep="resid_pre")
patch_resid_mid = partial(activation_patching, sweep="resid_mid")
patch_resid_post = partial(activation_patching, sweep="resid_post")
patch_attn_out = partial(activation_patching, sweep="attn_out")
patch_mlp_out = partial(activation_patching, sweep="mlp_out")
patch_head_out_by_pos = partial(activation_patching, sweep="head_out_by_pos")
patch_head_out_all_pos = partial(activation_patching, sweep="head_out_all_pos")
patch_head_q_all_pos = partial(activation_patching, sweep="head_q_all_pos")
patch_head_k_all_pos = partial(activation_patching, sweep="head_k_all_pos")
patch_head_v_all_pos = partial(activation_patching, sweep="head_v_all_pos")
patch_head_pattern_all_pos = partial(activation_patching, sweep="head_pattern_all_pos")
patch_neuron_by_pos = partial(activation_patching, sweep="neuron_by_pos")
patch_neuron_all_pos = partial(activation_patching, sweep="neuron_all_pos")
patch_block_every = partial(activation_patching, sweep="block_every")
patch_head_all_pos_every = partial(activation_patching, sweep="head_all_pos_every")
patch_head_by_pos_every = partial(activation_patching, sweep="head_by_pos_every")


# ----------------------------------------------------------------------------- named components

_EMBED_KIND = {"rtg_embed": 0, "state_embed": 1, "action_embed": 2}


def component_patch(
    component: Component, n_tokens: int, positions: Sequence[int] | None = None
) -> list[PatchSite]:
    """The sites that patch a named component, optionally only at token ``positions``.

    The embedding kinds are the token embedding at their tokens (``hook_rtg_embed`` is ``hook_embed``
    at R1, R2, ...); ``hook_time_embed`` is ``hook_pos_embed`` (each token's timestep embedding).
    """
    P = n_tokens
    if positions is not None:
        bad = [p for p in positions if not 0 <= p < P]
        if bad:
            raise PatchingError(f"positions {bad} out of range 0..{P - 1}")
    site, layer, unit = component.site, component.layer or 0, component.index
    if site in _EMBED_KIND:
        kind_pos = range(_EMBED_KIND[site], P, 3)
        pos = [p for p in kind_pos if positions is None or p in positions]
        if not pos:
            raise PatchingError(f"{component}: none of the positions {list(positions or [])} is such a token")
        return [PatchSite(0, "embed", p) for p in pos]
    if site == "time_embed":
        site = "pos_embed"
    if positions is None:
        return [PatchSite(layer, site, None, unit)]
    return [PatchSite(layer, site, p, unit) for p in positions]


def patch_components(
    model: HookedDecisionTransformer,
    clean: DTInputs,
    corrupted: DTInputs,
    components: Sequence[str | Sequence[str]],
    metric: Metric,
    *,
    positions: Sequence[int] | None = None,
    direction: str = "denoise",
    max_batch: int | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> PatchResult:
    """Patch each entry of ``components`` (a component name, or a list of names patched together).

    Names as in :mod:`dtinterp.interp.hooknames`; ``positions`` (token positions) restricts every patch
    to those tokens. Returns one value per entry along the axis ``patch``.
    """
    groups = [[c] if isinstance(c, str) else list(c) for c in components]
    if not groups:
        raise PatchingError("no components to patch")
    parsed = [parse_components(group, model.cfg) for group in groups]
    P = clean.shape[1]
    patches = [[ps for comp in group for ps in component_patch(comp, P, positions)] for group in parsed]
    embeddings = any(ps.site in _EMBED_SITES for patch in patches for ps in patch)
    engine = PatchingEngine(
        model, clean, corrupted, direction, max_batch=max_batch, max_bytes=max_bytes, embeddings=embeddings
    )
    per_window = engine.run(patches, metric)
    clean_m, corrupted_m = engine.baselines(metric)
    labels = {"patch": ["+".join(str(c) for c in group) for group in parsed]}
    return PatchResult(
        "components", direction, per_window.mean(-1), per_window, ("patch",), labels, clean_m, corrupted_m
    )
