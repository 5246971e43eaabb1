"""The hooked decision transformer, its config, inputs and checkpoint I/O."""

from dtinterp.model.config import DTConfig
from dtinterp.model.hooked_dt import HookedDecisionTransformer
from dtinterp.model.inputs import DTInputs, state_positions, token_labels

__all__ = ["DTConfig", "DTInputs", "HookedDecisionTransformer", "state_positions", "token_labels"]
