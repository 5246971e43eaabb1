"""Plugin parameters -> Dash controls -> validated values, without a browser.

Every ``Param`` type gets the control its declaration asks for, the control's initial value goes back to
the declared default, edited values come back as the declared type, and a bad value is a one-line
``ParameterError`` (never another exception), for a test plugin and for every registered plugin.
"""

from __future__ import annotations

from typing import Any

import pytest
from dash import dcc

from dash_app import ids
from dash_app.controls import (
    BOOL_ON,
    control_id,
    initial_value,
    param_control,
    plugin_controls,
    raw_values,
    values_from_controls,
)
from dtinterp.plugins.api import Analysis, AnalysisContext, AnalysisResult, Param, ParameterError
from dtinterp.plugins.registry import get_registry


class AllTypes(Analysis):
    """A plugin declaring one parameter of every type (never computed)."""

    id = "all-types"
    title = "All parameter types"
    category = "dynamic"
    parameters = (
        Param("layers", "int", 2, "An int with bounds.", min=0, max=8),
        Param("scale", "float", 0.5, "A float with bounds.", min=0.0, max=1.0),
        Param("free", "float", -3.0, "A float without bounds."),
        Param("heads", "bool", True, "A switch."),
        Param("k", "choice", 2, "Int choices.", choices=(1, 2, 4)),
        Param("mode", "choice", "shift", "Text choices.", choices=("shift", "set")),
        Param("label", "str", "hello", "Free text."),
    )

    def compute(self, ctx: AnalysisContext, params: dict[str, Any]) -> AnalysisResult:
        raise AssertionError("not computed in these tests")

    def figures(self, result: AnalysisResult) -> list[Any]:
        return []


PLUGIN = AllTypes()
PARAMS = {p.name: p for p in PLUGIN.parameters}


def _find(component: Any, cid: dict) -> Any:
    """The component with id ``cid`` inside ``component`` (depth-first)."""
    if getattr(component, "id", None) == cid:
        return component
    children = getattr(component, "children", None)
    for child in children if isinstance(children, (list, tuple)) else [children]:
        if child is not None and not isinstance(child, str):
            found = _find(child, cid)
            if found is not None:
                return found
    return None


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("layers", dcc.Input),
        ("scale", dcc.Input),
        ("free", dcc.Input),
        ("heads", dcc.Checklist),
        ("k", dcc.Dropdown),
        ("mode", dcc.Dropdown),
        ("label", dcc.Input),
    ],
)
def test_each_type_gets_its_control(name: str, kind: type) -> None:
    param = PARAMS[name]
    row = param_control(PLUGIN.id, param)
    cid = {"type": ids.ANALYSIS_PARAM_TYPE, "plugin": PLUGIN.id, "name": name}
    assert control_id(PLUGIN.id, name) == cid
    control = _find(row, cid)
    assert isinstance(control, kind)
    assert param.help in str(row.children[-1].children)  # the help text is on the page
    if param.type in ("int", "float"):
        assert control.type == "number"
        assert (control.min, control.max) == (param.min, param.max)
        assert control.step == (1 if param.type == "int" else "any")
    elif param.type == "choice":
        assert [o["value"] for o in control.options] == [str(c) for c in param.choices]
    elif param.type == "str":
        assert control.type == "text"


def test_initial_values_round_trip_to_the_defaults() -> None:
    raw = {p.name: initial_value(p) for p in PLUGIN.parameters}
    assert values_from_controls(PLUGIN, raw) == PLUGIN.resolve_params({})
    assert values_from_controls(PLUGIN, {}) == PLUGIN.resolve_params({})


def test_edited_values_come_back_typed() -> None:
    raw = {
        "layers": 7,
        "scale": 0.25,
        "free": 12.5,
        "heads": [],
        "k": "4",
        "mode": "set",
        "label": "a b",
    }
    got = values_from_controls(PLUGIN, raw)
    assert got == {
        "layers": 7,
        "scale": 0.25,
        "free": 12.5,
        "heads": False,
        "k": 4,
        "mode": "set",
        "label": "a b",
    }
    assert isinstance(got["k"], int) and isinstance(got["layers"], int)
    assert values_from_controls(PLUGIN, {"heads": [BOOL_ON]})["heads"] is True
    assert values_from_controls(PLUGIN, {"label": None})["label"] == ""


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ({"layers": None}, "enter a valid number (int in [0, 8])"),  # empty box or rejected by the browser
        ({"layers": 3.5}, "expected int"),
        ({"layers": 9}, "above the maximum 8"),
        ({"scale": -0.1}, "below the minimum 0"),
        ({"free": None}, "enter a valid number (float)"),
        ({"k": "8"}, "is not one of [1, 2, 4]"),
        ({"mode": None}, "choose a value (choice: shift | set)"),
        ({"nope": 1}, "has no parameter 'nope'"),
    ],
)
def test_bad_values_are_one_line_parameter_errors(raw: dict, fragment: str) -> None:
    with pytest.raises(ParameterError) as err:
        values_from_controls(PLUGIN, raw)
    message = str(err.value)
    assert fragment in message
    assert "all-types" in message and "\n" not in message


def test_raw_values_keep_only_the_shown_plugin() -> None:
    control_ids = [control_id("a", "x"), control_id("b", "x"), control_id("a", "y")]
    assert raw_values("a", control_ids, [1, 2, 3]) == {"x": 1, "y": 3}
    assert raw_values("c", control_ids, [1, 2, 3]) == {}


def test_every_registered_plugin_round_trips_its_defaults() -> None:
    registry = get_registry()
    assert registry.plugins, "no analysis registered"
    for plugin in registry.plugins.values():
        rows = plugin_controls(plugin)
        assert len(rows) == len(plugin.parameters)
        for row, p in zip(rows, plugin.parameters):
            assert _find(row, control_id(plugin.id, p.name)) is not None
        raw = {p.name: initial_value(p) for p in plugin.parameters}
        assert values_from_controls(plugin, raw) == plugin.resolve_params({}), plugin.id


def test_an_entry_point_plugin_appears_in_the_app_menu():
    """dash_app names no plugin: the example package, installed through its entry point, is offered."""
    from importlib.metadata import entry_points

    from dash_app.analyses import plugin_options
    from dtinterp.plugins.registry import ENTRY_POINT_GROUP, load_registry

    if not any(ep.name == "logit-lens" for ep in entry_points(group=ENTRY_POINT_GROUP)):
        pytest.skip("the example plugin package is not installed (make install installs it)")
    values = {o["value"] for o in plugin_options(load_registry(), None)}
    assert "logit-lens" in values
    assert {"rtg-scan", "kurtosis", "time-embeddings", "residual-norms", "counterfactual-attention"} <= values
