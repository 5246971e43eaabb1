"""Direct logit attribution of one *direction* at one state token: by component, layer, head, neuron and
source token; the observation's cells; a neuron's pre-activation; a neuron's top-activating windows.

**Directions.** What is explained is a readout of the final residual stream at a state token ``S_k``
(:func:`resolve_direction`): one action's logit (``"forward"`` or an id), a logit difference
(``("forward", "left")``), by default the top action minus the runner-up of each window (``None``), or a
``[d_model]`` vector (a tensor or a :class:`~dtinterp.interp.directions.SavedDirection`). Its *value* is
``ln_final(resid) . v + bias`` (``v = W_U[:, a] - W_U[:, b]``, ``bias = b_U[a] - b_U[b]``); for a vector
``bias = 0`` and ``apply_ln=False`` reads the raw residual ``resid . v`` instead.

**Exact linear decomposition.** As in :mod:`dtinterp.interp.attribution`, the final norm has no affine
parameters, so with its cached scale ``s`` every residual component ``c`` contributes exactly
``c . centre(v) / s`` and a complete decomposition sums to the value:

``components``: ``state_embed`` + ``time_embed`` + every head ``L{l}H{h}`` (``z @ W_O``, no bias) +
every MLP ``L{l}_mlp`` (no ``b_out``) + ``bias`` (all ``b_O``, ``b_out``) + ``b_U`` (the direction's bias).
``by_neuron`` splits each MLP row over its neurons (``post[n] * W_out[n]``); ``by_source`` splits each
head over the source tokens it attends to: ``pattern[q, j] * (v[j] @ W_O) . centre(v) / s`` sums over ``j``
to the head's row (``v[j]`` includes ``b_V``; the pattern sums to 1). ``by_layer`` groups the stream into
``embed`` (token + time) and each layer's attention and MLP outputs *with* their biases, so
``accumulated = b_U + cumsum(by_layer)`` ends at the value; ``logit_lens`` instead re-normalises each
partial residual stream with the final LN (the value if the model stopped there: nostalgebraist's logit
lens), which is not additive but also ends at the value.

**Observation attribution** (:func:`observation_attribution`) splits the state embedding, the sum of the
observation's on features' rows + ``W_dir[direction]`` + ``b_state``, into its cells and channels: the
*direct* path (the query's own observation into the readout) and the path *through each head's OV* from
every state token it attends to, linearised with the cached ``ln1`` scale at the source (exact given that
scale: ``ln1(x) = centre(x) / s1 * w + b``). Cells + direction + bias add up exactly to the state
embedding's share.

**Neuron decomposition** (:func:`neuron_decomposition`) does the same for a neuron's pre-activation
through ``ln2`` with its cached scale: embeddings, every head of layers up to the neuron's, earlier MLPs,
the residual biases, ``ln2.b . W_in[:, n]`` and ``b_in[n]`` sum to ``hook_pre``.

Every result is batch-first (``[B, ...]``) and carries ``valid`` (the read timestep is real in that
window); :meth:`stats` gives the mean and spread over the valid windows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from transformer_lens import ActivationCache

from dtinterp.interp.circuits import head_labels, ln_weight
from dtinterp.interp.directions import SavedDirection
from dtinterp.interp.embedding_geometry import grid_state_embedding
from dtinterp.model.embeddings import one_hot_torch
from dtinterp.model.hooked_dt import HookedDecisionTransformer
from dtinterp.model.inputs import TOKEN_KINDS, DTInputs, token_labels
from envs.encoding import ACTION_NAMES, CHANNEL_NAMES, DIRECTION_NAMES, N_CHANNELS

DirectionSpec = int | str | tuple | Tensor | SavedDirection | None
_EMBED_LABELS = {"R": "rtg_embed", "S": "state_embed", "A": "action_embed"}
Cache = ActivationCache | dict[str, Tensor]


# ------------------------------------------------------------------ spread


@dataclass
class Spread:
    """Mean and spread of a per-window quantity over the valid windows."""

    mean: Tensor
    std: Tensor
    """Sample standard deviation (0 for a single window)."""
    sem: Tensor
    """Standard error of the mean, ``std / sqrt(n)``."""
    n: int


def spread(x: Float[Tensor, "B ..."], valid: Bool[Tensor, "B"] | None = None) -> Spread:
    """:class:`Spread` of ``x`` over its first dimension (only the ``valid`` rows)."""
    if valid is not None:
        x = x[valid.to(x.device)]
    n = x.shape[0]
    if n == 0:
        raise ValueError("no valid windows to summarise")
    mean = x.mean(0)
    std = x.std(0) if n > 1 else torch.zeros_like(mean)
    return Spread(mean, std, std / n**0.5, n)


class BatchedResult:
    valid: Bool[Tensor, "B"]

    def stats(self, name: str) -> Spread:
        """Mean and spread over the valid windows of the batch-first field ``name``."""
        return spread(getattr(self, name), self.valid)


# -------------------------------------------------------------- directions


@dataclass
class Direction:
    """A readout of the final residual stream, resolved for each window."""

    vectors: Float[Tensor, "B d"]
    """``v``: the value is ``ln_final(resid) . v + bias`` (``resid . v + bias`` when not ``apply_ln``)."""
    bias: Float[Tensor, "B"]
    """``b_U[a] - b_U[b]`` for actions, 0 for vectors."""
    labels: list[str]
    """What is read in each window, e.g. ``forward - left``."""
    actions: Int[Tensor, "B 2"]
    """``(a, b)`` action ids (``-1``: none) of each window's readout."""
    apply_ln: bool
    """Whether the final LayerNorm is applied (always for action logits)."""


