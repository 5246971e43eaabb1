"""Path patching on models built by hand, where the paths a head's effect takes are known."""

from __future__ import annotations

import functools

import pytest
import torch

from dtinterp.interp.metrics import LogitDiff, logit_diff
from dtinterp.interp.patching import activation_patching
from dtinterp.interp.path_patching import (
    PathPatchingError,
    path_patch,
    path_patch_to_heads,
    path_patch_to_logits,
)
from dtinterp.model import DTInputs, HookedDecisionTransformer
from tests.interp.tiny import make_inputs, make_model

Z00, Z01 = "blocks.0.attn.hook_z:h0", "blocks.0.attn.hook_z:h1"


@functools.cache
def pair() -> tuple[DTInputs, DTInputs]:
    clean = make_inputs()
    corrupted = clean.clone()
    corrupted.rtg = 1.0 - corrupted.rtg
    corrupted.obs[:, :, 2, 2, 0] = (corrupted.obs[:, :, 2, 2, 0] + 3) % 10
    return clean, corrupted


def metric_for(model: HookedDecisionTransformer) -> LogitDiff:
    clean, corrupted = pair()
    with torch.inference_mode():
        return logit_diff(model(clean), model(corrupted))


@functools.cache
def via_v_model() -> HookedDecisionTransformer:
    """Head 0.0 reaches the logits only through head 1.0's value input.

    No norms, attention only, d_model 16 split into A (coordinates 0-7) and B (8-15). Head 0.0 writes only
    into A; the unembedding reads only B; layer 1 has W_Q = W_K = 0, so its patterns do not depend on
    the residual stream; head 1.0 reads A and B and writes only into B; head 1.1 does not read A.
    """
    model = make_model(attn_only=True, normalization_type=None)
    with torch.no_grad():
        model.blocks[0].attn.W_O[0, :, 8:] = 0.0
        model.blocks[1].attn.W_Q.zero_()
        model.blocks[1].attn.W_K.zero_()
        model.blocks[1].attn.W_O[0, :, :8] = 0.0
        model.blocks[1].attn.W_V[1, :8] = 0.0
        model.W_U[:8] = 0.0
    return model


def test_a_head_that_only_writes_to_a_later_value_input():
    model = via_v_model()
    clean, corrupted = pair()
    metric = metric_for(model)
    total = activation_patching(model, clean, corrupted, metric, "head_out_all_pos", direction="noise")
    effect = total.per_window[0, 0] - total.clean
    assert effect.abs().min() > 1e-2  # head 0.0 matters ...

    direct = path_patch(model, clean, corrupted, [Z00], ["logits"], metric)
    assert torch.equal(direct.per_window, direct.clean)  # ... not directly ...
    via_v = path_patch(model, clean, corrupted, [Z00], ["blocks.1.attn.hook_v:h0"], metric)
    assert torch.allclose(via_v.per_window, total.per_window[0, 0], atol=1e-5)  # ... but all through 1.0's V
    for receiver in ("blocks.1.attn.hook_q:h0", "blocks.1.attn.hook_k:h0", "blocks.1.attn.hook_v:h1"):
        none = path_patch(model, clean, corrupted, [Z00], [receiver], metric)
        assert torch.equal(none.per_window, none.clean), receiver

    grid = path_patch_to_heads(model, clean, corrupted, [Z00], metric, "v")
    assert grid.axis_names == ("layer", "head")
    assert torch.equal(grid.per_window[0], grid.clean.expand(2, 3))  # layer 0 is not downstream of itself
    assert torch.allclose(grid.per_window[1, 0], via_v.per_window, atol=1e-6)
    assert torch.equal(grid.per_window[1, 1], grid.clean)
    logits = path_patch_to_logits(model, clean, corrupted, metric)
    assert logits.axis_labels == {"layer": ["L0", "L1"], "sender": ["H0", "H1"]}
    assert torch.equal(logits.per_window[0, 0], logits.clean)
    assert not torch.allclose(logits.per_window[1, 0], logits.clean, atol=1e-3)


