"""Feature dashboards: histogram, top windows, direct logit effect, the sorted list and the Play-tab lines."""

from __future__ import annotations

import math

import pytest
import torch

from dtinterp.interp.directions import DirectionLibrary, SavedDirection
from dtinterp.interp.feature_dashboard import (
    FeatureError,
    feature_dashboard,
    feature_list,
    play_interventions,
    resolve_feature,
    search_rows,
    sort_rows,
)
from dtinterp.interp.interventions import parse_intervention
from dtinterp.interp.sae import SAEConfig, TopKSAE, feature_ref
from dtinterp.model.checkpoint import Checkpoint
from tests.plugins.conftest import META, _cached_windows, _random_model

LAST = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def ckpt() -> Checkpoint:
    return Checkpoint.from_model(_random_model(), dict(META))


@pytest.fixture(scope="module")
def inputs():
    return _cached_windows(6, 4, 10, 1)  # the first window left-padded by one timestep


@pytest.fixture(scope="module")
def cache(ckpt, inputs):
    with torch.inference_mode():
        return ckpt.model.run_with_cache(inputs)[1]


@pytest.fixture
def library(tmp_path, monkeypatch) -> DirectionLibrary:
    monkeypatch.setenv("DTINTERP_DIRECTIONS_DIR", str(tmp_path / "directions"))
    lib = DirectionLibrary()
    g = torch.Generator().manual_seed(1)
    lib.save(
        SavedDirection(
            "probe:cue@L0",
            torch.randn(32, generator=g) * 3,
            "custom",
            metadata={"hook": "blocks.0.hook_resid_mid"},
        )
    )
    lib.save(SavedDirection("other", torch.randn(32, generator=g), "custom"))
    return lib


@pytest.fixture(scope="module")
def sae_dir(ckpt, inputs, cache, tmp_path_factory) -> str:
    """A 16-latent TopK SAE at the last residual stream, initialised on the windows' activations."""
    sae = TopKSAE(SAEConfig(d_in=32, n_latents=16, k=4, hook=LAST, positions=[1, 4, 7, 10]))
    sae.init_from(cache[LAST][:, 1::3].reshape(-1, 32), seed=3)
    with torch.no_grad():
        sae.b_enc.fill_(0.5)  # every latent fires on some tokens
    return str(sae.save(tmp_path_factory.mktemp("sae") / "sae"))


def _projection(ckpt, inputs, hook: str, v: torch.Tensor) -> torch.Tensor:
    """``[B, K]`` projections on the unit ``v`` at the state tokens, from a fresh ``run_with_cache``."""
    with torch.inference_mode():
        _, fresh = ckpt.model.run_with_cache(inputs, names_filter=[hook])
    return fresh[hook][:, 1::3] @ (v / v.norm())


@pytest.mark.parametrize("text", ["forward-left", "saved:probe:cue@L0", "sae"])
def test_histogram_counts_every_read_token_and_the_top_windows_are_the_largest(
    ckpt, inputs, cache, library, sae_dir, text
):
    text = feature_ref(sae_dir, 5) if text == "sae" else text
    feature = resolve_feature(text, ckpt)
    dash = feature_dashboard(ckpt, inputs, cache, feature, n_bins=7, top_k=5)
    n_real = int(inputs.pad_mask.sum())
    assert dash.n_read == n_real == 23 and int(dash.hist_counts.sum()) == n_real
    assert dash.hist_counts.shape == (7,) and dash.hist_edges.shape == (8,)

    if feature.sae is None:  # recomputed independently: the projection on the unit direction
        assert feature.hook == ("blocks.0.hook_resid_mid" if text.startswith("saved:") else LAST)
        fresh = _projection(ckpt, inputs, feature.hook, feature.write)
    else:
        with torch.inference_mode():
            _, c = ckpt.model.run_with_cache(inputs, names_filter=[LAST])
            fresh = feature.sae.latents(c[LAST][:, 1::3].reshape(-1, 32))[:, 5].reshape(6, 4)
    fresh = fresh.masked_fill(~inputs.pad_mask, -math.inf)
    torch.testing.assert_close(dash.values[inputs.pad_mask], fresh[inputs.pad_mask])
    top = dash.top_values
    assert len(top) >= 1 and torch.all(top[:-1] >= top[1:])
    torch.testing.assert_close(top[0], fresh.max())
    torch.testing.assert_close(top, fresh[dash.top_windows, dash.top_timesteps])
    shown = {(int(b), int(t)) for b, t in zip(dash.top_windows, dash.top_timesteps)}
    for b, t in zip(*torch.nonzero(inputs.pad_mask, as_tuple=True)):
        if (int(b), int(t)) not in shown and fresh[b, t] > top[-1]:  # only a repeat of a shown step
            key = (inputs.obs[b, t].tolist(), int(inputs.directions[b, t]), int(inputs.timesteps[b, t]))
            assert any(
                key
                == (
                    inputs.obs[sb, st].tolist(),
                    int(inputs.directions[sb, st]),
                    int(inputs.timesteps[sb, st]),
                )
                for sb, st in shown
            )


