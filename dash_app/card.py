"""Model cards in the page: the card's markdown with its images served from the checkpoint directory.

A shipped agent's ``model_card.md`` links its calibration figure and episode GIF by relative paths, which
in the browser would point at the app's own page. :func:`card_markdown` rewrites them to
``/model-card/<encoded model key>/<file>``, which :func:`card_asset` serves: only plain file names of
image/JSON types, only from the checkpoint directory of a model the app can load (no path traversal).
"""

from __future__ import annotations

import base64
import binascii
import re
from pathlib import Path

from flask import abort, send_file

from dash_app.cache import model_entry
from dtinterp.errors import DtinterpError

#: File types a model card may show; anything else in a checkpoint directory is never served.
CARD_ASSET_TYPES = {
    ".svg": "image/svg+xml",
    ".gif": "image/gif",
    ".png": "image/png",
    ".json": "application/json",
}
#: URL prefix of the model card assets: ``/model-card/<encoded model key>/<file name>``.
CARD_ROUTE = "/model-card"


def encode_key(key: str) -> str:
    """A model key as one URL path segment (urlsafe base64 without padding)."""
    return base64.urlsafe_b64encode(key.encode("utf-8")).decode("ascii").rstrip("=")


def card_asset(encoded: str, filename: str):  # noqa: ANN201 - a Flask response
    """A file of a model's checkpoint directory that its card shows; 404 for anything else.

    Safe against path traversal: the name must be a plain file name of an allowed type, and the file must
    sit directly in the checkpoint directory of a model the app can load.
    """
    suffix = Path(filename).suffix.lower()
    if suffix not in CARD_ASSET_TYPES or Path(filename).name != filename or filename.startswith("."):
        abort(404)
    try:
        key = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode("utf-8")
        directory = model_entry(key).path.resolve()
    except (binascii.Error, UnicodeDecodeError, ValueError, DtinterpError):
        abort(404)
    path = (directory / filename).resolve()
    if path.parent != directory or not path.is_file():
        abort(404)
    return send_file(path, mimetype=CARD_ASSET_TYPES[suffix], max_age=3600)


def card_markdown(key: str, text: str) -> str:
    """The card's markdown with its relative links pointing at :func:`card_asset`."""
    base = f"{CARD_ROUTE}/{encode_key(key)}/"

    def fix(m: re.Match) -> str:
        target = m.group(2)
        if re.match(r"^[a-z]+:|^/|^#", target):
            return m.group(0)
        return f"{m.group(1)}({base}{target})"

    return re.sub(r"(!?\[[^\]]*\])\(([^)\s]+)\)", fix, text)


__all__ = ["CARD_ASSET_TYPES", "CARD_ROUTE", "card_asset", "card_markdown", "encode_key"]
