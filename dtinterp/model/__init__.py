"""The hooked decision transformer, its config, inputs and checkpoint I/O.

Only the config is imported eagerly: the model pulls in torch and TransformerLens (seconds), which
commands that merely read a ``config.json`` (``dtinterp models``, error paths) should not pay for.
"""

from __future__ import annotations

import importlib
from typing import Any

from dtinterp.model.config import DTConfig

_LAZY = {
    "HookedDecisionTransformer": "dtinterp.model.hooked_dt",
    "DTInputs": "dtinterp.model.inputs",
    "state_positions": "dtinterp.model.inputs",
    "token_labels": "dtinterp.model.inputs",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DTConfig", "DTInputs", "HookedDecisionTransformer", "state_positions", "token_labels"]
