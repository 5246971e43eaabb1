"""Interventions typed as one line: they do what they name, and bad lines are one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dtinterp.interp.ablation import ablated
from dtinterp.interp.directions import DirectionLibrary, SavedDirection
from dtinterp.interp.interventions import InterventionError, parse_intervention
from dtinterp.interp.sae import SAEConfig, TopKSAE
from dtinterp.model.checkpoint import Checkpoint
from tests.plugins.conftest import META, _cached_windows, _random_model


@pytest.fixture(scope="module")
def ckpt() -> Checkpoint:
    return Checkpoint.from_model(_random_model(), dict(META))


def _logits(ckpt, inputs, hooks=()):
    with torch.inference_mode(), ckpt.model.hooks(fwd_hooks=list(hooks)):
        return ckpt.model(inputs)


def test_zero_and_mean_ablation_equal_the_ablation_library(ckpt):
    inputs = _cached_windows(4, 4, 1, 0)
    for line, kind, values in (
        ("zero: blocks.1.attn.hook_z:h1, blocks.0.mlp.hook_post:n3", "zero", None),
        ("mean:  blocks.0.hook_attn_out", "mean", "ref"),
    ):
        how = parse_intervention(line, ckpt, inputs)
        comps = [c.strip() for c in line.split(":", 1)[1].split(",")]
        from dtinterp.interp.ablation import ablation_values

        vals = ablation_values(ckpt.model, comps, kind, inputs) if values else None
        with torch.inference_mode(), ablated(ckpt.model, comps, kind, vals):
            want = ckpt.model(inputs)
        torch.testing.assert_close(_logits(ckpt, inputs, how.hooks), want)
        assert not torch.allclose(_logits(ckpt, inputs), want)


def test_steering_adds_the_scaled_direction_at_state_tokens_only(ckpt):
    inputs = _cached_windows(2, 4, 3, 0)
    zero = parse_intervention("steer: forward-left @ blocks.1.hook_resid_pre x 0", ckpt)
    torch.testing.assert_close(_logits(ckpt, inputs, zero.hooks), _logits(ckpt, inputs))
    push = parse_intervention("steer: forward @ blocks.1.hook_resid_post x 50", ckpt)
    before, after = _logits(ckpt, inputs), _logits(ckpt, inputs, push.hooks)
    names = ckpt.action_names
    # Added after the last block, along forward's (centred) readout: forward gains on every state token.
    gain = (after - before)[..., names.index("forward")] - (after - before).mean(-1)
    assert bool((gain > 0).all())
    assert after.argmax(-1).eq(names.index("forward")).all()
    assert parse_intervention("   ", ckpt) is None


@pytest.mark.parametrize(
    "line, fragment",
    [
        ("zap: blocks.0.hook_attn_out", "expected e.g."),
        ("zero: blocks.9.attn.hook_z:h0", "layer"),
        ("zero: blocks.0.attn.hook_z:h7", "head"),
        ("mean: blocks.0.hook_attn_out", "needs reference windows"),
        ("steer: toggle-jump @ blocks.1.hook_resid_post x 2", "direction"),
        ("steer: forward @ blocks.1.attn.hook_z x 2", "residual-stream hook"),
        ("steer: forward @ blocks.1.hook_resid_post x nan", "finite"),
        ("steer: forward blocks.1.hook_resid_post", "DIRECTION @ HOOK x COEFFICIENT"),
        ("steer: saved:no-such-direction @ blocks.0.hook_resid_post x 1", "no-such-direction"),
    ],
)
def test_bad_lines_are_one_line_errors(ckpt, line, fragment, monkeypatch, tmp_path):
    monkeypatch.setenv("DTINTERP_DIRECTIONS_DIR", str(tmp_path))
    with pytest.raises(InterventionError, match=fragment) as err:
        parse_intervention(line, ckpt)
    assert "\n" not in str(err.value)


@pytest.fixture
def sae_dir(ckpt, tmp_path) -> str:
    sae = TopKSAE(
        SAEConfig(d_in=32, n_latents=8, k=3, hook="blocks.1.hook_resid_mid", positions=[1, 4, 7, 10])
    )
    with torch.inference_mode():
        _, cache = ckpt.model.run_with_cache(_cached_windows(4, 4, 1, 0))
    sae.init_from(cache["blocks.1.hook_resid_mid"][:, 1::3].reshape(-1, 32), seed=0)
    with torch.no_grad():
        sae.b_enc.fill_(1.0)
    return str(sae.save(tmp_path / "sae"))


def test_sae_features_are_steered_along_their_decoder_row_and_ablated_inside_the_activation(ckpt, sae_dir):
    inputs = _cached_windows(4, 4, 1, 0)
    sae = TopKSAE.load(sae_dir)
    steer = parse_intervention(f"steer: sae:{sae_dir}#5 @ blocks.0.hook_resid_post x -3", ckpt)

    def add(act, hook):
        out = act.clone()
        out[:, 1::3] += -3 * sae.W_dec[5].detach()
        return out

    torch.testing.assert_close(
        _logits(ckpt, inputs, steer.hooks), _logits(ckpt, inputs, [("blocks.0.hook_resid_post", add)])
    )
    ablate = parse_intervention(f"zero: sae:{sae_dir}#5", ckpt)
    want = _logits(ckpt, inputs, sae.feature_hooks(5, 0.0))
    torch.testing.assert_close(_logits(ckpt, inputs, ablate.hooks), want)
    assert not torch.allclose(want, _logits(ckpt, inputs))


def test_a_saved_name_may_hold_an_at_sign(ckpt, tmp_path, monkeypatch):
    monkeypatch.setenv("DTINTERP_DIRECTIONS_DIR", str(tmp_path))
    DirectionLibrary().save(SavedDirection("probe:cue=1@L0:S4", torch.arange(32.0) % 5, "custom"))
    inputs = _cached_windows(2, 4, 3, 0)
    steer = parse_intervention("steer: saved:probe:cue=1@L0:S4 @ blocks.0.hook_resid_post x 2", ckpt)
    assert steer.hooks[0][0] == "blocks.0.hook_resid_post"
    ablate = parse_intervention("zero: saved:probe:cue=1@L0:S4 @ blocks.0.hook_resid_post", ckpt)
    assert not torch.allclose(_logits(ckpt, inputs, ablate.hooks), _logits(ckpt, inputs))


@pytest.mark.parametrize(
    "line, fragment",
    [
        ("mean: forward @ blocks.0.hook_resid_post", "ablated with zero:"),
        ("zero: saved:x", "zero: DIRECTION @ HOOK"),
        ("zero: forward @ blocks.0.attn.hook_z", "residual-stream hook"),
        ("zero: sae:SAE#99", "latents 0..7"),
        ("zero: sae:/no/such/sae#1", "cannot read the SAE"),
        ("steer: sae:SAE#1 @ blocks.0.hook_resid_post x 2", "trained on the activations of other-model"),
    ],
)
def test_bad_direction_lines_are_one_line_errors(ckpt, sae_dir, line, fragment):
    if "other-model" in fragment:  # an SAE that records another model's weights digest
        sae = TopKSAE.load(sae_dir)
        sae.cfg.model = {"name": "other-model", "weights_sha256": "0" * 64}
        sae_dir = str(sae.save(Path(sae_dir).parent / "other"))
        ckpt = Checkpoint.from_model(ckpt.model, dict(META), weights_sha256="1" * 64)
    with pytest.raises(InterventionError, match=fragment) as err:
        parse_intervention(line.replace("SAE", sae_dir), ckpt)
    assert "\n" not in str(err.value)
