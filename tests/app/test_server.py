"""The app's wiring without a browser: every callback names components that exist, ids are unique,
and ``dtinterp app`` refuses bad arguments with one line and exit code 2 before serving anything."""

from __future__ import annotations

import socket

import pytest

from dash_app import ids
from dash_app.layout import TABS, mount_tab
from dash_app.server import create_app
from dtinterp.cli import main


@pytest.fixture(scope="module")
def app():
    return create_app()


def _walk(component):
    """Every component of a tree (depth first)."""
    stack = [component]
    while stack:
        c = stack.pop()
        if isinstance(c, (list, tuple)):
            stack.extend(c)
            continue
        yield c
        children = getattr(c, "children", None)
        if children is not None and not isinstance(children, str):
            stack.append(children)


def _callback_ids(app) -> set[str]:
    """Component ids (not pattern-matching ones) that any callback reads or writes."""
    names = set()
    for key, cb in app.callback_map.items():
        for part in key.strip(".").split("..."):
            comp = part.split(".")[0].lstrip(".")
            if comp and not comp.startswith("{"):
                names.add(comp)
        for dep in cb["inputs"] + cb["state"]:
            if not dep["id"].startswith("{"):
                names.add(dep["id"])
    return names


def test_every_callback_component_is_in_the_page_once_every_tab_is_open(app):
    page = app.layout()
    first = {c.id for c in _walk(page) if isinstance(getattr(c, "id", None), str)}
    assert ids.PLAY_WORLD_IMG in first and ids.HISTORY_SLIDER not in first  # only Play is built at first
    mounted, panels = [ids.TAB_PLAY], []
    for tab, *_ in TABS:
        opened = mount_tab(tab, mounted)
        assert (opened is None) == (tab == ids.TAB_PLAY)
        if opened is not None:
            mounted, panel = opened
            panels.append(panel)
            assert mount_tab(tab, mounted) is None  # built once, then kept
    assert mounted == [tab for tab, *_ in TABS]
    strings = [c.id for c in _walk([page, *panels]) if isinstance(getattr(c, "id", None), str)]
    assert len(strings) == len(set(strings)), "duplicate component ids in the page"
    missing = _callback_ids(app) - set(strings)
    assert not missing, f"callbacks name components the page lacks: {sorted(missing)}"


def test_ids_module_has_unique_values():
    values = [v for k, v in vars(ids).items() if k.isupper() and isinstance(v, str)]
    assert len(values) == len(set(values))
    assert (
        len(set(ids.PLAY_ACTION_BUTTONS)) == 7
        and ids.play_action_button("forward") == ids.PLAY_ACTION_BUTTONS[2]
    )
    with pytest.raises(ValueError):
        ids.play_action_button("jump")


def test_default_model_and_fresh_session_per_page_load(app):
    def store(page, store_id):
        return next(c.data for c in _walk(page) if getattr(c, "id", None) == store_id)

    a, b = app.layout(), app.layout()
    assert store(a, ids.MODEL_STORE) == "memory-s7"
    assert store(a, ids.SESSION_STORE) != store(b, ids.SESSION_STORE)


def test_cli_bad_model_is_one_line_exit_2(capsys):
    assert main(["app", "--model", "/no/such/checkpoint"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dtinterp: error: /no/such/checkpoint") and "\n" not in err


def test_cli_busy_port_is_one_line_exit_2(capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        assert main(["app", "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"dtinterp: error: cannot serve on 127.0.0.1:{port}") and "\n" not in err


def test_model_card_assets_are_served_and_nothing_else(app):
    from dash_app.card import card_markdown, encode_key

    client = app.server.test_client()
    enc = encode_key("memory-s7")
    ok = client.get(f"/model-card/{enc}/calibration.svg")
    assert ok.status_code == 200 and ok.mimetype == "image/svg+xml" and b"<svg" in ok.data[:2000]
    assert client.get(f"/model-card/{enc}/episode.gif").status_code == 200
    for bad in (
        f"/model-card/{enc}/model.safetensors",  # not a card asset type
        f"/model-card/{enc}/..%2fconfig.json",
        f"/model-card/{enc}/../memory-s7/calibration.svg",
        f"/model-card/{encode_key('/etc')}/passwd.svg",  # not a checkpoint
        "/model-card/!!!/calibration.svg",
        f"/model-card/{enc}/missing.svg",
    ):
        r = client.get(bad)  # a 404, or the app's own page for a path the router normalised away
        assert r.status_code == 404 or (r.mimetype == "text/html" and b"weights_sha256" not in r.data), bad
    text = card_markdown("memory-s7", "![c](calibration.svg) ![w](https://x.org/a.png) [r](#top)")
    assert text == f"![c](/model-card/{enc}/calibration.svg) ![w](https://x.org/a.png) [r](#top)"


def test_cli_leaves_no_cache_directory_behind_when_it_fails(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    assert main(["app", "--model", "/no/such/checkpoint", "--port", "8765"]) == 2
    assert main(["app", "--host", "no-such-host.invalid", "--port", "8765"]) == 2
    assert main(["app", "--workers", "0"]) == 2
    assert not list(tmp_path.glob("dtinterp-app-*"))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("dtinterp: error: ") for line in err)


def test_the_component_scripts_are_servable_before_any_request(app):
    # Dash registers what it may serve on a process's first request; a concurrent second request of a
    # fresh worker found that half done (HTTP 500 for react-dom). create_app completes it up front.
    assert {"dash", "dash_cytoscape"} <= set(app.registered_paths)
    assert all(app.registered_paths[p] for p in ("dash", "dash_cytoscape"))
