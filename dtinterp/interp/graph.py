"""The model as a graph of components: senders write into the residual stream, receivers read from it.

Edge-level analyses (edge attribution patching, circuit discovery, hypothesis tests) all speak of the same
graph, defined once here from the model's config:

- **senders** (the graph's upstream nodes, in topological order): the four input embeddings by kind,
  ``rtg``, ``state``, ``action`` (``hook_embed`` at the R, S and A tokens) and ``time`` (``hook_pos_embed``,
  every token's timestep embedding); each head ``L{l}H{h}`` (its write ``hook_z[:, :, h] @ W_O[h]``); each
  MLP ``MLP{l}`` (``hook_mlp_out``). The attention output bias ``b_O`` belongs to no sender: it is the
  same in every run, so no patch or ablation can change it.
- **receivers** (downstream ends): each head's query, key and value input *separately*
  (``L{l}H{h}.q|k|v``), each MLP's input (``MLP{l}.in``) and the logits (``logits``, the final residual
  stream that ``ln_final`` and ``W_U`` read at the state tokens).
- **edges**: every (sender, receiver) pair where the sender is upstream: embeddings feed everything,
  a head of layer l feeds layer l's MLP and every later layer, an MLP feeds every later layer.

The residual stream a receiver reads is the sum of the writes of every sender upstream of it (plus
biases). The model has one residual stream per position, read by all receivers of a layer at once
(``cfg.use_split_qkv_input`` is False), so :func:`run_graph` computes the model with *split* receiver
inputs: every receiver gets its own copy of the residual stream it reads, ``[N, B, P, R, d]`` stacked by
receiver, before its LayerNorm. The function is unchanged (a LayerNorm and the Q/K/V GEMM applied to
identical copies), but autograd then gives the gradient of a metric with respect to *each receiver's*
input separately, exactly, LayerNorm included, and an ablation can change what one receiver reads without
touching the others.

**Edge ablation.** With ``ablate[n, u, r]`` set, receiver ``r`` of run ``n`` reads sender ``u``'s
replacement value ``replacement[u]`` (a mean, another window's activation) instead of its live output:

    ``x_r = resid + sum_u ablate[n, u, r] * (replacement_u - a_u)``

where ``a_u`` is the sender's output in the same run (itself affected by ablations upstream). ``N``
ablation patterns run stacked in front of the window axis, as the patching engine stacks patches. Ablating
an edge whose replacement is another run's value is path patching of that edge
(:func:`dtinterp.interp.path_patching.path_patch`); ablating every edge out of a sender is ablating the
sender (:func:`dtinterp.interp.ablation.ablate`). Both equalities are tested.

Like the patching engine, :func:`run_graph` computes the blocks from the model's weights (the model's own
norm modules, one fused ``scaled_dot_product_attention`` unless patterns are asked for) and bypasses the
hook points after the embeddings: hooks a caller attached to ``hook_embed`` or ``hook_pos_embed`` apply,
later ones do not.

Component names (``name``) are those of :mod:`dtinterp.interp.hooknames` (``hook_rtg_embed``,
``blocks.1.attn.hook_z:h2``, ``blocks.0.hook_mlp_out``; receivers ``blocks.1.attn.hook_q:h0``,
``blocks.0.mlp.hook_pre`` as in path patching, and ``logits``), so a name can be pasted into any causal
analysis; ``label`` is the short form figures use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor

from dtinterp.errors import DtinterpError
from dtinterp.interp.hooknames import parse_component
from dtinterp.model.config import DTConfig
from dtinterp.model.hooked_dt import HookedDecisionTransformer
from dtinterp.model.inputs import DTInputs

#: The embedding senders: (label, component name, token kind 0 R / 1 S / 2 A, or None for every token).
EMBED_SENDERS = (
    ("rtg", "hook_rtg_embed", 0),
    ("state", "hook_state_embed", 1),
    ("action", "hook_action_embed", 2),
    ("time", "hook_time_embed", None),
)
LOGITS = "logits"
QKV = ("q", "k", "v")


class GraphError(DtinterpError):
    """A component or edge name that is not part of the model's graph."""


