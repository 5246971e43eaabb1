"""Trajectory datasets: the ``.npz`` file format, collection with scripted policies, training windows.

Collection (``dtinterp.data.collect``) is imported on demand: it needs the scripted policies and a
process pool, which readers of a dataset never do.
"""

from dtinterp.data.dataset import (
    FORMAT_VERSION,
    TrajectoryDataset,
    load_dataset,
    make_metadata,
    save_dataset,
)

__all__ = ["FORMAT_VERSION", "TrajectoryDataset", "load_dataset", "make_metadata", "save_dataset"]
