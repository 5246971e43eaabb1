"""Benchmark: the batched activation-patching engine against ``transformer_lens.patching``.

On a shipped agent (default ``memory-s7``), clean windows are built from collected episodes with the one
window builder and the corrupted windows by the edit ``R*=0.0`` (every RTG token set to 0). For every
sweep, the engine (:mod:`dtinterp.interp.patching`) and the matching TransformerLens function run on the
same model, inputs and metric (the default logit difference; TL gets its window mean as a scalar), their
runs alternated (so both see the same load on a shared machine); the median time of each, their ratio
and the largest absolute difference of the results are printed, for one window and for ``--batch``
windows, followed by the process' peak memory (``ru_maxrss``) after the large engine runs. Targets on 2 CPU threads, for ``resid_pre`` and ``head_out_by_pos``: >= 10x on one window,
>= 2x on 64 windows; and under 2 GB.

Run by hand, alone on the machine: ``python benchmarks/patching.py [--model memory-s7] [--runs 5]``.
"""

from __future__ import annotations

import os

# TransformerLens' sweeps draw a progress bar per run; tqdm reads this when it is first imported.
os.environ.setdefault("TQDM_DISABLE", "1")

import argparse
import resource
import statistics
import time
from collections.abc import Callable
from functools import partial

import numpy as np
import torch
from transformer_lens import ActivationCache
from transformer_lens import patching as tlp

from dtinterp.data.collect import collect
from dtinterp.data.windows import make_batch
from dtinterp.interp.edits import apply_edits, parse_edit
from dtinterp.interp.metrics import logit_diff
from dtinterp.interp.patching import activation_patching
from dtinterp.model.checkpoint import load_checkpoint
from dtinterp.model.inputs import DTInputs
from dtinterp.model.shipped import resolve_model
from envs import EnvSpec

SWEEPS: dict[str, Callable] = {
    "resid_pre": tlp.get_act_patch_resid_pre,
    "head_out_by_pos": tlp.get_act_patch_attn_head_out_by_pos,
    "attn_out": tlp.get_act_patch_attn_out,
    "mlp_out": tlp.get_act_patch_mlp_out,
    "head_out_all_pos": tlp.get_act_patch_attn_head_out_all_pos,
    "head_all_pos_every": tlp.get_act_patch_attn_head_all_pos_every,
    "block_every": tlp.get_act_patch_block_every,
}
#: (windows, sweep) -> the speed-up over TransformerLens to reach (the large input is "many").
TARGETS = {
    ("1", "resid_pre"): 10.0,
    ("1", "head_out_by_pos"): 10.0,
    ("many", "resid_pre"): 2.0,
    ("many", "head_out_by_pos"): 2.0,
}


def load(name: str):
    """Model, env spec and RTG scale of a checkpoint (a ``Checkpoint`` record or a ``(model, meta)`` pair)."""
    ck = load_checkpoint(resolve_model(name))
    if hasattr(ck, "model"):
        return ck.model, ck.env_spec, float(ck.rtg_scale)
    model, meta = ck[0], ck[1]
    return model, EnvSpec.from_dict(meta["env_spec"]), float(meta.get("rtg_scale", 1.0))