@torch.no_grad()
def resolve_direction(
    model: HookedDecisionTransformer,
    direction: DirectionSpec,
    final_resid: Float[Tensor, "B d"],
    *,
    apply_ln: bool = True,
) -> Direction:
    """Turn a direction spec (see the module docstring) into per-window readout vectors.

    ``final_resid`` is the final residual stream at the read token (its logits pick the top action and
    the runner-up when ``direction is None``).
    """
    B = final_resid.shape[0]
    names = ACTION_NAMES[: model.cfg.n_actions]
    W_U, b_U = model.W_U.detach(), model.b_U.detach()
    if isinstance(direction, SavedDirection):
        vec = direction.to(model)
        return Direction(
            vec.expand(B, -1).clone(),
            vec.new_zeros(B),
            [direction.name] * B,
            _no_actions(B, W_U.device),
            apply_ln,
        )
    if isinstance(direction, Tensor) and direction.dim() == 1 and direction.is_floating_point():
        if direction.shape[0] != model.cfg.d_model:
            raise ValueError(
                f"direction vector has {direction.shape[0]} entries, the model's d_model is "
                f"{model.cfg.d_model}"
            )
        vec = direction.detach().to(W_U)
        return Direction(
            vec.expand(B, -1).clone(), vec.new_zeros(B), ["vector"] * B, _no_actions(B, W_U.device), apply_ln
        )
    if direction is None:
        logits = model.ln_final(final_resid) @ W_U + b_U
        top2 = logits.topk(2, dim=-1).indices  # [B, 2]
        a, b = top2[:, 0], top2[:, 1]
    elif isinstance(direction, tuple) and len(direction) == 2:
        a = torch.full((B,), _action(model, direction[0]), device=W_U.device)
        b = torch.full((B,), _action(model, direction[1]), device=W_U.device)
    elif isinstance(direction, (int, str)):
        a = torch.full((B,), _action(model, direction), device=W_U.device)
        b = torch.full((B,), -1, device=W_U.device)
    else:
        raise ValueError(
            "direction must be None (top minus runner-up), an action, a pair of actions, a [d_model] vector "
            f"or a SavedDirection, got {direction!r}"
        )
    has_b = b >= 0
    vec = W_U[:, a].T - torch.where(has_b[:, None], W_U[:, b.clamp_min(0)].T, torch.zeros_like(W_U[:, a].T))
    bias = b_U[a] - torch.where(has_b, b_U[b.clamp_min(0)], torch.zeros_like(b_U[a]))
    labels = [names[int(i)] + (f" - {names[int(j)]}" if j >= 0 else "") for i, j in zip(a, b)]
    return Direction(vec, bias, labels, torch.stack([a, b], -1), True)


