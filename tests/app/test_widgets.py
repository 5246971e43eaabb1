"""The action-probability chart (an SVG image): its bars are the distribution it was given."""

from __future__ import annotations

import base64
import xml.etree.ElementTree as ET

import numpy as np

from dash_app.widgets import CHART_H, action_chart

SVG = "{http://www.w3.org/2000/svg}"
NAMES = ["left", "right", "forward", "pickup", "drop", "toggle", "done"]


def parse(uri: str) -> ET.Element:
    head, data = uri.split(",", 1)
    assert head == "data:image/svg+xml;base64"
    return ET.fromstring(base64.b64decode(data))


def bars(svg: ET.Element) -> list[ET.Element]:
    return [r for r in svg.iter(f"{SVG}rect") if r.get("class") == "bar"]


def test_bars_carry_the_distribution_and_their_heights_are_proportional():
    p = np.random.default_rng(0).dirichlet(np.ones(7))
    svg = parse(action_chart(NAMES, p, title="t"))
    got = bars(svg)
    assert [b.get("data-action") for b in got] == NAMES
    assert np.array_equal([float(b.get("data-p")) for b in got], p)  # exact, not rounded
    heights = np.array([float(b.get("height")) for b in got])
    assert np.allclose(heights / heights.sum(), p, atol=2e-3)  # one scale, no baseline offset
    bottoms = {round(float(b.get("y")) + float(b.get("height")), 1) for b in got}
    assert len(bottoms) == 1 and bottoms.pop() < CHART_H  # every bar stands on the same 0 line
    fills = [b.get("fill") for b in got]
    assert fills.count(fills[int(np.argmax(p))]) == 1  # the top action is highlighted


def test_before_and_after_are_two_series_and_no_distribution_draws_no_bars():
    p, q = np.full(3, 1 / 3), np.array([0.1, 0.2, 0.7])
    got = bars(parse(action_chart(NAMES[:3], p, q)))
    assert [b.get("data-series") for b in got] == ["before (clean)", "after (edited)"] * 3
    assert [float(b.get("data-p")) for b in got[1::2]] == q.tolist()
    empty = parse(action_chart(NAMES, None, note="no episode"))
    assert not bars(empty)
    texts = [t.text for t in empty.iter(f"{SVG}text")]
    assert "no episode" in texts and all(a in texts for a in NAMES)  # the axis keeps the action names


def test_text_is_escaped():
    title = 'steer: <saved:"a&b"> @ blocks.0.hook_resid_mid x 4'
    svg = parse(action_chart(NAMES, np.full(7, 1 / 7), title=title))
    assert next(t for t in svg.iter(f"{SVG}text") if t.get("class") == "title").text == title
