"""Build and serve the app: :func:`create_app` (tests, benchmarks) and ``dtinterp app`` (:func:`cmd_app`).

The default model is loaded once at start-up, so a bad ``--model`` is a one-line error before anything
is served and the first page load is fast. Long analyses run as Dash background callbacks in a
:class:`dash.DiskcacheManager` whose cache lives in a temporary directory (or ``cache_dir``).
"""

from __future__ import annotations

import argparse
import socket
import tempfile
from pathlib import Path

import dash
import diskcache

from dash_app import layout
from dash_app.cache import default_model_key, model_entry
from dtinterp.errors import DtinterpError

ASSETS = Path(__file__).resolve().parent / "assets"


def create_app(model: str | None = None, cache_dir: str | None = None) -> dash.Dash:
    """The Dash app opening on ``model`` (a shipped name or checkpoint path; default: the shipped memory-s7).

    Loads the model now: a bad one raises :class:`~dtinterp.errors.CheckpointError` (one line).
    """
    key = model_entry(model if model is not None else default_model_key()).key
    cache = diskcache.Cache(cache_dir or tempfile.mkdtemp(prefix="dtinterp-app-"))
    app = dash.Dash(
        __name__,
        title="dtinterp",
        assets_folder=str(ASSETS),
        background_callback_manager=dash.DiskcacheManager(cache),
    )
    app.layout = lambda: layout.layout(key)
    layout.register(app)
    return app


def _check_port(host: str, port: int) -> None:
    """Refuse a port that is already taken, before the server starts (werkzeug would exit with 1)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as werkzeug: TIME_WAIT is no conflict
        try:
            s.bind((host, port))
        except OSError as exc:
            raise DtinterpError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None


def cmd_app(args: argparse.Namespace) -> int:
    """``dtinterp app``: serve the app on ``--host``:``--port`` (threaded) until interrupted."""
    if not 0 < args.port < 65536:
        raise DtinterpError(f"--port {args.port} must be between 1 and 65535")
    app = create_app(args.model)
    _check_port(args.host, args.port)
    print(f"dtinterp app: http://{args.host}:{args.port}/  (Ctrl+C stops it)", flush=True)
    app.run(host=args.host, port=args.port, debug=False, threaded=True)
    return 0
