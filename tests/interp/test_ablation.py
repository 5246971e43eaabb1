"""Ablation and component names: replacements land where they should, per position, and nowhere else."""

from __future__ import annotations

import copy
import functools

import pytest
import torch

from dtinterp.interp.ablation import (
    AblationError,
    ablate,
    ablated,
    ablation_hooks,
    ablation_values,
    derangement,
)
from dtinterp.interp.hooknames import ComponentError, parse_component, parse_components
from dtinterp.interp.metrics import LogProb
from dtinterp.model import DTInputs, HookedDecisionTransformer
from tests.interp.tiny import make_inputs, make_model


@functools.cache
def model() -> HookedDecisionTransformer:
    return make_model()


def capture(model: HookedDecisionTransformer, inputs: DTInputs, name: str, **ablation) -> torch.Tensor:
    """The activation at hook ``name`` as later hooks (and the rest of the model) see it."""
    seen = {}

    def save(t, hook):
        seen["t"] = t.clone()

    with ablated(model, **ablation), model.hooks(fwd_hooks=[(name, save)]), torch.inference_mode():
        model(inputs)
    return seen["t"]


# ----------------------------------------------------------------------------- component names

VALID = [
    ("blocks.1.attn.hook_z:h1", "z", 1, 1, 2),
    ("blocks.0.attn.hook_pattern:h0", "pattern", 0, 0, 1),
    ("blocks.1.attn.hook_q:h0", "q", 1, 0, 2),
    ("blocks.0.mlp.hook_post:n7", "post", 0, 7, 2),
    ("blocks.0.mlp.hook_pre", "pre", 0, None, 2),
    ("blocks.1.hook_attn_out", "attn_out", 1, None, None),
    ("blocks.0.hook_mlp_out", "mlp_out", 0, None, None),
    ("blocks.1.hook_resid_mid", "resid_mid", 1, None, None),
    ("hook_rtg_embed", "rtg_embed", None, None, None),
    ("hook_time_embed", "time_embed", None, None, None),
]


@pytest.mark.parametrize("name, site, layer, index, unit_axis", VALID)
def test_component_names_round_trip(name, site, layer, index, unit_axis):
    c = parse_component(name, model().cfg)
    assert (c.site, c.layer, c.index, c.unit_axis) == (site, layer, index, unit_axis)
    assert str(c) == name
    assert c.hook_name in model().hook_dict


BAD = [
    ("blocks.2.attn.hook_z:h0", "layer 2"),
    ("blocks.1.attn.hook_z:h2", "head 2"),
    ("blocks.0.mlp.hook_post:n8", "neuron 8"),
    ("blocks.0.mlp.hook_post:h1", ":n"),
    ("blocks.0.hook_attn_out:h1", "takes no"),
    ("blocks.0.attn.hook_zz:h1", "blocks.0.attn.hook_"),
    ("hook_banana_embed", "embedding hooks"),
    ("hook_rtg_embed:h0", "takes no index"),
    ("resid", "unknown component"),
]


@pytest.mark.parametrize("name, needle", BAD)
def test_bad_component_names_are_one_line_errors(name, needle):
    with pytest.raises(ComponentError) as info:
        parse_component(name, model().cfg)
    message = str(info.value)
    assert name in message and needle in message and "\n" not in message


def test_mlp_components_of_an_attention_only_model_are_errors():
    cfg = make_model(attn_only=True).cfg
    for name in ("blocks.0.hook_mlp_out", "blocks.0.mlp.hook_post:n1", "blocks.0.hook_resid_mid"):
        with pytest.raises(ComponentError, match="attention-only"):
            parse_component(name, cfg)
    with pytest.raises(ComponentError, match="no components"):
        parse_components([], cfg)


# ----------------------------------------------------------------------------- zero ablation


def test_zero_ablating_a_head_or_neuron_is_zeroing_its_output_weights():
    m, inputs = model(), make_inputs(4)
    edited = copy.deepcopy(m)
    with torch.no_grad():
        edited.blocks[1].attn.W_O[0] = 0.0
        edited.blocks[0].mlp.W_out[5] = 0.0
    with torch.inference_mode():
        expected = edited(inputs)
        with ablated(m, ["blocks.1.attn.hook_z:h0", "blocks.0.mlp.hook_post:n5"]):
            got = m(inputs)
        assert not torch.allclose(m(inputs), expected, atol=1e-3)
    assert torch.allclose(got, expected, atol=1e-5)


def test_hooks_never_outlive_their_block():
    m, inputs = model(), make_inputs(4)
    with pytest.raises(RuntimeError), ablated(m, ["blocks.0.hook_attn_out"]):
        raise RuntimeError("interrupted analysis")
    assert not any(hp.fwd_hooks for hp in m.hook_dict.values())
    result = ablate(m, inputs, ["blocks.0.attn.hook_pattern:h1"])
    assert not any(hp.fwd_hooks for hp in m.hook_dict.values())
    assert (result.effect > 0).all()  # KL from the unablated distribution
    assert result.mean_effect == pytest.approx(float(result.effect.mean()))


# ----------------------------------------------------------------------------- mean ablation


