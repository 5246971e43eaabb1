"""Benchmark and acceptance experiment for dataset-scale features (store, probes, SAEs).

``throughput`` (default) measures, on 2 CPU threads:

- activation harvesting: windows/s of :func:`~dtinterp.interp.activation_store.harvest` (window building,
  capture hooks, safetensors chunks on disk) against plain forward passes of the model over the same
  windows in the same batches (built beforehand, nothing kept), medians of ``--runs`` interleaved runs, for
  one residual hook and for every residual hook; target ratio >= 0.7;
- SAE training: seconds to train a TopK SAE (1024 latents, k = 16, batches of 4096, 500 steps: each of
  500k activations of width 128 seen 4 times) on synthetic sparse activations (each row 4 of 512 random
  unit directions with random magnitudes, plus noise), and its explained variance; target < 120 s.

``memory-probe`` runs the acceptance experiment on the shipped ``memory-s7``: collect episodes with facts
(the recipe's behaviour policy, seeds held out from training), harvest the residual stream at the state
tokens of windows ending at every step (thinned) and at every decision step (the agent on the junction
cell), train the ``cue_object`` probe at every layer x position on held-out episodes (all tokens, and
only tokens whose context shows the cue), then reflect the state tokens about the decision-token probe of
each layer (its weights' direction, and its class-mean difference) in played-out episodes and report how
often the chosen side flips. Numbers go to stdout (and ``--out`` as JSON); ``docs/features.md`` quotes
them.

``memory-sae`` trains a TopK SAE (1024 latents, k = 16) on ``memory-s7``'s ``blocks.1.hook_resid_post`` at
the state tokens and reports its reconstruction, dead latents, and the model's loss and success with the
reconstruction spliced in.

Run by hand, alone on the machine: ``python benchmarks/features.py [throughput|memory-probe|memory-sae]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dtinterp.data.collect import collect
from dtinterp.data.episode import dataset_windows
from dtinterp.data.windows import make_batch
from dtinterp.interp.activation_store import harvest
from dtinterp.interp.effects import play_outcomes, played_effect, start_facts, window_effect
from dtinterp.interp.features import sae_feature_stats
from dtinterp.interp.probes import ProbeGrid, train_probes
from dtinterp.interp.sae import SAETrainConfig, evaluate_sae, train_sae
from dtinterp.model.checkpoint import load_checkpoint
from dtinterp.model.shipped import resolve_model

RESID_HOOKS = [
    "blocks.0.hook_resid_pre",
    "blocks.0.hook_resid_mid",
    "blocks.0.hook_resid_post",
    "blocks.1.hook_resid_mid",
    "blocks.1.hook_resid_post",
]


def recipe_policy(name: str) -> dict:
    recipe = json.loads((resolve_model(name) / "recipe.json").read_text())
    return recipe["collect"]["policy_params"]


def throughput(args: argparse.Namespace) -> None:
    torch.set_num_threads(2)
    ck = load_checkpoint(resolve_model(args.model))
    ds = collect(
        ck.env_spec, args.episodes, "mixed", 10_000, policy_params=recipe_policy(args.model), progress=False
    )
    inputs, _ = dataset_windows(ds, range(ds.n_episodes), ck, max_windows=10**9)
    batches = [inputs[b : b + args.batch] for b in range(0, inputs.batch_size, args.batch)]
    n = inputs.batch_size
    print(
        f"harvest: {args.model}, {n} windows of {ds.n_episodes} episodes, batches of {args.batch}, 2 threads"
    )

    def forward() -> float:
        t = time.perf_counter()
        with torch.inference_mode():
            for b in batches:
                ck.model(b)
        return time.perf_counter() - t

    def harvest_run(hooks: list[str]) -> float:
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            harvest(ck, ds, hooks, Path(tmp) / "store", batch_size=args.batch, progress=False)
            return time.perf_counter() - t

    forward()  # warm up
    for label, hooks in (
        ("1 hook (blocks.1.hook_resid_post)", RESID_HOOKS[-1:]),
        ("5 resid hooks", RESID_HOOKS),
    ):
        fw, hv = [], []
        for _ in range(args.runs):  # interleaved, so load on the machine hits both alike
            fw.append(forward())
            hv.append(harvest_run(hooks))
        f, h = statistics.median(fw), statistics.median(hv)
        print(f"  {label:36s} forward {n / f:8.0f} win/s   harvest {n / h:8.0f} win/s   ratio {f / h:.2f}")

    g = torch.Generator().manual_seed(0)
    d, n_atoms, n_rows = 128, 512, 500_000
    atoms = torch.randn(n_atoms, d, generator=g)
    atoms /= atoms.norm(dim=1, keepdim=True)
    idx = torch.randint(0, n_atoms, (n_rows, 4), generator=g)
    mags = torch.rand(n_rows, 4, generator=g) * 3
    x = torch.nn.functional.embedding_bag(idx, atoms, per_sample_weights=mags, mode="sum")
    x += 0.05 * torch.randn(n_rows, d, generator=g)
    settings = SAETrainConfig(steps=args.sae_steps, batch_size=4096)
    t = time.perf_counter()
    sae = train_sae(x, 1024, 16, settings, progress=False)
    seconds = time.perf_counter() - t
    m = evaluate_sae(sae, x)
    print(
        f"SAE: 500k x {d} synthetic activations, 1024 latents, k=16, {settings.steps} steps of 4096: "
        f"{seconds:.1f} s (target < 120), explained variance {m.explained_variance:.3f}, "
        f"dead {m.dead_share:.1%}"
    )


def memory_probe(args: argparse.Namespace) -> None:
    torch.set_num_threads(2)
    ck = load_checkpoint(resolve_model("memory-s7"))
    t0 = time.perf_counter()
    ds = collect(ck.env_spec, args.episodes, "mixed", args.seed, policy_params=recipe_policy("memory-s7"))
    results: dict = {"episodes": ds.n_episodes, "transitions": ds.n_transitions, "collect_seed": args.seed}
    root = Path(args.store or tempfile.mkdtemp(prefix="memory-s7-stores-"))

    # Store A: windows ending at every step, thinned evenly. Store B: windows ending at each decision
    # step (the agent on the junction cell (5, 3), where it turns to one end of the hallway).
    every = harvest(ck, ds, RESID_HOOKS, root / "every", max_windows=args.windows, overwrite=True)
    f = ds.facts
    decision_rows = np.flatnonzero((f["agent_x"] == 5) & (f["agent_y"] == 3))
    episode_of = np.searchsorted(ds.episode_starts, decision_rows, side="right") - 1
    ends = [(int(e), int(r - ds.episode_starts[e])) for e, r in zip(episode_of, decision_rows)]
    decision = harvest(ck, ds, RESID_HOOKS, root / "decision", ends=ends, overwrite=True)
    results["windows"] = {"every step": every.n_windows, "decision steps": decision.n_windows}

    grids = {}
    for store_name, store in (("every step", every), ("decision steps", decision)):
        rows = store.rows().numpy()
        real = rows >= 0
        seen = np.maximum.accumulate(np.where(real, f["cue_visible"][np.maximum(rows, 0)], 0), axis=1) > 0
        share = (seen & real).sum(0) / np.maximum(real.sum(0), 1)
        print(f"\n{store_name}: {store.n_windows} windows; share of tokens whose context shows the cue:")
        print("  " + " ".join(f"{v:6.2f}" for v in share))
        for subset, mask in (("all windows", None), ("cue in context", seen)):
            grid = train_probes(store, ds, "cue_object", seed=0, token_mask=mask)
            grids[(store_name, subset)] = grid
            _print_grid(f"{store_name}, {subset}", grid)
            results.setdefault("probes", {})[f"{store_name}, {subset}"] = _grid_json(grid) | {
                "cue_in_context_share": share.tolist()
            }

    # Steering in played-out episodes along the decision-token (S10) probe of every layer, both bases,
    # reflecting every state token about the probe's boundary.
    grid = grids[("decision steps", "cue in context")]
    seeds = list(range(args.seed + 100_000, args.seed + 100_000 + args.play))
    clean = play_outcomes(ck, seeds, args.target)
    chose = np.isin(clean.final_facts["agent_side"], [0, 1])
    cue = start_facts(ck, seeds)["cue_object"]
    results["clean"] = {"success": clean.success_rate, "chose_a_side": float(chose.mean())}
    print(f"\nplayed out: {len(seeds)} seeds at target {args.target}: clean success {clean.success_rate:.3f}")
    test = set(grid.test_episodes)
    test_ends = [(e, t) for e, t in ends if e in test]
    cfg = ck.config
    test_inputs = make_batch(ds, test_ends, cfg.context_len, ck.rtg_scale, cfg.n_actions, cfg.max_timestep)
    results["steering"] = []
    for li, hook in enumerate(grid.hooks):
        probe = grid.probes[li][-1]
        if probe is None:
            continue
        u_w, u_m = probe.direction(basis="weights"), probe.direction(basis="means")
        for basis in ("weights", "means"):
            edit = probe.edit("reflect", basis=basis)
            played = played_effect(ck, edit.hooks(), seeds, args.target, clean=clean)
            eff = window_effect(ck.model, test_inputs, edit.hooks())
            row = {
                "hook": hook,
                "probe_at": probe.label,
                "probe_accuracy": probe.test_score,
                "basis": basis,
                "cosine_weights_means": float(u_w @ u_m),
                "side_flipped": played.changed("agent_side", among=chose),
                "side_flipped_key_cue": played.changed("agent_side", among=chose & (cue == 0)),
                "side_flipped_ball_cue": played.changed("agent_side", among=chose & (cue == 1)),
                "success_clean": played.clean.success_rate,
                "success_edited": played.hooked.success_rate,
                "decision_loss_clean": eff.loss_clean,
                "decision_loss_edited": eff.loss_hooked,
                "decision_action_agreement": eff.agreement,
            }
            results["steering"].append(row)
            print(
                f"  {hook:26s} acc {probe.test_score:.3f}  reflect {basis:7s}  side flipped "
                f"{row['side_flipped']:.3f} (key cue {row['side_flipped_key_cue']:.3f}, ball cue "
                f"{row['side_flipped_ball_cue']:.3f})  success {row['success_clean']:.3f} -> {row['success_edited']:.3f}  "
                f"decision loss {eff.loss_clean:.3f} -> {eff.loss_hooked:.3f} (agreement {eff.agreement:.3f})"
            )
    results["seconds"] = time.perf_counter() - t0
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(f"\ndone in {results['seconds']:.0f} s")


def memory_sae(args: argparse.Namespace) -> None:
    """A TopK SAE on memory-s7's residual stream at the state tokens, spliced back into the model."""
    torch.set_num_threads(2)
    ck = load_checkpoint(resolve_model("memory-s7"))
    t0 = time.perf_counter()
    ds = collect(ck.env_spec, args.episodes, "mixed", args.seed, policy_params=recipe_policy("memory-s7"))
    root = Path(args.store or tempfile.mkdtemp(prefix="memory-s7-sae-"))
    store = harvest(ck, ds, [args.hook], root / "store", max_windows=args.windows, overwrite=True)
    settings = SAETrainConfig(steps=args.sae_steps, batch_size=4096, seed=0)
    sae = train_sae(store, args.latents, args.k, settings, hook=args.hook)
    m = evaluate_sae(sae, store)
    inputs, _ = dataset_windows(ds, range(0, ds.n_episodes, 10), ck, max_windows=4000)
    eff = window_effect(ck.model, inputs, sae.splice_hooks())
    seeds = list(range(args.seed + 100_000, args.seed + 100_000 + args.play))
    played = played_effect(ck, sae.splice_hooks(), seeds, args.target)
    stats = sae_feature_stats(store, sae, ck.model)
    results = {
        "hook": args.hook,
        "tokens": store.n_tokens,
        "latents": args.latents,
        "k": args.k,
        "steps": args.sae_steps,
        "train_seconds": sae.log["seconds"],
        **m.summary(),
        "loss_clean": eff.loss_clean,
        "loss_spliced": eff.loss_hooked,
        "action_agreement": eff.agreement,
        "kl": eff.kl,
        "success_clean": played.clean.success_rate,
        "success_spliced": played.hooked.success_rate,
        "features_by_frequency": stats.table()[:10],
    }
    print(json.dumps({k: v for k, v in results.items() if k != "features_by_frequency"}, indent=1))
    for row in stats.table("logit_effect")[:5]:
        print(
            f"  f{row['feature']:<5d} freq {row['frequency']:.3f} max {row['max']:.2f} pushes {row['top_action']}"
            f" ({row['top_logit_effect']:+.2f})"
        )
    sae.metrics = m.summary() | {
        "loss_spliced": eff.loss_hooked,
        "success_spliced": played.hooked.success_rate,
    }
    sae.save(root / "sae")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(f"saved the SAE to {root / 'sae'}; done in {time.perf_counter() - t0:.0f} s")


