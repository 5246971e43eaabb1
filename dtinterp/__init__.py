"""dtinterp: train decision transformers on MiniGrid and inspect their circuits."""

__version__ = "0.1.0"