def _no_actions(B: int, device: torch.device) -> Tensor:
    return torch.full((B, 2), -1, dtype=torch.long, device=device)


def _action(model: HookedDecisionTransformer, action: int | str) -> int:
    names = ACTION_NAMES[: model.cfg.n_actions]
    if isinstance(action, str):
        if action not in names:
            raise ValueError(f"unknown action {action!r}; expected one of {names}")
        return names.index(action)
    if not 0 <= int(action) < len(names):
        raise ValueError(f"action id {action} is out of range 0..{len(names) - 1}")
    return int(action)


# ------------------------------------------------------------------- cache


def dla_cache_names(model: HookedDecisionTransformer) -> list[str]:
    """Every activation the functions of this module read (a ``names_filter`` for one shared run)."""
    names = ["hook_embed", "hook_pos_embed"]
    if model.cfg.normalization_type is not None:
        names.append("ln_final.hook_scale")
    for l in range(model.cfg.n_layers):
        names += [f"blocks.{l}.hook_attn_out"] + [f"blocks.{l}.attn.hook_{n}" for n in ("z", "v", "pattern")]
        if model.cfg.normalization_type is not None:
            names.append(f"blocks.{l}.ln1.hook_scale")
        if not model.cfg.attn_only:
            names += [f"blocks.{l}.hook_mlp_out", f"blocks.{l}.mlp.hook_pre", f"blocks.{l}.mlp.hook_post"]
            if model.cfg.normalization_type is not None:
                names.append(f"blocks.{l}.ln2.hook_scale")
    return names


def run_for_dla(model: HookedDecisionTransformer, inputs: DTInputs) -> ActivationCache:
    """One forward pass caching :func:`dla_cache_names` (share it between the functions of this module)."""
    with torch.inference_mode():
        _, raw = model.run_with_cache(inputs, names_filter=dla_cache_names(model))
    return ActivationCache(raw, model)


def cache_get(cache: Cache, name: str) -> Tensor:
    try:
        return cache[name]
    except KeyError:
        raise KeyError(f"the cache lacks {name!r}: build it with run_for_dla(model, inputs)") from None


def _timestep(inputs: DTInputs, position: int) -> int:
    K = inputs.context_len
    if not -K <= position < K:
        raise ValueError(f"position {position} is outside the window of {K} timesteps")
    return position % K


def _inv_scale(model: HookedDecisionTransformer, cache: Cache, norm: str, tok: Tensor | int) -> Tensor:
    """``1 / s`` of a norm's cached scale at token(s) ``tok`` ([B] or [B, n]); ones without a norm."""
    if model.cfg.normalization_type is None:
        embed = cache_get(cache, "hook_embed")
        shape = (embed.shape[0],) if isinstance(tok, int) else (embed.shape[0], len(tok))
        return torch.ones(shape, dtype=embed.dtype, device=embed.device)
    return 1.0 / cache_get(cache, f"{norm}.hook_scale")[:, tok, 0]


def _readout(model: HookedDecisionTransformer, d: Direction) -> Tensor:
    """``centre(v)`` when the final norm centres and is applied, else ``v`` ([B, d])."""
    if d.apply_ln and model.cfg.normalization_type in ("LN", "LNPre"):
        return d.vectors - d.vectors.mean(-1, keepdim=True)
    return d.vectors


# --------------------------------------------------------------------- DLA


