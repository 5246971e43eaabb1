"""Beyond one machine: the same collection, evaluation, analyses and sweeps on a process pool or on Ray.

:mod:`dtinterp.scale.backend` runs independent tasks behind one interface (:class:`Backend`: a local
process pool or Ray tasks) and splits the package's embarrassingly parallel work into such tasks so that
the result does not depend on where or how widely it ran. :mod:`dtinterp.scale.sweep` trains and evaluates
one run per configuration of a grid (Ray Tune trials on Ray). Ray is optional: ``pip install dtinterp[ray]``.
"""

from dtinterp.scale.backend import (
    Backend,
    Combiner,
    LocalBackend,
    RayBackend,
    calibrate_parallel,
    collect_parallel,
    evaluate_parallel,
    make_backend,
    map_windows,
    top_k,
)
from dtinterp.scale.sweep import parse_grid, run_sweep

__all__ = [
    "Backend",
    "Combiner",
    "LocalBackend",
    "RayBackend",
    "calibrate_parallel",
    "collect_parallel",
    "evaluate_parallel",
    "make_backend",
    "map_windows",
    "parse_grid",
    "run_sweep",
    "top_k",
]
