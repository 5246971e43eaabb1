"""Activation patching: every sweep equals TransformerLens' patching on the same model and inputs."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from transformer_lens import ActivationCache
from transformer_lens import patching as tlp

from dtinterp.errors import DtinterpError
from dtinterp.interp.metrics import (
    KLDivergence,
    LogitDiff,
    LogProb,
    MetricError,
    logit_diff,
    normalised_score,
)
from dtinterp.interp.patching import (
    SWEEPS,
    PatchingEngine,
    PatchingError,
    PatchSite,
    activation_patching,
    hook_name,
    patch_components,
    patch_resid_pre,
    record_activations,
    run_patches,
)
from dtinterp.model import DTInputs, HookedDecisionTransformer, token_labels
from tests.interp.tiny import make_inputs, make_model


def corrupt(inputs: DTInputs) -> DTInputs:
    """The counterfactual: other returns-to-go and one changed cell in the second state."""
    out = inputs.clone()
    out.rtg = 1.0 - out.rtg
    out.obs[:, 1, 3, 3, 0] = (out.obs[:, 1, 3, 3, 0] + 1) % 10
    return out


@functools.cache
def setup(kind: str = "LN", B: int = 3):
    model = make_model(**CONFIGS[kind])
    clean = make_inputs(B)
    corrupted = corrupt(clean)
    with torch.inference_mode():
        metric = logit_diff(model(clean), model(corrupted))
    return model, clean, corrupted, metric


CONFIGS = {
    "LN": {},
    "attn-only-noLN": dict(attn_only=True, normalization_type=None),
    "LNPre": dict(normalization_type="LNPre", act_fn="gelu"),
}


def tl_cache(model: HookedDecisionTransformer, inputs: DTInputs) -> ActivationCache:
    with torch.inference_mode():
        return ActivationCache(model.run_with_cache(inputs)[1], model)


def tl_neuron_sweep(model, base, source_cache, metric, by_pos: bool) -> torch.Tensor:
    """TL's generic patch of single MLP neurons (it has no named function for them)."""
    axes = ["layer", "pos", "head"] if by_pos else ["layer", "head"]
    ranges = (
        [model.cfg.n_layers, base.shape[1], model.cfg.d_mlp]
        if by_pos
        else [model.cfg.n_layers, model.cfg.d_mlp]
    )
    setter = tlp.layer_pos_head_vector_patch_setter if by_pos else tlp.layer_head_vector_patch_setter
    out = tlp.generic_activation_patch(
        model, base, source_cache, metric, setter, "post", index_df=tlp.make_df_from_ranges(ranges, axes)
    )
    return out.reshape(ranges)


TL_SWEEPS = {
    "resid_pre": tlp.get_act_patch_resid_pre,
    "resid_mid": tlp.get_act_patch_resid_mid,
    "resid_post": functools.partial(
        tlp.generic_activation_patch,
        patch_setter=tlp.layer_pos_patch_setter,
        activation_name="resid_post",
        index_axis_names=("layer", "pos"),
    ),
    "attn_out": tlp.get_act_patch_attn_out,
    "mlp_out": tlp.get_act_patch_mlp_out,
    "head_out_by_pos": tlp.get_act_patch_attn_head_out_by_pos,
    "head_out_all_pos": tlp.get_act_patch_attn_head_out_all_pos,
    "head_q_by_pos": tlp.get_act_patch_attn_head_q_by_pos,
    "head_k_by_pos": tlp.get_act_patch_attn_head_k_by_pos,
    "head_v_by_pos": tlp.get_act_patch_attn_head_v_by_pos,
    "head_q_all_pos": tlp.get_act_patch_attn_head_q_all_pos,
    "head_k_all_pos": tlp.get_act_patch_attn_head_k_all_pos,
    "head_v_all_pos": tlp.get_act_patch_attn_head_v_all_pos,
    "head_pattern_by_pos": tlp.get_act_patch_attn_head_pattern_by_pos,
    "head_pattern_all_pos": tlp.get_act_patch_attn_head_pattern_all_pos,
    "neuron_by_pos": functools.partial(tl_neuron_sweep, by_pos=True),
    "neuron_all_pos": functools.partial(tl_neuron_sweep, by_pos=False),
    "block_every": tlp.get_act_patch_block_every,
    "head_all_pos_every": tlp.get_act_patch_attn_head_all_pos_every,
    "head_by_pos_every": tlp.get_act_patch_attn_head_by_pos_every,
}


