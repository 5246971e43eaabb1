"""Training configuration: every hyperparameter of a run in one typed, documented dataclass.

A run is described by a JSON file (``dtinterp train --config run.json``) holding any subset of the
fields below; missing fields keep their defaults, and ``--steps`` / ``--seed`` / ``--device`` /
``--logger`` on the command line override the file. Unknown keys and bad values are a
:class:`~dtinterp.errors.ConfigError` naming the file and the key.

The model architecture is the ``model`` field: a dict of :class:`~dtinterp.model.DTConfig` fields.
The fields that follow from the data (``obs_shape``, ``n_actions``, ``max_timestep``) are not set here;
``context_len`` is a top-level field because the data windows and the model must agree on it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dtinterp.errors import ConfigError
from dtinterp.model.config import DTConfig

#: DTConfig fields a training config may set in ``model`` (the rest come from the data or are fixed).
MODEL_KEYS = (
    "n_layers",
    "n_heads",
    "d_model",
    "d_head",
    "d_mlp",
    "normalization_type",
    "act_fn",
    "attn_only",
    "state_encoder",
    "init_range",
)
LOGGERS = ("none", "tensorboard", "wandb")

#: Fields that decide the trained weights; a resumed run must agree with the saved run on all of them.
RESULT_FIELDS = (
    "model",
    "context_len",
    "batch_size",
    "steps",
    "lr",
    "weight_decay",
    "betas",
    "warmup_steps",
    "min_lr_ratio",
    "grad_clip",
    "rtg_scale",
    "p_episode_end",
    "seed",
)


@dataclass
class TrainConfig:
    """Hyperparameters of one training run."""

    model: dict[str, Any] = field(default_factory=dict)
    """Architecture: any of the DTConfig fields in ``MODEL_KEYS``; unset ones keep DTConfig's defaults
    (2 layers, 4 heads, d_model 128, d_mlp 512, LayerNorm, relu, grid state embedding)."""
    context_len: int = 8
    """K, the number of timesteps in a window (the model sees 3K-1 tokens)."""
    batch_size: int = 128
    """Windows per optimizer step."""
    steps: int = 5000
    """Optimizer steps in the whole run."""
    lr: float = 6e-4
    """Peak learning rate (AdamW), reached after warmup."""
    weight_decay: float = 0.1
    """Decoupled weight decay on the matrices of linear maps (not biases, norms or embeddings)."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW (beta1, beta2)."""
    warmup_steps: int = 200
    """Steps of linear warmup from 0 to ``lr``."""
    min_lr_ratio: float = 0.1
    """The cosine schedule decays from ``lr`` to ``min_lr_ratio * lr`` at the last step."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value (0 disables clipping)."""
    rtg_scale: float = 1.0
    """The model sees return-to-go divided by this (keep RTG inputs of order 1)."""
    p_episode_end: float = 0.1
    """Probability that a window ends at an episode's last step instead of a uniform transition."""
    seed: int = 0
    """Seeds the model initialization and (with the step number) every batch's sampling."""
    eval_every: int = 0
    """Every this many steps, roll the model out in its env at ``eval_rtg`` (0 disables)."""
    eval_rtg: list[float] = field(default_factory=lambda: [1.0])
    """Target returns (unscaled) for the periodic evaluation rollouts."""
    eval_episodes: int = 32
    """Episodes per target return in the periodic evaluation."""
    checkpoint_every: int = 1000
    """Write a resumable checkpoint every this many steps (0: only at the end)."""
    log_every: int = 20
    """Append a metrics line (and update the logger) every this many steps."""
    device: str = "cpu"
    """Torch device: ``cpu``, ``cuda``, ``cuda:1``, ..."""
    logger: str = "none"
    """Extra metric sink besides ``metrics.jsonl``: none, tensorboard or wandb (offline)."""

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # type: ignore[assignment]
        self.eval_rtg = list(self.eval_rtg)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (stored in checkpoints under ``train``)."""
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    def result_dict(self) -> dict[str, Any]:
        """The fields that decide the trained weights (compared when resuming)."""
        d = self.to_dict()
        return {k: d[k] for k in RESULT_FIELDS}

    def model_config(self, obs_shape: tuple[int, int], n_actions: int, max_timestep: int) -> DTConfig:
        """The DTConfig of this run for data with ``obs_shape`` (W, H), ``n_actions`` and ``max_timestep``."""
        return DTConfig(
            obs_shape=obs_shape,
            n_actions=n_actions,
            max_timestep=max_timestep,
            context_len=self.context_len,
            device=self.device,
            **self.model,
        )

    @classmethod
    def from_dict(cls, d: Any, source: str = "config") -> TrainConfig:
        """Build and validate a config; any problem is a ConfigError starting with ``source``."""
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: expected a JSON object, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        for key in d:
            if key not in known:
                raise ConfigError(f"{source}: unknown key {key!r} (known: {', '.join(sorted(known))})")
        defaults = cls()
        values = {f.name: d.get(f.name, getattr(defaults, f.name)) for f in dataclasses.fields(cls)}
        for name, value in values.items():
            _check_field(name, value, source)
        cfg = cls(**values)
        try:  # architecture errors (e.g. d_model not divisible by n_heads) surface now, not mid-run
            cfg.model_config(obs_shape=(7, 7), n_actions=7, max_timestep=1)
        except ConfigError as exc:
            raise ConfigError(f"{source}: model: {exc}") from None
        return cfg

    def replace(self, source: str = "config", **changes: Any) -> TrainConfig:
        """A copy with some fields changed, validated like a loaded file (errors start with ``source``)."""
        return TrainConfig.from_dict({**self.to_dict(), **changes}, source=source)


def load_train_config(path: str | os.PathLike) -> TrainConfig:
    """Read a JSON config file; a missing file, bad JSON, unknown key or bad value is a ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid JSON ({exc})") from None
    return TrainConfig.from_dict(d, source=f"config file {str(path)!r}")


