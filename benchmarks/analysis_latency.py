"""Benchmark: latency of every registered analysis on a shipped agent, for 1 window and for 256.

For each plugin and each input size, a run builds a fresh :class:`AnalysisContext` (so the forward pass
with cache is charged to the run, as in the app when a new step is picked) and times ``compute`` and
``figures`` separately; the median of ``--runs`` runs is printed. The interactive target is < 300 ms
for ``compute`` on one window on 2 CPU cores. Causal plugins get the edit ``R*=0`` (every RTG token set
to 0) as their counterfactual.

Run by hand: ``python benchmarks/analysis_latency.py [--model memory-s7] [--runs 5] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from dtinterp.data.collect import collect
from dtinterp.data.episode import dataset_windows
from dtinterp.interp.edits import parse_edit
from dtinterp.model.checkpoint import load_checkpoint
from dtinterp.model.shipped import resolve_model
from dtinterp.play.rollout import play_episode
from dtinterp.plugins.api import AnalysisContext
from dtinterp.plugins.registry import load_registry

TARGET_MS = 300.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="memory-s7", help="shipped model name or checkpoint directory")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=256, help="windows in the large input")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    ckpt = load_checkpoint(resolve_model(args.model))
    one = play_episode(ckpt, 1.0, seed=0).window(ckpt)
    data = collect(ckpt.env_spec, 60, "mixed", seed=0, progress=False)
    many, _ = dataset_windows(data, list(range(data.n_episodes)), ckpt, max_windows=args.batch)
    registry = load_registry()
    edits = [parse_edit("R*=0")]

    print(f"model {args.model}  torch threads {args.threads}  runs {args.runs}  window K={one.context_len}")
    print(f"{'analysis':<28}{'inputs':>8}{'compute ms':>12}{'figures ms':>12}   target")
    worst = 0.0
    for pid, plugin in sorted(registry.plugins.items()):
        for name, inputs in (("1", one), (str(many.batch_size), many)):
            comp, figs = [], []
            for _ in range(args.runs):
                ctx = AnalysisContext(ckpt, inputs, edits=edits if plugin.category == "causal" else ())
                t0 = time.perf_counter()
                result = registry.run(pid, ctx)
                t1 = time.perf_counter()
                registry.figures(pid, result)
                t2 = time.perf_counter()
                comp.append(1e3 * (t1 - t0))
                figs.append(1e3 * (t2 - t1))
            c, f = statistics.median(comp), statistics.median(figs)
            flag = ""
            if name == "1":
                worst = max(worst, c)
                flag = "ok" if c < TARGET_MS else f"OVER {TARGET_MS:.0f} ms"
            print(f"{pid:<28}{name:>8}{c:>12.1f}{f:>12.1f}   {flag}")
    print(f"slowest compute on one window: {worst:.1f} ms (target < {TARGET_MS:.0f} ms)")
    if registry.failures:
        print("plugin failures:", *map(str, registry.failures), sep="\n  ")


if __name__ == "__main__":
    main()
