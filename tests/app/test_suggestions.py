"""A result's suggested Play-tab interventions in the Analyses tab: kept with the report, one button each,
and a click's index names exactly one suggestion (the browser test clicks one)."""

from __future__ import annotations

import json

from dash_app import analyses, ids
from dash_app.cache import model_entry
from dtinterp.interp.interventions import parse_intervention
from dtinterp.play.rollout import play_episode

MODEL = "memory-s7"


def test_suggestions_travel_with_the_report_and_become_buttons(tmp_path, monkeypatch):
    monkeypatch.setenv("DTINTERP_DIRECTIONS_DIR", str(tmp_path))
    entry = model_entry(MODEL)
    traj = play_episode(entry.checkpoint, target_rtg=1.0, seed=0).to_json()
    r = analyses.run_in_app(MODEL, traj, 3, "feature-dashboard", {"coefficient": "2"})
    assert r["ok"], r["message"]
    lines = [i["text"] for i in r["report"]["interventions"]]
    assert lines == [
        "steer: forward @ blocks.1.hook_resid_post x 2",
        "steer: forward @ blocks.1.hook_resid_post x -2",
        "zero: forward @ blocks.1.hook_resid_post",
    ]
    assert all(parse_intervention(line, entry.checkpoint) for line in lines)
    html = analyses.report_html(r["report"], [json.loads(f.to_json()) for f in r["figures"]])
    assert "Try it while the model plays" in html and "x -2</code>" in html

    store = {"report": r["report"], "json": r["result_json"]}
    buttons = [b for b in analyses.intervention_buttons(store) if getattr(b, "id", None)]
    assert [b.id for b in buttons] == [{"type": ids.ANALYSIS_INTERVENTION_TYPE, "index": i} for i in range(3)]
    assert [analyses.suggested_intervention(store, b.id["index"]) for b in buttons] == lines
    assert (
        analyses.suggested_intervention(store, 3) is None and analyses.suggested_intervention(None, 0) is None
    )
    assert analyses.intervention_buttons(None) == [] and analyses.intervention_buttons({"report": {}}) == []
