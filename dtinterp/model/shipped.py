"""The agents shipped in ``trained_models/``: discovery and the ``dtinterp models`` listing.

Each shipped agent is a checkpoint directory ``trained_models/<name>/`` (``model.safetensors``,
``config.json``, ``model_card.md``). Its headline result is read from ``config.json``'s ``results``
section, written by the reproduction pipeline after evaluation. ``DTINTERP_MODELS_DIR`` points elsewhere.
Every ``config.json`` is validated when read (:func:`~dtinterp.model.checkpoint.read_checkpoint_config`),
so the listing formats only numbers that are numbers.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dtinterp.errors import CheckpointError
from dtinterp.model.checkpoint import CONFIG_FILE, read_checkpoint_config


def models_dir() -> Path:
    """Where shipped agents live: ``$DTINTERP_MODELS_DIR`` or ``trained_models/`` beside the package."""
    env = os.environ.get("DTINTERP_MODELS_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "trained_models"


@dataclass
class ShippedModel:
    """One shipped agent: its directory and parsed ``config.json``."""

    name: str
    path: Path
    config: dict[str, Any]

    @property
    def env_id(self) -> str:
        return self.config["env_spec"]["env_id"]

    def architecture(self) -> str:
        """``L2 H4 d=128 d_mlp=256 LN K=10``: the model config (validated when read)."""
        m = self.config["model"]
        norm = m.get("normalization_type") or "noLN"
        kind = "attn-only" if m.get("attn_only") else f"d_mlp={m['d_mlp']}"
        return f"L{m['n_layers']} H{m['n_heads']} d={m['d_model']} {kind} {norm} K={m['context_len']}"

    def headline(self) -> str:
        """The recorded headline evaluation (validated when read), or ``not evaluated``."""
        results = self.config.get("results")
        r = results.get("headline") if isinstance(results, dict) else None
        if not r:
            return "not evaluated"
        return (
            f"RTG {r['target_rtg']:g}: success {r['success_rate']:.1%}, return {r['mean_return']:.3f} "
            f"(n={r['episodes']})"
        )


def list_models(
    directory: str | os.PathLike | None = None,
    on_error: Callable[[Path, CheckpointError], None] | None = None,
) -> list[ShippedModel]:
    """Every checkpoint directory under ``directory`` (default :func:`models_dir`), sorted by name.

    A missing default directory holds no models; a checkpoint whose ``config.json`` is invalid raises
    its :class:`CheckpointError`, or, with ``on_error``, is reported to it and left out.
    """
    root = Path(directory) if directory else models_dir()
    if not root.is_dir():
        return []
    out = []
    for sub in sorted(p for p in root.iterdir() if (p / CONFIG_FILE).is_file()):
        try:
            out.append(ShippedModel(sub.name, sub, read_checkpoint_config(sub)))
        except CheckpointError as exc:
            if on_error is None:
                raise
            on_error(sub, exc)
    return out


def resolve_model(name_or_path: str) -> Path:
    """A checkpoint directory from a path or a shipped model's name."""
    p = Path(name_or_path)
    if (p / CONFIG_FILE).is_file():
        return p
    shipped = models_dir() / name_or_path
    if (shipped / CONFIG_FILE).is_file():
        return shipped
    names = ", ".join(m.name for m in list_models()) or "none"
    raise CheckpointError(
        f"{name_or_path}: not a checkpoint directory nor a shipped model (shipped: {names})"
    )


def cmd_models(args: argparse.Namespace) -> int:
    """``dtinterp models``: one line per shipped agent (env, architecture, headline result).

    A ``--dir`` that is not a directory is an error; an invalid checkpoint in it is reported on stderr
    (one line naming its file and key) and makes the exit code 2, while the valid ones are still listed.
    """
    if args.dir is not None and not Path(args.dir).is_dir():
        what = "is not a directory" if Path(args.dir).exists() else "does not exist"
        raise CheckpointError(f"--dir {args.dir!r} {what}")
    bad: list[str] = []
    models = list_models(args.dir, on_error=lambda _path, exc: bad.append(str(exc)))
    if models:
        width = max(len(m.name) for m in models)
        for m in models:
            print(f"{m.name:<{width}}  {m.env_id:<36}  {m.architecture():<40}  {m.headline()}")
    elif not bad:
        print(f"no models in {args.dir or models_dir()}")
    for message in bad:
        print(f"dtinterp: error: {message}", file=sys.stderr)
    return 2 if bad else 0