@dataclass(frozen=True)
class Sender:
    """A component that writes into the residual stream."""

    name: str
    """Component name (:mod:`dtinterp.interp.hooknames`): ``hook_state_embed``, ``blocks.1.attn.hook_z:h2``,
    ``blocks.0.hook_mlp_out``."""
    label: str
    """Short label: ``state``, ``L1H2``, ``MLP0``."""
    kind: str
    """``embed``, ``head`` or ``mlp``."""
    layer: int
    """Block index (-1 for the embeddings)."""
    index: int | None = None
    """The head; for an embedding its token kind (0 R, 1 S, 2 A; None for ``time``)."""


@dataclass(frozen=True)
class Receiver:
    """A place where a component reads the residual stream."""

    name: str
    """``blocks.1.attn.hook_q:h0`` (a head's query input; ``hook_k``, ``hook_v``), ``blocks.0.mlp.hook_pre``
    (an MLP's input) or ``logits``."""
    label: str
    """Short label: ``L1H0.q``, ``MLP0.in``, ``logits``."""
    kind: str
    """``q``, ``k``, ``v``, ``mlp`` or ``logits``."""
    layer: int
    """Block index (``n_layers`` for the logits)."""
    head: int | None = None


@dataclass(frozen=True)
class Edge:
    sender: Sender
    receiver: Receiver

    @property
    def label(self) -> str:
        return f"{self.sender.label} -> {self.receiver.label}"

    @property
    def name(self) -> str:
        return f"{self.sender.name} -> {self.receiver.name}"


_GRAPHS: dict[tuple[int, int, int, bool], ComputeGraph] = {}


