"""Errors raised by envs for bad user input (one clear line each)."""


class EnvSpecError(ValueError):
    """An env spec names an unknown env or an invalid parameter."""