def test_a_head_with_zero_output_weights_has_no_path_effect():
    model = make_model()
    with torch.no_grad():
        model.blocks[0].attn.W_O[1] = 0.0
    clean, corrupted = pair()
    metric = metric_for(model)
    to_logits = path_patch_to_logits(model, clean, corrupted, metric)
    assert torch.equal(to_logits.per_window[0, 1], to_logits.clean)
    assert (to_logits.per_window[0, 0] != to_logits.clean).all()
    for component in ("q", "k", "v"):
        grid = path_patch_to_heads(model, clean, corrupted, [Z01], metric, component)
        assert torch.equal(grid.per_window, grid.clean.expand_as(grid.per_window))
    mlp = path_patch(
        model, clean, corrupted, [Z01], ["blocks.0.mlp.hook_pre", "blocks.1.mlp.hook_pre"], metric
    )
    assert torch.equal(mlp.per_window, mlp.clean)


def test_last_layer_heads_to_logits_equal_activation_patching_when_nothing_else_reads_them():
    """In the last layer of a model whose last MLP writes nothing, a head's only path is the direct one."""
    model = make_model()
    with torch.no_grad():
        model.blocks[1].mlp.W_out.zero_()
    clean, corrupted = pair()
    metric = metric_for(model)
    total = activation_patching(model, clean, corrupted, metric, "head_out_all_pos", direction="noise")
    direct = path_patch_to_logits(model, clean, corrupted, metric)
    assert torch.allclose(direct.per_window[1, :2], total.per_window[1], atol=1e-5)
    # The path into the (silent) last MLP changes its input but not the logits.
    heads = [f"blocks.1.attn.hook_z:h{h}" for h in range(2)]
    into_mlp = path_patch(model, clean, corrupted, heads, ["blocks.1.mlp.hook_pre"], metric)
    assert torch.allclose(into_mlp.per_window, into_mlp.clean, atol=1e-6)


def reference_path_patch(model, clean, corrupted, senders, receivers, metric) -> torch.Tensor:
    """Wang et al.'s three runs, literally, with the model's hooks: ``senders`` are ``(layer, head)`` or
    ``(layer, "mlp")``, ``receivers`` ``(hook_name, head or None)``."""
    with torch.inference_mode():
        _, clean_cache = model.run_with_cache(clean)
        _, corrupt_cache = model.run_with_cache(corrupted)

        def freeze(act, hook, layer):
            out = clean_cache[hook.name].clone()
            for sl, sh in senders:
                if sl == layer and sh == "mlp" and hook.name.endswith("mlp_out"):
                    out = corrupt_cache[hook.name].clone()
                elif sl == layer and sh != "mlp" and hook.name.endswith("hook_z"):
                    out[:, :, sh] = corrupt_cache[hook.name][:, :, sh]
            return out

        recorded = {}
        hooks = []
        for l in range(model.cfg.n_layers):
            hooks.append((f"blocks.{l}.attn.hook_z", functools.partial(freeze, layer=l)))
            hooks.append((f"blocks.{l}.hook_mlp_out", functools.partial(freeze, layer=l)))
        hooks += [
            (name, lambda act, hook: recorded.setdefault(hook.name, act.clone())) for name, _ in receivers
        ]
        model.run_with_hooks(clean, fwd_hooks=hooks)

        def patch(act, hook, head):
            out = act.clone()
            if head is None:
                return recorded[hook.name].clone()
            out[:, :, head] = recorded[hook.name][:, :, head]
            return out

        step3 = [(name, functools.partial(patch, head=head)) for name, head in receivers]
        return metric(model.run_with_hooks(clean, fwd_hooks=step3))


CASES = [
    ([(0, 0)], [("blocks.0.mlp.hook_pre", None), ("blocks.1.attn.hook_q", 0), ("blocks.1.attn.hook_v", 1)]),
    ([(0, "mlp"), (0, 1)], [("blocks.1.attn.hook_k", 0), ("blocks.1.mlp.hook_pre", None)]),
    ([(0, 1), (1, 0)], [("blocks.1.mlp.hook_pre", None)]),
]


