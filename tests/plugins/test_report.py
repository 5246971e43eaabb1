"""The standalone HTML report: self-contained, escaped, one div per figure, byte-stable."""

from __future__ import annotations

import plotly.graph_objects as go

from dtinterp.plugins.report import render_report, write_report

PLUGIN = {
    "id": "demo",
    "title": "Demo <analysis>",
    "category": "dynamic",
    "description": "Compares A & B.",
    "parameters": [
        {"name": "k", "type": "int", "default": 3, "help": "how many", "min": 1, "max": 9},
        {"name": "lo", "type": "float", "default": 0.5, "help": "", "min": 0.0},
        {"name": "mode", "type": "choice", "default": "a", "help": "which", "choices": ["a", "b"]},
    ],
}


def report(figures: list[go.Figure]) -> str:
    return render_report(
        plugin=PLUGIN,
        params={"k": 4, "lo": 0.5, "mode": "b"},
        model_info={"checkpoint": "/models/x", "config": {"n_layers": 2}},
        inputs_info={"source": "trajectory t.npz", "edits": ["R2=0.5"]},
        summary="line one\n<script>alert(1)</script>",
        figures=figures,
    )


def test_report_is_standalone_escaped_and_has_one_div_per_figure():
    figs = [go.Figure(go.Bar(y=[1, 2]), layout_title_text=f"panel {i}") for i in range(3)]
    html = report(figs)
    assert html.count("plotly.js v") == 1 and "<script src=" not in html  # the library inline, once
    assert [html.count(f'id="figure-{i}"') for i in range(4)] == [1, 1, 1, 0]
    assert all(f"panel {i}" in html for i in range(3))
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "Demo &lt;analysis&gt;" in html and "Compares A &amp; B." in html
    for cell in ("int in [1, 9]", "float &gt;= 0", "choice: a | b", "<td>4</td>", "<td>b</td>"):
        assert cell in html, cell
    assert "/models/x" in html and "R2=0.5" in html and "n_layers" in html
    assert report(figs) == html  # no timestamps or random ids: the same run gives the same bytes


def test_report_without_figures_says_so(tmp_path):
    out = tmp_path / "r.html"
    write_report(out, **{**_kwargs(), "figures": []})
    html = out.read_text()
    assert "This analysis made no figures." in html and 'id="figure-0"' not in html
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]  # written atomically, no temp file left


def _kwargs() -> dict:
    return {
        "plugin": {**PLUGIN, "parameters": []},
        "params": {},
        "model_info": {},
        "inputs_info": {},
        "summary": "",
    }


def test_suggested_interventions_get_their_own_escaped_section():
    plain = report([])
    assert "Try it while the model plays" not in plain
    html = render_report(
        **{**_kwargs(), "figures": []},
        interventions=[("Steer <up>", "steer: saved:a&b @ blocks.0.hook_resid_post x 2")],
    )
    assert "Try it while the model plays" in html and "Steer &lt;up&gt;" in html
    assert "<code>steer: saved:a&amp;b @ blocks.0.hook_resid_post x 2</code>" in html