def tl_reference(kind: str, sweep: str, direction: str) -> torch.Tensor:
    model, clean, corrupted, metric = setup(kind)
    base, source = (corrupted, clean) if direction == "denoise" else (clean, corrupted)
    with torch.inference_mode():
        return TL_SWEEPS[sweep](model, base, tl_cache(model, source), lambda logits: metric(logits).mean())


def test_every_sweep_has_a_reference():
    assert set(TL_SWEEPS) == set(SWEEPS)


def test_recorded_run_matches_the_model_and_its_hooks():
    model, clean, _, _ = setup()
    run = record_activations(model, clean, embeddings=True)
    cache = tl_cache(model, clean)
    with torch.inference_mode():
        assert torch.allclose(run.logits, model(clean), atol=1e-6)
    for (layer, site), act in run.acts.items():
        assert torch.allclose(act, cache[hook_name(layer, site)], atol=1e-6), (layer, site)


@pytest.mark.parametrize("sweep", SWEEPS)
def test_sweep_equals_transformer_lens(sweep):
    model, clean, corrupted, metric = setup()
    result = activation_patching(model, clean, corrupted, metric, sweep)
    expected = tl_reference("LN", sweep, "denoise")
    assert result.values.shape == expected.shape
    assert (result.values - expected).abs().max() <= 1e-5
    assert result.values.abs().max() > 0.1  # the comparison is not vacuous
    assert torch.allclose(result.values, result.per_window.mean(-1))


NOISING = [
    ("LN", "resid_pre"), ("LN", "head_all_pos_every"), ("LN", "neuron_by_pos"),
    ("attn-only-noLN", "attn_out"), ("attn-only-noLN", "head_by_pos_every"),
    ("LNPre", "resid_mid"), ("LNPre", "head_all_pos_every"),
]  # fmt: skip


@pytest.mark.parametrize("kind, sweep", NOISING)
def test_noising_equals_transformer_lens(kind, sweep):
    model, clean, corrupted, metric = setup(kind)
    result = activation_patching(model, clean, corrupted, metric, sweep, direction="noise")
    assert (result.values - tl_reference(kind, sweep, "noise")).abs().max() <= 1e-5


def test_batched_equals_one_window_at_a_time():
    model, clean, corrupted, metric = setup()
    batched = activation_patching(model, clean, corrupted, metric, "head_by_pos_every")
    for b in range(clean.batch_size):
        one = LogitDiff(metric.good[b : b + 1], metric.bad[b : b + 1])
        single = activation_patching(model, clean[b], corrupted[b], one, "head_by_pos_every")
        assert (batched.per_window[..., b] - single.per_window[..., 0]).abs().max() <= 1e-5


@pytest.mark.parametrize("direction", ["noise", "denoise"])
def test_identical_runs_change_nothing(direction):
    model, clean, _, metric = setup()
    for sweep in ("block_every", "head_by_pos_every", "neuron_all_pos"):
        result = activation_patching(model, clean, clean.clone(), metric, sweep, direction=direction)
        assert torch.equal(result.per_window, result.clean.expand_as(result.per_window))
        assert torch.isnan(result.normalised()).all()  # no clean/corrupted gap to measure on


@pytest.mark.parametrize("limits", [dict(max_bytes=1), dict(max_batch=7), dict(max_bytes=40_000)])
def test_chunking_does_not_change_results(limits):
    model, clean, corrupted, metric = setup()
    for sweep in ("block_every", "head_by_pos_every"):
        whole = activation_patching(model, clean, corrupted, metric, sweep)
        chunked = activation_patching(model, clean, corrupted, metric, sweep, **limits)
        assert (whole.per_window - chunked.per_window).abs().max() <= 1e-5


