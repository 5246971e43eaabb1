"""``dtinterp app``: the app's sub-command, registered through the ``dtinterp.commands`` entry point.

Only the argument declarations live here (no dash import), so ``dtinterp --help`` stays fast; the
handler, :func:`dash_app.server.cmd_app`, is imported when the command runs.
"""

from __future__ import annotations

import argparse

from dtinterp.cli import Command


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``dtinterp app``."""
    p.add_argument(
        "--model", default=None, help="shipped model name or checkpoint directory (default memory-s7)"
    )
    p.add_argument("--port", type=int, default=8050)
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: loopback only)")
    p.add_argument(
        "--workers", type=int, default=None, help="server processes (default: one per CPU core; gunicorn)"
    )
    p.add_argument("--dev", action="store_true", help="Flask's threaded development server, one process")


COMMAND = Command(
    name="app",
    help="serve the web app (play, history, replay & interventions, analyses)",
    add_arguments=add_arguments,
    handler="dash_app.server:cmd_app",
)