@pytest.mark.parametrize("senders, receivers", CASES)
def test_path_patching_equals_the_three_runs_done_with_hooks(senders, receivers):
    model = make_model()
    clean, corrupted = pair()
    metric = metric_for(model)
    expected = reference_path_patch(model, clean, corrupted, senders, receivers, metric)
    send = [f"blocks.{l}.hook_mlp_out" if h == "mlp" else f"blocks.{l}.attn.hook_z:h{h}" for l, h in senders]
    recv = [name if h is None else f"{name}:h{h}" for name, h in receivers]
    got = path_patch(model, clean, corrupted, send, recv, metric)
    assert torch.allclose(got.per_window, expected, atol=1e-5)
    assert (got.per_window - got.clean).abs().max() > 1e-3


def test_explicit_paths_match_the_sweeps():
    model = make_model()
    clean, corrupted = pair()
    metric = metric_for(model)
    to_logits = path_patch_to_logits(model, clean, corrupted, metric)
    for sender, (l, col) in {
        Z01: (0, 1),
        "blocks.1.hook_mlp_out": (1, 2),
        "blocks.0.hook_mlp_out": (0, 2),
    }.items():
        one = path_patch(model, clean, corrupted, [sender], ["logits"], metric)
        assert torch.allclose(one.per_window, to_logits.per_window[l, col], atol=1e-6), sender
    keys = path_patch_to_heads(model, clean, corrupted, ["blocks.0.hook_mlp_out"], metric, "k")
    one = path_patch(model, clean, corrupted, ["blocks.0.hook_mlp_out"], ["blocks.1.attn.hook_k:h1"], metric)
    assert torch.allclose(one.per_window, keys.per_window[1, 1], atol=1e-6)
    assert not torch.allclose(one.per_window, one.clean, atol=1e-4)
    # All heads of a layer at once: hook_attn_out is hook_z without an index.
    layer = path_patch(model, clean, corrupted, ["blocks.0.hook_attn_out"], ["logits"], metric)
    heads = path_patch(model, clean, corrupted, ["blocks.0.attn.hook_z"], ["logits"], metric)
    assert torch.allclose(layer.per_window, heads.per_window, atol=1e-6)
    # Senders are a set: a head named again as part of its layer writes once.
    twice = path_patch(model, clean, corrupted, [Z00, "blocks.0.attn.hook_z"], ["logits"], metric)
    assert torch.allclose(twice.per_window, heads.per_window, atol=1e-6)
    # A last-layer neuron reaches the logits only directly: path patching is activation patching.
    neuron = path_patch(model, clean, corrupted, ["blocks.1.mlp.hook_post:n3"], ["logits"], metric)
    neurons = activation_patching(model, clean, corrupted, metric, "neuron_all_pos", direction="noise")
    assert torch.allclose(neuron.per_window, neurons.per_window[1, 3], atol=1e-5)
    # Denoising: identical runs give the base metric everywhere.
    same = path_patch_to_logits(model, clean, clean.clone(), metric, direction="denoise")
    assert torch.equal(same.per_window, same.clean.expand_as(same.per_window))


def test_path_patching_errors():
    model = make_model()
    clean, corrupted = pair()
    metric = metric_for(model)
    cases = [
        ([Z00], ["logits", "blocks.1.attn.hook_v:h0"], "cannot be combined"),
        (["blocks.0.hook_resid_pre"], ["logits"], "sender blocks.0.hook_resid_pre"),
        ([Z00], ["blocks.1.hook_attn_out"], "receiver blocks.1.hook_attn_out"),
    ]
    for senders, receivers, needle in cases:
        with pytest.raises(PathPatchingError) as info:
            path_patch(model, clean, corrupted, senders, receivers, metric)
        assert needle in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(PathPatchingError, match="component"):
        path_patch_to_heads(model, clean, corrupted, [Z00], metric, "z")
