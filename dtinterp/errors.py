"""User-facing errors: each carries one clear line naming the input and what is wrong.

The CLI prints ``dtinterp: error: <message>`` and exits 2 for these; anything else is a bug and keeps
its traceback.
"""


class DtinterpError(Exception):
    """Base class for errors caused by user input (files, ids, parameters)."""


class DatasetError(DtinterpError):
    """A dataset file is missing, corrupt or inconsistent."""


class CheckpointError(DtinterpError):
    """A checkpoint directory is missing files, malformed, or does not match its config."""


class ConfigError(DtinterpError):
    """A configuration file or value is invalid."""


class EpisodeError(DtinterpError):
    """An episode, a step of it, or its JSON form is invalid or does not fit the model."""


class OutputError(DtinterpError):
    """An output path cannot be written (missing or unwritable directory, a directory, a clash)."""
