"""Invariants of the hooked decision transformer and its TransformerLens surface."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformer_lens import ActivationCache, patching

from dtinterp.model import DTConfig, DTInputs, HookedDecisionTransformer, state_positions, token_labels
from envs.encoding import N_CHANNELS, N_COLORS, N_OBJECTS, N_STATES, one_hot

CONFIGS = {
    "LN": dict(normalization_type="LN"),
    "LNPre": dict(normalization_type="LNPre"),
    "noLN-gelu": dict(normalization_type=None, act_fn="gelu"),
    "attn-only": dict(attn_only=True),
    "cnn": dict(state_encoder="cnn"),
}


def make_model(seed: int = 0, **kw) -> HookedDecisionTransformer:
    base = dict(context_len=4, n_layers=2, n_heads=2, d_model=32, d_mlp=48, max_timestep=50, seed=seed)
    base.update(kw)
    model = HookedDecisionTransformer(DTConfig(**base)).eval()
    # Non-trivial biases and LN weights, so the decompositions are tested with them in play.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


def random_inputs(B: int = 3, K: int = 4, W: int = 7, H: int = 7, seed: int = 0, n_pad: int = 2) -> DTInputs:
    g = torch.Generator().manual_seed(seed)
    obs = torch.stack(
        [
            torch.randint(0, N_OBJECTS - 1, (B, K, W, H), generator=g),  # no agent cells
            torch.randint(0, N_COLORS, (B, K, W, H), generator=g),
            torch.randint(0, N_STATES, (B, K, W, H), generator=g),
        ],
        -1,
    ).to(torch.uint8)
    pad = torch.ones(B, K, dtype=torch.bool)
    pad[0, :n_pad] = False
    return DTInputs(
        obs=obs,
        directions=torch.randint(0, 4, (B, K), generator=g),
        rtg=torch.rand(B, K, generator=g),
        actions=torch.randint(0, 7, (B, K), generator=g),
        timesteps=torch.arange(K).expand(B, K).clone(),
        pad_mask=pad,
    )


def cached(model, inputs):
    logits, cache = model.run_with_cache(inputs)
    return logits, ActivationCache(cache, model)


def test_token_labels_and_positions():
    assert token_labels(3) == ["R1", "S1", "A1", "R2", "S2", "A2", "R3", "S3"]
    labels = token_labels(5)
    assert [labels[p] for p in state_positions(5)] == [f"S{k}" for k in range(1, 6)]
    assert random_inputs(K=5).shape == (3, 14)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_decompose_resid_sums_to_logits(name):
    model = make_model(**CONFIGS[name])
    inputs = random_inputs()
    logits, cache = cached(model, inputs)
    for stack in (
        cache.decompose_resid(apply_ln=True),
        cache.get_full_resid_decomposition(apply_ln=True, expand_neurons=True),
        cache.get_full_resid_decomposition(apply_ln=True, expand_neurons=False),
    ):
        recon = stack.sum(0)[:, 1::3] @ model.W_U + model.b_U  # [B, K, A]
        torch.testing.assert_close(recon, logits, atol=1e-4, rtol=0)
    # logit_attrs gives each component's contribution to the chosen action's logit.
    stack = cache.decompose_resid(apply_ln=False)[:, :, 1::3]
    attrs = cache.logit_attrs(stack, tokens=2, pos_slice=slice(1, None, 3))
    torch.testing.assert_close(attrs.sum(0), logits[..., 2] - model.b_U[2], atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_fast_path_equals_hooked_path(name):
    model = make_model(**CONFIGS[name])
    inputs = random_inputs(B=4, K=4)
    fast = model(inputs)
    hooked, _ = model.run_with_cache(inputs)
    assert not any(hp.fwd_hooks for hp in model.hook_points())
    torch.testing.assert_close(fast, hooked, atol=1e-5, rtol=0)
    # Also in training mode, with gradients flowing.
    model.train()
    fast = model(inputs)
    slow = model.run_with_hooks(inputs, fwd_hooks=[("blocks.0.attn.hook_pattern", lambda x, hook: None)])
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["LN", "attn-only", "cnn"])
def test_padding_isolation(name):
    """Changing anything in the padded prefix changes no logit at a real position."""
    model = make_model(**CONFIGS[name])
    inputs = random_inputs(n_pad=2)
    edited = inputs.clone()
    g = torch.Generator().manual_seed(7)
    edited.obs[0, :2] = torch.randint(0, 6, edited.obs[0, :2].shape, generator=g).to(torch.uint8)
    edited.rtg[0, :2] = 100.0
    edited.actions[0, :2] = torch.tensor([3, 5])
    edited.timesteps[0, :2] = torch.tensor([17, 33])
    edited.directions[0, :2] = torch.tensor([1, 3])
    for run in (model, lambda x: model.run_with_cache(x)[0]):
        a, b = run(inputs), run(edited)
        torch.testing.assert_close(a[0, 2:], b[0, 2:], atol=1e-6, rtol=0)
        torch.testing.assert_close(a[1:], b[1:], atol=0, rtol=0)
    # ... while changing a real token does change the prediction after it.
    edited.rtg[0, 2] = 100.0
    assert (model(edited)[0, 2:] - model(inputs)[0, 2:]).abs().max() > 1e-4


def test_attention_rows_sum_to_one_and_ignore_padding():
    model = make_model()
    inputs = random_inputs(n_pad=2)
    _, cache = cached(model, inputs)
    P = inputs.shape[1]
    for layer in range(model.cfg.n_layers):
        pattern = cache["pattern", layer]  # [B, H, Pq, Pk]
        torch.testing.assert_close(pattern.sum(-1), torch.ones(pattern.shape[:-1]))
        assert torch.all(pattern.triu(1) == 0), "attention must be causal"
        n_pad_tokens = 6  # 2 padded timesteps x (R, S, A)
        real_q = pattern[0, :, n_pad_tokens:, :n_pad_tokens]
        assert torch.all(real_q == 0), "real queries must not attend to padding"
    assert P == 11


def test_grid_embedding_equals_one_hot_matmul():
    model = make_model()
    inputs = random_inputs()
    obs = inputs.obs.clone()
    obs[0, 0, 3, 6] = torch.tensor([10, 0, 2], dtype=torch.uint8)  # an agent cell (direction 2 in state)
    emb = model.state_embed(obs, inputs.directions)
    oh = torch.from_numpy(one_hot(obs.numpy())).reshape(*obs.shape[:2], -1)  # [B, K, W*H*20]
    W = model.state_embed.W_state.reshape(-1, model.cfg.d_model)
    expected = oh @ W + model.state_embed.W_dir[inputs.directions] + model.state_embed.b_state
    torch.testing.assert_close(emb, expected, atol=1e-5, rtol=0)
    assert W.shape[0] == 7 * 7 * N_CHANNELS


def test_residual_starts_as_embed_plus_pos_embed_and_kinds_are_placed():
    model = make_model()
    inputs = random_inputs()
    _, cache = cached(model, inputs)
    torch.testing.assert_close(
        cache["blocks.0.hook_resid_pre"], cache["hook_embed"] + cache["hook_pos_embed"]
    )
    torch.testing.assert_close(cache["hook_embed"][:, 0::3], cache["hook_rtg_embed"])
    torch.testing.assert_close(cache["hook_embed"][:, 1::3], cache["hook_state_embed"])
    torch.testing.assert_close(cache["hook_embed"][:, 2::3], cache["hook_action_embed"])
    torch.testing.assert_close(cache["hook_pos_embed"][:, 1::3], cache["hook_time_embed"])


def test_circuits_are_factored_matrices():
    model = make_model()
    ov, qk = model.OV, model.QK
    assert ov.shape == qk.shape == (2, 2, 32, 32)
    l, h = 1, 0
    blk = model.blocks[l].attn
    torch.testing.assert_close(ov.AB[l, h], blk.W_V[h] @ blk.W_O[h])
    torch.testing.assert_close(qk.AB[l, h], blk.W_Q[h] @ blk.W_K[h].T)
    dirs = model.tokens_to_residual_directions(torch.tensor([0, 2]))
    torch.testing.assert_close(dirs, model.W_U[:, [0, 2]].T)
    assert model.to_single_token("forward") == 2


def test_run_with_hooks_intervenes_and_cleans_up():
    model = make_model()
    inputs = random_inputs()
    clean = model(inputs)

    def zero_head(z, hook):
        z[:, :, 0] = 0.0
        return z

    ablated = model.run_with_hooks(inputs, fwd_hooks=[("blocks.1.attn.hook_z", zero_head)])
    assert (ablated - clean).abs().max() > 1e-5
    assert not any(hp.fwd_hooks for hp in model.hook_points())
    torch.testing.assert_close(model(inputs), clean)


def test_transformer_lens_patching_clean_into_clean_changes_nothing():
    model = make_model()
    inputs = random_inputs(B=2, K=3, n_pad=1)
    logits, cache = cached(model, inputs)

    def metric(out):
        return out[:, -1].log_softmax(-1)[:, 2].mean()

    result = patching.get_act_patch_resid_pre(model, inputs, cache, metric)
    assert result.shape == (model.cfg.n_layers, inputs.shape[1])
    torch.testing.assert_close(result, torch.full_like(result, metric(logits).item()), atol=1e-5, rtol=0)


def test_patching_corrupted_recovers_clean_at_final_layer_all_positions():
    """Sanity of a real patch: patching every position of resid_pre 0 from clean restores clean logits."""
    model = make_model()
    clean = random_inputs(B=1, K=3, n_pad=0, seed=1)
    corrupt = clean.clone()
    corrupt.rtg[:] = -1.0
    clean_logits, clean_cache = cached(model, clean)

    def restore(resid, hook):
        return clean_cache[hook.name]

    patched = model.run_with_hooks(corrupt, fwd_hooks=[("blocks.0.hook_resid_pre", restore)])
    torch.testing.assert_close(patched, clean_logits, atol=1e-6, rtol=0)
    assert (model(corrupt) - clean_logits).abs().max() > 1e-5


def test_inputs_validate_shapes():
    x = random_inputs()
    with pytest.raises(ValueError, match="timesteps"):
        DTInputs(x.obs, x.directions, x.rtg, x.actions, x.timesteps[:, :2], x.pad_mask)
    assert DTInputs.cat([x, x[1]]).batch_size == 4


def test_one_hot_numpy_round_trip_through_model_vocabulary():
    grid = np.zeros((7, 7, 3), dtype=np.uint8)
    grid[4, 2] = (5, 0, 0)  # a red key at (4, 2)
    oh = one_hot(grid)
    assert oh[4, 2, 5] == 1 and oh[4, 2, N_OBJECTS + 0] == 1