@dataclass
class DirectionAttribution(BatchedResult):
    """Direct attribution of a direction's value at one state token, in every grouping."""

    value: Float[Tensor, "B"]
    """The direction's value (e.g. the logit difference) at ``S_k``."""
    direction: Direction
    components: Float[Tensor, "B C"]
    """Embeddings, heads, MLP layers, residual biases and ``b_U``: ``components.sum(-1) == value``."""
    component_labels: list[str]
    by_head: Float[Tensor, "B L H"]
    """Each head's row of ``components``."""
    by_neuron: Float[Tensor, "B L m"] | None
    """Each neuron's share of its MLP row (None for attention-only models)."""
    by_source: Float[Tensor, "B L H P"]
    """Each head's row split over source tokens: ``by_source.sum(-1) == by_head``."""
    by_layer: Float[Tensor, "B G"]
    """``embed``, each layer's attention and MLP output (with biases); plus ``direction.bias``: the value."""
    layer_labels: list[str]
    accumulated: Float[Tensor, "B G"]
    """``direction.bias + cumsum(by_layer)`` (cached final scale); the last entry is the value."""
    logit_lens: Float[Tensor, "B G"]
    """The value read from the residual stream after each ``layer_labels`` entry, re-normalised there."""
    source_labels: list[str]
    """Token labels ``R1, S1, A1, ...`` of the source positions."""
    heads: list[str]
    """``L{l}H{h}`` labels of the ``[L, H]`` grid flattened."""
    position: int
    """Timestep index ``k`` in the window (the token read is ``S_{k+1}``, position ``3k + 1``)."""
    valid: Bool[Tensor, "B"]
    """The read timestep is real (not padding)."""


