"""Plugin parameters as Dash controls and back: the app's generic renderer of :class:`Param` declarations.

Every analysis declares its parameters (:class:`dtinterp.plugins.api.Param`); the Analyses tab builds one
control per parameter from the declaration alone, so a plugin installed later gets its controls with no
change here:

==========  ===========================================================================
``int``     a number box (step 1) bounded by the declaration's min/max
``float``   a number box (any step) bounded by min/max
``bool``    a one-item checklist (ticked = true)
``choice``  a dropdown of the declared choices (values travel as text, like ``--param``);
            :data:`~dtinterp.plugins.api.MODEL_ACTIONS` among them offers the shown model's actions
``str``     a text box
==========  ===========================================================================

Each control's id is ``{"type": ids.ANALYSIS_PARAM_TYPE, "plugin": plugin_id, "name": param.name}``, so
one callback reads every control of the shown plugin with a pattern-matching ``ALL``. The browser's
values go back through :func:`values_from_controls`, which validates them with the plugin's own
``resolve_params`` (the same check as ``dtinterp analyze --param``); a bad value is a one-line
:class:`~dtinterp.plugins.api.ParameterError` for the page, never an exception in the server.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dash import dcc, html

from dash_app import ids
from dtinterp.model.checkpoint import Checkpoint
from dtinterp.plugins.api import Analysis, Param, ParameterError

#: The checklist value that means "true" for a bool parameter.
BOOL_ON = "on"


def control_id(plugin_id: str, name: str) -> dict[str, str]:
    """Pattern-matching id of the control of parameter ``name`` of plugin ``plugin_id``."""
    return {"type": ids.ANALYSIS_PARAM_TYPE, "plugin": plugin_id, "name": name}


def initial_value(param: Param) -> Any:
    """The control's value for the parameter's default (what the browser would send back unchanged)."""
    if param.type == "bool":
        return [BOOL_ON] if param.default else []
    if param.type == "choice":
        return str(param.default)
    return param.default


def _input(param: Param, cid: dict[str, str], action_names: Sequence[str] | None = None) -> Any:
    if param.type in ("int", "float"):
        return dcc.Input(
            id=cid,
            type="number",
            value=initial_value(param),
            min=param.min,
            max=param.max,
            step=1 if param.type == "int" else "any",
            className="param-number",
        )
    if param.type == "bool":
        return dcc.Checklist(
            id=cid,
            options=[{"label": param.name, "value": BOOL_ON}],
            value=initial_value(param),
            className="param-bool",
        )
    if param.type == "choice":
        return dcc.Dropdown(
            id=cid,
            options=[{"label": str(c), "value": str(c)} for c in param.resolved_choices(action_names)],
            value=initial_value(param),
            clearable=False,
            className="param-choice",
        )
    return dcc.Input(id=cid, type="text", value=initial_value(param), className="param-text")


def param_control(plugin_id: str, param: Param, action_names: Sequence[str] | None = None) -> html.Div:
    """One labelled control for ``param`` of plugin ``plugin_id``, with its help text and bounds.

    ``action_names`` (the model's actions, ``Checkpoint.action_names``) is what a choice of
    :data:`~dtinterp.plugins.api.MODEL_ACTIONS` offers; without it, every MiniGrid action.
    """
    label = [] if param.type == "bool" else [html.Label(param.name, className="param-name")]
    return html.Div(
        [
            *label,
            _input(param, control_id(plugin_id, param.name), action_names),
            html.Div(
                [
                    html.Span(param.help),
                    html.Span(f" ({param.describe_type(action_names)}; default {param.default})"),
                ],
                className="param-help",
            ),
        ],
        className="param-row",
        title=param.help,
    )


def plugin_controls(plugin: Analysis, action_names: Sequence[str] | None = None) -> list[html.Div]:
    """A control for every declared parameter of ``plugin`` (an empty list if it takes none).

    Pass the shown model's ``action_names`` so that model-dependent choices offer only its actions.
    """
    return [param_control(plugin.id, p, action_names) for p in plugin.parameters]


def raw_values(
    plugin_id: str, control_ids: Sequence[Mapping[str, Any]], values: Sequence[Any]
) -> dict[str, Any]:
    """``{name: value}`` of the controls of ``plugin_id`` among pattern-matched ``control_ids``/``values``."""
    return {cid["name"]: v for cid, v in zip(control_ids, values) if cid.get("plugin") == plugin_id}


def _from_control(plugin: Analysis, param: Param, value: Any) -> Any:
    """The browser's value of one control as a value ``Param.coerce`` understands."""
    if param.type == "bool":
        if isinstance(value, (list, tuple)):
            return BOOL_ON in value
        return value
    if param.type in ("int", "float") and value is None:
        # A number box sends null when it is empty or holds something the browser rejects
        # (text, a fraction in an int box, a value outside min/max).
        raise ParameterError(
            f"plugin {plugin.id!r} parameter {param.name!r}: enter a valid number ({param.describe_type()})"
        )
    if param.type == "choice" and value is None:
        raise ParameterError(
            f"plugin {plugin.id!r} parameter {param.name!r}: choose a value ({param.describe_type()})"
        )
    if param.type == "str" and value is None:
        return ""
    return value


def values_from_controls(
    plugin: Analysis, raw: Mapping[str, Any], checkpoint: Checkpoint | None = None
) -> dict[str, Any]:
    """The plugin's complete, validated parameters from its controls' values (missing ones: defaults).

    Raises :class:`ParameterError` (one line naming the plugin and parameter) for a bad value or a name
    the plugin does not declare; with ``checkpoint``, also for an action that model does not have.
    """
    declared = {p.name: p for p in plugin.parameters}
    converted = {
        name: _from_control(plugin, declared[name], value) if name in declared else value
        for name, value in raw.items()
    }
    return plugin.resolve_params(converted, checkpoint)


__all__ = [
    "BOOL_ON",
    "control_id",
    "initial_value",
    "param_control",
    "plugin_controls",
    "raw_values",
    "values_from_controls",
]