def _print_grid(title: str, grid: ProbeGrid) -> None:
    print(f"cue_object probe accuracy on held-out episodes ({title}):")
    print("  " + " ".join(f"{lab:>6s}" for lab in grid.labels))
    print("  " + " ".join(f"{float(c):6.3f}" for c in grid.chance) + "   chance (majority class)")
    for li, h in enumerate(grid.hooks):
        print("  " + " ".join(f"{float(v):6.3f}" for v in grid.score[li]) + f"   {h}")
    print("  " + " ".join(f"{float(v):6.3f}" for v in grid.control[-1]) + "   control task, last hook")
    print("  " + " ".join(f"{n:6d}" for n in grid.n_test) + "   test tokens")


def _grid_json(grid: ProbeGrid) -> dict:
    best = grid.best()
    return {
        "hooks": grid.hooks,
        "labels": grid.labels,
        "accuracy": grid.score.tolist(),
        "chance": grid.chance.tolist(),
        "control": grid.control.tolist(),
        "n_train": grid.n_train,
        "n_test": grid.n_test,
        "best": {"hook": best.hook, "label": best.label, "accuracy": best.test_score},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd")
    t = sub.add_parser("throughput")
    m = sub.add_parser("memory-probe")
    a = sub.add_parser("memory-sae")
    a.add_argument("--episodes", type=int, default=2000)
    a.add_argument("--windows", type=int, default=20_000)
    a.add_argument("--seed", type=int, default=10_000)
    a.add_argument("--hook", default="blocks.1.hook_resid_post")
    a.add_argument("--latents", type=int, default=1024)
    a.add_argument("--k", type=int, default=16)
    a.add_argument("--sae-steps", type=int, default=1000)
    a.add_argument("--play", type=int, default=300)
    a.add_argument("--target", type=float, default=1.0)
    a.add_argument("--store", default=None, help="where to keep the store and the SAE (default: a temp dir)")
    a.add_argument("--out", default=None, help="write the numbers as JSON here")
    for q in (p, t):
        q.add_argument("--model", default="memory-s7")
        q.add_argument("--episodes", type=int, default=200)
        q.add_argument("--batch", type=int, default=512)
        q.add_argument("--runs", type=int, default=5)
        q.add_argument("--sae-steps", type=int, default=500)
    m.add_argument("--episodes", type=int, default=2000)
    m.add_argument("--windows", type=int, default=20_000)
    m.add_argument("--seed", type=int, default=10_000)
    m.add_argument("--play", type=int, default=300)
    m.add_argument("--target", type=float, default=1.0)
    m.add_argument("--store", default=None, help="where to keep the two stores (default: a temp dir)")
    m.add_argument("--out", default=None, help="write the numbers as JSON here")
    args = p.parse_args()
    {"memory-probe": memory_probe, "memory-sae": memory_sae}.get(args.cmd, throughput)(args)


if __name__ == "__main__":
    main()