@torch.no_grad()
def direction_attribution(
    model: HookedDecisionTransformer,
    inputs: DTInputs,
    direction: DirectionSpec = None,
    *,
    position: int = -1,
    cache: Cache | None = None,
    apply_ln: bool = True,
) -> DirectionAttribution:
    """Attribute ``direction`` at state token ``position`` (timestep index, ``-1``: last) of every window."""
    cfg = model.cfg
    k = _timestep(inputs, position)
    q = 3 * k + 1
    cache = run_for_dla(model, inputs) if cache is None else cache
    embed, pos_embed = cache_get(cache, "hook_embed")[:, q], cache_get(cache, "hook_pos_embed")[:, q]
    attn_out = [cache_get(cache, f"blocks.{l}.hook_attn_out")[:, q] for l in range(cfg.n_layers)]
    mlp_out = [
        None if cfg.attn_only else cache_get(cache, f"blocks.{l}.hook_mlp_out")[:, q]
        for l in range(cfg.n_layers)
    ]
    stream = [embed + pos_embed]
    for a, m in zip(attn_out, mlp_out):  # the residual stream after each layer_labels entry
        stream.append(stream[-1] + a)
        if m is not None:
            stream.append(stream[-1] + m)
    d = resolve_direction(model, direction, stream[-1], apply_ln=apply_ln)
    r = _readout(model, d)  # [B, d]
    inv_s = _inv_scale(model, cache, "ln_final", q) if d.apply_ln else torch.ones_like(d.bias)  # [B]

    def project(x: Tensor) -> Tensor:  # [B, ..., d] -> [B, ...]
        return torch.einsum("b...d,bd->b...", x, r) * inv_s.view(-1, *[1] * (x.dim() - 2))

    W_Or = torch.einsum("lhed,bd->blhe", model.W_O.detach(), r)  # [B, L, H, dh]
    z = torch.stack([cache_get(cache, f"blocks.{l}.attn.hook_z")[:, q] for l in range(cfg.n_layers)], 1)
    by_head = torch.einsum("blhe,blhe->blh", z, W_Or) * inv_s[:, None, None]
    v = torch.stack(
        [cache_get(cache, f"blocks.{l}.attn.hook_v") for l in range(cfg.n_layers)], 1
    )  # [B, L, P, H, dh]
    pattern = torch.stack(
        [cache_get(cache, f"blocks.{l}.attn.hook_pattern")[:, :, q] for l in range(cfg.n_layers)], 1
    )
    by_source = pattern * torch.einsum("blphe,blhe->blhp", v, W_Or) * inv_s[:, None, None, None]

    comps = [project(embed), project(pos_embed)]
    labels = [_EMBED_LABELS["S"], "time_embed"]
    by_neuron = None
    if not cfg.attn_only:
        post = torch.stack(
            [cache_get(cache, f"blocks.{l}.mlp.hook_post")[:, q] for l in range(cfg.n_layers)], 1
        )
        W_out = torch.stack([b.mlp.W_out.detach() for b in model.blocks])  # [L, m, d]
        by_neuron = post * torch.einsum("lmd,bd->blm", W_out, r) * inv_s[:, None, None]
    for l in range(cfg.n_layers):
        comps += list(by_head[:, l].unbind(-1))
        labels += [f"L{l}H{h}" for h in range(cfg.n_heads)]
        if not cfg.attn_only:
            comps.append(project(mlp_out[l] - model.blocks[l].mlp.b_out))
            labels.append(f"L{l}_mlp")
    comps += [project(model.accumulated_bias(cfg.n_layers).to(embed).expand_as(embed)), d.bias]
    labels += ["bias", "b_U"]

    by_layer = [project(embed + pos_embed)]
    layer_labels = ["embed"]
    for l in range(cfg.n_layers):
        by_layer.append(project(attn_out[l]))
        layer_labels.append(f"L{l}_attn")
        if not cfg.attn_only:
            by_layer.append(project(mlp_out[l]))
            layer_labels.append(f"L{l}_mlp")
    by_layer_t = torch.stack(by_layer, -1)
    resid = torch.stack(stream, 1)  # [B, G, d]
    normed = model.ln_final(resid) if d.apply_ln else resid
    logit_lens = torch.einsum("bgd,bd->bg", normed, d.vectors) + d.bias[:, None]
    return DirectionAttribution(
        value=logit_lens[:, -1],
        direction=d,
        components=torch.stack(comps, -1),
        component_labels=labels,
        by_head=by_head,
        by_neuron=by_neuron,
        by_source=by_source,
        by_layer=by_layer_t,
        layer_labels=layer_labels,
        accumulated=d.bias[:, None] + by_layer_t.cumsum(-1),
        logit_lens=logit_lens,
        source_labels=token_labels(inputs.context_len),
        heads=head_labels(cfg),
        position=k,
        valid=inputs.pad_mask[:, k].clone(),
    )


# ------------------------------------------------------ observation cells


@dataclass
class ObservationAttribution(BatchedResult):
    """A direction's value split over the cells and channels of the observations (state embeddings)."""

    direct: Float[Tensor, "B 20 W H"]
    """Direct path from the read token's observation: ``onehot[x,y,c] * W_state[x,y,c] . centre(v) / s``."""
    direct_direction: Float[Tensor, "B"]
    """Direct path of ``W_dir[agent direction]``."""
    direct_bias: Float[Tensor, "B"]
    """Direct path of ``b_state``: ``direct.sum((1, 2, 3)) + direct_direction + direct_bias`` is the
    ``state_embed`` component of :func:`direction_attribution`."""
    heads: Float[Tensor, "B L H K W H"]
    """Through each head's OV from the state token of each timestep ``j`` of the window: per cell, summed
    over channels (``pattern[q, S_j] * (onehot . fold(W_state)) @ W_V W_O . centre(v) / (s1_j s)``)."""
    heads_channels: Float[Tensor, "B L H K 20 W H"] | None
    """``heads`` per channel (only with ``channels=True``)."""
    heads_direction: Float[Tensor, "B L H K"]
    """The agent-direction row's share through each head from each timestep."""
    heads_bias: Float[Tensor, "B L H K"]
    """``b_state``'s share: ``heads.sum((-2, -1)) + heads_direction + heads_bias`` is the state embedding's
    share of :attr:`DirectionAttribution.by_source` at the state tokens."""
    direction: Direction
    position: int
    """Timestep index ``k`` of the read state token."""
    valid: Bool[Tensor, "B"]
    channel_names: tuple[str, ...] = CHANNEL_NAMES
    direction_names: tuple[str, ...] = DIRECTION_NAMES

    @property
    def direct_cells(self) -> Float[Tensor, "B W H"]:
        """The direct path per cell (channels summed)."""
        return self.direct.sum(1)

    @property
    def direct_total(self) -> Float[Tensor, "B"]:
        return self.direct.sum((1, 2, 3)) + self.direct_direction + self.direct_bias


