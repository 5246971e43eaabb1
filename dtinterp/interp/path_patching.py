"""Path patching: a sender's effect along chosen paths only (Wang et al. 2022; Goldowsky-Dill et al. 2023).

Activation patching a head changes everything downstream of it. Path patching isolates the paths from
*senders* (heads, MLPs or neurons) to *receivers* (heads' query/key/value inputs, an MLP's input, or the
logits directly). With direction ``noise`` (the default, as in Wang et al.: base = clean run, source =
corrupted run; ``denoise`` swaps them):

1. run clean and corrupted, recording every activation;
2. run the base with the senders' outputs set to the source's and every other head and MLP frozen to
   the base's; record the receivers' inputs;
3. run the base with only the receivers' inputs set to the values of step 2, and read the metric.

With every other component frozen, the residual stream anywhere in step 2 is the base's plus the
senders' changed writes upstream of that point, ``delta = sum (source - base) write`` (a head's write is
``z[:, :, h] @ W_O[h]``, an MLP's ``hook_mlp_out``, a neuron's ``post[..., n] * W_out[n]``). So step 2 is
computed in closed form, without a forward: a receiver head's query in layer l is
``ln1(resid_pre[l] + delta_before_l) @ W_Q + b_Q``, an MLP's input in layer l is
``ln2(resid_mid[l] + delta_before_mlp_l) @ W_in + b_in`` (``hook_pre``), and the logits receiver (the
direct path) is ``ln_final(resid_post[L-1] + delta)`` unembedded at the state tokens. Step 3 is an
ordinary activation patch of ``hook_q|k|v`` or ``hook_pre`` at every position, run by the batched engine
of :mod:`dtinterp.interp.patching`. A receiver upstream of every sender sees no change (effect 0).

Component names as in :mod:`dtinterp.interp.hooknames`. Senders: ``blocks.l.attn.hook_z:hH`` (one head;
without ``:h`` or as ``blocks.l.hook_attn_out``: every head of the layer), ``blocks.l.hook_mlp_out``,
``blocks.l.mlp.hook_post[:nN]``. Receivers: ``blocks.l.attn.hook_q|k|v[:hH]``,
``blocks.l.mlp.hook_pre[:nN]`` and ``logits`` (which cannot be combined with other receivers: the
direct path ends where the others' effects would be read).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from dtinterp.errors import DtinterpError
from dtinterp.interp.hooknames import Component, parse_components
from dtinterp.interp.metrics import Metric
from dtinterp.interp.patching import (
    DEFAULT_MAX_BYTES,
    Activations,
    PatchingEngine,
    PatchResult,
    PatchSite,
    head_inputs,
    mlp_input,
    unembed,
)
from dtinterp.model.hooked_dt import HookedDecisionTransformer
from dtinterp.model.inputs import DTInputs

LOGITS = "logits"
RECEIVER_HEAD_INPUTS = ("q", "k", "v")


class PathPatchingError(DtinterpError):
    """Senders or receivers that path patching cannot use."""


def _senders(model: HookedDecisionTransformer, names: Sequence[str | Component]) -> list[Component]:
    comps = parse_components(names, model.cfg)
    for c in comps:
        if c.site not in ("z", "attn_out", "mlp_out", "post"):
            raise PathPatchingError(
                f"sender {c}: expected a head (hook_z[:h]), a layer's attention (hook_attn_out), an MLP "
                "(hook_mlp_out) or neurons (mlp.hook_post[:n])"
            )
    return comps


def _receivers(model: HookedDecisionTransformer, names: Sequence[str | Component]) -> list[Component] | None:
    """Parsed receivers, or None for the logits."""
    names = list(names)
    if any(str(n) == LOGITS for n in names):
        if len(names) > 1:
            raise PathPatchingError("the receiver 'logits' cannot be combined with other receivers")
        return None
    comps = parse_components(names, model.cfg)
    for c in comps:
        if c.site not in (*RECEIVER_HEAD_INPUTS, "pre"):
            raise PathPatchingError(
                f"receiver {c}: expected a head input (hook_q|k|v[:h]), an MLP input (mlp.hook_pre[:n]) "
                "or 'logits'"
            )
    return comps


class _Deltas:
    """The senders' changed writes into the residual stream, summed up to any point of the model.

    Senders are taken as a set: a head named twice (or as one head and as its whole layer) writes once.
    """

    def __init__(
        self,
        model: HookedDecisionTransformer,
        base: Activations,
        source: Activations,
        senders: list[Component],
    ):
        cfg = model.cfg
        heads: dict[int, set[int]] = {}
        neurons: dict[int, set[int]] = {}
        for c in senders:
            assert c.layer is not None
            if c.site in ("z", "attn_out"):
                heads.setdefault(c.layer, set()).update(range(cfg.n_heads) if c.index is None else [c.index])
            else:  # mlp_out, or post with or without a neuron index
                neurons.setdefault(c.layer, set()).update(range(cfg.d_mlp) if c.index is None else [c.index])
        ref = base[(0, "resid_pre")]
        self.attn = [torch.zeros_like(ref) for _ in range(cfg.n_layers)]  # written by layer l's heads
        self.mlp = [torch.zeros_like(ref) for _ in range(cfg.n_layers)]  # written by layer l's MLP
        for l, hs in heads.items():
            idx = torch.as_tensor(sorted(hs), device=ref.device)
            dz = (source[(l, "z")] - base[(l, "z")])[:, :, idx]  # [B, P, h, dh]
            self.attn[l] = torch.einsum("bphe,hed->bpd", dz, model.blocks[l].attn.W_O[idx])
        for l, ns in neurons.items():
            if len(ns) == cfg.d_mlp:  # the whole MLP: its recorded output, biases cancel
                self.mlp[l] = source[(l, "mlp_out")] - base[(l, "mlp_out")]
            else:
                idx = torch.as_tensor(sorted(ns), device=ref.device)
                dpost = (source[(l, "post")] - base[(l, "post")])[..., idx]  # [B, P, n]
                self.mlp[l] = dpost @ model.blocks[l].mlp.W_out[idx]

    def before(self, layer: int, mlp: bool = False) -> Float[Tensor, "B P d"]:
        """Sum of the writes that reach block ``layer``'s attention input (or, ``mlp``, its MLP input)."""
        total = torch.zeros_like(self.attn[0])
        for l in range(layer):
            total = total + self.attn[l] + self.mlp[l]
        return total + self.attn[layer] if mlp else total

    def total(self) -> Float[Tensor, "B P d"]:
        return self.before(len(self.attn) - 1, mlp=True) + self.mlp[-1]


