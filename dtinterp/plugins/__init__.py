"""Analysis plugins: the API (:mod:`.api`), discovery (:mod:`.registry`) and built-ins (:mod:`.builtin`)."""

from dtinterp.plugins.api import (
    CATEGORIES,
    MODEL_ACTIONS,
    Analysis,
    AnalysisContext,
    AnalysisResult,
    Param,
    ParameterError,
    PlayIntervention,
    PluginError,
    PluginFailure,
)

__all__ = [
    "CATEGORIES",
    "MODEL_ACTIONS",
    "Analysis",
    "AnalysisContext",
    "AnalysisResult",
    "Param",
    "ParameterError",
    "PlayIntervention",
    "PluginError",
    "PluginFailure",
]