@torch.no_grad()
def observation_attribution(
    model: HookedDecisionTransformer,
    inputs: DTInputs,
    direction: DirectionSpec = None,
    *,
    position: int = -1,
    cache: Cache | None = None,
    apply_ln: bool = True,
    channels: bool = False,
) -> ObservationAttribution:
    """Split the state embeddings' contribution to ``direction`` at ``S_k`` over cells and channels."""
    emb = grid_state_embedding(model)
    cfg = model.cfg
    k = _timestep(inputs, position)
    q = 3 * k + 1
    cache = run_for_dla(model, inputs) if cache is None else cache
    final = cache_get(cache, "hook_embed")[:, q] + cache_get(cache, "hook_pos_embed")[:, q]
    for l in range(cfg.n_layers):
        final = final + cache_get(cache, f"blocks.{l}.hook_attn_out")[:, q]
        if not cfg.attn_only:
            final = final + cache_get(cache, f"blocks.{l}.hook_mlp_out")[:, q]
    d = resolve_direction(model, direction, final, apply_ln=apply_ln)
    r = _readout(model, d)
    inv_s = _inv_scale(model, cache, "ln_final", q) if d.apply_ln else torch.ones_like(d.bias)
    B, K, W, H = inputs.obs.shape[:4]
    table = emb.W_state.detach().reshape(W * H * N_CHANNELS, -1)  # [F, d]
    onehot = one_hot_torch(inputs.obs.to(table.device)).to(table).reshape(B, K, W, H, N_CHANNELS)
    dirs = inputs.directions.long().to(table.device)

    direct = (table @ r.T).T.reshape(B, W, H, N_CHANNELS) * onehot[:, k] * inv_s[:, None, None, None]
    direct_dir = (emb.W_dir.detach()[dirs[:, k]] * r).sum(-1) * inv_s
    direct_bias = (emb.b_state.detach() @ r.T) * inv_s

    # Read vector of each head in the source's residual stream: centre(w1 * W_V W_O centre(v)).
    u = torch.einsum("lhde,lhef,bf->blhd", model.W_V.detach(), model.W_O.detach(), r)  # [B, L, H, d]
    u = u * torch.stack([ln_weight(model, l) for l in range(cfg.n_layers)])[None, :, None]
    if cfg.normalization_type in ("LN", "LNPre"):
        u = u - u.mean(-1, keepdim=True)
    src = torch.arange(K, device=table.device) * 3 + 1  # state tokens
    pattern = torch.stack(
        [cache_get(cache, f"blocks.{l}.attn.hook_pattern")[:, :, q, src] for l in range(cfg.n_layers)], 1
    )
    inv_s1 = torch.stack([_inv_scale(model, cache, f"blocks.{l}.ln1", src) for l in range(cfg.n_layers)], 1)
    coef = pattern * inv_s1[:, :, None, :] * inv_s[:, None, None, None]  # [B, L, H, K]
    feat = torch.einsum("fd,blhd->blhf", table, u).reshape(B, cfg.n_layers, cfg.n_heads, W, H, N_CHANNELS)
    heads = torch.einsum("bjxyc,blhxyc->blhjxy", onehot, feat) * coef[..., None, None]
    heads_channels = None
    if channels:
        heads_channels = (onehot[:, None, None] * feat[:, :, :, None] * coef[..., None, None, None]).movedim(
            -1, -3
        )
    heads_dir = torch.einsum("bjd,blhd->blhj", emb.W_dir.detach()[dirs], u) * coef
    heads_bias = torch.einsum("d,blhd->blh", emb.b_state.detach(), u)[..., None] * coef
    return ObservationAttribution(
        direct=direct.movedim(-1, 1),
        direct_direction=direct_dir,
        direct_bias=direct_bias,
        heads=heads,
        heads_channels=heads_channels,
        heads_direction=heads_dir,
        heads_bias=heads_bias,
        direction=d,
        position=k,
        valid=inputs.pad_mask[:, k].clone(),
    )


