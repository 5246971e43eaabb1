"""Features at dataset scale: the activation store, probes and their edits, SAEs, feature statistics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from dtinterp.data.collect import collect
from dtinterp.data.episode import dataset_windows
from dtinterp.interp.activation_store import INDEX_FILE, ActivationStore, ActivationStoreError, harvest
from dtinterp.interp.effects import played_effect, window_effect
from dtinterp.interp.features import direction_stats, sae_feature_stats
from dtinterp.interp.probes import DirectionEdit, ProbeError, train_probes
from dtinterp.interp.sae import SAEConfig, SAEError, SAETrainConfig, TopKSAE, evaluate_sae, train_sae
from dtinterp.model import DTConfig, HookedDecisionTransformer
from dtinterp.model.checkpoint import Checkpoint
from envs.spec import EnvSpec

MEMORY = EnvSpec("MiniGrid-MemoryS7FixedStart-v0")
RESID = "blocks.0.hook_resid_post"
Z = "blocks.1.attn.hook_z"


@pytest.fixture(scope="module")
def checkpoint() -> Checkpoint:
    cfg = DTConfig(context_len=4, n_layers=2, n_heads=2, d_model=16, d_mlp=32, max_timestep=64, seed=0)
    model = HookedDecisionTransformer(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return Checkpoint.from_model(model, {"env_spec": MEMORY.to_dict(), "rtg_scale": 1.0}, name="tiny")


@pytest.fixture(scope="module")
def memory_ds():
    """16 Memory episodes with facts; the cue object takes both values."""
    ds = collect(MEMORY, 16, "mixed", seed=0, progress=False)
    assert len(np.unique(ds.facts["cue_object"])) == 2
    return ds


@pytest.fixture(scope="module")
def store(checkpoint, memory_ds, tmp_path_factory) -> ActivationStore:
    out = tmp_path_factory.mktemp("store")
    return harvest(checkpoint, memory_ds, [RESID, Z], out, batch_size=64, chunk_windows=128, progress=False)


# ------------------------------------------------------------------ activation store


def test_store_equals_a_fresh_run_with_cache(checkpoint, memory_ds, store):
    inputs, ends = dataset_windows(memory_ds, range(memory_ds.n_episodes), checkpoint, max_windows=10**6)
    _, cache = checkpoint.model.run_with_cache(inputs, names_filter=[RESID, Z])
    assert store.n_windows == inputs.batch_size and store.positions == [1, 4, 7, 10]
    assert store.position_labels == ["S1", "S2", "S3", "S4"] and store.shape(Z) == (2, 8)
    for hook in (RESID, Z):  # equal up to the rounding of differently batched matmuls
        torch.testing.assert_close(store.load(hook), cache[hook][:, store.positions], rtol=1e-5, atol=1e-6)
    assert store.ends().tolist() == [list(e) for e in ends]
    # rows: the flat dataset row of each token's timestep, -1 exactly at padding.
    rows = store.rows()
    np.testing.assert_array_equal((rows >= 0).numpy(), inputs.pad_mask.numpy())
    starts = memory_ds.episode_starts
    e, t = ends[5]
    assert rows[5, -1] == starts[e] + t and store.n_tokens == int(inputs.pad_mask.sum())


def test_chunk_and_batch_sizes_do_not_change_the_store(checkpoint, memory_ds, store, tmp_path):
    small = harvest(
        checkpoint, memory_ds, [RESID, Z], tmp_path, batch_size=5, chunk_windows=7, progress=False
    )
    assert len(small.index["chunks"]) == -(-store.n_windows // 7) > len(store.index["chunks"])
    for hook in (RESID, Z):
        torch.testing.assert_close(small.load(hook), store.load(hook), rtol=1e-5, atol=1e-6)
    assert torch.equal(small.rows(), store.rows())
    # Streaming tokens: every real token once, in chunk order; a shuffle is a seeded permutation of them.
    flat = torch.cat(list(small.tokens(RESID, 50)))
    assert flat.shape == (store.n_tokens, 16)
    torch.testing.assert_close(flat, store.load(RESID)[store.rows() >= 0], rtol=0, atol=0)
    a, b = (
        torch.cat(list(small.tokens(RESID, 50, True, 3))),
        torch.cat(list(small.tokens(RESID, 50, True, 3))),
    )
    assert torch.equal(a, b) and not torch.equal(a, flat)
    assert torch.equal(a.sort(0).values, flat.sort(0).values)


def test_store_at_chosen_window_ends(checkpoint, memory_ds, store, tmp_path):
    all_ends = [tuple(e) for e in store.ends().tolist()]
    pick = [7, 3, 40]
    chosen = harvest(
        checkpoint, memory_ds, [RESID], tmp_path, ends=[all_ends[i] for i in pick], progress=False
    )
    assert [tuple(e) for e in chosen.ends().tolist()] == [all_ends[i] for i in pick]
    torch.testing.assert_close(chosen.load(RESID), store.load(RESID)[pick], rtol=1e-5, atol=1e-6)
    assert torch.equal(chosen.rows(), store.rows()[pick])
    length = int(memory_ds.episode_lengths()[0])
    with pytest.raises(ActivationStoreError, match=f"window end \\(0, {length}\\) is not a step"):
        harvest(checkpoint, memory_ds, [RESID], tmp_path / "x", ends=[(0, length)], progress=False)


def test_store_refuses_bad_requests(checkpoint, memory_ds, store, tmp_path):
    with pytest.raises(ActivationStoreError, match="unknown hook 'blocks.9.hook_resid_post'"):
        harvest(checkpoint, memory_ds, ["blocks.9.hook_resid_post"], tmp_path / "a", progress=False)
    with pytest.raises(ActivationStoreError, match="one vector per timestep"):
        harvest(checkpoint, memory_ds, ["hook_state_embed"], tmp_path / "a", progress=False)
    with pytest.raises(ActivationStoreError, match="no single token position"):
        harvest(checkpoint, memory_ds, ["blocks.0.attn.hook_pattern"], tmp_path / "a", progress=False)
    with pytest.raises(ActivationStoreError, match="not empty"):
        harvest(checkpoint, memory_ds, [RESID], store.path, progress=False)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "notes.txt").write_text("mine")
    with pytest.raises(ActivationStoreError, match="not an activation store's"):
        harvest(checkpoint, memory_ds, [RESID], tmp_path / "b", overwrite=True, progress=False)
    with pytest.raises(ActivationStoreError, match="no index.json"):
        ActivationStore.open(tmp_path / "b")
    with pytest.raises(ActivationStoreError, match="has no hook"):
        store.load("blocks.1.hook_resid_post")
    reopened = ActivationStore.open(store.path)
    assert reopened.index == store.index
    reopened.check_fits(checkpoint, memory_ds)
    with pytest.raises(ActivationStoreError, match="another dataset"):
        reopened.check_fits(ds=memory_ds.select_episodes([1, 0]))


# ------------------------------------------------------------------ probes


def _planted(store: ActivationStore, ds, fact: str, path, scale: float = 4.0) -> ActivationStore:
    """A copy of ``store`` whose RESID activations are noise plus ``scale * (fact value) * u``."""
    g = torch.Generator().manual_seed(1)
    u = torch.randn(16, generator=g)
    u /= u.norm()
    values = torch.from_numpy(ds.facts[fact].astype(np.float32))
    path.mkdir()
    for entry in store.index["chunks"]:
        chunk = load_file(store.path / entry["file"])
        rows = chunk["rows"]
        label = torch.where(rows >= 0, values[rows.clamp_min(0)], 0.0)
        acts = torch.randn(chunk[RESID].shape, generator=g) + scale * (2 * label[..., None] - 1) * u
        save_file({**chunk, RESID: acts.contiguous()}, path / entry["file"])
    (path / INDEX_FILE).write_text(json.dumps(store.index))
    return ActivationStore.open(path)


def test_probe_finds_a_planted_feature_and_the_control_task_does_not(store, memory_ds, tmp_path):
    planted = _planted(store, memory_ds, "cue_object", tmp_path / "planted")
    grid = train_probes(planted, memory_ds, "cue_object", [RESID], test_fraction=0.25, seed=0)
    assert grid.metric == "accuracy" and grid.score.shape == (1, 4)
    assert set(grid.train_episodes).isdisjoint(grid.test_episodes)
    assert set(grid.train_episodes) | set(grid.test_episodes) == set(range(16))
    assert (grid.score >= 0.97).all() and (grid.chance <= 0.8).all()
    assert (grid.control <= 0.75).all() and (grid.selectivity >= 0.2).all()
    best = grid.best()
    assert best.hook == RESID and best.classes == [0, 1]
    # The probe's direction is the planted one; a reflection about its boundary flips every decision.
    x = planted.load(RESID)[planted.rows() >= 0]
    edit = best.edit("reflect")
    assert edit.positions == tuple(planted.positions) and edit.value == pytest.approx(best.boundary())
    flipped = DirectionEdit(RESID, edit.direction, "reflect", edit.value).apply(x[:, None])[:, 0]
    assert torch.equal(best.predict(flipped), 1 - best.predict(x))
    saved = best.saved_direction(model_name="tiny")
    assert saved.metadata["fact"] == "cue_object" and saved.kind == "custom"
    assert abs(float(saved.vector.norm()) - 1) < 1e-5
    # Both bases find the planted direction; the class means' reflection swaps the class means.
    u = best.direction(basis="means")
    assert float(u @ best.direction(basis="weights")) > 0.9
    means = DirectionEdit(RESID, u, "reflect", best.boundary(basis="means")).apply(best.class_means[:, None])
    torch.testing.assert_close(means[:, 0] @ u, best.class_means.flip(0) @ u, rtol=1e-4, atol=1e-4)


def test_probe_regresses_a_scalar_fact(store, memory_ds, tmp_path):
    ds = memory_ds.select_episodes(range(16))
    rng = np.random.default_rng(0)
    ds.facts = {**ds.facts, "planted": rng.integers(0, 2, ds.n_transitions).astype(np.float32)}
    planted = _planted(store, ds, "planted", tmp_path / "planted")
    grid = train_probes(planted, ds, "planted", [RESID], control="shuffle")
    assert grid.metric == "r2" and (grid.score > 0.9).all()
    assert (grid.chance.abs() < 0.2).all() and (grid.control < 0.2).all()


def test_probe_requests_fail_clearly(store, memory_ds):
    with pytest.raises(ProbeError, match="no fact 'door_open'"):
        train_probes(store, memory_ds, "door_open")
    with pytest.raises(ProbeError, match="control must be one of"):
        train_probes(store, memory_ds, "cue_object", control="random")


def test_direction_edits_change_only_what_they_say(checkpoint, memory_ds):
    inputs, _ = dataset_windows(memory_ds, [0, 1], checkpoint, max_windows=20)
    model = checkpoint.model
    _, clean = model.run_with_cache(inputs, names_filter=[RESID])
    u = torch.randn(16)
    for mode, value in (("set", 0.5), ("add", 2.0), ("reflect", 0.1)):
        edit = DirectionEdit(RESID, u, mode, value, positions=(1, 4))
        with model.hooks(fwd_hooks=edit.hooks()):
            _, cache = model.run_with_cache(inputs, names_filter=[RESID])
        before, after = clean[RESID], cache[RESID]
        untouched = [p for p in range(before.shape[1]) if p not in (1, 4)]
        torch.testing.assert_close(after[:, untouched], before[:, untouched])
        p0, p1 = before[:, [1, 4]] @ edit.direction, after[:, [1, 4]] @ edit.direction
        expected = {"set": torch.full_like(p0, 0.5), "add": p0 + 2.0, "reflect": 0.2 - p0}[mode]
        torch.testing.assert_close(p1, expected, rtol=1e-4, atol=1e-4)
        u1 = edit.direction  # the rest of the edited activations is untouched
        rest_after = after[:, [1, 4]] - p1[..., None] * u1
        rest_before = before[:, [1, 4]] - p0[..., None] * u1
        torch.testing.assert_close(rest_after, rest_before, rtol=1e-4, atol=1e-4)
    with pytest.raises(ProbeError, match="edit mode"):
        DirectionEdit(RESID, u, "scale")


def test_null_hooks_change_neither_the_loss_nor_the_episodes(checkpoint, memory_ds):
    inputs, _ = dataset_windows(memory_ds, [0, 1, 2], checkpoint, max_windows=40)
    null = [(RESID, lambda act, hook: act)]
    effect = window_effect(checkpoint.model, inputs, null, batch_size=16)
    assert effect.delta_loss == 0 and effect.agreement == 1 and abs(effect.kl) < 1e-7
    assert effect.n_tokens == int(inputs.pad_mask.sum())
    played = played_effect(checkpoint, null, seeds=[0, 1], target_rtg=1.0, num_envs=2)
    np.testing.assert_array_equal(played.clean.returns, played.hooked.returns)
    assert played.changed("agent_side") == 0 and played.delta_success == 0
    assert set(played.start_facts["correct_side"]) <= {0, 1}


# ------------------------------------------------------------------ sparse autoencoders


def _exact_sae(d: int, hook: str = RESID, positions=(1, 4, 7, 10)) -> TopKSAE:
    """``z = [relu(x), relu(-x)]``, ``x_hat = relu(x) - relu(-x) = x``: exact with k = d."""
    sae = TopKSAE(SAEConfig(d_in=d, n_latents=2 * d, k=d, hook=hook, positions=list(positions)))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
    return sae.eval()


def test_an_exact_sae_reconstructs_and_splicing_it_changes_nothing(checkpoint, memory_ds, store):
    sae = _exact_sae(16)
    metrics = evaluate_sae(sae, store)
    assert (
        metrics.mse < 1e-12 and metrics.explained_variance > 1 - 1e-9 and metrics.n_tokens == store.n_tokens
    )
    inputs, _ = dataset_windows(memory_ds, [0, 1, 2], checkpoint, max_windows=40)
    effect = window_effect(checkpoint.model, inputs, sae.splice_hooks())
    assert abs(effect.delta_loss) < 1e-5 and effect.agreement == 1 and effect.kl < 1e-8


def test_feature_hooks_scale_one_feature(checkpoint, memory_ds):
    """With the exact SAE, latent f is relu(x_f): ablating it leaves coordinate f at min(x_f, 0)."""
    sae = _exact_sae(16)
    inputs, _ = dataset_windows(memory_ds, [0, 1], checkpoint, max_windows=10)
    model = checkpoint.model
    _, clean = model.run_with_cache(inputs, names_filter=[RESID])
    for scale in (0.0, 1.0, 3.0):
        with model.hooks(fwd_hooks=sae.feature_hooks(5, scale)):
            _, cache = model.run_with_cache(inputs, names_filter=[RESID])
        x, y = clean[RESID][:, [1, 4, 7, 10]], cache[RESID][:, [1, 4, 7, 10]]
        expected = x.clone()
        expected[..., 5] = x[..., 5].clamp(max=0) + scale * x[..., 5].clamp(min=0)
        torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(cache[RESID][:, [0, 2, 3]], clean[RESID][:, [0, 2, 3]])
    with pytest.raises(SAEError, match="feature 32 is out of range"):
        sae.feature_hooks(32)


def test_sae_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    sae = TopKSAE(SAEConfig(d_in=8, n_latents=24, k=3, hook=RESID, positions=[1, 4]))
    sae.init_from(torch.randn(50, 8), seed=2)
    sae.metrics = {"explained_variance": 0.5}
    sae.save(tmp_path / "sae")
    back = TopKSAE.load(tmp_path / "sae")
    x = torch.randn(10, 8)
    assert torch.equal(back(x), sae(x)) and back.cfg == sae.cfg and back.metrics == sae.metrics
    raw = (tmp_path / "sae" / "sae.safetensors").read_bytes()
    (tmp_path / "sae" / "sae.safetensors").write_bytes(raw[:-4] + bytes(b ^ 0xFF for b in raw[-4:]))
    with pytest.raises(SAEError, match="does not match the sha256"):
        TopKSAE.load(tmp_path / "sae")
    with pytest.raises(SAEError, match="k <= n_latents"):
        SAEConfig(d_in=8, n_latents=4, k=5)


def test_sae_learns_a_sparse_dictionary_deterministically():
    g = torch.Generator().manual_seed(0)
    dictionary = torch.randn(32, 12, generator=g)
    dictionary /= dictionary.norm(dim=1, keepdim=True)
    idx = torch.randint(0, 32, (6000, 2), generator=g)
    x = torch.nn.functional.embedding_bag(
        idx, dictionary, per_sample_weights=torch.rand(6000, 2, generator=g) + 0.5, mode="sum"
    )
    settings = SAETrainConfig(steps=300, batch_size=256, lr=1e-2, seed=1, dead_after=2000)
    sae = train_sae(x, 64, 4, settings, progress=False)
    metrics = evaluate_sae(sae, x)
    assert metrics.explained_variance > 0.9 and metrics.l0 <= 4
    again = train_sae(x, 64, 4, settings, progress=False)
    assert torch.equal(again.W_dec, sae.W_dec)
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(64))
    assert sae.log["tokens_seen"] == 300 * 256 and sae.log["curve"][-1]["step"] == 299


def test_sae_trains_on_a_store_and_records_where_it_splices(store):
    sae = train_sae(store, 32, 4, SAETrainConfig(steps=20, batch_size=64), hook=RESID, progress=False)
    assert sae.cfg.hook == RESID and sae.cfg.positions == store.positions and sae.cfg.model["name"] == "tiny"
    tensor_metrics = evaluate_sae(sae, store.load(RESID)[store.rows() >= 0])
    store_metrics = evaluate_sae(sae, store)
    assert store_metrics.summary() == pytest.approx(tensor_metrics.summary())
    with pytest.raises(SAEError, match="several hooks"):
        train_sae(store, 32, 4, SAETrainConfig(steps=1), progress=False)


# ------------------------------------------------------------------ feature statistics


def test_feature_stats_match_the_whole_store(checkpoint, memory_ds, store):
    sae = train_sae(store, 32, 4, SAETrainConfig(steps=20, batch_size=64), hook=RESID, progress=False)
    stats = sae_feature_stats(store, sae, checkpoint.model, n_top=5, n_bins=8, batch_size=37)
    x = store.load(RESID)[store.rows() >= 0]
    z = sae.latents(x).detach()
    torch.testing.assert_close(stats.frequency, (z > 0).float().mean(0))
    torch.testing.assert_close(stats.mean, z.mean(0))
    assert torch.equal(stats.hist_counts.sum(1), (z > 0).sum(0))
    assert stats.logit_effect.shape == (32, 7)
    f = stats.order("frequency")[0]
    acts = store.load(RESID)
    for ex, w, p in zip(stats.examples(f, memory_ds), stats.top_windows[f], stats.top_positions[f]):
        value = float(sae.latents(acts[w, p][None]).detach()[0, f])
        assert value == pytest.approx(ex["value"]) and ex["row"] == store.rows()[w, p]
        assert memory_ds.episode_starts[ex["episode"]] + ex["step"] == ex["row"]
    assert stats.top_values[f, 0] == pytest.approx(float(z[:, f].max()))
    assert [r["feature"] for r in stats.table("logit_effect")] == stats.order("logit_effect")

    dirs = torch.randn(3, 16)
    dstats = direction_stats(store, RESID, dirs, ["a", "b", "c"], checkpoint.model)
    proj = x @ (dirs / dirs.norm(dim=1, keepdim=True)).T
    assert torch.equal(dstats.frequency, torch.ones(3))
    torch.testing.assert_close(dstats.max, proj.amax(0))
    assert torch.equal(dstats.hist_counts.sum(1), torch.full((3,), x.shape[0]))
