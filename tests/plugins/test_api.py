"""The plugin API: parameter coercion and validation, declaration checks, results, the shared context."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from dtinterp.errors import DtinterpError
from dtinterp.interp.edits import parse_edit
from dtinterp.plugins.api import (
    Analysis,
    AnalysisContext,
    AnalysisResult,
    Param,
    ParameterError,
    PluginError,
)

# --- Param.coerce -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "param, raw, expected",
    [
        (Param("n", "int", 1), "3", 3),
        (Param("n", "int", 1), " -2 ", -2),
        (Param("n", "int", 1), 4.0, 4),
        (Param("n", "int", 1), np.int64(5), 5),
        (Param("x", "float", 0.0), "0.25", 0.25),
        (Param("x", "float", 0.0), "1e-3", 1e-3),
        (Param("x", "float", 0.0), 2, 2.0),
        (Param("s", "str", ""), 12, "12"),
        (Param("c", "choice", "a", choices=("a", "b")), "b", "b"),
        (Param("c", "choice", 1, choices=(1, 2, 4)), "4", 4),  # CLI text finds the typed choice
        (Param("c", "choice", 1, choices=(1, 2, 4)), 2, 2),
    ],
)
def test_coerce_converts_text_and_values_to_the_declared_type(param, raw, expected):
    value = param.coerce(raw)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("true", True),
        ("True", True),
        (" YES ", True),
        ("1", True),
        ("false", False),
        ("No", False),
        ("0", False),
    ],
)
def test_bool_text(text, expected):
    assert Param("b", "bool", False).coerce(text) is expected


@pytest.mark.parametrize(
    "param, raw",
    [
        (Param("n", "int", 1), "3.5"),
        (Param("n", "int", 1), 3.5),
        (Param("n", "int", 1), "three"),
        (Param("n", "int", 1), True),  # a bool is not an int here, though Python says it is
        (Param("n", "int", 1), None),
        (Param("x", "float", 0.0), "nan"),
        (Param("x", "float", 0.0), "inf"),
        (Param("x", "float", 0.0), float("-inf")),
        (Param("x", "float", 0.0), False),
        (Param("x", "float", 0.0), "half"),
        (Param("b", "bool", False), "maybe"),
        (Param("b", "bool", False), 1),  # only real booleans or boolean words
        (Param("b", "bool", False), "2"),
        (Param("c", "choice", "a", choices=("a", "b")), "c"),
    ],
)
def test_coerce_rejects_wrong_types_and_non_finite_floats(param, raw):
    with pytest.raises(ParameterError) as err:
        param.coerce(raw, where="plugin 'p'")
    msg = str(err.value)
    assert "\n" not in msg and f"parameter {param.name!r}" in msg and "plugin 'p'" in msg
    assert isinstance(err.value, DtinterpError)  # the CLI turns it into one line and exit 2


def test_bounds_are_inclusive_and_checked_after_conversion():
    p = Param("k", "int", 2, min=1, max=8)
    assert p.coerce("1") == 1 and p.coerce("8") == 8
    with pytest.raises(ParameterError, match="below the minimum 1"):
        p.coerce("0")
    with pytest.raises(ParameterError, match="above the maximum 8"):
        p.coerce(9)
    q = Param("x", "float", 0.5, min=0.0, max=1.0)
    assert q.coerce("0.0") == 0.0
    with pytest.raises(ParameterError, match="above the maximum"):
        q.coerce("1.0000001")


def test_choice_error_lists_the_choices():
    with pytest.raises(ParameterError, match=r"'up' is not one of \['left', 'right'\]"):
        Param("side", "choice", "left", choices=("left", "right")).coerce("up")


def test_param_to_dict_drops_unset_fields():
    assert Param("k", "int", 2, help="h", min=1).to_dict() == {
        "name": "k",
        "type": "int",
        "default": 2,
        "help": "h",
        "min": 1,
    }


@pytest.mark.parametrize(
    "param, match",
    [
        (Param("Bad-Name", "int", 1), "lowercase identifier"),
        (Param("n", "integer", 1), "type 'integer'"),
        (Param("c", "choice", "a"), "needs choices"),
        (Param("n", "int", 1, min=5, max=2), "min > max"),
        (Param("n", "int", 0, min=1), "below the minimum"),
        (Param("n", "int", "many"), "expected int"),
        (Param("x", "float", float("nan")), "expected float"),
        (Param("c", "choice", "z", choices=("a", "b")), "not one of"),
    ],
)
def test_param_declaration_errors(param, match):
    with pytest.raises((ValueError, ParameterError), match=match):
        param.check_declaration()


# --- Analysis declarations and parameter resolution -------------------------------------------------


class Good(Analysis):
    id = "good-one"
    title = "Good"
    category = "dynamic"
    parameters = (Param("k", "int", 2, min=1, max=8), Param("flag", "bool", False))

    def compute(self, ctx, params):
        return AnalysisResult(self.id, params, {"k": params["k"]})

    def figures(self, result):
        return []


def _variant(**attrs) -> type[Analysis]:
    return type("Variant", (Good,), attrs)


def test_a_good_declaration_passes():
    Good.check_declaration()


@pytest.mark.parametrize(
    "attrs, match",
    [
        ({"id": "Has Caps"}, "lowercase slug"),
        ({"id": "1starts-with-digit"}, "lowercase slug"),
        ({"id": "white space"}, "lowercase slug"),
        ({"id": 7}, "string 'id'"),
        ({"title": None}, "string 'title'"),
        ({"category": "magic"}, "category 'magic'"),
        ({"parameters": (Param("k", "int", 1), Param("k", "float", 1.0))}, "duplicate parameter"),
        ({"parameters": (Param("k", "int", 9, min=1, max=8),)}, "above the maximum"),
        ({"parameters": (Param("f", "bool", "yes please"),)}, "expected bool"),
        ({"parameters": ({"name": "k"},)}, "must be Param instances"),
    ],
)
def test_check_declaration_rejects(attrs, match):
    with pytest.raises((ValueError, ParameterError), match=match):
        _variant(**attrs).check_declaration()


def test_resolve_params_overlays_defaults_and_coerces_text():
    plugin = Good()
    assert plugin.resolve_params() == {"k": 2, "flag": False}
    assert plugin.resolve_params({"k": "5", "flag": "yes"}) == {"k": 5, "flag": True}
    with pytest.raises(ParameterError, match=r"has no parameter 'kk' \(parameters: k, flag\)"):
        plugin.resolve_params({"kk": 1})
    with pytest.raises(ParameterError, match="below the minimum"):
        plugin.resolve_params({"k": "0"})


def test_describe_is_json_able_and_complete():
    d = json.loads(json.dumps(Good.describe()))
    assert d["id"] == "good-one" and d["category"] == "dynamic" and not d["needs_counterfactual"]
    assert [p["name"] for p in d["parameters"]] == ["k", "flag"]
    assert d["parameters"][0]["min"] == 1 and d["parameters"][0]["max"] == 8


# --- Results ---------------------------------------------------------------------------------------------


def test_result_to_json_converts_tensors_arrays_and_non_finite_values():
    result = AnalysisResult(
        "p",
        {"k": np.int64(3)},
        {
            "t": torch.tensor([[1.0, float("nan")]]),
            "a": np.arange(3, dtype=np.int32),
            "nested": {1: (np.float32(0.5), math.inf)},
            "x": float("-inf"),
        },
        "done",
    )
    out = json.loads(json.dumps(result.to_json(), allow_nan=False))  # strict JSON: no NaN tokens
    assert out == {
        "plugin_id": "p",
        "params": {"k": 3},
        "summary": "done",
        "data": {"t": [[1.0, None]], "a": [0, 1, 2], "nested": {"1": [0.5, None]}, "x": None},
    }


# --- The context ----------------------------------------------------------------------------------------


def test_context_caches_once_and_matches_the_fast_path(tiny_model, tiny_meta, many_windows):
    ctx = AnalysisContext(tiny_model, many_windows, tiny_meta)
    assert ctx.cache is ctx.cache and ctx.logits is ctx.logits  # computed once, shared
    with torch.no_grad():
        fast = tiny_model(many_windows)
    torch.testing.assert_close(ctx.logits, fast, atol=1e-5, rtol=0)
    assert ctx.token_labels[:4] == ["R1", "S1", "A1", "R2"] and len(ctx.token_labels) == 3 * 4 - 1
    assert not any(hp.fwd_hooks for hp in tiny_model.hook_points())  # no hooks left on the model


def test_context_without_edits_has_no_counterfactual(tiny_model, tiny_meta, one_window):
    ctx = AnalysisContext(tiny_model, one_window, tiny_meta)
    assert ctx.counterfactual is None
    with pytest.raises(PluginError, match="needs a counterfactual"):
        ctx.cf_logits  # noqa: B018


def test_context_counterfactual_applies_edits_in_return_units(tiny_model, one_window):
    ctx = AnalysisContext(tiny_model, one_window, {"rtg_scale": 2.0}, [parse_edit("R2=0.5")])
    assert ctx.rtg_scale == 2.0
    assert float(ctx.counterfactual.rtg[0, 1]) == 0.25  # the model sees rtg / rtg_scale
    torch.testing.assert_close(ctx.counterfactual.rtg[:, [0, 2, 3]], one_window.rtg[:, [0, 2, 3]])
    assert ctx.describe()["edits"] == ["R2=0.5"]
    # Tokens before the edited one cannot see it (causal attention): their logits do not move; S2's do.
    torch.testing.assert_close(ctx.cf_logits[:, 0], ctx.logits[:, 0], atol=1e-6, rtol=0)
    assert not torch.allclose(ctx.cf_logits[:, 1], ctx.logits[:, 1], atol=1e-4)