# ------------------------------------------------------------------ neurons


@dataclass
class NeuronDecomposition(BatchedResult):
    """A neuron's pre-activation at one token, split over what writes into its input direction."""

    values: Float[Tensor, "B C"]
    """Per component; ``values.sum(-1) == pre``."""
    labels: list[str]
    """The token's embedding, ``time_embed``, heads ``L{l}H{h}`` (layers <= the neuron's), ``L{l}_mlp``
    (earlier layers), ``bias`` (residual biases), ``ln2_bias`` (``ln2.b . W_in[:, n]``) and ``b_in``."""
    pre: Float[Tensor, "B"]
    """The cached pre-activation ``hook_pre``."""
    layer: int
    neuron: int
    token: int
    """Token position read (``token_labels(K)[token]`` names it)."""
    valid: Bool[Tensor, "B"]


@torch.no_grad()
def neuron_decomposition(
    model: HookedDecisionTransformer,
    inputs: DTInputs,
    layer: int,
    neuron: int,
    *,
    token: int | None = None,
    cache: Cache | None = None,
) -> NeuronDecomposition:
    """Decompose neuron ``(layer, neuron)``'s pre-activation at ``token`` (default: the last state token)."""
    cfg = model.cfg
    if cfg.attn_only:
        raise ValueError("the model is attention-only: it has no MLP neurons")
    if not 0 <= layer < cfg.n_layers or not 0 <= neuron < cfg.d_mlp:
        raise ValueError(f"neuron L{layer}N{neuron} does not exist ({cfg.n_layers} layers of {cfg.d_mlp})")
    P = inputs.shape[1]
    t = P - 1 if token is None else int(token)
    if not 0 <= t < P:
        raise ValueError(f"token {token} is outside 0..{P - 1}")
    cache = run_for_dla(model, inputs) if cache is None else cache
    block = model.blocks[layer]
    w_in = block.mlp.W_in.detach()[:, neuron] * ln_weight(model, layer, "ln2")
    if cfg.normalization_type in ("LN", "LNPre"):
        w_in = w_in - w_in.mean()
    inv_s2 = _inv_scale(model, cache, f"blocks.{layer}.ln2", t)  # [B]

    def project(x: Tensor) -> Tensor:  # [B, ..., d] -> [B, ...]
        return (x @ w_in) * inv_s2.view(-1, *[1] * (x.dim() - 2))

    embed = cache_get(cache, "hook_embed")[:, t]
    values = [project(embed), project(cache_get(cache, "hook_pos_embed")[:, t])]
    labels = [_EMBED_LABELS[TOKEN_KINDS[t % 3]], "time_embed"]
    for l in range(layer + 1):
        z = cache_get(cache, f"blocks.{l}.attn.hook_z")[:, t]  # [B, H, dh]
        values += list(project(torch.einsum("bhe,hed->bhd", z, model.blocks[l].attn.W_O.detach())).unbind(-1))
        labels += [f"L{l}H{h}" for h in range(cfg.n_heads)]
        if l < layer:
            values.append(
                project(cache_get(cache, f"blocks.{l}.hook_mlp_out")[:, t] - model.blocks[l].mlp.b_out)
            )
            labels.append(f"L{l}_mlp")
    values.append(project(model.accumulated_bias(layer, mlp_input=True).to(embed).expand_as(embed)))
    ln_b = getattr(block.ln2, "b", None)
    b2 = (ln_b.detach() @ block.mlp.W_in.detach()[:, neuron]) if ln_b is not None else embed.new_zeros(())
    values += [b2.expand_as(inv_s2), block.mlp.b_in.detach()[neuron].expand_as(inv_s2)]
    labels += ["bias", "ln2_bias", "b_in"]
    valid = inputs.pad_mask.repeat_interleave(3, dim=1)[:, t].clone()
    return NeuronDecomposition(
        values=torch.stack(values, -1),
        labels=labels,
        pre=cache_get(cache, f"blocks.{layer}.mlp.hook_pre")[:, t, neuron],
        layer=layer,
        neuron=neuron,
        token=t,
        valid=valid,
    )


