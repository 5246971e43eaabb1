"""Direct logit attribution: a complete, exact decomposition of the action logits."""

from __future__ import annotations

import pytest
import torch
from transformer_lens import ActivationCache

from dtinterp.interp.attribution import GRANULARITIES, direct_logit_attribution, dla_hook_names
from dtinterp.model import HookedDecisionTransformer, state_positions
from tests.interp import tiny
from tests.interp.tiny import make_inputs

CONFIGS = {
    "LN": dict(normalization_type="LN"),
    "LNPre": dict(normalization_type="LNPre"),
    "none": dict(normalization_type=None, act_fn="gelu"),
    "attn-only": dict(attn_only=True),
}


def make_model(**kw) -> HookedDecisionTransformer:
    """The shared tiny DT (non-zero biases, so the bias row is exercised) with a wider MLP and the
    default weight scale, at which the float32 comparisons below hold to 1e-5."""
    return tiny.make_model(**{"d_mlp": 24, "init_range": 0.02, **kw})


def cached(model, inputs, names_filter=None):
    with torch.inference_mode():
        logits, raw = model.run_with_cache(inputs, names_filter=names_filter)
    return logits, ActivationCache(raw, model)


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_contributions_sum_to_logits(name, granularity):
    model = make_model(**CONFIGS[name])
    inputs = make_inputs()
    logits, cache = cached(model, inputs)
    contrib, labels = direct_logit_attribution(model, cache, granularity)
    assert contrib.shape[0] == len(labels) == len(set(labels))
    assert contrib.shape[1:] == logits.shape
    torch.testing.assert_close(contrib.sum(0) + model.b_U, logits, atol=1e-4, rtol=0)
    # The same holds from a cache holding only the activations the attribution declares it reads.
    _, small = cached(model, inputs, names_filter=dla_hook_names(model, granularity))
    torch.testing.assert_close(direct_logit_attribution(model, small, granularity)[0], contrib)


def test_components_and_granularities_agree():
    model = make_model()
    inputs = make_inputs()
    _, cache = cached(model, inputs)
    by = {g: dict(zip(*reversed(direct_logit_attribution(model, cache, g)))) for g in GRANULARITIES}
    assert list(by["layer"]) == [
        "state_embed", "time_embed", "L0_attn", "L0_mlp", "L1_attn", "L1_mlp", "bias",
    ]  # fmt: skip
    for l in range(2):
        heads = sum(by["head"][f"L{l}H{h}"] for h in range(2))
        torch.testing.assert_close(heads, by["layer"][f"L{l}_attn"], atol=1e-5, rtol=0)
        neurons = sum(by["neuron"][f"L{l}N{n}"] for n in range(24))
        torch.testing.assert_close(neurons, by["layer"][f"L{l}_mlp"], atol=1e-5, rtol=0)
        torch.testing.assert_close(by["head"][f"L{l}_mlp"], by["layer"][f"L{l}_mlp"])
    for shared in ("state_embed", "time_embed", "bias"):
        torch.testing.assert_close(by["neuron"][shared], by["layer"][shared])


def test_heads_match_transformer_lens_stack_head_results():
    """Our projected head rows equal TL's ``stack_head_results`` + ``apply_ln_to_stack`` @ W_U."""
    model = make_model()
    inputs = make_inputs()
    _, cache = cached(model, inputs)
    pos = slice(1, None, 3)
    with torch.inference_mode():
        stack, tl_labels = cache.stack_head_results(-1, return_labels=True, pos_slice=pos, apply_ln=True)
        expected = stack @ model.W_U  # [H_total, B, K, A]
    contrib, labels = direct_logit_attribution(model, cache, "head")
    ours = torch.stack([contrib[labels.index(lbl)] for lbl in tl_labels])
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


def test_embedding_kind_follows_token_position():
    """At R positions the token embedding is the RTG embedding; the decomposition holds at any position."""
    model = make_model()
    inputs = make_inputs()
    _, cache = cached(model, inputs)
    positions = [0, 1, 2, 3, 4]  # R1 S1 A1 R2 S2
    contrib, labels = direct_logit_attribution(model, cache, "layer", positions=positions)
    assert labels[:4] == ["rtg_embed", "state_embed", "action_embed", "time_embed"]
    rtg, state, action = contrib[0], contrib[1], contrib[2]
    assert torch.all(rtg[:, [1, 2, 4]] == 0) and torch.all(state[:, [0, 2, 3]] == 0)
    assert torch.all(action[:, [0, 1, 3, 4]] == 0)
    assert rtg[:, [0, 3]].abs().amin() > 0 and action[:, 2].abs().amin() > 0
    # What each position would predict if read out there: ln_final then W_U.
    resid = cache["blocks.1.hook_resid_post"][:, positions]
    expected = model.ln_final(resid) @ model.W_U + model.b_U
    torch.testing.assert_close(contrib.sum(0) + model.b_U, expected, atol=1e-4, rtol=0)


def test_default_positions_are_state_tokens_and_bad_input_is_rejected():
    model = make_model()
    _, cache = cached(model, make_inputs())
    a, _ = direct_logit_attribution(model, cache)
    b, _ = direct_logit_attribution(model, cache, positions=state_positions(3))
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="granularity"):
        direct_logit_attribution(model, cache, "block")
    with pytest.raises(ValueError, match="positions"):
        direct_logit_attribution(model, cache, positions=[8])