class ComputeGraph:
    """Senders, receivers and edges of a model (see the module docstring); built from its config."""

    def __init__(self, cfg: DTConfig):
        self.cfg = cfg
        L, H = cfg.n_layers, cfg.n_heads
        senders = [Sender(name, label, "embed", -1, kind) for label, name, kind in EMBED_SENDERS]
        receivers: list[Receiver] = []
        #: Receiver groups in model order: ``(kind, layer, first receiver, n receivers, n senders upstream)``.
        self.groups: list[tuple[str, int, int, int, int]] = []
        for l in range(L):
            self.groups.append(("attn", l, len(receivers), 3 * H, len(senders)))
            for c in QKV:
                receivers += [
                    Receiver(f"blocks.{l}.attn.hook_{c}:h{h}", f"L{l}H{h}.{c}", c, l, h) for h in range(H)
                ]
            senders += [Sender(f"blocks.{l}.attn.hook_z:h{h}", f"L{l}H{h}", "head", l, h) for h in range(H)]
            if not cfg.attn_only:
                self.groups.append(("mlp", l, len(receivers), 1, len(senders)))
                receivers.append(Receiver(f"blocks.{l}.mlp.hook_pre", f"MLP{l}.in", "mlp", l))
                senders.append(Sender(f"blocks.{l}.hook_mlp_out", f"MLP{l}", "mlp", l))
        self.groups.append(("logits", L, len(receivers), 1, len(senders)))
        receivers.append(Receiver(LOGITS, LOGITS, "logits", L))
        self.senders: tuple[Sender, ...] = tuple(senders)
        self.receivers: tuple[Receiver, ...] = tuple(receivers)
        valid = torch.zeros(len(senders), len(receivers), dtype=torch.bool)
        for _, _, r0, n, upstream in self.groups:
            valid[:upstream, r0 : r0 + n] = True
        self.valid: Bool[Tensor, "U R"] = valid
        """``valid[u, r]``: sender ``u`` is upstream of receiver ``r`` (an edge)."""

    @cached_property
    def edge_index(self) -> Tensor:
        """``[E, 2]``: (sender, receiver) of each edge, sender-major."""
        return self.valid.nonzero()

    @cached_property
    def edges(self) -> tuple[Edge, ...]:
        """Every edge, in :attr:`edge_index` order."""
        return tuple(Edge(self.senders[u], self.receivers[r]) for u, r in self.edge_index.tolist())

    @classmethod
    def of(cls, cfg: DTConfig) -> ComputeGraph:
        """The graph of a config, built once per architecture (it depends on the layer and head counts and
        on ``attn_only``; names are checked against ``d_mlp`` too)."""
        key = (cfg.n_layers, cfg.n_heads, cfg.d_mlp, cfg.attn_only)
        if key not in _GRAPHS:
            _GRAPHS[key] = cls(cfg)
        return _GRAPHS[key]

    @property
    def n_senders(self) -> int:
        return len(self.senders)

    @property
    def n_receivers(self) -> int:
        return len(self.receivers)

    @property
    def n_edges(self) -> int:
        return int(self.valid.sum())

    @cached_property
    def _edge_of(self) -> dict[tuple[int, int], int]:
        return {(u, r): e for e, (u, r) in enumerate(self.edge_index.tolist())}

    @cached_property
    def _sender_of(self) -> dict[str, int]:
        return {k: i for i, s in enumerate(self.senders) for k in (s.name, s.label)}

    @cached_property
    def _receiver_of(self) -> dict[str, int]:
        return {k: i for i, r in enumerate(self.receivers) for k in (r.name, r.label)}

    def sender_labels(self) -> list[str]:
        return [s.label for s in self.senders]

    def receiver_labels(self) -> list[str]:
        return [r.label for r in self.receivers]

    def edge_labels(self) -> list[str]:
        return [e.label for e in self.edges]

    def sender_index(self, name: str) -> int:
        """Index of one sender by component name or label (one-line :class:`GraphError` otherwise)."""
        i = self._sender_of.get(str(name).strip())
        if i is None:
            raise GraphError(
                f"{name!r} is not a sender of the graph: expected one of {', '.join(self.sender_labels())} "
                "or their component names (hook_state_embed, blocks.1.attn.hook_z:h2, blocks.0.hook_mlp_out)"
            )
        return i

    def receiver_index(self, name: str) -> int:
        """Index of one receiver by name or label (``blocks.1.attn.hook_v:h0``, ``L1H0.v``, ``logits``)."""
        i = self._receiver_of.get(str(name).strip())
        if i is None:
            raise GraphError(
                f"{name!r} is not a receiver of the graph: expected a head input (blocks.1.attn.hook_q:h0 or "
                "L1H0.q), an MLP input (blocks.0.mlp.hook_pre or MLP0.in) or 'logits'"
            )
        return i

    def edge_id(self, sender: str, receiver: str) -> int:
        """Index of the edge ``sender -> receiver`` in :attr:`edges`."""
        u, r = self.sender_index(sender), self.receiver_index(receiver)
        e = self._edge_of.get((u, r))
        if e is None:
            raise GraphError(
                f"there is no edge {self.senders[u].label} -> {self.receivers[r].label}: "
                "the sender is not upstream of the receiver"
            )
        return e

    def parse_edge(self, text: str) -> int:
        """Index of an edge written ``"SENDER -> RECEIVER"`` (labels or component names)."""
        parts = str(text).split("->")
        if len(parts) != 2:
            raise GraphError(f"edge {text!r}: expected 'SENDER -> RECEIVER', e.g. 'L0H1 -> L1H0.v'")
        return self.edge_id(parts[0].strip(), parts[1].strip())

    def senders_of(self, component: str) -> list[int]:
        """The senders a component name stands for: a sender itself (name or label), a whole attention
        layer (``blocks.l.hook_attn_out`` or ``blocks.l.attn.hook_z``: every head), an MLP by any of its
        hooks (``blocks.l.mlp.hook_post``, ``blocks.l.mlp.hook_pre``), or ``hook_embed`` (the three token
        kinds) / ``hook_pos_embed`` (``time``)."""
        text = str(component).strip()
        if text in self._sender_of:
            return [self._sender_of[text]]
        try:
            c = parse_component(text, self.cfg)
        except DtinterpError as exc:
            raise GraphError(f"{exc}; graph nodes are {', '.join(self.sender_labels())}") from None
        if c.layer is None:
            if c.site == "embed":
                return [0, 1, 2]
            if c.site == "pos_embed":
                return [3]
        elif c.site in ("attn_out", "z") and c.index is None:
            return [self._sender_of[f"L{c.layer}H{h}"] for h in range(self.cfg.n_heads)]
        elif c.site in ("mlp_out", "pre", "post") and c.index is None:
            return [self._sender_of[f"MLP{c.layer}"]]
        raise GraphError(
            f"{text!r} is not a node of the graph: nodes are the embeddings by kind, heads (hook_z:hH) and "
            "MLPs (hook_mlp_out); neurons, positions and q/k/v inputs are not nodes"
        )


