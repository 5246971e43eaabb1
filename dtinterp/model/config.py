"""Configuration of the hooked decision transformer.

Field names follow TransformerLens where TL reads them (``n_layers, n_heads, d_model, d_head, d_mlp,
normalization_type, attn_only, final_rms, n_key_value_heads, device``), so ``ActivationCache`` and
``transformer_lens.patching`` work on our model unchanged.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from dtinterp.errors import ConfigError

CONFIG_VERSION = 1
NORMALIZATION_TYPES = ("LN", "LNPre", None)
ACT_FNS = ("relu", "gelu")
STATE_ENCODERS = ("grid", "cnn")


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
        self.obs_shape = tuple(int(v) for v in self.obs_shape)  # type: ignore[assignment]
        if self.d_head is None:
            if self.d_model % self.n_heads:
                raise ConfigError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
            self.d_head = self.d_model // self.n_heads
        checks = [
            (self.n_layers >= 1, f"n_layers must be >= 1, got {self.n_layers}"),
            (self.n_heads >= 1, f"n_heads must be >= 1, got {self.n_heads}"),
            (self.d_model >= 1 and self.d_mlp >= 1, "d_model and d_mlp must be >= 1"),
            (self.context_len >= 1, f"context_len must be >= 1, got {self.context_len}"),
            (self.max_timestep >= 1, f"max_timestep must be >= 1, got {self.max_timestep}"),
            (self.n_actions >= 2, f"n_actions must be >= 2, got {self.n_actions}"),
            (len(self.obs_shape) == 2, f"obs_shape must be (W, H), got {self.obs_shape}"),
            (
                self.normalization_type in NORMALIZATION_TYPES,
                f"normalization_type must be one of {NORMALIZATION_TYPES}, got {self.normalization_type!r}",
            ),
            (self.act_fn in ACT_FNS, f"act_fn must be one of {ACT_FNS}, got {self.act_fn!r}"),
            (
                self.state_encoder in STATE_ENCODERS,
                f"state_encoder must be one of {STATE_ENCODERS}, got {self.state_encoder!r}",
            ),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)

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
        """Inverse of :meth:`to_dict`; an unknown key or version is a :class:`ConfigError`."""
        d = dict(d)
        version = d.pop("version", CONFIG_VERSION)
        if version != CONFIG_VERSION:
            raise ConfigError(f"unsupported model config version {version!r} (expected {CONFIG_VERSION})")
        unknown = set(d) - set(cls._SAVED)
        if unknown:
            raise ConfigError(f"unknown model config keys: {sorted(unknown)}")
        try:
            return cls(**d)
        except TypeError as exc:
            raise ConfigError(f"invalid model config: {exc}") from None

    def replace(self, **changes: Any) -> DTConfig:
        return dataclasses.replace(self, **changes)
