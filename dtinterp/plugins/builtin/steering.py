"""Steering: add a direction to the residual stream at one hook with a range of coefficients, and measure
what the decision (and, played out, the agent) does.

The vector (:mod:`dtinterp.interp.steering`) is

- ``mean-diff``: the mean activation at the hook over the windows whose ``feature`` is high minus that
  over the windows whose ``feature`` is low (a two-valued feature: its larger value minus its smaller;
  otherwise above the median minus at or below it), over their real tokens of kind ``tokens``
  (:func:`~dtinterp.interp.steering.mean_difference`). Features: ``rtg``, ``timestep``, ``prev_action``,
  and on Memory ``cue_object`` (ball minus key) and ``correct_side`` (down minus up), as far as the windows
  show them (:func:`dtinterp.interp.pairs.window_facts`);
- ``saved:NAME`` from the saved-direction library (its recorded hook and tokens unless given);
- an action (``forward``) or a difference (``forward-left``): its centred unembedding, normalised, as the
  Play tab's ``steer:`` line reads it.

``x <- x + c v`` at the hook and tokens for each coefficient ``c`` (in units of the vector: with mean-diff,
``c = 1`` moves the low windows' mean onto the high ones'), :func:`~dtinterp.interp.steering.steering_scan`:
the metric at the state token ``position`` (logit difference, log-probability or KL from the unsteered
run), the share of windows whose top action there flips, the loss on the recorded actions, the KL and the
agreement of greedy actions at every state token, and with ``episodes > 0`` the same seeds played at
``target`` with each coefficient: success rate, mean return and the share of episodes whose final facts
changed (Memory's ``agent_side``: the side chosen).

``where`` (:mod:`dtinterp.plugins.builtin._common`) keeps the windows of one situation (Memory's junction:
``agent_x=5, agent_y=3, agent_dir=right``) for both the mean difference and the measurements.

The result names the Play tab's intervention line that switches the vector on (state tokens only; a
mean difference must be saved first: ``save_as=NAME`` stores it in the saved-direction library, the only
thing this analysis writes, and never over an existing name).

**Invariant** (tested): the numbers are ``steering_scan``'s; coefficient 0 leaves the logits exactly as
they are; the Play tab's line steers exactly as the scan's hooks.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import torch

from dtinterp.interp.directions import DirectionLibrary, DirectionsError, SavedDirection, from_unembed
from dtinterp.interp.hooknames import BLOCK_SITES
from dtinterp.interp.pairs import WINDOW_FACTS
from dtinterp.interp.scrubbing import WindowSet, feature_values
from dtinterp.interp.steering import TOKENS, SteeringVector, mean_difference, steering_scan
from dtinterp.plugins.api import Analysis, AnalysisContext, AnalysisResult, Param, ParameterError, PluginError
from dtinterp.plugins.builtin._causal import (
    ACTION_PARAM,
    METRIC_NAMES,
    METRIC_PARAM,
    choose_metric,
    predicted,
    user_errors,
    versus_param,
)
from dtinterp.plugins.builtin._common import POSITION_PARAM, WHERE_PARAM, state_timestep, where_windows
from dtinterp.plugins.directions_param import SAVED_PREFIX, parse_direction
from envs.facts import FACTS

MEAN_DIFF = "mean-diff"
#: The largest coefficient the Play tab accepts (``dtinterp.interp.interventions``).
MAX_COEFFICIENT = 1000.0


def parse_coefficients(text: str, plugin_id: str) -> list[float]:
    """``"-4, -2, 0, 2, 4"`` -> floats (finite, at most :data:`MAX_COEFFICIENT` in size, at least one)."""
    where = f"plugin {plugin_id!r} parameter 'coefficients'"
    parts = [p for p in re.split(r"[,\s]+", str(text).strip()) if p]
    if not parts:
        raise ParameterError(f"{where}: give at least one coefficient, e.g. -4,-2,0,2,4")
    out = []
    for p in parts:
        try:
            c = float(p)
        except ValueError:
            raise ParameterError(f"{where}: {p!r} is not a number") from None
        if not math.isfinite(c) or abs(c) > MAX_COEFFICIENT:
            raise ParameterError(f"{where}: {p!r} must be finite and at most {MAX_COEFFICIENT:g} in size")
        out.append(c)
    return list(dict.fromkeys(out))


def play_line(direction: str, hook: str, tokens: str, coefficient: float, n_layers: int) -> str | None:
    """The Play tab's ``steer:`` line for this vector, or None where it cannot say it (tokens other than
    ``S``, a hook the line does not take)."""
    m = re.fullmatch(r"blocks\.(\d+)\.hook_(\w+)", hook)
    if tokens != "S" or not (hook == "hook_embed" or (m and int(m[1]) < n_layers and m[2] in BLOCK_SITES)):
        return None
    return f"steer: {direction} @ {hook} x {coefficient:g}"


class Steering(Analysis):
    id = "steering"
    title = "Steering"
    category = "causal"
    description = (
        "Adds a direction (a mean difference of two sets of windows by a feature, a saved direction, or an "
        "action's readout) to the residual stream at one hook with a range of coefficients: the metric, the "
        "flips of the decision, the loss and KL on the windows, and with episodes > 0 the agent played out "
        "(success, return, changed outcomes). Names the Play tab's line that switches it on."
    )
    parameters = (
        Param(
            "direction",
            "str",
            "forward-left",
            "mean-diff (high minus low windows by feature), saved:NAME, an action (forward) or a difference "
            "of two (forward-left; the centred unembedding, normalised).",
        ),
        Param(
            "feature",
            "str",
            "rtg",
            "For mean-diff: what splits the windows (rtg, timestep, prev_action; Memory: cue_object, "
            "correct_side).",
        ),
        Param(
            "hook",
            "str",
            "",
            "Residual-stream hook (blocks.0.hook_resid_mid, blocks.1.hook_resid_post, hook_embed, ...); empty: "
            "a saved direction's own, else the last block's hook_resid_post.",
        ),
        Param(
            "tokens",
            "choice",
            "S",
            "Tokens steered (and averaged by mean-diff): S every state token, R, A, last, all.",
            choices=TOKENS,
        ),
        WHERE_PARAM,
        Param("coefficients", "str", "-4,-2,-1,0,1,2,4", "Coefficients scanned, in units of the vector."),
        METRIC_PARAM,
        ACTION_PARAM,
        versus_param("steered"),
        POSITION_PARAM,
        Param(
            "episodes",
            "int",
            0,
            "Seeded episodes played per coefficient (0: none; seeds seed .. seed + episodes - 1).",
            min=0,
            max=1000,
        ),
        Param("seed", "int", 1000, "First env seed of the played episodes.", min=0),
        Param("target", "float", 1.0, "Target return the episodes are played at.", min=-1e4, max=1e4),
        Param(
            "save_as",
            "str",
            "",
            "Store the vector (with its hook and tokens) in the saved-direction library under this name "
            "(never overwrites); empty: save nothing.",
        ),
    )

    def compute(self, ctx: AnalysisContext, params: dict[str, Any]) -> AnalysisResult:
        model, names = ctx.model, list(ctx.action_names)
        k = state_timestep(ctx, params, self.id)
        coefficients = parse_coefficients(params["coefficients"], self.id)
        wants_facts = params["direction"].strip() == MEAN_DIFF and params["feature"].strip() in WINDOW_FACTS
        selected, facts = where_windows(ctx, params, self.id, facts_wanted=wants_facts)
        if len(selected) == 0:
            raise ParameterError(
                f"plugin {self.id!r} parameter 'where': none of the {ctx.inputs.batch_size} window(s) is "
                f"where {params['where'].strip()}"
            )
        vector, source, play_direction = self._vector(ctx, params, selected, facts)
        real = ctx.inputs.pad_mask[:, k].cpu().numpy()
        rows = torch.as_tensor(selected[real[selected]])
        if rows.numel() == 0:
            raise ParameterError(
                f"plugin {self.id!r} parameter 'position': timestep {k + 1} is padding in every window"
            )
        windows = ctx.inputs[rows.to(ctx.inputs.device)]
        if not bool((windows.pad_mask & (windows.actions < model.cfg.n_actions)).any()):
            raise PluginError(
                f"plugin {self.id!r}: the windows hold no recorded action to measure the loss on (a live window "
                "of one step): give a trajectory step, an episode or a dataset"
            )
        strongest = max(coefficients, key=abs)
        with torch.no_grad():
            unsteered = model(windows)
            with user_errors(self.id, "hook"), model.hooks(fwd_hooks=vector.hooks(model, strongest)):
                steered = model(windows)
        chosen = choose_metric(ctx, params, unsteered, steered, k, self.id)
        seeds = list(range(params["seed"], params["seed"] + params["episodes"]))
        if seeds and ctx.checkpoint.env_spec is None:
            raise ParameterError(
                f"plugin {self.id!r} parameter 'episodes': the model records no env to play in"
            )
        with user_errors(self.id, "hook"):
            scan = steering_scan(
                ctx.checkpoint,
                vector,
                coefficients,
                windows=windows,
                metric=chosen.metric,
                seeds=seeds,
                targets=[params["target"]],
            )
            flips = []
            top = unsteered[:, k].argmax(-1)
            with torch.no_grad():
                for c in coefficients:
                    with model.hooks(fwd_hooks=vector.hooks(model, c)):
                        flips.append(float((model(windows)[:, k].argmax(-1) != top).double().mean()))
        saved_as = ""
        if params["save_as"].strip():
            saved_as = params["save_as"].strip()
            try:
                DirectionLibrary().save(vector.saved(saved_as, f"steering vector: {source}"))
            except DirectionsError as exc:
                raise ParameterError(f"plugin {self.id!r} parameter 'save_as': {exc}") from None
            play_direction = f"{SAVED_PREFIX}{saved_as}"
        best = coefficients[int(np.argmax(flips))] if max(flips) > 0 else strongest
        line = play_line(
            play_direction or f"{SAVED_PREFIX}NAME", vector.hook, vector.tokens, best, model.cfg.n_layers
        )
        per_window = scan.metric_per_window.double()
        data: dict[str, Any] = {
            "vector": vector.name,
            "source": source,
            "hook": vector.hook,
            "tokens": vector.tokens,
            "norm": vector.norm,
            "coefficients": np.asarray(coefficients),
            "state_label": f"S{k + 1}",
            "metric": chosen.label(names, None, ("unsteered", f"steered x {strongest:g}")),
            "windows": rows.tolist(),
            "where": params["where"].strip(),
            "metric_mean": per_window.mean(-1).numpy(),
            "metric_std": (
                per_window.std(-1) if per_window.shape[1] > 1 else torch.zeros(len(coefficients))
            ).numpy(),
            "flips": np.asarray(flips),
            "loss": np.asarray(scan.loss),
            "kl": np.asarray(scan.kl),
            "agreement": np.asarray(scan.agreement),
            "unsteered_predicted": predicted(names, unsteered, k),
            "episodes": len(seeds),
            "seeds": [seeds[0], seeds[-1]] if seeds else [],
            "target": params["target"],
            "success": np.asarray(scan.success, dtype=float).reshape(len(coefficients), -1)[:, 0]
            if seeds
            else None,
            "mean_return": np.asarray(scan.mean_return, dtype=float).reshape(len(coefficients), -1)[:, 0]
            if seeds
            else None,
            "facts_changed": {f: np.asarray(v) for f, v in scan.facts_changed.items()},
            "saved_as": saved_as,
            "play_line": line,
        }
        summary = self._summary(data, len(rows))
        return AnalysisResult(self.id, params, data, summary)

    def _vector(
        self, ctx: AnalysisContext, params: dict[str, Any], selected: np.ndarray, facts: dict[str, np.ndarray]
    ) -> tuple[SteeringVector, str, str]:
        """The steering vector, a description of where it comes from, and its name in a Play-tab line
        (empty for a mean difference not saved). A mean difference is taken over the ``selected`` rows."""
        model = ctx.model
        text, hook = params["direction"].strip(), params["hook"].strip()
        last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
        if text == MEAN_DIFF:
            hook = hook or last
            high, low, what = self._split(ctx, params, selected, facts)
            with user_errors(self.id, "hook"):
                vector = mean_difference(
                    model,
                    high,
                    low,
                    hook,
                    f"mean-diff:{params['feature'].strip()}",
                    tokens=params["tokens"],
                    model_name=ctx.checkpoint.name,
                    description=what,
                )
            return vector, what, ""
        parsed = parse_direction(text, ctx.action_names, self.id, model=model)
        with user_errors(self.id, "direction"):
            if isinstance(parsed.spec, SavedDirection):
                vector = SteeringVector.from_saved(parsed.spec, hook or None, params["tokens"])
                return vector, f"saved direction {parsed.spec.name}", parsed.text
            if parsed.spec is None:
                raise ParameterError(
                    f"plugin {self.id!r} parameter 'direction': top-vs-runner-up differs between windows; "
                    "steer along mean-diff, saved:NAME, an action or a difference (forward-left)"
                )
            a, b = (parsed.spec, None) if isinstance(parsed.spec, str) else parsed.spec
            d = from_unembed(model, a, parsed.text, minus=b, model_name=ctx.checkpoint.name)
            unit = SavedDirection(
                d.name, d.vector / d.vector.norm(), d.kind, d.model, d.description, d.metadata
            )
            vector = SteeringVector(unit, hook or last, params["tokens"])
        return vector, f"the centred unembedding of {parsed.label}, normalised", parsed.text

    def _split(
        self, ctx: AnalysisContext, params: dict[str, Any], selected: np.ndarray, facts: dict[str, np.ndarray]
    ):
        """The ``selected`` windows whose ``feature`` is high and those whose ``feature`` is low (windows that
        leave a Memory fact open are in neither), and a description."""
        name = params["feature"].strip()
        where = f"plugin {self.id!r} parameter 'feature'"
        inputs = ctx.inputs
        if name in WINDOW_FACTS and name not in facts:
            raise ParameterError(f"{where}: {name} is known on Memory windows only")
        keep = selected[facts[name][selected] >= 0] if name in facts else selected
        ws = WindowSet(inputs, facts).select(keep)
        with user_errors(self.id, "feature"):
            codes = feature_values(ws, name)  # ranks of the feature's values, 0 = smallest
        values = np.unique(codes)
        if values.size < 2:
            raise ParameterError(
                f"{where}: {name} takes one value over these {ws.n_windows} window(s); a mean difference needs "
                "windows on both sides (give a dataset: --data F --episodes N)"
            )
        if values.size == 2:
            high = codes == values[1]
        else:
            med = np.median(codes)
            high = codes > med if (codes > med).any() and (codes <= med).any() else codes >= med
        idx = torch.as_tensor(keep)
        hi_rows, lo_rows = idx[torch.as_tensor(high)], idx[torch.as_tensor(~high)]
        hi_name, lo_name = "high", "low"
        if name in facts and values.size == 2:  # a Memory fact: name its two values
            fact = FACTS[name]
            raw = facts[name][keep]
            hi_name, lo_name = fact.value_name(raw[high][0]), fact.value_name(raw[~high][0])
        what = (
            f"mean difference by {name}: {hi_name} ({len(hi_rows)} windows) minus {lo_name} ({len(lo_rows)})"
        )
        dev = inputs.device
        return inputs[hi_rows.to(dev)], inputs[lo_rows.to(dev)], what

    @staticmethod
    def _summary(d: dict[str, Any], n: int) -> str:
        cs = [float(c) for c in d["coefficients"]]
        parts = ", ".join(
            f"{c:+g}: {m:+.3g} (flips {f:.0%})" for c, m, f in zip(cs, d["metric_mean"], d["flips"])
        )
        played = ""
        if d["episodes"]:
            success = ", ".join(f"{c:+g}: {s:.0%}" for c, s in zip(cs, d["success"]))
            played = (
                f" Played out ({d['episodes']} seeds {d['seeds'][0]}..{d['seeds'][1]}, target {d['target']:g}): "
                f"success {success}; mean return "
                + ", ".join(f"{c:+g}: {r:.3f}" for c, r in zip(cs, d["mean_return"]))
            )
            side = d["facts_changed"].get("agent_side")
            if side is not None:
                played += "; side chosen changed " + ", ".join(f"{c:+g}: {s:.0%}" for c, s in zip(cs, side))
            played += "."
        saved = f" Saved as {d['saved_as']!r} in the direction library." if d["saved_as"] else ""
        if d["play_line"] is None:
            play = " The Play tab steers state tokens at residual hooks only: no line for these settings."
        elif "NAME" in d["play_line"]:
            play = f" Play tab, after save_as=NAME: `{d['play_line']}`."
        else:
            play = f" Play tab: `{d['play_line']}`."
        where = f" where {d['where']}" if d["where"] else ""
        return (
            f"Steering along {d['source']} (|v| = {d['norm']:.3g}) at {d['hook']}, {d['tokens']} tokens, over "
            f"{n} window(s){where}: {d['metric']} at {d['state_label']} by coefficient {parts}; loss on the recorded "
            f"actions {d['loss'][0]:.3g}..{d['loss'][-1]:.3g} nats from the first to the last coefficient."
            f"{played}{saved}{play}"
        )

    def figures(self, result: AnalysisResult) -> list[Any]:
        from dtinterp.viz.lines import line_plot

        d, p = result.data, result.params
        x = np.asarray(d["coefficients"], dtype=float)
        x_title = f"coefficient (multiples of v, |v| = {d['norm']:.3g})"
        subtitle = f"{d['source']} · {d['hook']}, {d['tokens']} tokens · {len(d['windows'])} window(s)" + (
            f" · Play tab: {d['play_line']}" if d["play_line"] else ""
        )

        def titled(fig, title: str, sub: str = subtitle):
            fig.update_layout(title={"text": f"{title}<br><sup>{sub}</sup>"}, margin={"t": 100})
            return fig

        metric = line_plot(
            x,
            {d["metric"]: np.asarray(d["metric_mean"], dtype=float)},
            errors={d["metric"]: np.asarray(d["metric_std"], dtype=float)},
            title="",
            x_title=x_title,
            y_title=f"{METRIC_NAMES[p['metric']]} at {d['state_label']}",
            markers=True,
            zero_line=True,
            height=480,
        )
        figs = [
            titled(metric, f"Steering along {d['vector']}: the metric at {d['state_label']} (band: ±1 std)")
        ]
        shares = line_plot(
            x,
            {
                f"top action at {d['state_label']} flipped": np.asarray(d["flips"], dtype=float),
                "greedy action unchanged (every state token)": np.asarray(d["agreement"], dtype=float),
            },
            title="",
            x_title=x_title,
            y_title="share of windows / tokens",
            markers=True,
            height=420,
        )
        figs.append(titled(shares, f"Steering along {d['vector']}: decisions flipped and kept"))
        nats = line_plot(
            x,
            {
                "loss on the recorded actions": np.asarray(d["loss"], dtype=float),
                "KL(unsteered ‖ steered)": np.asarray(d["kl"], dtype=float),
            },
            title="",
            x_title=x_title,
            y_title="nats per state token",
            markers=True,
            height=420,
        )
        figs.append(titled(nats, f"Steering along {d['vector']}: loss and divergence"))
        if d["episodes"]:
            series = {
                "success rate": np.asarray(d["success"], dtype=float),
                "mean return": np.asarray(d["mean_return"], dtype=float),
            }
            series |= {
                f"{f} changed": np.asarray(v, dtype=float)
                for f, v in d["facts_changed"].items()
                if f in ("agent_side", "carrying", "door_open")
            }
            played = line_plot(
                x,
                series,
                title="",
                x_title=x_title,
                y_title="share of episodes / return",
                markers=True,
                height=460,
            )
            figs.append(
                titled(
                    played,
                    f"Steering along {d['vector']}, played out: {d['episodes']} seeds "
                    f"({d['seeds'][0]}..{d['seeds'][1]}) at target {d['target']:g}",
                )
            )
        return figs


__all__ = ["Steering", "parse_coefficients", "play_line"]