def test_logit_effect_is_the_vector_through_the_centred_unembedding_with_the_scale_frozen(
    ckpt, inputs, cache, library, sae_dir
):
    model = ckpt.model
    W_U = model.W_U.detach()
    centred = W_U - W_U.mean(0, keepdim=True)  # the final LN subtracts the mean of its input
    read = inputs.pad_mask
    s = cache["ln_final.hook_scale"][:, 1::3, 0][read]
    for text in ("forward", "saved:other", feature_ref(sae_dir, 2)):
        feature = resolve_feature(text, ckpt, LAST if text == "saved:other" else "")
        dash = feature_dashboard(ckpt, inputs, cache, feature)
        w = feature.sae.W_dec[2].detach() if feature.sae is not None else feature.write / feature.write.norm()
        torch.testing.assert_close(dash.logit_effect_unscaled, w @ centred)
        torch.testing.assert_close(dash.logit_effect, (w @ centred) * (1 / s).mean())
        assert dash.ln_scale == pytest.approx(float(1 / (1 / s.double()).mean()))

    # Adding e units along the direction after the last block, with each token's final scale frozen,
    # moves the logits by e x the effect on average over the read tokens (and by e x unscaled / s at each).
    feature = resolve_feature("forward-left", ckpt)
    dash = feature_dashboard(ckpt, inputs, cache, feature)
    e = 0.7
    frozen = cache["ln_final.hook_scale"].clone()

    def add(act, hook):
        out = act.clone()
        out[:, 1::3] += e * feature.write.to(act)
        return out

    with torch.inference_mode():
        before = model.run_with_hooks(inputs, fwd_hooks=[("ln_final.hook_scale", lambda a, hook: frozen)])
        after = model.run_with_hooks(
            inputs, fwd_hooks=[(LAST, add), ("ln_final.hook_scale", lambda a, hook: frozen)]
        )
    delta = (after - before)[read]  # [n, A]
    torch.testing.assert_close(delta, e * dash.logit_effect_unscaled[None] / s[:, None], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(delta.mean(0), e * dash.logit_effect, atol=1e-4, rtol=1e-4)


def test_the_list_is_sorted_as_asked_and_searched_by_id_or_action(ckpt, inputs, cache, library, sae_dir):
    feature = resolve_feature(feature_ref(sae_dir, 3), ckpt)
    dash = feature_dashboard(ckpt, inputs, cache, feature)
    rows, note = feature_list(ckpt, cache, feature, dash.read, dash.ln_scale)
    assert not note and [r.id for r in rows] == [f"f{i}" for i in range(16)]
    mine = rows[3]
    assert mine.text == feature.text and mine.frequency == pytest.approx(
        float((dash.values[dash.read] > 0).double().mean())
    )
    assert mine.top_logit_effect == pytest.approx(float(dash.logit_effect[dash.logit_effect.abs().argmax()]))
    by_freq = sort_rows(rows, "frequency")
    assert [r.frequency for r in by_freq] == sorted((r.frequency for r in rows), reverse=True)
    by_effect = sort_rows(rows, "logit-effect")
    assert [abs(r.top_logit_effect) for r in by_effect] == sorted(
        (abs(r.top_logit_effect) for r in rows), reverse=True
    )
    assert {r.id for r in by_freq} == {r.id for r in rows}  # a permutation
    assert [r.id for r in search_rows(by_freq, "f3")] == ["f3"] == [r.id for r in search_rows(by_freq, "3")]
    action = rows[0].top_action
    assert [r.id for r in search_rows(rows, action)] == [r.id for r in rows if r.top_action == action]
    assert [r.id for r in search_rows(rows, f"1, {action}")] == [
        r.id for r in rows if r.id == "f1" or r.top_action == action
    ]
    assert search_rows(rows, "  ") == rows and search_rows(rows, "nothing-like-this") == []
    with pytest.raises(FeatureError, match="sort must be one of"):
        sort_rows(rows, "max")

    # A direction's siblings: the action readouts and the saved directions that fit, each at its hook.
    direction = resolve_feature("saved:other", ckpt)
    d2 = feature_dashboard(ckpt, inputs, cache, direction)
    rows, _ = feature_list(ckpt, cache, direction, d2.read, d2.ln_scale)
    assert [r.id for r in rows] == ["other", *(f"readout:{a}" for a in ckpt.action_names), "probe:cue@L0"]
    assert rows[-1].hook == "blocks.0.hook_resid_mid" and rows[0].hook == LAST
    u = library.load("probe:cue@L0").vector
    fresh = _projection(ckpt, inputs, "blocks.0.hook_resid_mid", u)[inputs.pad_mask]
    assert rows[-1].max == pytest.approx(float(fresh.max()), rel=1e-5)
    assert rows[-1].frequency == pytest.approx(float((fresh > 0).double().mean()))


def test_suggested_lines_parse_and_steering_by_zero_changes_nothing(ckpt, inputs, cache, library, sae_dir):
    def logits(hooks=()):
        with torch.inference_mode(), ckpt.model.hooks(fwd_hooks=list(hooks)):
            return ckpt.model(inputs)

    clean = logits()
    for text in ("forward", "saved:probe:cue@L0", feature_ref(sae_dir, 1)):
        feature = resolve_feature(text, ckpt)
        dash = feature_dashboard(ckpt, inputs, cache, feature)
        lines = play_interventions(feature, dash)
        assert [label.split()[0] for label, _ in lines] == ["Steer", "Steer", "Ablate"]
        for _, line in lines:
            how = parse_intervention(line, ckpt)
            assert not torch.allclose(logits(how.hooks), clean), line
        steer = lines[0][1]
        c = float(steer.rsplit(" x ", 1)[1])
        # the default coefficient moves the feature by the largest size of its values seen
        assert c * feature.steer_norm == pytest.approx(float(dash.values[dash.read].abs().max()), rel=2e-3)
        zero = parse_intervention(steer.rsplit(" x ", 1)[0] + " x 0", ckpt)
        torch.testing.assert_close(logits(zero.hooks), clean)
    assert play_interventions(feature, dash, coefficient=-2.5)[0][1].endswith(" x 2.5")


def test_directional_ablation_projects_the_direction_out_at_state_tokens(ckpt, inputs, library):
    how = parse_intervention("zero: saved:probe:cue@L0 @ blocks.0.hook_resid_mid", ckpt)
    u = library.load("probe:cue@L0").vector
    u = u / u.norm()
    seen = {}

    def grab(act, hook):
        seen["act"] = act.clone()

    with torch.inference_mode(), ckpt.model.hooks(fwd_hooks=[*how.hooks, ("blocks.0.hook_resid_mid", grab)]):
        ckpt.model(inputs)
    act = seen["act"]
    torch.testing.assert_close(act[:, 1::3] @ u, torch.zeros(6, 4), atol=1e-5, rtol=0)
    with torch.inference_mode():
        _, c = ckpt.model.run_with_cache(inputs, names_filter=["blocks.0.hook_resid_mid"])
    other = [p for p in range(act.shape[1]) if p % 3 != 1]
    torch.testing.assert_close(act[:, other], c["blocks.0.hook_resid_mid"][:, other])  # R and A untouched


@pytest.mark.parametrize(
    "text, hook, fragment",
    [
        ("saved:no-such", "", "no-such"),
        ("forward", "blocks.1.attn.hook_z", "not a residual-stream hook"),
        ("sae", "blocks.0.hook_resid_post", "leave the hook empty"),
        ("sae:/no/such/dir#3", "", "cannot read the SAE"),
        ("sae-99", "", "latents 0..15"),
        ("sae:nohash", "", "does not name an SAE feature"),
    ],
)
def test_bad_features_are_one_line_errors(ckpt, library, sae_dir, text, hook, fragment):
    text = {"sae": feature_ref(sae_dir, 0), "sae-99": feature_ref(sae_dir, 99)}.get(text, text)
    with pytest.raises(FeatureError, match=fragment) as err:
        resolve_feature(text, ckpt, hook)
    assert "\n" not in str(err.value)


def test_an_sae_at_an_mlp_writes_through_w_out_and_is_only_ablated(ckpt, inputs, cache, tmp_path):
    hook = "blocks.0.mlp.hook_post"
    sae = TopKSAE(SAEConfig(d_in=64, n_latents=8, k=2, hook=hook, positions=[1, 4, 7, 10]))
    sae.init_from(cache[hook][:, 1::3].reshape(-1, 64), seed=0)
    feature = resolve_feature(feature_ref(sae.save(tmp_path / "mlp-sae"), 3), ckpt)
    dash = feature_dashboard(ckpt, inputs, cache, feature)
    W_U = ckpt.model.W_U.detach()
    want = feature.sae.W_dec[3].detach() @ ckpt.model.blocks[0].mlp.W_out.detach() @ (W_U - W_U.mean(0))
    torch.testing.assert_close(dash.logit_effect_unscaled, want)
    lines = play_interventions(feature, dash)
    assert not feature.steerable and [line for _, line in lines] == [f"zero: {feature.text}"]
    assert parse_intervention(lines[0][1], ckpt).hooks[0][0] == hook
