"""DLA of a direction: every split sums exactly to what it splits (value, head, state embedding, hook_pre)."""

from __future__ import annotations

import pytest
import torch
from transformer_lens import ActivationCache

from dtinterp.interp.directions import from_neuron
from dtinterp.interp.dla import (
    direction_attribution,
    neuron_decomposition,
    observation_attribution,
    run_for_dla,
    top_activating,
)
from dtinterp.interp.embedding_geometry import NoStateEmbeddingError
from tests.plugins.conftest import _random_model, _windows

CONFIGS = {
    "LN": {},
    "LNPre": dict(normalization_type="LNPre"),
    "none": dict(normalization_type=None, act_fn="gelu"),
    "attn-only": dict(attn_only=True),
}
ATOL = 1e-4


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


@pytest.fixture(scope="module")
def models():
    return {name: _random_model(**kw) for name, kw in CONFIGS.items()}


@pytest.fixture(scope="module")
def inputs():
    return _windows(4, 4, seed=2, n_pad=2)


def _logits(model, inputs):
    with torch.inference_mode():
        return model(inputs)


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("direction", [None, "forward", ("forward", "left"), "vector"])
def test_parts_sum_to_the_value(models, inputs, name, direction):
    model = models[name]
    if direction == "vector":
        direction = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    for position in (-1, 2):
        r = direction_attribution(model, inputs, direction, position=position)
        logits = _logits(model, inputs)[:, r.position]
        if isinstance(direction, torch.Tensor):
            expected = model.ln_final(model(inputs, return_type="resid")[:, 3 * r.position + 1]) @ direction
        else:
            a, b = r.direction.actions.unbind(-1)
            expected = logits.gather(1, a[:, None])[:, 0] - torch.where(
                b >= 0, logits.gather(1, b.clamp_min(0)[:, None])[:, 0], torch.zeros(())
            )
            if direction is None:  # top action minus runner-up: a positive margin
                assert bool((r.value >= 0).all())
        torch.testing.assert_close(r.value, expected.detach(), atol=ATOL, rtol=0)
        torch.testing.assert_close(r.components.sum(-1), r.value, atol=ATOL, rtol=0)
        torch.testing.assert_close(r.by_layer.sum(-1) + r.direction.bias, r.value, atol=ATOL, rtol=0)
        torch.testing.assert_close(r.accumulated[:, -1], r.value, atol=ATOL, rtol=0)
        torch.testing.assert_close(r.logit_lens[:, -1], r.value, atol=ATOL, rtol=0)
        torch.testing.assert_close(r.by_source.sum(-1), r.by_head, atol=ATOL, rtol=0)
        by = dict(zip(r.component_labels, r.components.unbind(-1)))
        for l in range(model.cfg.n_layers):
            for h in range(model.cfg.n_heads):
                torch.testing.assert_close(by[f"L{l}H{h}"], r.by_head[:, l, h])
            if r.by_neuron is not None:
                torch.testing.assert_close(r.by_neuron[:, l].sum(-1), by[f"L{l}_mlp"], atol=ATOL, rtol=0)


def test_raw_residual_readout_and_saved_directions(models, inputs):
    model = models["LN"]
    saved = from_neuron(model, 1, 3, "in")
    r = direction_attribution(model, inputs, saved, apply_ln=False)
    resid = model(inputs, return_type="resid")[:, -1].detach()
    torch.testing.assert_close(r.value, resid @ saved.vector, atol=ATOL, rtol=0)
    torch.testing.assert_close(r.components.sum(-1), r.value, atol=ATOL, rtol=0)
    torch.testing.assert_close(r.logit_lens, r.accumulated, atol=ATOL, rtol=0)
    assert r.direction.labels[0] == "L1N3-in"


def test_one_window_equals_its_row_of_a_batch(models, inputs):
    model = models["LN"]
    batch = direction_attribution(model, inputs, ("right", "forward"))
    one = direction_attribution(model, inputs[2], ("right", "forward"))
    for field in ("value", "components", "by_source", "logit_lens"):
        torch.testing.assert_close(getattr(one, field)[0], getattr(batch, field)[2], atol=1e-5, rtol=0)
    stats = batch.stats("components")
    torch.testing.assert_close(stats.mean, batch.components.mean(0))
    assert stats.n == 4 and stats.std.shape == stats.mean.shape