def windows(model, spec: EnvSpec, rtg_scale: float, batch: int) -> tuple[DTInputs, DTInputs]:
    """One full-context window and ``batch`` windows spread over the steps of collected episodes."""
    data = collect(spec, max(8, batch // 4), "mixed", seed=0, progress=False)
    lengths = np.diff(np.asarray(data.episode_starts))
    cfg = model.cfg
    ends = [(e, t) for e in range(len(lengths)) for t in range(int(lengths[e]))]
    keep = np.unique(np.round(np.linspace(0, len(ends) - 1, batch)).astype(np.int64))
    many = make_batch(
        data, [ends[i] for i in keep], cfg.context_len, rtg_scale, cfg.n_actions, cfg.max_timestep
    )
    full = max(ends, key=lambda et: et[1])  # the step with the most history: a window without padding
    one = make_batch(data, [full], cfg.context_len, rtg_scale, cfg.n_actions, cfg.max_timestep)
    return one, many


def interleaved_medians(
    a: Callable[[], torch.Tensor], b: Callable[[], torch.Tensor], runs_a: int, runs_b: int
) -> tuple[float, torch.Tensor, float, torch.Tensor]:
    """Median times (and last results) of ``a`` and ``b``, their runs alternated so that both see the same
    load on a shared machine."""
    times_a, times_b, out_a, out_b = [], [], None, None
    for r in range(max(runs_a, runs_b)):
        for fn, times, runs in ((a, times_a, runs_a), (b, times_b, runs_b)):
            if r < runs:
                t0 = time.perf_counter()
                out = fn()
                times.append(time.perf_counter() - t0)
                out_a, out_b = (out, out_b) if fn is a else (out_a, out)
    return statistics.median(times_a), out_a, statistics.median(times_b), out_b


def _values(fn: Callable, *args) -> torch.Tensor:
    return fn(*args).values


def _inference(fn: Callable, *args) -> torch.Tensor:
    with torch.inference_mode():
        return fn(*args)


def _mean_metric(metric: Callable[[torch.Tensor], torch.Tensor], logits: torch.Tensor) -> torch.Tensor:
    """TransformerLens wants a scalar: the per-window metric averaged over the windows."""
    return metric(logits).mean()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="memory-s7", help="shipped model name or checkpoint directory")
    p.add_argument("--runs", type=int, default=5, help="runs per measurement (the median is printed)")
    p.add_argument("--tl-runs", type=int, default=3, help="runs of each TransformerLens sweep")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=64, help="windows in the large input")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    model, spec, rtg_scale = load(args.model)
    one, many = windows(model, spec, rtg_scale, args.batch)
    edit = [parse_edit("R*=0.0")]
    rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    print(f"model {args.model}  torch threads {args.threads}  window K={one.context_len}  edit R*=0.0")
    print(f"{'sweep':<20}{'windows':>8}{'engine ms':>11}{'TL ms':>11}{'ratio':>8}{'max |diff|':>12}   target")
    worst_diff, misses = 0.0, []
    for size, clean in (("1", one), (str(many.batch_size), many)):
        corrupted = apply_edits(clean, edit)
        with torch.inference_mode():
            metric = logit_diff(model(clean), model(corrupted))
            clean_cache = ActivationCache(model.run_with_cache(clean)[1], model)
        tl_metric = partial(_mean_metric, metric)
        for sweep in SWEEPS:  # warm-up; on the large input, every engine sweep before TL for ru_maxrss below
            with torch.inference_mode():
                activation_patching(model, clean, corrupted, metric, sweep)
        _inference(tlp.get_act_patch_attn_head_out_all_pos, model, corrupted, clean_cache, tl_metric)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
        for sweep, tl_sweep in SWEEPS.items():
            engine = partial(_values, activation_patching, model, clean, corrupted, metric, sweep)
            tl = partial(_inference, tl_sweep, model, corrupted, clean_cache, tl_metric)
            t_engine, ours, t_tl, theirs = interleaved_medians(engine, tl, args.runs, args.tl_runs)
            diff = float((ours - theirs).abs().max())
            worst_diff = max(worst_diff, diff)
            ratio = t_tl / t_engine
            target = TARGETS.get((size if size == "1" else "many", sweep))
            verdict = "" if target is None else f">= {target:g}x " + ("ok" if ratio >= target else "MISSED")
            if target is not None and ratio < target:
                misses.append(f"{sweep} on {size}")
            times = f"{t_engine * 1e3:>11.1f}{t_tl * 1e3:>11.1f}{ratio:>7.1f}x"
            print(f"{sweep:<20}{size:>8}{times}{diff:>12.2e}   {verdict}")
        if size != "1":
            print(
                f"peak memory after the {size}-window engine sweeps: {peak:.0f} MB "
                f"(process at start {rss_start:.0f} MB; target < 2048 MB)"
            )
    print(f"largest |engine - TL| {worst_diff:.2e} (target <= 1e-5)")
    print("all targets met" if not misses else f"targets missed: {', '.join(misses)}")


if __name__ == "__main__":
    main()