def test_mean_is_per_position_over_real_tokens():
    """RTG embeddings are ``rtg * W_rtg + b_rtg``: their mean at timestep k is known in closed form."""
    m = model()
    ref = make_inputs(B=4)
    ref.rtg = torch.tensor([[9.0, 0.1, 0.2], [0.3, 0.5, 0.7], [0.5, 0.6, 0.8], [0.7, 0.7, 0.9]])
    values = ablation_values(m, ["hook_rtg_embed"], "mean", ref)["hook_rtg_embed"]
    mean_rtg = torch.tensor([0.5, 0.475, 0.65])  # timestep 0 of window 0 is padding: its 9.0 is left out
    expected = mean_rtg[:, None] * m.W_rtg + m.b_rtg
    assert values.shape == (1, 3, 16)
    assert torch.allclose(values[0], expected.detach(), atol=1e-6)

    # The hook writes each position's own mean, for any batch size.
    for B in (1, 5):
        seen = capture(
            m,
            make_inputs(B, seed=B),
            "hook_rtg_embed",
            components=["hook_rtg_embed"],
            kind="mean",
            values={"hook_rtg_embed": values},
        )
        assert torch.allclose(seen, expected.detach().expand(B, 3, 16), atol=1e-6)


def test_mean_of_token_positions_and_attention_rows():
    m, ref = model(), make_inputs(B=4)
    names = ["blocks.1.hook_resid_pre", "blocks.0.attn.hook_pattern:h1"]
    values = ablation_values(m, names, "mean", ref)
    with torch.inference_mode():
        _, cache = m.run_with_cache(
            ref, names_filter=["blocks.1.hook_resid_pre", "blocks.0.attn.hook_pattern"]
        )
    resid = cache["blocks.1.hook_resid_pre"]  # [4, 8, d]; window 0's first 3 tokens are padding
    assert torch.allclose(values[names[0]][0, :3], resid[1:, :3].mean(0), atol=1e-6)
    assert torch.allclose(values[names[0]][0, 3:], resid[:, 3:].mean(0), atol=1e-6)
    pattern = cache["blocks.0.attn.hook_pattern"]  # [4, H, 8, 8]: mean over windows per query row
    assert torch.allclose(
        values["blocks.0.attn.hook_pattern"][0, :, 3:], pattern[:, :, 3:].mean(0), atol=1e-6
    )
    assert torch.allclose(values["blocks.0.attn.hook_pattern"][0].sum(-1), torch.ones(2, 8), atol=1e-5)
    seen = capture(
        m,
        make_inputs(2, seed=7),
        "blocks.0.attn.hook_pattern",
        components=[names[1]],
        kind="mean",
        values=values,
    )
    assert torch.allclose(seen[:, 1], values["blocks.0.attn.hook_pattern"][0, 1].expand(2, 8, 8), atol=1e-6)
    assert not torch.allclose(
        seen[:, 0], values["blocks.0.attn.hook_pattern"][0, 0].expand(2, 8, 8), atol=1e-3
    )


def test_mean_over_the_window_itself_changes_nothing():
    m, inputs = model(), make_inputs(B=2)
    metric = LogProb(3)
    one = inputs[1]
    result = ablate(m, one, ["blocks.0.hook_attn_out", "blocks.1.attn.hook_v:h0"], metric, kind="mean")
    assert torch.allclose(result.effect, torch.zeros(1), atol=1e-5)


# ----------------------------------------------------------------------------- resample ablation


def test_resample_takes_the_chosen_reference_windows():
    m, inputs, ref = model(), make_inputs(B=3), make_inputs(B=2, seed=5)
    name = "blocks.0.mlp.hook_post"
    values = ablation_values(m, [name + ":n2"], "resample", ref)
    index = torch.tensor([1, 0, 1])
    seen = capture(
        m, inputs, name, components=[name + ":n2"], kind="resample", values=values, resample_index=index
    )
    assert torch.allclose(seen[..., 2], values[name][index, :, 2], atol=1e-6)
    with torch.inference_mode():
        _, cache = m.run_with_cache(inputs, names_filter=[name])
    assert torch.allclose(seen[..., 3], cache[name][..., 3], atol=1e-6)  # other neurons untouched
    # Without an index, window b reads reference row b % R (a rollout's any-size batch).
    default = capture(m, inputs, name, components=[name + ":n2"], kind="resample", values=values)
    assert torch.allclose(default[..., 2], values[name][torch.tensor([0, 1, 0]), :, 2], atol=1e-6)


def test_resampling_within_the_batch_never_keeps_a_window_own_activation():
    perm = derangement(6, seed=3)
    assert sorted(perm.tolist()) == list(range(6)) and (perm != torch.arange(6)).all()
    assert torch.equal(perm, derangement(6, seed=3))
    m, inputs = model(), make_inputs(B=4)
    a = ablate(m, inputs, ["blocks.1.attn.hook_z:h1"], kind="resample", seed=1)
    b = ablate(m, inputs, ["blocks.1.attn.hook_z:h1"], kind="resample", seed=1)
    assert torch.equal(a.effect, b.effect) and (a.resample_index != torch.arange(4)).all()


def test_ablation_errors_are_one_line():
    m, inputs = model(), make_inputs(4)
    cases = [
        (lambda: ablate(m, inputs, ["blocks.0.hook_attn_out"], kind="half"), "half"),
        (lambda: ablation_hooks(m, ["blocks.0.hook_attn_out"], "mean"), "blocks.0.hook_attn_out"),
        (lambda: ablate(m, inputs[0], ["blocks.0.hook_attn_out"], kind="resample"), "at least 2"),
    ]
    for call, needle in cases:
        with pytest.raises(AblationError) as info:
            call()
        assert needle in str(info.value) and "\n" not in str(info.value)
    short = ablation_values(m, ["blocks.0.hook_attn_out"], "mean", make_inputs(4, K=2))
    with (
        pytest.raises(AblationError, match="another length"),
        ablated(m, ["blocks.0.hook_attn_out"], "mean", short),
    ):
        m(inputs)
