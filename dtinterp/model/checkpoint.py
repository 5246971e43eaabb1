"""Checkpoint I/O: a directory with ``model.safetensors`` and ``config.json``; never pickle.

``config.json`` holds ``{"format_version", "model": DTConfig.to_dict(), "weights_sha256", **meta}``.
Each file is written atomically (temp file + rename), weights first; the recorded sha256 makes a
checkpoint whose weights and config disagree (an interrupted save, a hand-copied file) a clear error.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from dtinterp.errors import CheckpointError, ConfigError
from dtinterp.model.config import DTConfig

if TYPE_CHECKING:
    from dtinterp.model.hooked_dt import HookedDecisionTransformer

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
RESERVED_KEYS = ("format_version", "model", "weights_sha256")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same directory and ``os.replace``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _file_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _file_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give (``mkstemp`` files are 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def save_checkpoint(
    directory: str | os.PathLike, model: HookedDecisionTransformer, meta: dict[str, Any]
) -> Path:
    """Write ``model`` and ``meta`` into ``directory`` (created if missing); returns the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    bad = [k for k in meta if k in RESERVED_KEYS]
    if bad:
        raise ValueError(f"meta may not set reserved keys {bad}")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{WEIGHTS_FILE}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"format": "pt", "dtinterp_format_version": str(FORMAT_VERSION)})
        os.chmod(tmp, _file_mode())
        digest = _sha256(tmp)
        os.replace(tmp, directory / WEIGHTS_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    config = {
        "format_version": FORMAT_VERSION,
        "model": model.cfg.to_dict(),
        "weights_sha256": digest,
        **meta,
    }
    atomic_write_text(directory / CONFIG_FILE, json.dumps(config, indent=2, sort_keys=True) + "\n")
    return directory


def read_checkpoint_config(directory: str | os.PathLike) -> dict[str, Any]:
    """Parse and validate ``config.json`` of a checkpoint directory (no weights loaded)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a checkpoint directory (no such directory)")
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory}: missing {CONFIG_FILE}")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: unsupported checkpoint format_version {version!r} (expected {FORMAT_VERSION})"
        )
    if not isinstance(config.get("model"), dict):
        raise CheckpointError(f"{path}: missing the 'model' config")
    try:
        DTConfig.from_dict(config["model"])
    except ConfigError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    return config


def load_checkpoint(
    directory: str | os.PathLike, device: str = "cpu"
) -> tuple[HookedDecisionTransformer, dict[str, Any]]:
    """Load a checkpoint written by :func:`save_checkpoint`; returns ``(model in eval mode, meta)``.

    Every problem (missing file, bad JSON, unknown config key or version, weights that do not match the
    config in names or shapes, a corrupted weights file) is a :class:`CheckpointError` naming the path.
    """
    from dtinterp.model.hooked_dt import HookedDecisionTransformer

    directory = Path(directory)
    config = read_checkpoint_config(directory)
    cfg = DTConfig.from_dict(config["model"])
    cfg.device = device
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{directory}: missing {WEIGHTS_FILE}")
    expected = config.get("weights_sha256")
    if expected is not None and _sha256(weights) != expected:
        raise CheckpointError(f"{weights}: contents do not match the sha256 recorded in {CONFIG_FILE}")
    try:
        tensors = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{weights}: not a valid safetensors file ({exc})") from None
    model = HookedDecisionTransformer(cfg.replace(device="cpu"))
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"{weights}: tensors do not match the config (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    for name, t in tensors.items():
        if t.shape != own[name].shape:
            raise CheckpointError(
                f"{weights}: shape mismatch for {name}: file {tuple(t.shape)}, config {tuple(own[name].shape)}"
            )
    model.load_state_dict(tensors)
    model.cfg.device = device
    model.to(device).eval()
    meta = {k: v for k, v in config.items() if k not in RESERVED_KEYS}
    return model, meta


def _sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


__all__ = [
    "CONFIG_FILE",
    "FORMAT_VERSION",
    "WEIGHTS_FILE",
    "atomic_write_bytes",
    "atomic_write_text",
    "load_checkpoint",
    "read_checkpoint_config",
    "save_checkpoint",
]