def test_labels_and_normalised_score():
    model, clean, corrupted, metric = setup()
    result = patch_resid_pre(model, clean, corrupted, metric)
    assert result.axis_names == ("layer", "pos")
    assert result.axis_labels == {"layer": ["L0", "L1"], "pos": token_labels(3)}
    every = activation_patching(model, clean, corrupted, metric, "head_by_pos_every")
    assert every.axis_labels["patch_type"] == ["out", "q", "k", "v", "pattern"]
    assert every.axis_labels["head"] == ["H0", "H1"]
    # Patching the whole residual stream before block 0 is the clean run: normalised score 1.
    whole = patch_components(model, clean, corrupted, ["blocks.0.hook_resid_pre"], metric)
    assert torch.allclose(whole.per_window[0], whole.clean, atol=1e-5)
    assert torch.allclose(whole.normalised(per_window=True), torch.ones(1, 3), atol=1e-4)


def test_named_components_match_the_sweeps():
    model, clean, corrupted, metric = setup()
    heads = activation_patching(model, clean, corrupted, metric, "head_out_by_pos")
    all_pos = activation_patching(model, clean, corrupted, metric, "head_out_all_pos")
    one = patch_components(
        model, clean, corrupted, ["blocks.0.attn.hook_z:h1", "blocks.1.attn.hook_z:h0"], metric
    )
    assert one.axis_labels["patch"] == ["blocks.0.attn.hook_z:h1", "blocks.1.attn.hook_z:h0"]
    assert torch.allclose(one.per_window, all_pos.per_window[[0, 1], [1, 0]], atol=1e-6)
    at4 = patch_components(model, clean, corrupted, ["blocks.0.attn.hook_z:h1"], metric, positions=[4])
    assert torch.allclose(at4.per_window[0], heads.per_window[0, 4, 1], atol=1e-6)
    # An embedding kind is the token embedding at its tokens: with the same timesteps, patching the RTG
    # embeddings is patching the residual stream before block 0 at the R tokens.
    rtg = patch_components(model, clean, corrupted, ["hook_rtg_embed"], metric)
    resid = patch_components(
        model, clean, corrupted, ["blocks.0.hook_resid_pre"], metric, positions=[0, 3, 6]
    )
    assert torch.allclose(rtg.per_window, resid.per_window, atol=1e-6)
    assert not torch.allclose(rtg.per_window[0], rtg.corrupted, atol=1e-3)
    together = patch_components(model, clean, corrupted, [["hook_rtg_embed", "hook_state_embed"]], metric)
    assert torch.allclose(together.per_window[0], together.clean, atol=1e-5)  # the inputs differ nowhere else


def test_errors_are_one_line_and_name_the_input():
    model, clean, corrupted, metric = setup()
    cases = [
        (lambda: activation_patching(model, clean, corrupted, metric, "resid_sideways"), "resid_sideways"),
        (lambda: activation_patching(model, clean, corrupted, metric, direction="sideways"), "sideways"),
        (lambda: activation_patching(model, clean, corrupted[:2], metric), "differ in shape"),
        (lambda: activation_patching(model, clean, corrupted, lambda logits: logits.sum()), "metric"),
        (lambda: patch_components(model, clean, corrupted, ["blocks.0.attn.hook_z:h5"], metric), "h5"),
        (
            lambda: patch_components(
                model, clean, corrupted, ["blocks.0.hook_resid_pre"], metric, positions=[99]
            ),
            "99",
        ),
    ]
    for call, needle in cases:
        with pytest.raises(DtinterpError) as info:
            call()
        assert needle in str(info.value) and "\n" not in str(info.value)
    attn_only = make_model(attn_only=True)
    with pytest.raises(PatchingError, match="attention-only"):
        activation_patching(attn_only, clean, corrupted, metric, "mlp_out")


MULTI_SITE = [
    [PatchSite(0, "z", 4, 0), PatchSite(0, "z", 4, 1)],
    [PatchSite(0, "pattern", 4, 1), PatchSite(0, "mlp_out", 4)],
    [PatchSite(0, "q", 7, 0), PatchSite(0, "post", 7, 3), PatchSite(0, "resid_post", 7)],
    [PatchSite(0, "attn_out", 4), PatchSite(1, "resid_pre", 7)],
    [PatchSite(1, "k", 2, 0), PatchSite(0, "z", 5, 1)],
    [PatchSite(1, "pattern", 7, 0), PatchSite(1, "v", None, 1)],
]


