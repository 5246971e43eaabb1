"""Head scores: patterns are distributions over real tokens, shares add up, value weighting/low rank exact."""

from __future__ import annotations

import pytest
import torch
from transformer_lens import ActivationCache

from dtinterp.interp.head_scores import (
    HEAD_TYPES,
    head_type_scores,
    low_rank_pattern,
    stacked_patterns,
    token_pad_mask,
    value_weighted_attention,
)
from tests.plugins.conftest import _random_model, _windows


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


@pytest.fixture(scope="module")
def model():
    return _random_model()


@pytest.fixture(scope="module")
def run(model):
    inputs = _windows(3, 4, seed=4, n_pad=2)
    with torch.inference_mode():
        _, raw = model.run_with_cache(inputs)
    return inputs, ActivationCache(raw, model)


def test_pattern_rows_of_real_queries_sum_to_one_over_real_tokens(model, run):
    inputs, cache = run
    real = token_pad_mask(inputs.pad_mask)
    assert real.shape == (3, 11) and real[0].tolist() == [False] * 6 + [True] * 5
    pattern = stacked_patterns(model, cache)  # [B, L, H, P, P]
    on_real = (pattern * real[:, None, None, None, :]).sum(-1)  # [B, L, H, Pq]
    rows = on_real.permute(0, 3, 1, 2)[real]  # real queries only
    torch.testing.assert_close(rows, torch.ones_like(rows), atol=1e-6, rtol=0)


def test_head_type_shares_add_up(model, run):
    inputs, cache = run
    scores = head_type_scores(model, cache, inputs.pad_mask)
    assert scores.scores.shape == (3, 2, 2, len(HEAD_TYPES)) and scores.valid.all()
    kinds = scores.score("rtg") + scores.score("state") + scores.score("action")
    torch.testing.assert_close(kinds, torch.ones_like(kinds), atol=1e-6, rtol=0)
    assert bool((scores.score("self") <= scores.score("same_timestep") + 1e-6).all())
    state_queries = head_type_scores(model, cache, inputs.pad_mask, query_kinds="S")
    assert not torch.allclose(state_queries.scores, scores.scores)
    assert scores.stats("scores").mean.shape == (2, 2, len(HEAD_TYPES))


def test_head_types_of_hand_made_patterns(model):
    P = 8  # K = 3 timesteps
    pad = torch.tensor([[False, True, True]])  # real tokens 3..7
    prev = torch.zeros(P, P)
    for q in range(P):
        prev[q, q - 3 if q >= 6 else q] = 1.0  # timestep-2 tokens attend to the same kind one step back
    patterns = {"blocks.0.attn.hook_pattern": torch.eye(P)[None, None].expand(1, 2, P, P)}
    patterns["blocks.1.attn.hook_pattern"] = prev[None, None].expand(1, 2, P, P)
    scores = head_type_scores(model, patterns, pad)
    assert scores.score("self")[0, 0].tolist() == [1.0, 1.0] and scores.score("same_timestep")[0, 0, 0] == 1.0
    # Layer 1: queries R2, S2, A2 attend to themselves (3 of 5), R3, S3 to R2, S2 (previous timestep).
    assert scores.score("previous_timestep")[0, 1, 0] == pytest.approx(2 / 5)
    assert scores.score("first")[0, 1, 0] == pytest.approx(2 / 5)  # R2 itself + R3's look at R2
    assert scores.score("rtg")[0, 1, 0] == pytest.approx(2 / 5)
    with pytest.raises(ValueError, match="query_kinds"):
        head_type_scores(model, patterns, pad, query_kinds="X")


def test_value_weighted_attention_is_the_norm_of_what_is_written(model, run):
    inputs, cache = run
    vw = value_weighted_attention(model, cache, inputs.pad_mask)
    l, h, q, k = 1, 0, 10, 7
    v = cache[f"blocks.{l}.attn.hook_v"][2, k, h]
    written = cache[f"blocks.{l}.attn.hook_pattern"][2, h, q, k] * v @ model.blocks[l].attn.W_O[h]
    assert float(vw.norms[2, l, h, q, k]) == pytest.approx(float(written.norm()), rel=1e-5)
    sums = vw.normalized.sum(-1)
    torch.testing.assert_close(sums, torch.ones_like(sums), atol=1e-5, rtol=0)
    assert float(vw.norms[0, :, :, 6:, :6].abs().max()) == 0.0  # real queries never read padding
    assert vw.token_labels[:3] == ["R1", "S1", "A1"]


def test_low_rank_full_rank_is_exact(model, run):
    inputs, cache = run
    pattern = stacked_patterns(model, cache)
    full = low_rank_pattern(pattern, pattern.shape[-1])
    torch.testing.assert_close(full.approx, pattern, atol=1e-6, rtol=0)
    assert float(full.error.max()) < 1e-6
    two = low_rank_pattern(pattern, 2, real=token_pad_mask(inputs.pad_mask)[:, None, None])
    torch.testing.assert_close(two.error, two.error_by_rank[..., 2], atol=1e-5, rtol=0)
    curve = two.error_by_rank
    assert bool((curve[..., :-1] >= curve[..., 1:] - 1e-6).all()) and float(
        curve[..., 0].min()
    ) == pytest.approx(1.0)
    rank1 = torch.outer(torch.rand(5), torch.rand(5))
    assert float(low_rank_pattern(rank1, 1).error) < 1e-6
