"""Steering vectors: exact where the readout is linear, nothing at coefficient 0, the same once saved."""

from __future__ import annotations

import functools

import pytest
import torch

from dtinterp.interp.directions import DirectionLibrary, SavedDirection
from dtinterp.interp.metrics import LogitDiff
from dtinterp.interp.steering import (
    SteeringError,
    SteeringVector,
    activations_at,
    mean_difference,
    steering_scan,
    token_positions,
)
from dtinterp.model.checkpoint import Checkpoint
from envs import EnvSpec
from tests.interp.tiny import make_inputs, make_model

ENV = EnvSpec("MiniGrid-DoorKey-5x5-v0", max_steps=12)


def vector(
    d: int = 16, hook: str = "blocks.1.hook_resid_post", tokens: str = "S", seed: int = 0
) -> SteeringVector:
    v = torch.randn(d, generator=torch.Generator().manual_seed(seed))
    return SteeringVector(SavedDirection("v", v, "custom"), hook, tokens)


@functools.cache
def checkpoint() -> Checkpoint:
    model = make_model(max_timestep=20)
    return Checkpoint.from_model(model, {"env_spec": ENV.to_dict(), "rtg_scale": 1.0})


def test_steering_the_last_residual_stream_moves_the_logits_linearly():
    model = make_model(normalization_type=None)  # no final LayerNorm: logits = resid @ W_U + b_U
    inputs = make_inputs(6)
    v = vector()
    with torch.no_grad():
        clean = model(inputs)
        for c in (-2.0, 0.5, 3.0):
            with model.hooks(fwd_hooks=v.hooks(model, c)):
                steered = model(inputs)
            assert torch.allclose(steered - clean, (c * v.vector @ model.W_U).expand_as(clean), atol=1e-4)
        last = vector(tokens="last")
        with model.hooks(fwd_hooks=last.hooks(model, 1.0)):
            steered = model(inputs)
        assert torch.allclose(steered[:, :-1], clean[:, :-1])
        assert torch.allclose(
            steered[:, -1] - clean[:, -1], (last.vector @ model.W_U).expand(6, -1), atol=1e-4
        )


def test_mean_difference_of_two_sets_of_windows():
    model = make_model()
    a, b = make_inputs(6, seed=1), make_inputs(6, seed=2)
    v = mean_difference(model, a, b, "blocks.0.hook_resid_mid", "a-b", tokens="S", model_name="tiny")
    _, cache_a = model.run_with_cache(a)
    _, cache_b = model.run_with_cache(b)
    S = token_positions("S", 8)
    acts_a = cache_a["blocks.0.hook_resid_mid"][:, list(S)][a.pad_mask]  # every real state token
    acts_b = cache_b["blocks.0.hook_resid_mid"][:, list(S)][b.pad_mask]
    assert torch.allclose(v.vector, acts_a.mean(0) - acts_b.mean(0), atol=1e-5)
    assert activations_at(model, a, "blocks.0.hook_resid_mid").shape == acts_a.shape
    assert v.direction.metadata["hook"] == "blocks.0.hook_resid_mid" and v.direction.metadata["tokens"] == "S"
    assert v.direction.kind == "mean-diff" and v.direction.model == "tiny"
    # with coefficient 1 the mean of b's state tokens moves onto a's
    with model.hooks(fwd_hooks=v.hooks(model, 1.0)):
        _, steered = model.run_with_cache(b)
    moved = steered["blocks.0.hook_resid_mid"][:, list(S)][b.pad_mask].mean(0)
    assert torch.allclose(moved, acts_a.mean(0), atol=1e-4)


def test_a_saved_vector_steers_as_the_original(tmp_path):
    model = make_model()
    inputs = make_inputs(6)
    v = vector(hook="blocks.0.hook_resid_post", tokens="R")
    library = DirectionLibrary(tmp_path)
    library.save(v.saved("steer-r", description="test"))
    back = SteeringVector.from_saved(library.load("steer-r", model))
    assert (back.hook, back.tokens, back.name) == ("blocks.0.hook_resid_post", "R", "steer-r")
    with torch.no_grad():
        with model.hooks(fwd_hooks=v.hooks(model, 2.0)):
            expected = model(inputs)
        with model.hooks(fwd_hooks=back.hooks(model, 2.0)):
            got = model(inputs)
        assert torch.equal(got, expected) and not torch.allclose(got, model(inputs))


def test_a_scan_over_coefficients_windows_and_episodes():
    ck = checkpoint()
    model = ck.model
    inputs = make_inputs(6)
    v = vector(hook="blocks.0.hook_resid_mid")
    metric = LogitDiff(2, 0)
    scan = steering_scan(
        ck, v, [0.0, 4.0], windows=inputs, metric=metric, seeds=[0, 1, 2], targets=[1.0, 0.5], num_envs=3
    )
    with torch.no_grad():
        clean = metric(model(inputs))
    assert torch.allclose(scan.metric_per_window[0], clean)
    assert not torch.allclose(scan.metric_per_window[1], clean)
    assert scan.kl[0] == pytest.approx(0.0, abs=1e-7) and scan.agreement[0] == 1.0 and scan.kl[1] > 0
    assert len(scan.success) == 2 and len(scan.success[0]) == 2
    assert len(scan.calibration_error) == 2 and scan.norm == pytest.approx(float(v.vector.norm()))
    assert set(scan.facts_changed) >= {"agent_x", "agent_y", "agent_dir"}
    assert all(changed[0] == 0.0 for changed in scan.facts_changed.values())  # coefficient 0 is the model
    assert any(changed[1] > 0 for changed in scan.facts_changed.values())  # a large push changes the play
    assert set(scan.outcomes) == {(0.0, 1.0), (4.0, 1.0), (0.0, 0.5), (4.0, 0.5)}
    assert scan.changed("agent_x", 0.0) == 0.0
    everyone = scan.changed("agent_x", 4.0, target=0.5)
    assert everyone == pytest.approx(scan.changed("agent_x", 4.0, 0.5, among=[True, True, True]))
    assert len(scan.start_facts["agent_x"]) == 3


def test_bad_steering_requests_are_one_line_errors():
    model = make_model()
    with pytest.raises(SteeringError, match="cannot steer at 'blocks.0.attn.hook_z'"):
        vector(hook="blocks.0.attn.hook_z").hooks(model, 1.0)
    with pytest.raises(SteeringError, match="layer 7 out of range"):
        vector(hook="blocks.7.hook_resid_pre").hooks(model, 1.0)
    with pytest.raises(SteeringError, match="tokens must be one of"):
        vector(tokens="Q")
    with pytest.raises(SteeringError, match="has d_model 8"):
        vector(d=8).hooks(model, 1.0)
    with pytest.raises(SteeringError, match="must be finite"):
        vector().hooks(model, float("nan"))
    with pytest.raises(SteeringError, match="records no hook"):
        SteeringVector.from_saved(SavedDirection("u", torch.ones(16), "custom"))
    with pytest.raises(SteeringError, match="is zero"):
        SteeringVector(SavedDirection("z", torch.zeros(16), "custom"), "hook_embed")
    assert vector().hooks(model, 0.0) == []
