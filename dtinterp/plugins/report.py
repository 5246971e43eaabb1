"""Standalone HTML reports of one analysis run: what ran, on what, and every figure it made.

A report is one file that opens offline: plotly.js is embedded once, inline, and each figure is a
``<div id="figure-N">`` drawn from its JSON. Sections: the analysis (title, id, category, description),
its parameters, the model (checkpoint path, weights digest, env, architecture), the inputs (source,
episode, step, edits), the result's summary, the Play-tab interventions it suggests (if any), the
figures, and the run's provenance as JSON (enough to rerun it). All text is HTML-escaped; the same arguments always give the same bytes (no timestamps).
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

import dtinterp
from dtinterp.model.checkpoint import atomic_write_text
from dtinterp.plugins.api import describe_param_type

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1100px;
       padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
.meta { color: #666; } table { border-collapse: collapse; margin: 0.5em 0; }
th, td { text-align: left; vertical-align: top; padding: 0.25em 0.8em; border-bottom: 1px solid #eee; }
th { background: #f6f6f6; } code, pre { font-family: ui-monospace, Menlo, Consolas, monospace; }
pre.summary { background: #f6f8fa; padding: 0.8em; white-space: pre-wrap; }
.figure { margin: 1.2em 0; }
"""


def _text(value: Any) -> str:
    """A cell value as escaped HTML: plain values as text, containers as compact JSON."""
    if isinstance(value, (dict, list, tuple)):
        return f"<code>{html.escape(json.dumps(value, sort_keys=True, default=str))}</code>"
    return html.escape("" if value is None else str(value))


def _kv_table(rows: Mapping[str, Any]) -> str:
    body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{_text(v)}</td></tr>" for k, v in rows.items())
    return f"<table>{body}</table>"


def _interventions_table(interventions: Sequence[Sequence[str]]) -> str:
    rows = "".join(
        f"<tr><th>{html.escape(label)}</th><td><code>{html.escape(text)}</code></td></tr>"
        for label, text in interventions
    )
    return f'<table class="interventions">{rows}</table>'


def _params_table(declared: Sequence[Mapping[str, Any]], values: Mapping[str, Any]) -> str:
    if not declared:
        return "<p>This analysis has no parameters.</p>"
    head = "<tr><th>parameter</th><th>value</th><th>default</th><th>type</th><th>help</th></tr>"
    rows = "".join(
        f"<tr><td><code>{html.escape(p['name'])}</code></td><td>{_text(values.get(p['name']))}</td>"
        f"<td>{_text(p.get('default'))}</td><td>{_text(describe_param_type(p))}</td><td>{_text(p.get('help', ''))}</td></tr>"
        for p in declared
    )
    return f"<table>{head}{rows}</table>"


def render_report(
    plugin: Mapping[str, Any],
    params: Mapping[str, Any],
    model_info: Mapping[str, Any],
    inputs_info: Mapping[str, Any],
    summary: str,
    figures: Sequence[go.Figure],
    provenance: Mapping[str, Any] | None = None,
    interventions: Sequence[Sequence[str]] = (),
) -> str:
    """The report as one HTML document.

    ``plugin`` is :meth:`~dtinterp.plugins.api.Analysis.describe` of the analysis, ``params`` the resolved
    parameter values, ``model_info`` / ``inputs_info`` flat ``name -> value`` descriptions, ``figures``
    plotly figures (each becomes ``<div id="figure-N">``), ``provenance`` the run's provenance
    (:class:`dtinterp.plugins.run.AnalysisRun`), shown as JSON at the end, ``interventions`` the
    ``(label, line)`` pairs the result suggests trying in the Play tab (a section when there are any).
    """
    title = f"{plugin['title']} — dtinterp report"
    fig_divs = "\n".join(
        '<div class="figure">'
        + pio.to_html(
            fig,
            full_html=False,
            include_plotlyjs=False,
            div_id=f"figure-{i}",
            config={"displaylogo": False, "responsive": True},
        )
        + "</div>"
        for i, fig in enumerate(figures)
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style>",
        f'<script type="text/javascript">{get_plotlyjs()}</script>',
        "</head><body>",
        f"<h1>{html.escape(str(plugin['title']))}</h1>",
        f'<p class="meta">analysis <code>{html.escape(str(plugin["id"]))}</code> · category '
        f"{html.escape(str(plugin['category']))} · dtinterp {html.escape(dtinterp.__version__)}</p>",
        f"<p>{html.escape(str(plugin.get('description', '')))}</p>",
        "<h2>Parameters</h2>",
        _params_table(plugin.get("parameters", []), params),
        "<h2>Model</h2>",
        _kv_table(model_info),
        "<h2>Inputs</h2>",
        _kv_table(inputs_info),
        "<h2>Summary</h2>",
        f'<pre class="summary">{html.escape(summary or "(no summary)")}</pre>',
        *(
            [
                "<h2>Try it while the model plays</h2>",
                "<p>Paste a line into the app's Play tab (Intervention while the DT plays):</p>",
                _interventions_table(interventions),
            ]
            if interventions
            else []
        ),
        f"<h2>Figures ({len(figures)})</h2>",
        fig_divs or "<p>This analysis made no figures.</p>",
        *(
            [
                "<h2>Provenance</h2>",
                f'<pre class="provenance">{html.escape(json.dumps(provenance, indent=2, sort_keys=True))}</pre>',
            ]
            if provenance
            else []
        ),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def write_report(path: str | os.PathLike, **kwargs: Any) -> None:
    """Render :func:`render_report` (same keyword arguments) and write it to ``path`` atomically."""
    atomic_write_text(path, render_report(**kwargs))


__all__ = ["render_report", "write_report"]
