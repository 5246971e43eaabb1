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
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError, safe_open

from dtinterp.errors import CheckpointError, ConfigError
from dtinterp.limits import MAX_EPISODE_STEPS
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
    from safetensors.torch import save_file  # torch: only when weights are written

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
    """Parse and validate ``config.json`` of a checkpoint directory (no weights loaded).

    Everything the package reads from it is checked here, once: the model config (every key, of its
    type and within bounds), the env spec, the RTG scale, the weights digest, the training step and the
    recorded results. A problem is one :class:`CheckpointError` line naming the file and the key.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a checkpoint directory (no such directory)")
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory}: missing {CONFIG_FILE}")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({_one_line(exc)})") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    version = config.get("format_version")
    if isinstance(version, bool) or version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: unsupported checkpoint format_version {version!r} (expected {FORMAT_VERSION})"
        )
    if not isinstance(config.get("model"), dict):
        raise CheckpointError(f"{path}: missing the 'model' config")
    try:
        cfg = DTConfig.from_dict(config["model"])
    except ConfigError as exc:
        raise CheckpointError(f"{path}: 'model': {exc}") from None
    meta = {k: v for k, v in config.items() if k not in RESERVED_KEYS}
    spec, _ = _parse_meta(meta, str(path))
    _check_spec_sizes(spec, cfg, str(path))
    sha = config.get("weights_sha256")
    if sha is not None and not (isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha)):
        raise CheckpointError(f"{path}: 'weights_sha256' must be 64 hex digits, got {sha!r}")
    _check_recorded(meta, _Where(str(path)))
    return config


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _check_spec_sizes(spec: EnvSpec | None, cfg: DTConfig, where: str) -> None:
    """An env spec that could not feed this model, caught before any env is built from it."""
    if spec is None:
        return
    if spec.max_steps is not None and spec.max_steps > MAX_EPISODE_STEPS:
        raise CheckpointError(
            f"{where}: 'env_spec.max_steps' {spec.max_steps} is above the limit {MAX_EPISODE_STEPS}"
        )
    if not spec.fully_observed and (spec.view_size, spec.view_size) != tuple(cfg.obs_shape):
        raise CheckpointError(
            f"{where}: 'env_spec.view_size' {spec.view_size} gives {spec.view_size}x{spec.view_size} "
            f"observations but the model reads {cfg.obs_shape[0]}x{cfg.obs_shape[1]} observations"
        )


class _Where:
    """Type checks of recorded JSON values, each error one line naming the file and the dotted key."""

    def __init__(self, path: str):
        self.path = path

    def fail(self, key: str, expected: str, value: Any) -> None:
        shown = repr(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise CheckpointError(f"{self.path}: {key!r} must be {expected}, got {shown}")

    def number(self, key: str, value: Any, lo: float = -math.inf, hi: float = math.inf) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            self.fail(key, "a finite number", value)
        if not lo <= value <= hi:
            self.fail(key, f"a number in [{lo:g}, {hi:g}]", value)

    def integer(self, key: str, value: Any, lo: int = 0) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            self.fail(key, f"an integer >= {lo}", value)

    def text(self, key: str, value: Any) -> None:
        if not isinstance(value, str):
            self.fail(key, "a string", value)

    def obj(self, key: str, value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(key, "a JSON object", value)
        return value

    def seq(self, key: str, value: Any) -> list[Any]:
        if not isinstance(value, list):
            self.fail(key, "a list", value)
        return value

    def interval(self, key: str, value: Any, lo: float = -math.inf, hi: float = math.inf) -> None:
        pair = self.seq(key, value)
        if len(pair) != 2:
            self.fail(key, "a [low, high] pair", value)
        for i, v in enumerate(pair):
            self.number(f"{key}[{i}]", v, lo, hi)
        if pair[0] > pair[1]:
            self.fail(key, "a [low, high] pair with low <= high", value)

    def evaluation(self, key: str, record: Any, complete: bool = True) -> None:
        """One target's evaluation summary (what ``dtinterp evaluate`` writes per target)."""
        rec = self.obj(key, record)
        checks = {
            "target_rtg": lambda k, v: self.number(k, v),
            "episodes": lambda k, v: self.integer(k, v, 1),
            "mean_return": lambda k, v: self.number(k, v),
            "success_rate": lambda k, v: self.number(k, v, 0.0, 1.0),
            "return_ci": lambda k, v: self.interval(k, v),
            "success_ci": lambda k, v: self.interval(k, v, 0.0, 1.0),
            "mean_length": lambda k, v: self.number(k, v, 0.0),
        }
        for name, check in checks.items():
            if name in rec:
                check(f"{key}.{name}", rec[name])
            elif complete:
                raise CheckpointError(f"{self.path}: {key!r} has no {name!r}")
        for name, lo in (("returns", None), ("lengths", 0)):
            if name in rec:
                for i, v in enumerate(self.seq(f"{key}.{name}", rec[name])):
                    if lo is None:
                        self.number(f"{key}.{name}[{i}]", v)
                    else:
                        self.integer(f"{key}.{name}[{i}]", v, lo)


