"""The agents shipped in ``trained_models/``: discovery and the ``dtinterp models`` listing.

Each shipped agent is a checkpoint directory ``trained_models/<name>/`` (``model.safetensors``,
``config.json``, ``model_card.md``). Its headline result is read from ``config.json``'s ``results``
section, written by the reproduction pipeline after evaluation. ``DTINTERP_MODELS_DIR`` points elsewhere.
"""

from __future__ import annotations

import argparse
import os
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
        return self.config.get("env_spec", {}).get("env_id", "?")

    def architecture(self) -> str:
        m = self.config["model"]
        norm = m.get("normalization_type") or "noLN"
        kind = "attn-only" if m.get("attn_only") else f"d_mlp={m['d_mlp']}"
        return f"L{m['n_layers']} H{m['n_heads']} d={m['d_model']} {kind} {norm} K={m['context_len']}"

    def headline(self) -> str:
        r = self.config.get("results", {}).get("headline")
        if not r:
            return "not evaluated"
        return (
            f"RTG {r['target_rtg']:g}: success {r['success_rate']:.1%}, return {r['mean_return']:.3f} "
            f"(n={r['episodes']})"
        )


def list_models(directory: str | os.PathLike | None = None) -> list[ShippedModel]:
    """Every checkpoint directory under ``directory`` (default :func:`models_dir`), sorted by name."""
    root = Path(directory) if directory else models_dir()
    if not root.is_dir():
        return []
    out = []
    for sub in sorted(p for p in root.iterdir() if (p / CONFIG_FILE).is_file()):
        out.append(ShippedModel(sub.name, sub, read_checkpoint_config(sub)))
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
    """``dtinterp models``: one line per shipped agent (env, architecture, headline result)."""
    models = list_models(args.dir)
    if not models:
        print(f"no models in {args.dir or models_dir()}")
        return 0
    width = max(len(m.name) for m in models)
    for m in models:
        print(f"{m.name:<{width}}  {m.env_id:<36}  {m.architecture():<40}  {m.headline()}")
    return 0