def token_kinds(n_tokens: int, device: torch.device | str = "cpu") -> Tensor:
    """``[P]``: the kind of each token position (0 R, 1 S, 2 A)."""
    return torch.arange(n_tokens, device=device) % 3


def embeddings(
    model: HookedDecisionTransformer, inputs: DTInputs
) -> tuple[Float[Tensor, "B P d"], Float[Tensor, "B P d"], Bool[Tensor, "B 1 P P"]]:
    """``hook_embed``, ``hook_pos_embed`` and the attention mask of ``inputs`` (no gradient).

    Read with plain torch forward hooks on the two hook points, removed before returning (TL hooks a
    caller has attached, e.g. a steering edit of ``hook_embed``, still apply and are left in place).
    """
    store: dict[str, Tensor] = {}
    handles = [
        point.register_forward_hook(lambda mod, args, out, key=key: store.__setitem__(key, out))
        for key, point in (("embed", model.hook_embed), ("pos_embed", model.hook_pos_embed))
    ]
    try:
        with torch.no_grad():
            _, allowed = model.embed(inputs)
    finally:
        for h in handles:
            h.remove()
    return store["embed"].clone(), store["pos_embed"].clone(), allowed


def embed_senders(
    embed: Float[Tensor, "... B P d"], pos_embed: Float[Tensor, "... B P d"]
) -> Float[Tensor, "... B P 4 d"]:
    """The four embedding senders' writes (``rtg``, ``state``, ``action`` at their tokens; ``time``)."""
    kind = token_kinds(embed.shape[-2], embed.device)[:, None]  # [P, 1]
    parts = [embed * (kind == k).to(embed.dtype) for k in range(3)]
    return torch.stack([*parts, pos_embed], -2)


@dataclass
class GraphRun:
    """One (stacked) forward pass through :func:`run_graph`."""

    logits: Float[Tensor, "N B K A"]
    senders: Float[Tensor, "N B P U d"] | None
    """Every sender's write (when asked for)."""
    receivers: list[Tensor]
    """Per receiver group (:attr:`ComputeGraph.groups`), the inputs its receivers read, ``[N, B, rows, n, d]``
    (with ``split``; empty otherwise): every token, or the state tokens for the last layer's MLP and the
    logits. In the autograd graph: differentiate a metric against them."""
    sites: dict[tuple[int, str], Tensor]
    """With ``sites``: ``(layer, site)`` -> activation ``[N, B, ...]`` laid out as the model's hook of that
    name (``resid_pre``, ``q``, ``pattern``, ``z``, ``post``, ...; ``(0, "embed")``, ``(0, "pos_embed")``)."""