def hooked_patch(model, base, source_cache, patch) -> torch.Tensor:
    """The logits of ``base`` with ``patch``'s sites overwritten through the model's own hooks."""

    def overwrite(act, hook, ps):
        out = act.clone()
        pos = slice(None) if ps.pos is None else ps.pos
        unit = slice(None) if ps.unit is None else ps.unit
        index = (slice(None), unit, pos) if ps.site == "pattern" else (slice(None), pos, unit)
        out[index] = source_cache[hook.name][index]
        return out

    hooks = [(hook_name(ps.layer, ps.site), functools.partial(overwrite, ps=ps)) for ps in patch]
    with torch.inference_mode():
        return model.run_with_hooks(base, fwd_hooks=hooks)


def test_patches_of_several_sites_equal_hooked_runs():
    model, clean, corrupted, metric = setup()
    engine = PatchingEngine(model, clean, corrupted)
    got = engine.run(MULTI_SITE, metric)
    cache = tl_cache(model, clean)
    for patch, values in zip(MULTI_SITE, got):
        expected = metric(hooked_patch(model, corrupted, cache, patch))
        assert torch.allclose(values, expected, atol=1e-5), patch
        assert (expected - metric(engine.corrupted_run.logits)).abs().max() > 1e-4, patch


def test_a_downstream_site_set_to_the_base_value_blocks_an_upstream_patch():
    """Writing the base's own value is a no-op alone, but not when an upstream site of the patch changed."""
    model, _, corrupted, metric = setup()
    base = record_activations(model, corrupted)
    source = dict(base.acts)
    source[(0, "attn_out")] = torch.zeros_like(base[(0, "attn_out")])
    upstream = PatchSite(0, "attn_out")
    pinned = [PatchSite(1, "resid_pre")]  # the source's resid_pre of layer 1 is the base's
    values = run_patches(model, base, source, [[upstream], pinned, [upstream, *pinned]], metric)
    base_metric = metric(base.logits)
    assert (values[0] - base_metric).abs().min() > 1e-3
    assert torch.equal(values[1], base_metric)
    assert torch.allclose(values[2], base_metric, atol=1e-6)


def test_engine_reuses_recorded_runs_across_sweeps():
    model, clean, corrupted, metric = setup()
    engine = PatchingEngine(model, clean, corrupted)
    block = engine.sweep("block_every", metric)
    assert torch.allclose(block.values[0], engine.sweep("resid_pre", metric).values, atol=1e-6)


# ----------------------------------------------------------------------------- metrics


def test_metrics_read_one_state_token_and_broadcast_leading_axes():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 3, 4, 7, generator=g)  # [patch, B, K, A]
    good, bad = torch.tensor([0, 1, 2]), torch.tensor([3, 3, 6])
    diff = LogitDiff(good, bad, k=2)(logits)
    assert diff.shape == (5, 3)
    assert torch.equal(diff[:, 1], logits[:, 1, 2, 1] - logits[:, 1, 2, 3])
    assert torch.equal(LogitDiff(4, 5)(logits), logits[..., -1, 4] - logits[..., -1, 5])
    assert torch.allclose(LogProb(good)(logits)[:, 2], logits[:, 2, -1].log_softmax(-1)[:, 2])
    kl = KLDivergence(logits[0])
    assert torch.allclose(kl(logits[0]), torch.zeros(3), atol=1e-6)
    assert (kl(logits[1:]) > 0).all()
    for bad_call in (
        lambda: LogProb(7)(logits),
        lambda: LogProb(0, k=4)(logits),
        lambda: LogitDiff(good[:2], 0)(logits),
    ):
        with pytest.raises(MetricError):
            bad_call()


def test_default_logit_diff_and_normalised_score():
    clean = torch.tensor([[[0.0, 3.0, 1.0]], [[2.0, 0.0, 1.0]]])  # [B=2, K=1, A=3]
    corrupted = torch.tensor([[[5.0, 0.0, 1.0]], [[3.0, 0.0, 2.5]]])
    metric = logit_diff(clean, corrupted)
    assert metric.good.tolist() == [1, 0]
    assert metric.bad.tolist() == [0, 2]  # window 1: both runs pick 0, so the corrupted runner-up
    m_clean, m_corr = metric(clean), metric(corrupted)
    assert torch.equal(normalised_score(m_clean, m_clean, m_corr), torch.ones(2))
    assert torch.equal(normalised_score(m_corr, m_clean, m_corr), torch.zeros(2))
    assert math.isnan(float(normalised_score(torch.tensor(1.0), torch.tensor(2.0), torch.tensor(2.0))))
