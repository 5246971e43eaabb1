"""Invariants of the logit-lens plugin, run against the installed package (``pip install -e .``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dtinterp_logit_lens import LogitLens

from dtinterp.model import DTConfig, DTInputs, HookedDecisionTransformer
from dtinterp.plugins import AnalysisContext, ParameterError
from dtinterp.plugins.registry import load_registry

K = 4


def tiny_model(normalization_type: str | None = "LN", n_actions: int = 7) -> HookedDecisionTransformer:
    cfg = DTConfig(
        context_len=K, n_layers=2, n_heads=2, d_model=32, d_mlp=64, max_timestep=50, seed=0,
        normalization_type=normalization_type, n_actions=n_actions,
    )  # fmt: skip
    model = HookedDecisionTransformer(cfg).eval()
    with torch.no_grad():  # non-zero biases, so every term of the read-out matters
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def windows(batch: int = 3, n_pad: int = 1, seed: int = 0, n_actions: int = 7) -> DTInputs:
    """Random valid windows (object < 11, colour < 6, state < 3); window 0 left-padded by ``n_pad``."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.stack([torch.randint(0, n, (batch, K, 7, 7), generator=g) for n in (11, 6, 3)], dim=-1).to(
        torch.uint8
    )
    pad = torch.ones(batch, K, dtype=torch.bool)
    pad[0, :n_pad] = False
    return DTInputs(
        obs=obs,
        directions=torch.randint(0, 4, (batch, K), generator=g),
        rtg=torch.rand(batch, K, generator=g),
        actions=torch.randint(0, n_actions, (batch, K), generator=g),
        timesteps=torch.arange(K).expand(batch, K).clone(),
        pad_mask=pad,
    )


@pytest.mark.parametrize("norm", ["LN", None])
def test_lens_at_the_last_layer_is_the_model(norm):
    model = tiny_model(norm)
    ctx = AnalysisContext(model, windows(), {"rtg_scale": 1.0})
    result = LogitLens().run(ctx)
    lens = torch.as_tensor(result.data["lens_logits"])  # [L, B, K, A]
    torch.testing.assert_close(lens[-1], ctx.logits, atol=1e-5, rtol=0)
    assert result.data["layers"][-1] == "final_post"
    assert result.data["agreement"][-1] == pytest.approx(1.0)
    assert result.data["kl"][-1] == pytest.approx(0.0, abs=1e-5)
    assert np.all(result.data["kl"] >= 0)


def test_probabilities_exclude_padding_and_ignore_padded_content():
    model = tiny_model()
    inputs = windows(batch=1, n_pad=2)
    result = LogitLens().run(AnalysisContext(model, inputs), {"action": "forward", "incl_mid": "false"})
    prob = result.data["prob"]  # [L, K]
    assert prob.shape == (model.cfg.n_layers + 1, K)  # embed + after each layer, no mid-layer reads
    assert np.isnan(prob[:, :2]).all() and np.all((prob[:, 2:] >= 0) & (prob[:, 2:] <= 1))
    assert result.data["real_states"] == 2
    # Whatever sits in the padded timesteps, nothing the lens reports changes.
    junk = inputs.clone()
    junk.obs[:, :2] = 5
    junk.rtg[:, :2] = 9.0
    again = LogitLens().run(AnalysisContext(model, junk), {"action": "forward", "incl_mid": "false"})
    np.testing.assert_allclose(again.data["prob"][:, 2:], prob[:, 2:], atol=1e-6)


def test_registered_through_the_entry_point():
    reg = load_registry()
    assert not [f for f in reg.failures if f.name == "logit-lens"]
    plugin = reg.get("logit-lens")
    assert type(plugin) is LogitLens
    figures = reg.figures("logit-lens", reg.run("logit-lens", AnalysisContext(tiny_model(), windows())))
    assert [len(f.data) for f in figures] == [1, 2]


def test_action_choices_are_the_models_own():
    """A 3-action model (Dynamic-Obstacles) offers left, right, forward: ``toggle`` is refused up front."""
    model = tiny_model(n_actions=3)
    ctx = AnalysisContext(
        model, windows(n_actions=3), {"env_spec": {"env_id": "MiniGrid-Dynamic-Obstacles-8x8-v0"}}
    )
    (action,) = [p for p in LogitLens.parameters if p.name == "action"]
    assert action.describe_type() == "choice: predicted | <the model's actions>"
    assert action.describe_type(ctx.action_names) == "choice: predicted | left | right | forward"
    with pytest.raises(ParameterError, match="parameter 'action': 'toggle' is not one of"):
        LogitLens().run(ctx, {"action": "toggle"})
    result = LogitLens().run(ctx, {"action": "forward"})
    assert result.data["lens_logits"].shape[-1] == 3 and np.isfinite(result.data["agreement"]).all()
    # Without a model to ask, every MiniGrid action is a valid choice.
    assert LogitLens().resolve_params({"action": "toggle"})["action"] == "toggle"
