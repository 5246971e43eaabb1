"""The Circuit tab's logic without a browser: what it scores and ablates, what it draws, and its messages."""

from __future__ import annotations

import pytest

from dash_app.cache import model_entry
from dash_app.circuit import (
    ablate_in_app,
    details_view,
    graph_elements,
    last_tapped,
    result_view,
    score_in_app,
    scores_summary,
)
from dtinterp.play.rollout import play_episode

MODEL = "memory-s7"


@pytest.fixture(scope="module")
def data() -> dict:
    """The agent's own episode from seed 0; step 5 is its choice of an end object."""
    return play_episode(model_entry(MODEL).checkpoint, 1.0, seed=0).to_json()


@pytest.fixture(scope="module")
def scores(data) -> dict:
    r = score_in_app(MODEL, data, 5, [], "eap", "8", "auto", "logit-diff")
    assert r["ok"], r["message"]
    return r["scores"]


def _text(component) -> str:
    if isinstance(component, str):
        return component
    if isinstance(component, (list, tuple)):
        return " ".join(_text(c) for c in component)
    children = getattr(component, "children", None)
    return "" if children is None else _text(children)


def test_scores_state_what_was_scored_and_draw_the_top_edges(scores):
    assert scores["model"] == MODEL and scores["task"]["step"] == 5 and scores["task"]["pair"] == "env"
    summary = scores_summary(scores)
    assert "by EAP on the window at step 5" in summary and "other cue object" in summary
    elements = graph_elements(model_entry(MODEL), scores, 10, ["L1H0"])
    nodes = [e for e in elements if "source" not in e["data"]]
    edges = [e for e in elements if "source" in e["data"]]
    assert len(nodes) == 15 and len(edges) == 10
    ranked = sorted(scores["edges"], key=lambda e: e["rank"])[:10]
    assert [e["data"]["id"] for e in edges] == [e["label"] for e in ranked]
    assert next(n for n in nodes if n["data"]["id"] == "L1H0")["classes"] == "head ablated"
    assert [e for e in graph_elements(model_entry(MODEL), None, 10, []) if "source" in e["data"]] == []


def test_the_details_of_a_node_and_an_edge(scores):
    node = _text(details_view({"id": "MLP1"}, "node", scores, ["MLP1"]))
    assert "blocks.1.hook_mlp_out" in node and "of 14 by |score|" in node and "ablated yes" in node
    top = min(scores["edges"], key=lambda e: e["rank"])
    edge = _text(details_view({"id": top["label"]}, "edge", scores, []))
    assert "1 of 191 by |score|" in edge
    assert last_tapped({"timeStamp": 5, "data": {"id": "a"}}, {"timeStamp": 9, "data": {"id": "b"}}) == (
        {"id": "b"},
        "edge",
    )
    assert last_tapped(None, None) == (None, None)


def test_an_ablation_states_exactly_what_ran(data):
    r = ablate_in_app(MODEL, data, 5, [], "auto", "logit-diff", ["L1H0", "L0H2"], "zero", "1000", "4")
    assert r["ok"], r["message"]
    assert r["ablation"]["nodes"] == ["L0H2", "L1H0"] and r["played"]["seeds"] == [1000, 1001, 1002, 1003]
    text = _text(result_view(r))
    for words in ("window at step 5", "zero ablation", "of L0H2, L1H0", "seeds 1000..1003 at target 1"):
        assert words in text, (words, text)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda d: score_in_app(MODEL, d, 99, [], "eap", "8", "auto", "logit-diff"), "step 99 is outside"),
        (lambda d: score_in_app(MODEL, None, 0, [], "eap", "8", "auto", "logit-diff"), "no episode"),
        (lambda d: score_in_app(MODEL, d, 5, [], "eap", "x", "auto", "logit-diff"), "steps 'x'"),
        (lambda d: score_in_app(MODEL, d, 5, ["R*=zz"], "eap", "8", "auto", "logit-diff"), "edit 'R*=zz'"),
        (lambda d: score_in_app(MODEL, d, 5, [], "eap", "8", "edits", "logit-diff"), "at least one edit"),
        (lambda d: ablate_in_app(MODEL, d, 5, [], "auto", "kl", ["L9H9"], "mean"), "not a sender"),
        (lambda d: ablate_in_app(MODEL, d, 5, [], "auto", "kl", [], "mean", "1000", "0"), "episodes '0'"),
        (lambda d: ablate_in_app(MODEL, d, 5, [], "auto", "kl", [], "mean", "-1"), "seed '-1'"),
    ],
)
def test_bad_inputs_are_one_line_messages(data, call, message):
    r = call(data)
    assert not r["ok"] and message in r["message"] and "\n" not in r["message"]