@pytest.mark.parametrize("name", ["LN", "none"])
def test_observation_cells_sum_to_the_state_embedding_share(models, inputs, name):
    model = models[name]
    cache = run_for_dla(model, inputs)
    r = direction_attribution(model, inputs, cache=cache)
    obs = observation_attribution(model, inputs, cache=cache, channels=True)
    state = r.components[:, r.component_labels.index("state_embed")]
    torch.testing.assert_close(obs.direct_total, state, atol=ATOL, rtol=0)
    torch.testing.assert_close(
        obs.direct_cells.sum((1, 2)) + obs.direct_direction + obs.direct_bias, state, atol=ATOL, rtol=0
    )
    torch.testing.assert_close(obs.heads_channels.sum(-3), obs.heads, atol=1e-6, rtol=0)
    # Independent: each source state embedding through ln1 (cached scale), the head's OV, the readout.
    readout = r.direction.vectors - (r.direction.vectors.mean(-1, keepdim=True) if name == "LN" else 0)
    inv_final = 1 / cache["ln_final.hook_scale"][:, -1, 0] if name == "LN" else torch.ones(4)
    q = 3 * r.position + 1
    for l, block in enumerate(model.blocks):
        for j in range(inputs.context_len):
            e = cache["hook_embed"][:, 3 * j + 1]  # the state embedding of timestep j
            if name == "LN":
                e = (
                    (e - e.mean(-1, keepdim=True))
                    / cache[f"blocks.{l}.ln1.hook_scale"][:, 3 * j + 1]
                    * block.ln1.w
                )
            for h in range(model.cfg.n_heads):
                out = (e @ block.attn.W_V[h] @ block.attn.W_O[h] * readout).sum(-1)
                expected = cache[f"blocks.{l}.attn.hook_pattern"][:, h, q, 3 * j + 1] * out * inv_final
                total = (
                    obs.heads[:, l, h, j].sum((-2, -1))
                    + obs.heads_direction[:, l, h, j]
                    + obs.heads_bias[:, l, h, j]
                )
                torch.testing.assert_close(total, expected, atol=1e-5, rtol=0)
    assert float(obs.heads[0, :, :, :2].abs().max()) == 0.0  # window 0's padded timesteps are never attended


@pytest.mark.parametrize("name", ["LN", "LNPre", "none"])
def test_neuron_decomposition_sums_to_hook_pre(models, inputs, name):
    model = models[name]
    cache = run_for_dla(model, inputs)
    for layer, neuron, token in [(0, 5, None), (1, 17, 7), (1, 0, 3)]:
        d = neuron_decomposition(model, inputs, layer, neuron, token=token, cache=cache)
        torch.testing.assert_close(d.values.sum(-1), d.pre, atol=ATOL, rtol=0)
        assert len(d.labels) == d.values.shape[1] == len(set(d.labels))
        assert f"L{layer}H1" in d.labels and (f"L{layer}_mlp" not in d.labels)
    assert d.labels[0] == "rtg_embed" and d.valid.tolist() == [
        False,
        True,
        True,
        True,
    ]  # R2: padding in window 0


def test_top_activating_windows(models, inputs):
    model = models["LN"]
    top = top_activating(model, inputs, 1, 9, k=5, chunk=3)
    with torch.inference_mode():
        _, raw = model.run_with_cache(inputs, names_filter=["blocks.1.mlp.hook_post"])
    acts = raw["blocks.1.mlp.hook_post"][:, 1::3, 9]  # [B, K] at the state tokens
    torch.testing.assert_close(top.values, acts[top.window, top.timestep])
    assert bool((top.values[:-1] >= top.values[1:]).all())
    assert bool(inputs.pad_mask[top.window, top.timestep].all())
    assert float(top.values[0]) == float(acts[inputs.pad_mask].max())
    assert torch.equal(top.action, inputs.actions[top.window, top.timestep])
    assert top.predicted.shape == (5,) and top.action_names[2] == "forward"


def test_a_cache_missing_an_activation_is_named(models, inputs):
    model = models["LN"]
    with torch.inference_mode():
        _, raw = model.run_with_cache(inputs, names_filter=["hook_embed"])
    with pytest.raises(KeyError, match="hook_pos_embed"):
        direction_attribution(model, inputs, cache=ActivationCache(raw, model))


def test_cnn_models_have_a_dla_but_no_observation_cells(inputs):
    cnn = _random_model(state_encoder="cnn")
    r = direction_attribution(cnn, inputs)
    torch.testing.assert_close(r.components.sum(-1), r.value, atol=ATOL, rtol=0)
    with pytest.raises(NoStateEmbeddingError):
        observation_attribution(cnn, inputs)