# ---------------------------------------------------------------- validation


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


# name -> (check, what the value must be)
_CHECKS: dict[str, tuple[Any, str]] = {
    "context_len": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "batch_size": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "steps": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "lr": (lambda v: _is_num(v) and v > 0, "a number > 0"),
    "weight_decay": (lambda v: _is_num(v) and v >= 0, "a number >= 0"),
    "betas": (
        lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_num(b) and 0 <= b < 1 for b in v),
        "two numbers in [0, 1)",
    ),
    "warmup_steps": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "min_lr_ratio": (lambda v: _is_num(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "grad_clip": (lambda v: _is_num(v) and v >= 0, "a number >= 0"),
    "rtg_scale": (lambda v: _is_num(v) and v > 0, "a number > 0"),
    "p_episode_end": (lambda v: _is_num(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "seed": (lambda v: _is_int(v) and 0 <= v < 2**63, "an integer >= 0"),
    "eval_every": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "eval_rtg": (
        lambda v: isinstance(v, (list, tuple)) and len(v) >= 1 and all(_is_num(x) for x in v),
        "a non-empty list of numbers",
    ),
    "eval_episodes": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "checkpoint_every": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "log_every": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "device": (
        lambda v: isinstance(v, str) and _valid_device(v),
        "a torch device name such as 'cpu' or 'cuda'",
    ),
    "logger": (lambda v: v in LOGGERS, f"one of {', '.join(LOGGERS)}"),
}


_DEVICE = re.compile(r"(cpu|mps|meta|(cuda|xpu)(:\d+)?)")


def _valid_device(name: str) -> bool:
    """A device name torch understands (checked without importing torch, to keep the CLI's checks fast)."""
    return _DEVICE.fullmatch(name) is not None


def _check_field(name: str, value: Any, source: str) -> None:
    if name == "model":
        _check_model(value, source)
        return
    check, what = _CHECKS[name]
    if not check(value):
        raise ConfigError(f"{source}: {name!r} must be {what}, got {value!r}")


def _check_model(model: Any, source: str) -> None:
    if not isinstance(model, dict):
        raise ConfigError(f"{source}: 'model' must be an object of architecture fields, got {model!r}")
    for key, value in model.items():
        if key not in MODEL_KEYS:
            raise ConfigError(f"{source}: unknown key 'model.{key}' (known: {', '.join(MODEL_KEYS)})")
        ok = {
            "normalization_type": value in ("LN", "LNPre", None),
            "act_fn": value in ("relu", "gelu"),
            "state_encoder": value in ("grid", "cnn"),
            "attn_only": isinstance(value, bool),
            "init_range": _is_num(value) and value > 0,
            "d_head": value is None or (_is_int(value) and value >= 1),
        }.get(key, _is_int(value) and value >= 1)
        if not ok:
            raise ConfigError(f"{source}: 'model.{key}' has a bad value {value!r}")
