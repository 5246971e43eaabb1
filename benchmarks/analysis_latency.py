"""Benchmark: latency of every built-in analysis on a shipped agent, on 1 window and on 256.

For each plugin and each input size, a run builds a fresh :class:`AnalysisContext` (so the forward pass
with cache is charged to the run, as in the app when a new step is picked) and times ``compute`` and
``figures`` separately; the median of ``--runs`` runs is printed. Static analyses read the weights only
and run once, without windows. The targets (2 CPU threads): compute + figures < 300 ms on one window and
< 3 s on 256 windows. Causal plugins get the edit ``R*=0`` (every RTG token set to 0) as their
counterfactual. The saved-direction library is an empty temporary directory, so the numbers do not depend
on what the user has saved.

Run by hand: ``python benchmarks/analysis_latency.py [--model memory-s7] [--runs 5] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
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

TARGET_ONE_MS = 300.0
TARGET_MANY_MS = 3000.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="memory-s7", help="shipped model name or checkpoint directory")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=256, help="windows in the large input")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    os.environ["DTINTERP_DIRECTIONS_DIR"] = tempfile.mkdtemp(prefix="dtinterp-directions-")

    ckpt = load_checkpoint(resolve_model(args.model))
    one = play_episode(ckpt, 1.0, seed=0).window(ckpt)
    data = collect(ckpt.env_spec, 60, "mixed", seed=0, progress=False)
    many, _ = dataset_windows(data, list(range(data.n_episodes)), ckpt, max_windows=args.batch)
    registry = load_registry(include_entry_points=False)
    edits = [parse_edit("R*=0")]

    print(f"model {args.model}  torch threads {args.threads}  runs {args.runs}  window K={one.context_len}")
    print(f"{'analysis':<26}{'inputs':>8}{'compute ms':>12}{'figures ms':>12}{'total ms':>10}   target")
    worst = {"1": 0.0, str(many.batch_size): 0.0}
    over = []
    for pid, plugin in sorted(registry.plugins.items()):
        sizes = (
            [("weights", None)] if plugin.category == "static" else [("1", one), (str(many.batch_size), many)]
        )
        for name, inputs in sizes:
            if inputs is not None and inputs.batch_size < plugin.min_windows:
                print(f"{pid:<26}{name:>8}   (needs at least {plugin.min_windows} windows)")
                continue
            comp, figs = [], []
            for _ in range(args.runs):
                ctx = AnalysisContext(
                    ckpt,
                    inputs,
                    edits=edits if plugin.needs_counterfactual else (),
                    dataset=data if inputs is many else None,  # the dataset the windows came from
                )
                t0 = time.perf_counter()
                result = registry.run(pid, ctx)
                t1 = time.perf_counter()
                registry.figures(pid, result)
                t2 = time.perf_counter()
                comp.append(1e3 * (t1 - t0))
                figs.append(1e3 * (t2 - t1))
            c, f = statistics.median(comp), statistics.median(figs)
            target = TARGET_MANY_MS if name == str(many.batch_size) else TARGET_ONE_MS
            for key in [name] if name in worst else list(worst):  # a static analysis counts for both
                worst[key] = max(worst[key], c + f)
            flag = "ok" if c + f < target else f"OVER {target:.0f} ms"
            if c + f >= target:
                over.append(f"{pid} ({name})")
            print(f"{pid:<26}{name:>8}{c:>12.1f}{f:>12.1f}{c + f:>10.1f}   {flag}")
    print(
        f"slowest on one window: {worst['1']:.0f} ms (target < {TARGET_ONE_MS:.0f} ms); on "
        f"{many.batch_size} windows: {worst[str(many.batch_size)]:.0f} ms (target < {TARGET_MANY_MS:.0f} ms)"
    )
    if over:
        print("over target:", ", ".join(over))
    if registry.failures:
        print("plugin failures:", *map(str, registry.failures), sep="\n  ")


if __name__ == "__main__":
    main()
