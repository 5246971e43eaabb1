"""Configuration of the hooked decision transformer.

Field names follow TransformerLens where TL reads them (``n_layers, n_heads, d_model, d_head, d_mlp,
normalization_type, attn_only, final_rms, n_key_value_heads, device``), so ``ActivationCache`` and
``transformer_lens.patching`` work on our model unchanged.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import Any

from dtinterp.errors import ConfigError

CONFIG_VERSION = 1
NORMALIZATION_TYPES = ("LN", "LNPre", None)
ACT_FNS = ("relu", "gelu")
STATE_ENCODERS = ("grid", "cnn")
#: MiniGrid's action vocabulary (left, right, forward, pickup, drop, toggle, done): the most a model has.
MAX_ACTIONS = 7
# Architecture bounds: far beyond any DT trained here, low enough that a corrupt or hand-edited config
# cannot make the model ask for terabytes before its weights are even read.
MAX_GRID = 255
MAX_WIDTH = 65_536
MAX_LAYERS = 256
MAX_HEADS = 256
MAX_CONTEXT = 4096
MAX_TIMESTEP = 1_000_000
_INT_BOUNDS = {
    "n_actions": (2, MAX_ACTIONS),
    "max_timestep": (1, MAX_TIMESTEP),
    "context_len": (1, MAX_CONTEXT),
    "n_layers": (1, MAX_LAYERS),
    "n_heads": (1, MAX_HEADS),
    "d_model": (1, MAX_WIDTH),
    "d_mlp": (1, MAX_WIDTH),
}


def _check_int(name: str, value: Any, lo: int, hi: int) -> int:
    """``value`` as an int if it is an integer (not a bool, not a float) in ``[lo, hi]``."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise ConfigError(f"{name} must be in {lo}..{hi}, got {value}")
    return int(value)


@dataclass
class DTConfig:
    """Architecture of a :class:`~dtinterp.model.HookedDecisionTransformer`."""

    obs_shape: tuple[int, int] = (7, 7)
    """(W, H) of the compact observation grid."""
    n_actions: int = 7
    """Size of the action vocabulary (MiniGrid has 7)."""
    max_timestep: int = 256
    """Largest episode timestep the time embedding covers (the env's max steps)."""
    context_len: int = 8
    """Context length K in timesteps; the model sees 3K-1 tokens."""
    n_layers: int = 2
    n_heads: int = 4
    d_model: int = 128
    d_head: int | None = None
    """Defaults to d_model // n_heads."""
    d_mlp: int = 512
    normalization_type: str | None = "LN"
    """LN, LNPre (LayerNorm without learned affine) or None."""
    act_fn: str = "relu"
    attn_only: bool = False
    state_encoder: str = "grid"
    """``grid``: sum of learned (x, y, feature) vectors (interpretable); ``cnn``: a small conv encoder."""
    init_range: float = 0.02
    seed: int | None = None
    device: str = "cpu"
    # Constants TransformerLens reads; not configurable here.
    final_rms: bool = field(default=False, repr=False)
    n_key_value_heads: int | None = field(default=None, repr=False)
    positional_embedding_type: str = field(default="standard", repr=False)
    use_attn_result: bool = field(default=False, repr=False)
    use_split_qkv_input: bool = field(default=False, repr=False)
    use_hook_mlp_in: bool = field(default=False, repr=False)
    use_attn_in: bool = field(default=False, repr=False)
    default_prepend_bos: bool = field(default=False, repr=False)
    dtype: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.obs_shape, (str, bytes)) or not hasattr(self.obs_shape, "__len__"):
            raise ConfigError(f"obs_shape must be (W, H), got {self.obs_shape!r}")
        if len(self.obs_shape) != 2:
            raise ConfigError(f"obs_shape must be (W, H), got {list(self.obs_shape)!r}")
        for v in self.obs_shape:
            _check_int("obs_shape", v, 1, MAX_GRID)
        self.obs_shape = tuple(int(v) for v in self.obs_shape)  # type: ignore[assignment]
        for name, (lo, hi) in _INT_BOUNDS.items():
            setattr(self, name, _check_int(name, getattr(self, name), lo, hi))
        if self.d_head is None:
            if self.d_model % self.n_heads:
                raise ConfigError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
            self.d_head = self.d_model // self.n_heads
        self.d_head = _check_int("d_head", self.d_head, 1, MAX_WIDTH)
        if self.seed is not None:
            self.seed = _check_int("seed", self.seed, 0, 2**63 - 1)
        if not isinstance(self.attn_only, bool):
            raise ConfigError(f"attn_only must be true or false, got {self.attn_only!r}")
        init = self.init_range
        if (
            isinstance(init, bool)
            or not isinstance(init, Real)
            or not (math.isfinite(init) and 0 < init <= 1)
        ):
            raise ConfigError(f"init_range must be a number in (0, 1], got {init!r}")
        self.init_range = float(init)
        for name, allowed in (
            ("normalization_type", NORMALIZATION_TYPES),
            ("act_fn", ACT_FNS),
            ("state_encoder", STATE_ENCODERS),
        ):
            value = getattr(self, name)
            if not (value is None or isinstance(value, str)) or value not in allowed:
                raise ConfigError(f"{name} must be one of {allowed}, got {value!r}")
        if not isinstance(self.device, str):
            raise ConfigError(f"device must be a string such as 'cpu', got {self.device!r}")

    @property
    def n_tokens(self) -> int:
        """Tokens in a full context window: R1, S1, A1, ..., RK, SK."""
        return 3 * self.context_len - 1

    @property
    def n_ctx(self) -> int:
        return self.n_tokens

    _SAVED = (
        "obs_shape", "n_actions", "max_timestep", "context_len", "n_layers", "n_heads", "d_model", "d_head",
        "d_mlp", "normalization_type", "act_fn", "attn_only", "state_encoder", "init_range", "seed",
    )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored in ``config.json`` (architecture only; no device)."""
        d = {k: getattr(self, k) for k in self._SAVED}
        d["obs_shape"] = list(self.obs_shape)
        d["version"] = CONFIG_VERSION
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DTConfig:
        """Inverse of :meth:`to_dict`: every saved key present and of its type, none unknown.

        Any problem is a one-line :class:`ConfigError` naming the key.
        """
        if not isinstance(d, dict):
            raise ConfigError(f"model config must be a JSON object, got {type(d).__name__}")
        d = dict(d)
        version = d.pop("version", CONFIG_VERSION)
        if isinstance(version, bool) or version != CONFIG_VERSION:
            raise ConfigError(f"unsupported model config version {version!r} (expected {CONFIG_VERSION})")
        unknown = set(d) - set(cls._SAVED)
        if unknown:
            raise ConfigError(f"unknown model config keys: {sorted(unknown, key=str)}")
        missing = [k for k in cls._SAVED if k not in d]
        if missing:
            raise ConfigError(f"model config is missing {missing[0]!r}")
        return cls(**d)

    def replace(self, **changes: Any) -> DTConfig:
        return dataclasses.replace(self, **changes)
