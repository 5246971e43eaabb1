"""Build and serve the app: :func:`create_app` (tests, benchmarks) and ``dtinterp app`` (:func:`cmd_app`).

``dtinterp app`` serves the app from ``--workers`` processes of a production WSGI server (gunicorn; the
default is one per CPU core) or, with ``--dev``, from Flask's threaded development server. Nothing is
sticky between requests: the episode lives in the browser, and each worker keeps its own bounded caches
(a miss re-simulates an env from its seed, re-loads a model from disk), so any worker can answer any
request. The default model is loaded once before serving (a bad ``--model`` is a one-line error before
anything is served) and, with gunicorn, before the workers fork, so they share its memory.

Long analyses run as Dash background callbacks in a :class:`dash_app.jobs.JobManager` whose cache lives in a
temporary directory made by ``dtinterp app`` and removed when it exits, however it exits. The images of a
model card (calibration figure, episode GIF) are served by :func:`dash_app.card.card_asset`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import tempfile
from pathlib import Path

import dash
import diskcache

from dash_app import layout
from dash_app.cache import default_model_key, model_entry
from dash_app.card import CARD_ROUTE, card_asset
from dash_app.images import warm_tile_cache
from dash_app.jobs import JobManager
from dtinterp.errors import DtinterpError

ASSETS = Path(__file__).resolve().parent / "assets"


def create_app(model: str | None = None, cache_dir: str | None = None) -> dash.Dash:
    """The Dash app opening on ``model`` (a shipped name or checkpoint path; default: the shipped memory-s7).

    Loads the model now: a bad one raises :class:`~dtinterp.errors.CheckpointError` (one line).
    ``cache_dir`` holds the background callbacks' cache (default: a new temporary directory, which the
    caller owns).
    """
    key = model_entry(model if model is not None else default_model_key()).key
    cache = diskcache.Cache(cache_dir or tempfile.mkdtemp(prefix="dtinterp-app-"))
    app = dash.Dash(
        __name__,
        title="dtinterp",
        # a tab's panel is added the first time the tab is opened (dash_app/layout.py), so its callbacks
        # name components that are not in the page yet
        suppress_callback_exceptions=True,
        assets_folder=str(ASSETS),
        background_callback_manager=JobManager(cache),
    )
    app.layout = lambda: layout.layout(key)
    layout.register(app)
    app.server.add_url_rule(f"{CARD_ROUTE}/<encoded>/<filename>", "card_asset", card_asset)
    warm_tile_cache(model_entry(key).checkpoint.env_spec)
    # Dash finishes its set-up (which component scripts it may serve) on the first request a process
    # answers, and a second thread of that process that arrives meanwhile finds it half done: a fresh
    # worker's concurrent first requests for the page's scripts failed with 500 now and then. One
    # request here completes it before the server starts (and before gunicorn forks its workers).
    if app.server.test_client().get("/").status_code != 200:
        raise DtinterpError("the app could not render its page")
    return app


def _check_port(host: str, port: int) -> None:
    """Refuse a port that is already taken, before the server starts."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as werkzeug: TIME_WAIT is no conflict
        try:
            s.bind((host, port))
        except OSError as exc:
            raise DtinterpError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None


def default_workers() -> int:
    """One worker process per usable CPU core."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def serve(app: dash.Dash, host: str, port: int, workers: int) -> None:
    """Serve ``app`` with gunicorn's ``workers`` processes (threads inside each for slow requests)."""
    from gunicorn.app.base import BaseApplication

    class _Server(BaseApplication):
        def load_config(self) -> None:
            self.cfg.set("bind", f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
            self.cfg.set("workers", workers)
            self.cfg.set("threads", 4)
            self.cfg.set("worker_class", "gthread")
            self.cfg.set("timeout", 600)  # a long analysis runs in a background job, but give slack
            self.cfg.set("graceful_timeout", 5)
            self.cfg.set("accesslog", None)
            self.cfg.set("loglevel", "warning")

        def load(self):  # noqa: ANN202 - the WSGI app
            return app.server

    _Server().run()


def cmd_app(args: argparse.Namespace) -> int:
    """``dtinterp app``: serve the app on ``--host``:``--port`` until interrupted; clean up on any exit."""
    if not 0 < args.port < 65536:
        raise DtinterpError(f"--port {args.port} must be between 1 and 65535")
    if args.workers is not None and not 1 <= args.workers <= 64:
        raise DtinterpError(f"--workers {args.workers} must be between 1 and 64")
    _check_port(args.host, args.port)
    cache_dir = tempfile.mkdtemp(prefix="dtinterp-app-")
    try:
        app = create_app(args.model, cache_dir=cache_dir)
        _check_port(args.host, args.port)  # still free after loading the model
        workers = args.workers or default_workers()
        how = "development server" if args.dev else f"{workers} worker process(es)"
        print(f"dtinterp app: http://{args.host}:{args.port}/  ({how}; Ctrl+C stops it)", flush=True)
        if args.dev:
            app.run(host=args.host, port=args.port, debug=False, threaded=True)
        else:
            serve(app, args.host, args.port, workers)
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    return 0
