"""Plugin discovery and failure isolation: a broken plugin is reported and skipped, never fatal."""

from __future__ import annotations

import sys
import textwrap
from importlib.metadata import EntryPoint

import pytest

from dtinterp.plugins import builtin
from dtinterp.plugins.api import AnalysisContext, ParameterError, PluginError
from dtinterp.plugins.registry import ENTRY_POINT_GROUP, get_registry, load_registry

# Third-party plugin modules, written to a temporary directory on sys.path.
MODULES = {
    "tp_good": """
        from dtinterp.plugins.api import Analysis, AnalysisResult, Param

        class Good(Analysis):
            id = "tp-good"
            title = "A good third-party analysis"
            category = "dynamic"
            parameters = (Param("scale", "float", 1.0, min=0.0),)

            def compute(self, ctx, params):
                return AnalysisResult(self.id, params, {"logits": ctx.logits * params["scale"]}, "ok")

            def figures(self, result):
                return ["a figure"]
    """,
    "tp_same_id": """
        from tp_good import Good

        class SameId(Good):
            title = "Claims an id that is taken"
    """,
    "tp_broken_import": """
        import a_module_that_does_not_exist_anywhere
    """,
    "tp_bad_params": """
        from dtinterp.plugins.api import Param
        from tp_good import Good

        class BadParams(Good):
            id = "tp-bad-params"
            parameters = (Param("k", "int", 10, min=0, max=5),)
    """,
    "tp_raises": """
        from tp_good import Good

        class Raises(Good):
            id = "tp-raises"

            def compute(self, ctx, params):
                raise ZeroDivisionError("the analysis divided by zero\\nsecond line of detail")

            def figures(self, result):
                raise KeyError("no such panel")
    """,
    "tp_not_analysis": """
        class NotAnAnalysis:
            id = "tp-not"
    """,
    "tp_abstract": """
        from dtinterp.plugins.api import Analysis

        class NoFigures(Analysis):
            id = "tp-abstract"
            title = "Forgot figures()"
            category = "static"

            def compute(self, ctx, params):
                return None
    """,
}

ENTRY_POINTS = {
    "good": "tp_good:Good",
    "same-id": "tp_same_id:SameId",
    "broken-import": "tp_broken_import:Anything",
    "bad-params": "tp_bad_params:BadParams",
    "raises": "tp_raises:Raises",
    "not-analysis": "tp_not_analysis:NotAnAnalysis",
    "abstract": "tp_abstract:NoFigures",
    "missing-attr": "tp_good:NoSuchClass",
}


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    for name, source in MODULES.items():
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in MODULES:
        sys.modules.pop(name, None)


def _eps(*names: str) -> list[EntryPoint]:
    return [EntryPoint(n, ENTRY_POINTS[n], ENTRY_POINT_GROUP) for n in names]


@pytest.fixture
def registry(plugin_dir):
    return load_registry(eps=_eps(*ENTRY_POINTS))


def test_every_broken_plugin_is_reported_with_its_name_and_skipped(registry):
    failures = {f.name: f for f in registry.failures}
    assert set(failures) == {
        "same-id",
        "broken-import",
        "bad-params",
        "not-analysis",
        "abstract",
        "missing-attr",
    }
    assert failures["broken-import"].stage == "import"
    assert "ModuleNotFoundError" in failures["broken-import"].error
    assert failures["missing-attr"].stage == "import"
    assert "already registered by tp_good" in failures["same-id"].error
    assert (
        failures["bad-params"].stage == "declaration"
        and "above the maximum 5" in failures["bad-params"].error
    )
    assert "not an Analysis subclass" in failures["not-analysis"].error
    assert "does not implement ['figures']" in failures["abstract"].error
    assert all("\n" not in f.error for f in registry.failures)
    assert str(failures["abstract"]).startswith("plugin 'abstract' failed at declaration: ")
    # The good ones are all there, and the first claimant keeps a contested id.
    assert {"tp-good", "tp-raises"} <= set(registry.plugins)
    assert type(registry.get("tp-good")).__name__ == "Good"
    assert not {"tp-bad-params", "tp-abstract", "tp-not"} & set(registry.plugins)


def test_builtins_load_beside_broken_third_party_plugins(registry):
    builtins = load_registry(include_entry_points=False)
    assert builtins.plugins, "no built-in analyses were registered"
    assert not builtins.failures, [str(f) for f in builtins.failures]
    assert set(builtins.plugins) <= set(registry.plugins)
    for plugin in builtins.plugins.values():
        assert type(plugin).__module__.startswith("dtinterp.plugins.builtin.")


def test_a_builtin_module_that_fails_to_import_is_reported(tmp_path, monkeypatch):
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "broken_builtin.py").write_text("raise RuntimeError('cannot load this one')\n")
    monkeypatch.setattr(builtin, "__path__", [*builtin.__path__, str(extra)])
    try:
        reg = load_registry(include_entry_points=False)
    finally:
        sys.modules.pop("dtinterp.plugins.builtin.broken_builtin", None)
    (failure,) = [f for f in reg.failures if "broken_builtin" in f.name]
    assert failure.name == "dtinterp.plugins.builtin.broken_builtin" and failure.stage == "import"
    assert failure.error == "RuntimeError: cannot load this one"
    assert set(load_registry(include_entry_points=False).plugins) == set(reg.plugins)  # the rest loaded


def test_a_plugin_raising_in_compute_is_one_line_and_the_others_keep_working(
    registry, tiny_model, one_window
):
    ctx = AnalysisContext(tiny_model, one_window)
    with pytest.raises(PluginError) as err:
        registry.run("tp-raises", ctx)
    assert str(err.value) == (
        "plugin 'tp-raises' failed at compute: ZeroDivisionError: the analysis divided by zero"
    )
    assert isinstance(err.value.__cause__, ZeroDivisionError)  # kept for debugging
    assert registry.failures[-1].name == "tp-raises" and registry.failures[-1].stage == "compute"

    result = registry.run("tp-good", ctx, {"scale": "2"})  # the registry and the context still work
    assert result.params == {"scale": 2.0}
    assert (result.data["logits"] == 2 * ctx.logits).all()
    assert registry.figures("tp-good", result) == ["a figure"]
    with pytest.raises(PluginError, match="failed at figures: KeyError"):
        registry.figures("tp-raises", result)


def test_parameter_errors_propagate_and_are_not_plugin_failures(registry, tiny_model, one_window):
    n_failures = len(registry.failures)
    with pytest.raises(ParameterError, match="below the minimum"):
        registry.run("tp-good", AnalysisContext(tiny_model, one_window), {"scale": "-1"})
    assert len(registry.failures) == n_failures


def test_unknown_id_lists_the_available_ones(registry):
    with pytest.raises(PluginError, match=r"unknown analysis 'nope' \(available: .*tp-good"):
        registry.get("nope")


def test_by_category_groups_every_plugin_once_in_title_order(registry):
    groups = registry.by_category()
    assert list(groups) == ["static", "dynamic", "causal"]
    listed = [p.id for ps in groups.values() for p in ps]
    assert sorted(listed) == sorted(registry.plugins)
    for category, plugins in groups.items():
        assert all(p.category == category for p in plugins)
        assert [p.title for p in plugins] == sorted(p.title for p in plugins)


def test_get_registry_is_loaded_once():
    assert get_registry() is get_registry()
