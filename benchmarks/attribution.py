"""Benchmark: attribution patching and EAP-IG against exact patching on a shipped agent.

On ``memory-s7`` (by default), clean windows end at steps of successful collected episodes and the corrupted
windows are the edit ``R*=0.0`` (every RTG token set to 0); the metric is the default logit difference.

1. Attribution patching of every node (``resid_pre`` x position, each head x position, each neuron x
   position; :data:`~dtinterp.interp.attribution_patching.ALL_NODES`) on one window and on ``--batch``
   windows, timed against one plain forward pass of the same windows (runs alternated, medians): the
   ratio is its cost in forward-equivalents (target on one window: <= 3). The exact sweeps of the same
   nodes (the batched patching engine) are timed too; the speed-up and each map's correlation with the
   exact sweep are printed.
2. EAP and EAP-IG (``--steps``, default 8) over ``--batch`` windows (target for EAP-IG on 64 windows:
   < 30 s), with their correlations with exact edge patching (every edge path-patched, batched).

Run by hand, alone on the machine: ``python benchmarks/attribution.py [--model memory-s7] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from dtinterp.data.collect import collect
from dtinterp.data.windows import make_batch
from dtinterp.interp.attribution_patching import (
    ALL_NODES,
    attribution_patching,
    correlations,
    edge_attribution_patching,
    exact_edge_patching,
)
from dtinterp.interp.edits import apply_edits, parse_edit
from dtinterp.interp.metrics import logit_diff
from dtinterp.interp.patching import PatchingEngine
from dtinterp.model.checkpoint import load_checkpoint
from dtinterp.model.inputs import DTInputs
from dtinterp.model.shipped import resolve_model

FORWARD_EQUIVALENTS_TARGET = 3.0
EAP_IG_SECONDS_TARGET = 30.0


def windows(ck, batch: int) -> tuple[DTInputs, DTInputs]:
    """One full-context window and ``batch`` windows, at steps of successful episodes (RTG > 0, so the
    edit R*=0 changes them)."""
    cfg = ck.config
    data = collect(ck.env_spec, max(16, batch // 2), "mixed", seed=0, progress=False)
    lengths = np.diff(np.asarray(data.episode_starts))
    success = data.success_mask()
    ends = [(e, t) for e in range(len(lengths)) if success[e] for t in range(int(lengths[e]))]
    keep = np.unique(np.round(np.linspace(0, len(ends) - 1, batch)).astype(np.int64))
    many = make_batch(
        data, [ends[i] for i in keep], cfg.context_len, ck.rtg_scale, cfg.n_actions, cfg.max_timestep
    )
    full = max(ends, key=lambda et: et[1])
    one = make_batch(data, [full], cfg.context_len, ck.rtg_scale, cfg.n_actions, cfg.max_timestep)
    return one, many


def interleaved(fns: list[Callable[[], object]], runs: int) -> list[float]:
    """Median seconds of each function, their runs alternated (same load on a shared machine)."""
    for fn in fns:
        fn()  # warm-up
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(runs):
        for fn, ts in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
    return [statistics.median(ts) for ts in times]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="memory-s7", help="shipped model name or checkpoint directory")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=64, help="windows in the large input")
    p.add_argument("--steps", type=int, default=8, help="EAP-IG steps")
    p.add_argument("--runs", type=int, default=21, help="runs of each one-window measurement (median)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ck = load_checkpoint(resolve_model(args.model))
    model = ck.model
    one, many = windows(ck, args.batch)
    edit = [parse_edit("R*=0.0")]
    print(f"model {args.model}  torch threads {args.threads}  window K={one.context_len}  edit R*=0.0")
    misses = []

    print("\n1. attribution patching of every node (resid_pre x pos, head x pos, neuron x pos)")
    print(
        f"{'windows':>8}{'forward ms':>12}{'attribution ms':>16}{'fwd-equiv':>11}{'exact ms':>11}{'speed-up':>10}"
    )
    for clean, runs in ((one, args.runs), (many, max(3, args.runs // 4))):
        corrupted = apply_edits(clean, edit)
        with torch.inference_mode():
            metric = logit_diff(model(clean), model(corrupted))

        def forward(clean=clean) -> None:
            with torch.inference_mode():
                model(clean)

        def attribution(clean=clean, corrupted=corrupted, metric=metric) -> None:
            attribution_patching(model, clean, corrupted, metric, ALL_NODES, exact=False)

        exact_values: dict[str, torch.Tensor] = {}

        def exact(clean=clean, corrupted=corrupted, metric=metric, exact_values=exact_values) -> None:
            engine = PatchingEngine(model, clean, corrupted)
            with torch.inference_mode():
                base = metric(engine.base.logits)
                for sweep in ALL_NODES:
                    exact_values[sweep] = (engine.sweep(sweep, metric).per_window - base).mean(-1)

        t_fwd, t_attr = interleaved([forward, attribution], runs)
        if clean.batch_size == 1:
            (t_exact,) = interleaved([exact], 3)
        else:  # one run: a minute on 64 windows
            t0 = time.perf_counter()
            exact()
            t_exact = time.perf_counter() - t0
        ratio = t_attr / t_fwd
        size = clean.batch_size
        line = f"{size:>8}{t_fwd * 1e3:>12.2f}{t_attr * 1e3:>16.2f}{ratio:>10.2f}x{t_exact * 1e3:>11.0f}"
        verdict = ""
        if size == 1:
            ok = ratio <= FORWARD_EQUIVALENTS_TARGET
            verdict = f"   target <= {FORWARD_EQUIVALENTS_TARGET:g} fwd-equiv {'ok' if ok else 'MISSED'}"
            if not ok:
                misses.append("attribution cost on one window")
        print(f"{line}{t_exact / t_attr:>9.0f}x{verdict}")
        results = attribution_patching(model, clean, corrupted, metric, ALL_NODES, exact=False)
        corr = "  ".join(
            "{} r={:.3f} rho={:.3f}".format(name, *correlations(r.values, exact_values[name]))
            for name, r in results.items()
        )
        print(f"{'':>8}correlation with the exact sweep: {corr}")

    print(f"\n2. edge attribution over {many.batch_size} windows ({len(edit)} edit, direction noise)")
    corrupted = apply_edits(many, edit)
    with torch.inference_mode():
        metric = logit_diff(model(many), model(corrupted))
    t0 = time.perf_counter()
    exact = exact_edge_patching(model, many, corrupted, metric).mean(-1)
    t_exact = time.perf_counter() - t0
    print(f"exact edge patching of all edges: {t_exact:.2f} s")
    for steps in (1, args.steps):
        t0 = time.perf_counter()
        result = edge_attribution_patching(model, many, corrupted, metric, steps=steps)
        elapsed = time.perf_counter() - t0
        r, rho = correlations(result.values, exact)
        name = "EAP" if steps == 1 else f"EAP-IG({steps})"
        verdict = ""
        if steps > 1 and many.batch_size >= 64:
            ok = elapsed < EAP_IG_SECONDS_TARGET
            verdict = f"   target < {EAP_IG_SECONDS_TARGET:g} s {'ok' if ok else 'MISSED'}"
            if not ok:
                misses.append("EAP-IG time")
        print(
            f"{name:<12}{elapsed:>8.2f} s   {result.graph.n_edges} edges   r={r:.3f}  rho={rho:.3f}{verdict}"
        )
        print(f"{'':<12}top 5: {', '.join(result.top(5))}")
    print("\nall targets met" if not misses else f"\ntargets missed: {', '.join(misses)}")


if __name__ == "__main__":
    main()
