"""Checkpoints: the :class:`Checkpoint` record and its I/O (a directory of safetensors + JSON; never pickle).

A checkpoint directory holds ``model.safetensors`` and ``config.json``
(``{"format_version", "model": DTConfig.to_dict(), "weights_sha256", **meta}``). Each file is written
atomically (temp file + rename), weights first; the recorded sha256 makes a checkpoint whose weights and
config disagree (an interrupted save, a hand-copied file) a clear error.

:func:`load_checkpoint` returns a :class:`Checkpoint`: the model together with everything the rest of the
package needs to know about it, parsed and checked once here (its env spec, RTG scale, action names,
weights digest, path). Nothing else parses checkpoint metadata, and :meth:`Checkpoint.check_fits` is the
one answer to "does this model fit that env / episode".
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from dtinterp.errors import CheckpointError, ConfigError
from dtinterp.model.config import DTConfig
from envs.encoding import ACTION_NAMES
from envs.errors import EnvSpecError
from envs.spec import EnvSpec, env_facts

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


@dataclass(eq=False)
class Checkpoint:
    """A model and everything known about it: what :func:`load_checkpoint` returns.

    Built only by :func:`load_checkpoint` (from a directory) or :meth:`from_model` (from a model in
    memory), both of which check that the metadata is complete and that the model fits its own env.
    """

    model: HookedDecisionTransformer
    """The hooked DT, in eval mode. Shared: attach hooks only inside a ``with`` block."""
    env_spec: EnvSpec | None
    """The env the model was trained in and plays (None only for a bare model given no metadata)."""
    rtg_scale: float
    """The model sees return-to-go divided by this (> 0)."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Everything else ``config.json`` records (training config, dataset fingerprint, results, ...)."""
    path: Path | None = None
    """The checkpoint directory (None for a model built in memory)."""
    weights_sha256: str | None = None
    """sha256 of ``model.safetensors`` (None for a model built in memory)."""
    name: str = ""
    """A short name: a shipped agent's name, else the directory's name (``"in-memory model"``)."""

    @property
    def config(self) -> DTConfig:
        """The model's architecture."""
        return self.model.cfg

    @property
    def n_actions(self) -> int:
        return self.model.cfg.n_actions

    @property
    def action_names(self) -> tuple[str, ...]:
        """Names of the actions the model can emit, in id order (a 3-action model has no ``toggle``)."""
        return tuple(ACTION_NAMES[: self.model.cfg.n_actions])

    @property
    def context_len(self) -> int:
        return self.model.cfg.context_len

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @classmethod
    def from_model(
        cls,
        model: HookedDecisionTransformer,
        meta: dict[str, Any],
        path: str | os.PathLike | None = None,
        weights_sha256: str | None = None,
        name: str | None = None,
        require_env: bool = True,
    ) -> Checkpoint:
        """A checkpoint record for ``model`` with checkpoint metadata ``meta``.

        A missing (unless ``require_env`` is False: a bare model in a notebook) or invalid env spec, an
        invalid RTG scale, or a model that cannot act in its env is a one-line :class:`CheckpointError`.
        """
        where = str(path) if path is not None else (name or "model")
        spec, scale = _parse_meta(meta, where, require_env)
        ckpt = cls(
            model=model.eval(),
            env_spec=spec,
            rtg_scale=scale,
            meta=dict(meta),
            path=None if path is None else Path(path),
            weights_sha256=weights_sha256,
            name=name or (Path(path).name if path is not None else "in-memory model"),
        )
        if spec is not None:
            ckpt.check_fits(spec, where=f"{where}: its own env")
        return ckpt

    def check_fits(
        self, spec: EnvSpec, grid: tuple[int, ...] | None = None, where: str = "the episode"
    ) -> None:
        """Raise :class:`CheckpointError` unless this model can act in / read data of ``spec``'s env.

        The env must be the model's own, observed in the same way (so the episode's windows mean what the
        model learned), with observation grids of the model's (W, H) (``grid`` overrides the spec's,
        e.g. the shape of a dataset's stored observations) and at least the model's actions.
        """
        label = "" if not self.name else f" {self.name}"
        if self.env_spec is None:
            raise CheckpointError(f"the model{label} records no env: cannot tell whether {where} fits it")
        if spec != self.env_spec:
            raise CheckpointError(
                f"{where} is in {spec.to_json()} but the model{label} plays {self.env_spec.to_json()}"
            )
        try:
            facts = env_facts(spec)
        except EnvSpecError as exc:
            raise CheckpointError(f"{where}: {exc}") from None
        wh = tuple(grid[:2]) if grid is not None else facts.obs_shape[:2]
        if wh != tuple(self.model.cfg.obs_shape):
            raise CheckpointError(
                f"{where} has {wh[0]}x{wh[1]} observations but the model{label} reads "
                f"{self.model.cfg.obs_shape[0]}x{self.model.cfg.obs_shape[1]} observations"
            )
        if self.model.cfg.n_actions > facts.n_actions:
            raise CheckpointError(
                f"the model{label} has {self.model.cfg.n_actions} actions but {spec.env_id} has only "
                f"{facts.n_actions}"
            )

    def summary(self) -> str:
        """One line: env, architecture and size."""
        c = self.model.cfg
        kind = "attn-only" if c.attn_only else f"d_mlp={c.d_mlp}"
        env = self.env_spec.env_id if self.env_spec is not None else "no env recorded"
        return (
            f"{env} · {c.n_layers} layers, {c.n_heads} heads, d_model={c.d_model}, {kind}, "
            f"context {c.context_len} · {self.n_params:,} parameters · RTG scale {self.rtg_scale:g}"
        )

    def provenance(self) -> dict[str, Any]:
        """What identifies this model in a result: name, path, weights digest, env and RTG scale."""
        return {
            "name": self.name,
            "path": None if self.path is None else str(self.path.resolve()),
            "weights_sha256": self.weights_sha256,
            "env_spec": None if self.env_spec is None else self.env_spec.to_dict(),
            "rtg_scale": self.rtg_scale,
            "config": self.model.cfg.to_dict(),
        }

    def describe(self) -> dict[str, Any]:
        """Name -> value description for reports (provenance plus training step, dataset and results)."""
        info: dict[str, Any] = {
            "checkpoint": "in memory" if self.path is None else str(self.path.resolve()),
            "weights sha256": self.weights_sha256 or "not recorded",
            "env": "not recorded" if self.env_spec is None else self.env_spec.to_json(),
            "config": self.model.cfg.to_dict(),
            "parameters": f"{self.n_params:,}",
            "rtg_scale": self.rtg_scale,
        }
        for key in ("step", "dataset", "results"):
            if key in self.meta:
                info[key] = self.meta[key]
        return info