def run_graph(
    model: HookedDecisionTransformer,
    graph: ComputeGraph,
    embed: Float[Tensor, "B P d"],
    pos_embed: Float[Tensor, "B P d"],
    allowed: Bool[Tensor, "B 1 P P"],
    *,
    ablate: Bool[Tensor, "N U R"] | None = None,
    replacement: Float[Tensor, "Bs P U d"] | None = None,
    split: bool = True,
    senders: bool = True,
    sites: bool = False,
    patterns: bool = False,
) -> GraphRun:
    """The model's forward pass from its embeddings, computed on the graph (see the module docstring).

    ``ablate[n, u, r]`` (with ``replacement``, ``[1 or B, P, U, d]``, the senders' values to read instead)
    makes run ``n`` of ``N`` feed receiver ``r`` the replacement of sender ``u`` (only edges count).
    ``split`` gives each receiver its own copy of its input (needed for ``ablate`` and for per-receiver
    gradients); without it, the attention and MLP read the residual stream as the model does. ``senders``
    records every sender's write, ``sites`` every activation the model has a hook for (the attention
    patterns only with ``patterns``, which computes attention explicitly instead of with
    ``scaled_dot_product_attention``). Gradients flow; run it under ``torch.no_grad()`` when none are
    needed. The last layer computes its queries and everything after them at the state tokens only (the
    other rows reach no logit): its sites hold those rows (``1::3``) and its senders' writes are 0 at the
    other tokens.
    """
    cfg = model.cfg
    L, H, d = cfg.n_layers, cfg.n_heads, cfg.d_model
    if ablate is not None:
        if not split:
            raise GraphError("edge ablation needs split receiver inputs (split=True)")
        if replacement is None:
            raise GraphError("edge ablation needs replacement values for the senders")
        if ablate.shape[1:] != (graph.n_senders, graph.n_receivers):
            raise GraphError(
                f"ablation mask has shape {tuple(ablate.shape)}, expected (N, {graph.n_senders}, "
                f"{graph.n_receivers})"
            )
        ablate = (ablate & graph.valid.to(ablate.device)).to(embed.dtype)
        senders = True
    N = 1 if ablate is None else ablate.shape[0]
    B, P, _ = embed.shape
    dh = cfg.d_head
    out_sites: dict[tuple[int, str], Tensor] = {}
    written: list[Tensor] = []  # sender writes so far, each [N, B, rows, u, d]
    if senders:
        written.append(embed_senders(embed, pos_embed).expand(N, B, P, 4, d))
    resid = (embed + pos_embed).expand(N, B, P, d)
    if sites:
        out_sites[(0, "embed")], out_sites[(0, "pos_embed")] = embed[None], pos_embed[None]
    received: list[Tensor] = []
    group_iter = iter(graph.groups)
    rep = replacement

    def read(x: Tensor, n: int) -> Tensor:
        """The inputs of the next receiver group (``n`` receivers): copies of ``x`` plus ablation deltas."""
        _, _, r0, _, upstream = next(group_iter)
        copies = x.unsqueeze(3).expand(*x.shape[:3], n, d)
        if ablate is not None:
            mask = ablate[:, :upstream, r0 : r0 + n]  # [N, u, n]
            if bool(mask.any()):
                live = torch.cat(written, 3)[:, :, :, :upstream]  # [N, B, rows, u, d]
                diff = rep[None, :, :, :upstream].to(live) - live  # type: ignore[index]
                copies = copies + torch.einsum("nbpud,nur->nbprd", diff, mask)
        received.append(copies)
        return copies

    for l, blk in enumerate(model.blocks):
        attn = blk.attn
        if sites:
            out_sites[(l, "resid_pre")] = resid
        if split:
            x = read(resid, 3 * H)  # [N, B, P, 3H, d]
            W = torch.cat([attn.W_Q, attn.W_K, attn.W_V], 0)  # [3H, d, dh]
            b = torch.cat([attn.b_Q, attn.b_K, attn.b_V], 0)  # [3H, dh]
            qkv = torch.einsum("nbpjd,jde->nbpje", blk.ln1(x), W) + b
        else:
            W = torch.cat([attn.W_Q, attn.W_K, attn.W_V], 0).permute(1, 0, 2).reshape(d, 3 * H * dh)
            b = torch.cat([attn.b_Q, attn.b_K, attn.b_V], 0).reshape(3 * H * dh)
            qkv = blk.ln1(resid) @ W + b
        q, k, v = qkv.view(N, B, P, 3, H, dh).unbind(3)  # [N, B, P, H, dh]
        mask = allowed
        if l == L - 1:  # only the state tokens' rows reach the logits: every row gives its key and value,
            # everything after them is computed at the state tokens only (1::3)
            q, resid, mask = q[:, :, 1::3], resid[:, :, 1::3], allowed[:, :, 1::3]
            before = torch.cat(written, 3) if senders else None  # writes of the earlier layers, every row
            written = [w[:, :, 1::3] for w in written]
            rep = None if replacement is None else replacement[:, 1::3]
        if patterns:
            scores = torch.einsum("nbqhe,nbkhe->nbhqk", q, k) / math.sqrt(dh)
            pattern = scores.masked_fill(~mask, float("-inf")).softmax(-1)  # [N, B, H, rows, P]
            z = torch.einsum("nbhqk,nbkhe->nbqhe", pattern, v)  # [N, B, rows, H, dh]
            if sites:
                out_sites[(l, "pattern")] = pattern
        else:  # one fused kernel, as the model's own fast path (strided views, no copies)
            rows = q.shape[2]
            z = F.scaled_dot_product_attention(
                q.flatten(0, 1).transpose(1, 2),
                k.flatten(0, 1).transpose(1, 2),
                v.flatten(0, 1).transpose(1, 2),
                attn_mask=mask.expand(N, *mask.shape).reshape(N * B, *mask.shape[1:]),
            )  # [N*B, H, rows, dh]
            z = z.view(N, B, H, rows, dh).transpose(2, 3)
        if senders:
            heads = torch.einsum("nbphe,hed->nbphd", z, attn.W_O)  # [N, B, rows, H, d]
            written.append(heads)
            attn_out = heads.sum(3) + attn.b_O
        else:
            attn_out = torch.einsum("nbphe,hed->nbpd", z, attn.W_O) + attn.b_O
        resid_mid = resid + attn_out
        if sites:
            out_sites.update({(l, "q"): q, (l, "k"): k, (l, "v"): v, (l, "z"): z})
            out_sites[(l, "attn_out")] = attn_out
        if cfg.attn_only:
            resid = resid_mid
        else:
            x = read(resid_mid, 1)[:, :, :, 0] if split else resid_mid
            pre = blk.ln2(x) @ blk.mlp.W_in + blk.mlp.b_in
            post = blk.mlp.act_fn(pre)
            mlp_out = post @ blk.mlp.W_out + blk.mlp.b_out
            if senders:
                written.append(mlp_out.unsqueeze(3))
            resid = resid_mid + mlp_out
            if sites:
                out_sites.update({(l, "resid_mid"): resid_mid, (l, "pre"): pre, (l, "post"): post})
                out_sites[(l, "mlp_out")] = mlp_out
        if sites:
            out_sites[(l, "resid_post")] = resid
    final = read(resid, 1)[:, :, :, 0] if split else resid  # [N, B, K, d]: the state tokens
    logits = model.ln_final(final) @ model.W_U + model.b_U  # [N, B, K, A]
    all_senders = None
    if senders:  # the last layer's writes at the state tokens, 0 elsewhere (they reach no logit)
        u0 = before.shape[3]  # type: ignore[union-attr]
        last = torch.cat(written, 3)[:, :, :, u0:]
        all_senders = torch.cat([before, last.new_zeros(N, B, P, last.shape[3], d)], 3)  # type: ignore[list-item]
        all_senders[:, :, 1::3, u0:] = last
    return GraphRun(logits, all_senders, received, out_sites)


def sender_values(
    model: HookedDecisionTransformer, graph: ComputeGraph, inputs: DTInputs, batch_size: int = 256
) -> Float[Tensor, "B P U d"]:
    """Every sender's write on ``inputs`` (no gradient; in batches)."""
    out = []
    with torch.no_grad():
        for b0 in range(0, inputs.batch_size, batch_size):
            embed, pos_embed, allowed = embeddings(model, inputs[b0 : b0 + batch_size])
            run = run_graph(model, graph, embed, pos_embed, allowed, split=False)
            out.append(run.senders[0])  # type: ignore[index]
    return torch.cat(out)


__all__ = [
    "EMBED_SENDERS",
    "LOGITS",
    "ComputeGraph",
    "Edge",
    "GraphError",
    "GraphRun",
    "Receiver",
    "Sender",
    "embed_senders",
    "embeddings",
    "run_graph",
    "sender_values",
    "token_kinds",
]