@dataclass
class TopActivations:
    """The (window, timestep) pairs where a neuron is most active, strongest first."""

    window: Int[Tensor, "k"]
    """Batch index of the window."""
    timestep: Int[Tensor, "k"]
    """Timestep index within the window (the token is ``3 * timestep + kind offset``)."""
    episode_step: Int[Tensor, "k"]
    """The episode timestep (``inputs.timesteps``)."""
    values: Float[Tensor, "k"]
    """The activation."""
    action: Int[Tensor, "k"]
    """The action taken at that timestep (``inputs.actions``)."""
    predicted: Int[Tensor, "k"]
    """The model's top action at that timestep's state token."""
    action_names: list[str]


@torch.no_grad()
def top_activating(
    model: HookedDecisionTransformer,
    inputs: DTInputs,
    layer: int,
    neuron: int,
    k: int = 10,
    *,
    kind: str = "S",
    hook: str = "post",
    chunk: int = 512,
) -> TopActivations:
    """The ``k`` highest activations of neuron ``(layer, neuron)`` at ``kind`` tokens of real timesteps."""
    if model.cfg.attn_only:
        raise ValueError("the model is attention-only: it has no MLP neurons")
    if kind not in TOKEN_KINDS or hook not in ("pre", "post"):
        raise ValueError(
            f"kind must be one of {TOKEN_KINDS} and hook 'pre' or 'post', got {kind!r}, {hook!r}"
        )
    if not 0 <= layer < model.cfg.n_layers or not 0 <= neuron < model.cfg.d_mlp:
        raise ValueError(f"neuron L{layer}N{neuron} does not exist")
    name = f"blocks.{layer}.mlp.hook_{hook}"
    offset = TOKEN_KINDS.index(kind)
    acts, preds = [], []
    for i in range(0, inputs.batch_size, chunk):
        with torch.inference_mode():
            logits, raw = model.run_with_cache(inputs[i : i + chunk], names_filter=[name])
        a = raw[name][..., neuron]  # [b, P]
        a = torch.nn.functional.pad(a, (0, 1), value=float("-inf"))[:, offset::3]  # [b, K]
        acts.append(a)
        preds.append(logits.argmax(-1))
    act = torch.cat(acts).masked_fill(~inputs.pad_mask.to(acts[0].device), float("-inf"))
    if kind == "A":
        act[:, -1] = float("-inf")  # the last action is predicted, not embedded
    flat = act.reshape(-1)
    n = min(k, int(torch.isfinite(flat).sum()))
    top = flat.topk(n)
    K = inputs.context_len
    w, ts = top.indices // K, top.indices % K
    return TopActivations(
        window=w,
        timestep=ts,
        episode_step=inputs.timesteps[w, ts],
        values=top.values,
        action=inputs.actions[w, ts],
        predicted=torch.cat(preds)[w, ts],
        action_names=list(ACTION_NAMES[: model.cfg.n_actions]),
    )
