"""``dtinterp train``: train a decision transformer on a dataset into a run directory.

Everything the user supplied is checked (config file, overrides, logger, device, dataset, run directory)
before anything is written. Ctrl-C stops at the end of the current step and saves a resumable checkpoint;
a second Ctrl-C aborts at once.
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from dtinterp.errors import ConfigError
from dtinterp.outputs import check_output_dir
from dtinterp.train.config import TrainConfig, load_train_config


def _run_config(args: argparse.Namespace, out: Path) -> TrainConfig:
    """The run's config: the --config file (or, when resuming without one, the saved run's) + CLI overrides."""
    if args.config is not None:
        cfg = load_train_config(args.config)
    elif args.resume:
        from dtinterp.model.checkpoint import read_checkpoint_config

        saved = read_checkpoint_config(out).get("train")
        cfg = TrainConfig.from_dict(saved, source=f"saved config in {out}")
    else:
        cfg = TrainConfig()
    overrides = {
        k: v
        for k, v in {
            "steps": args.steps,
            "seed": args.seed,
            "device": args.device,
            "logger": args.logger,
        }.items()
        if v is not None
    }
    return cfg.replace(source="command-line override", **overrides) if overrides else cfg


def _check_out_dir(out: Path, resume: bool) -> None:
    check_output_dir("--out", out)
    if resume:
        from dtinterp.train.trainer import STATE_JSON_FILE

        if not (out / STATE_JSON_FILE).is_file():
            raise ConfigError(f"--resume: {out} holds no training run to resume (no {STATE_JSON_FILE})")
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(
            f"--out {out} already exists and is not empty (choose a new directory, or --resume)"
        )


def _check_device(name: str) -> None:
    import torch

    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} is not available (no CUDA GPU visible to torch)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {name!r} is not available (no MPS backend)")


class _StopOnInterrupt:
    """First Ctrl-C asks the loop to stop after the current step; the second one raises at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __call__(self, step: int) -> bool:
        return self.requested

    def _handle(self, signum, frame) -> None:  # noqa: ANN001
        self.requested = True
        signal.signal(signal.SIGINT, self._previous)

    def __enter__(self) -> _StopOnInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def cmd_train(args: argparse.Namespace) -> int:
    """Validate inputs, train, and print a summary; exit code 130 when stopped by Ctrl-C (resumable)."""
    out = Path(args.out)
    _check_out_dir(out, args.resume)
    cfg = _run_config(args, out)
    from dtinterp.data.minari_io import load_training_data

    data = load_training_data(args.data)  # a .npz file, or minari:NAMESPACE/NAME-v0
    from dtinterp.train.trainer import check_logger_available, train  # torch from here on

    check_logger_available(cfg.logger)
    _check_device(cfg.device)

    with _StopOnInterrupt() as stop:
        result = train(
            cfg, data, out, resume=args.resume, should_stop=stop, progress=True, data_path=str(args.data)
        )
    m, s = divmod(int(result.wall_time_s), 60)
    print(f"run directory   {out}")
    print(f"steps           {result.step} / {cfg.steps}")
    print(f"final loss      {result.loss:.4f}   action accuracy {result.acc:.3f}")
    print(f"parameters      {result.n_params:,}")
    print(f"wall time       {m}m {s:02d}s on {cfg.device}   ({result.samples_per_s:,.0f} windows/s)")
    if result.stopped_early:
        print(
            f"stopped at step {result.step}; continue with: dtinterp train --data {args.data} --out {out} --resume"
        )
        return 130
    return 0