def _parse_meta(meta: dict[str, Any], where: str, require_env: bool = True) -> tuple[EnvSpec | None, float]:
    """The env spec and RTG scale a checkpoint's metadata records: the one place that reads them."""
    if not isinstance(meta, dict):
        raise CheckpointError(f"{where}: checkpoint metadata must be a JSON object")
    spec = None
    if meta.get("env_spec") is None and not require_env:
        pass
    elif not isinstance(meta.get("env_spec"), dict):
        raise CheckpointError(
            f"{where}: config.json has no 'env_spec': cannot tell which env the model plays"
        )
    else:
        try:
            spec = EnvSpec.from_dict(meta["env_spec"])
        except (EnvSpecError, TypeError) as exc:
            raise CheckpointError(f"{where}: invalid 'env_spec' in config.json ({exc})") from None
    scale = meta.get("rtg_scale", 1.0)
    if (
        isinstance(scale, bool)
        or not isinstance(scale, (int, float))
        or not (math.isfinite(scale) and scale > 0)
    ):
        raise CheckpointError(f"{where}: 'rtg_scale' in config.json must be a positive number, got {scale!r}")
    return spec, float(scale)


def load_checkpoint(directory: str | os.PathLike, device: str = "cpu", name: str | None = None) -> Checkpoint:
    """Load a checkpoint written by :func:`save_checkpoint` as a :class:`Checkpoint` (model in eval mode).

    Every problem (missing file, bad JSON, unknown config key or version, weights that do not match the
    config in names or shapes, a corrupted weights file, a missing or invalid env spec, a model that does
    not fit its env) is a :class:`CheckpointError` naming the path.
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
    digest = _sha256(weights)
    if expected is not None and digest != expected:
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
    for key, t in tensors.items():
        if t.shape != own[key].shape:
            raise CheckpointError(
                f"{weights}: shape mismatch for {key}: file {tuple(t.shape)}, config {tuple(own[key].shape)}"
            )
    model.load_state_dict(tensors)
    model.cfg.device = device
    model.to(device).eval()
    meta = {k: v for k, v in config.items() if k not in RESERVED_KEYS}
    return Checkpoint.from_model(model, meta, path=directory, weights_sha256=digest, name=name)


def _sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


__all__ = [
    "CONFIG_FILE",
    "Checkpoint",
    "FORMAT_VERSION",
    "WEIGHTS_FILE",
    "atomic_write_bytes",
    "atomic_write_text",
    "load_checkpoint",
    "read_checkpoint_config",
    "save_checkpoint",
]