def _receiver_inputs(
    model: HookedDecisionTransformer, base: Activations, deltas: _Deltas, keys: set[tuple[int, str]]
) -> dict[tuple[int, str], Tensor]:
    """Step 2: the receivers' inputs ``(layer, q|k|v|pre)`` -> ``[B, P, ...]`` with the senders' paths."""
    out: dict[tuple[int, str], Tensor] = {}
    for l in sorted({layer for layer, _ in keys}):
        if any((l, s) in keys for s in RECEIVER_HEAD_INPUTS):
            qkv = head_inputs(model, l, base[(l, "resid_pre")] + deltas.before(l))
            out.update({(l, s): t for s, t in zip(RECEIVER_HEAD_INPUTS, qkv)})
        if (l, "pre") in keys:
            out[(l, "pre")] = mlp_input(model, l, base[(l, "resid_mid")] + deltas.before(l, mlp=True))
    return out


def path_patch(
    model: HookedDecisionTransformer,
    clean: DTInputs,
    corrupted: DTInputs,
    senders: Sequence[str | Component],
    receivers: Sequence[str | Component],
    metric: Metric,
    *,
    direction: str = "noise",
    max_batch: int | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> PatchResult:
    """The metric with ``senders`` patched only along their paths to ``receivers`` (see module docstring).

    ``values`` is the window mean (0-d), ``per_window`` one value per window.
    """
    send = _senders(model, senders)
    recv = _receivers(model, receivers)
    engine = PatchingEngine(model, clean, corrupted, direction, max_batch=max_batch, max_bytes=max_bytes)
    with torch.inference_mode():
        deltas = _Deltas(model, engine.base, engine.source, send)
        if recv is None:
            per_window = metric(_direct_logits(model, engine.base, deltas.total()[None]))[0]
        else:
            keys = {(c.layer, c.site) for c in recv}
            source = _receiver_inputs(model, engine.base, deltas, keys)
            patch = [PatchSite(c.layer, c.site, None, c.index) for c in recv]  # type: ignore[arg-type]
            per_window = engine.run_with_source(source, [patch], metric)[0]
    clean_m, corrupted_m = engine.baselines(metric)
    to = LOGITS if recv is None else " + ".join(str(c) for c in recv)
    name = f"{' + '.join(str(c) for c in send)} -> {to}"
    return PatchResult(name, direction, per_window.mean(-1), per_window, (), {}, clean_m, corrupted_m)


def _direct_logits(
    model: HookedDecisionTransformer, base: Activations, deltas: Float[Tensor, "S B P d"]
) -> Float[Tensor, "S B K A"]:
    """Logits with each of ``S`` residual changes added to the base run's final residual stream (the
    base run's own logits where a change is exactly 0, as the engine does for a no-op patch)."""
    L = model.cfg.n_layers
    final = base[(L - 1, "resid_post")][:, 1::3]  # [B, K, d] at the state tokens
    delta = deltas[:, :, 1::3]
    changed = delta.ne(0).any(-1, keepdim=True)  # [S, B, K, 1]
    return torch.where(changed, unembed(model, final + delta), base.logits)


def path_patch_to_logits(
    model: HookedDecisionTransformer,
    clean: DTInputs,
    corrupted: DTInputs,
    metric: Metric,
    *,
    direction: str = "noise",
) -> PatchResult:
    """Every head and MLP as the sender, the logits (direct path) as the receiver.

    Axes ``(layer, sender)``: senders ``H0..H{n-1}`` (heads) and ``MLP`` (absent in attention-only
    models). One batched unembedding, no forward beyond the two recorded runs.
    """
    engine = PatchingEngine(model, clean, corrupted, direction)
    cfg = model.cfg
    base, source = engine.base, engine.source
    with torch.inference_mode():
        rows = []
        for l in range(cfg.n_layers):
            dz = source[(l, "z")] - base[(l, "z")]  # [B, P, H, dh]
            rows.append(torch.einsum("bphe,hed->hbpd", dz, model.blocks[l].attn.W_O))  # [H, B, P, d]
            if not cfg.attn_only:
                rows.append((source[(l, "mlp_out")] - base[(l, "mlp_out")])[None])
        per_sender = torch.cat(rows)  # [L * (H + 1), B, P, d]
        per_window = metric(_direct_logits(model, base, per_sender))
    n_senders = cfg.n_heads + (0 if cfg.attn_only else 1)
    per_window = per_window.reshape(cfg.n_layers, n_senders, -1)
    labels = {
        "layer": [f"L{l}" for l in range(cfg.n_layers)],
        "sender": [f"H{h}" for h in range(cfg.n_heads)] + ([] if cfg.attn_only else ["MLP"]),
    }
    clean_m, corrupted_m = engine.baselines(metric)
    return PatchResult(
        "senders -> logits",
        direction,
        per_window.mean(-1),
        per_window,
        ("layer", "sender"),
        labels,
        clean_m,
        corrupted_m,
    )


def path_patch_to_heads(
    model: HookedDecisionTransformer,
    clean: DTInputs,
    corrupted: DTInputs,
    senders: Sequence[str | Component],
    metric: Metric,
    component: str = "v",
    *,
    direction: str = "noise",
    max_batch: int | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> PatchResult:
    """``senders`` -> each head's ``component`` input (``q``, ``k`` or ``v``) alone, axes ``(layer, head)``.

    Heads in or before the senders' earliest layer are not reached (the metric of the base run).
    """
    if component not in RECEIVER_HEAD_INPUTS:
        raise PathPatchingError(f"component must be one of {RECEIVER_HEAD_INPUTS}, got {component!r}")
    send = _senders(model, senders)
    cfg = model.cfg
    engine = PatchingEngine(model, clean, corrupted, direction, max_batch=max_batch, max_bytes=max_bytes)
    with torch.inference_mode():
        deltas = _Deltas(model, engine.base, engine.source, send)
        source = _receiver_inputs(model, engine.base, deltas, {(l, component) for l in range(cfg.n_layers)})
        patches = [
            [PatchSite(l, component, None, h)] for l in range(cfg.n_layers) for h in range(cfg.n_heads)
        ]
        per_window = engine.run_with_source(source, patches, metric).reshape(cfg.n_layers, cfg.n_heads, -1)
    labels = {"layer": [f"L{l}" for l in range(cfg.n_layers)], "head": [f"H{h}" for h in range(cfg.n_heads)]}
    clean_m, corrupted_m = engine.baselines(metric)
    name = f"{' + '.join(str(c) for c in send)} -> heads' {component}"
    return PatchResult(
        name, direction, per_window.mean(-1), per_window, ("layer", "head"), labels, clean_m, corrupted_m
    )