def _check_recorded(meta: dict[str, Any], at: _Where) -> None:
    """The training step, dataset fingerprint, provenance texts and recorded results of a checkpoint."""
    if "step" in meta:
        at.integer("step", meta["step"])
    for key in ("description", "data_note"):
        if key in meta:
            at.text(key, meta[key])
    for key in ("train", "run", "dataset_metadata", "reproduction"):
        if key in meta:
            at.obj(key, meta[key])
    if "dataset" in meta:
        dataset = at.obj("dataset", meta["dataset"])
        for key in ("n_episodes", "n_transitions"):
            if key in dataset:
                at.integer(f"dataset.{key}", dataset[key])
        for key in ("env_id", "sha256"):
            if key in dataset:
                at.text(f"dataset.{key}", dataset[key])
    if "results" in meta:
        results = meta["results"]
        if isinstance(results, list):  # a plain list of per-target records (hand-recorded)
            for i, rec in enumerate(results):
                at.evaluation(f"results[{i}]", rec, complete=False)
        else:
            results = at.obj("results", results)
            if "headline" in results:
                at.evaluation("results.headline", results["headline"])
            for i, rec in enumerate(at.seq("results.evaluation", results.get("evaluation", []))):
                at.evaluation(f"results.evaluation[{i}]", rec)
            protocol = at.obj("results.evaluation_protocol", results.get("evaluation_protocol", {}))
            for key in ("episodes", "seed"):
                if key in protocol:
                    at.integer(f"results.evaluation_protocol.{key}", protocol[key])
            cal = at.obj("results.calibration", results.get("calibration", {}))
            for key in ("episodes", "points", "seed"):
                if key in cal:
                    at.integer(f"results.calibration.{key}", cal[key])
            for key in ("min", "max"):
                if key in cal:
                    at.number(f"results.calibration.{key}", cal[key])
            for key in ("figure", "file"):
                if key in cal:
                    at.text(f"results.calibration.{key}", cal[key])
            if "episode_gif" in results:
                at.text("results.episode_gif", results["episode_gif"])
    for i, other in enumerate(at.seq("other_reproductions", meta.get("other_reproductions", []))):
        other = at.obj(f"other_reproductions[{i}]", other)
        if "headline" in other:
            at.evaluation(f"other_reproductions[{i}].headline", other["headline"])


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
        if spec.max_steps is not None and spec.max_steps > MAX_EPISODE_STEPS:
            raise CheckpointError(
                f"{where}: max steps {spec.max_steps} is above the limit {MAX_EPISODE_STEPS}"
            )

        def check_grid(wh: tuple[int, ...]) -> None:
            if wh != tuple(self.model.cfg.obs_shape):
                raise CheckpointError(
                    f"{where} has {wh[0]}x{wh[1]} observations but the model{label} reads "
                    f"{self.model.cfg.obs_shape[0]}x{self.model.cfg.obs_shape[1]} observations"
                )

        if grid is None and not spec.fully_observed:  # known before the env is built (whatever its view)
            grid = (spec.view_size, spec.view_size)
        if grid is not None:
            check_grid(tuple(grid[:2]))
        try:
            facts = env_facts(spec)
        except EnvSpecError as exc:
            raise CheckpointError(f"{where}: {exc}") from None
        if grid is None:
            check_grid(facts.obs_shape[:2])
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
    import torch
    from safetensors.torch import load_file

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
    # Names and shapes are compared from the file's header against a model built on the meta device
    # (no memory), so a config that disagrees with the weights never allocates a model of its size.
    own = _state_shapes(cfg, directory)
    try:
        with safe_open(str(weights), framework="pt", device="cpu") as f:
            stored = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{weights}: not a valid safetensors file ({_one_line(exc)})") from None
    missing = sorted(set(own) - set(stored))
    unexpected = sorted(set(stored) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"{weights}: tensors do not match the config (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    for key, shape in stored.items():
        if shape != own[key]:
            raise CheckpointError(f"{weights}: shape mismatch for {key}: file {shape}, config {own[key]}")
    try:
        tensors = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{weights}: not a valid safetensors file ({_one_line(exc)})") from None
    for key, t in tensors.items():
        if not (t.is_floating_point() and bool(torch.isfinite(t).all())):
            what = "NaN or infinite values" if t.is_floating_point() else f"{t.dtype} values, not floats"
            raise CheckpointError(f"{weights}: tensor {key} holds {what}")
    model = HookedDecisionTransformer(cfg.replace(device="cpu"))
    model.load_state_dict(tensors)
    model.cfg.device = device
    model.to(device).eval()
    meta = {k: v for k, v in config.items() if k not in RESERVED_KEYS}
    return Checkpoint.from_model(model, meta, path=directory, weights_sha256=digest, name=name)


def _state_shapes(cfg: DTConfig, where: Path) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor of a model of ``cfg``, from a model built on the meta device."""
    import torch

    from dtinterp.model.hooked_dt import HookedDecisionTransformer

    try:
        with torch.device("meta"):
            model = HookedDecisionTransformer(cfg.replace(device="meta"))
    except (ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{where}: the model config cannot build a model ({_one_line(exc)})") from None
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


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
