"""Feature dashboard: one probe direction, saved direction or SAE latent over the windows, and its siblings.

The feature is named as the Play tab names it (:mod:`dtinterp.interp.feature_dashboard`): ``saved:NAME``
(a saved direction, e.g. a probe's from ``LinearProbe.saved_direction``, read at the hook it records),
``sae:DIR#F`` (latent ``F`` of the SAE saved in ``DIR``, at its hook), or an action's readout
(``forward``, ``forward-left``). Over every real state token of the windows (one window, a whole episode,
or a dataset with ``--data F --episodes N``):

- the **histogram** of its values;
- the **top-activating windows**, drawn as the agent saw them, with the value, the action taken, the
  model's own choice, the return-to-go it was conditioned on, and the window and episode step;
- its **direct effect on each action logit** per unit of activation (through the final norm with its scale
  frozen at the mean over the read tokens, and ``W_U``);
- the **feature list**: every latent of the SAE, or every action readout and saved direction, with how
  often it is positive, its mean and largest value and its largest direct logit effect; sorted by
  ``frequency`` or ``logit-effect`` and filtered by ``search`` (an id such as ``f17``, or an action);
- **Play-tab interventions** (:class:`~dtinterp.plugins.api.PlayIntervention`): steer along it (±) and
  ablate it; the app shows them as buttons that fill in the Play tab's intervention.

**Invariants** (tested): the histogram counts sum to the read tokens; the top windows are the largest
values of a fresh ``run_with_cache``; the logit effect is the vector times the centred ``W_U`` over the
frozen scale; the list is sorted as asked; every suggested line parses, and steering by 0 changes nothing.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from dtinterp.interp.feature_dashboard import (
    SORT_KEYS,
    FeatureError,
    feature_dashboard,
    feature_list,
    play_interventions,
    resolve_feature,
    search_rows,
    sort_rows,
)
from dtinterp.plugins.api import (
    Analysis,
    AnalysisContext,
    AnalysisResult,
    Param,
    ParameterError,
    PlayIntervention,
)
from envs.encoding import DIRECTION_NAMES


class FeatureDashboard(Analysis):
    id = "feature-dashboard"
    title = "Feature dashboard"
    category = "dynamic"
    description = (
        "One feature (a saved direction such as a probe's, an SAE latent, or an action readout) over every "
        "real state token of the windows: its histogram, the windows where it is strongest drawn as the agent "
        "saw them with action and return-to-go, its direct effect on each action logit, the searchable list "
        "of its sibling features, and Play-tab buttons that steer with it or ablate it."
    )
    parameters = (
        Param(
            "feature",
            "str",
            "forward",
            "saved:NAME (a saved direction, e.g. a probe's), sae:DIR#F (latent F of the SAE saved in DIR), "
            "an action's readout (forward) or a difference (forward-left).",
        ),
        Param(
            "hook",
            "str",
            "",
            "Residual-stream hook a direction is read at (empty: the hook a saved direction records, else "
            "the last layer's hook_resid_post). An SAE reads its own hook.",
        ),
        Param("top_k", "int", 8, "Top-activating windows shown.", min=1, max=32),
        Param("bins", "int", 40, "Bins of the histogram.", min=5, max=200),
        Param("sort", "choice", "frequency", "Order of the feature list.", choices=SORT_KEYS),
        Param(
            "search",
            "str",
            "",
            "Filter the feature list: ids (f17 or 17) or actions (left), separated by spaces; empty: all.",
        ),
        Param(
            "list_size", "int", 30, "Features of the list drawn (the JSON holds them all).", min=1, max=256
        ),
        Param(
            "coefficient",
            "float",
            0.0,
            "Steering coefficient of the suggested Play-tab interventions (0: the one that moves the feature "
            "by the largest size of its values seen).",
            min=-1000.0,
            max=1000.0,
        ),
    )

    @torch.no_grad()
    def compute(self, ctx: AnalysisContext, params: dict[str, Any]) -> AnalysisResult:
        where = f"plugin {self.id!r}"
        try:
            feature = resolve_feature(params["feature"], ctx.checkpoint, params["hook"])
            dash = feature_dashboard(
                ctx.checkpoint, ctx.inputs, ctx.cache, feature, n_bins=params["bins"], top_k=params["top_k"]
            )
            rows, note = feature_list(ctx.checkpoint, ctx.cache, feature, dash.read, dash.ln_scale)
            if params["sort"] == "logit-effect" and not np.isfinite(dash.logit_effect.numpy()).all():
                raise FeatureError(
                    f"{feature.hook} is not read by the unembedding directly: sort by frequency"
                )
            listed = search_rows(sort_rows(rows, params["sort"]), params["search"])
        except FeatureError as exc:
            raise ParameterError(f"{where}: {exc}") from None

        inputs, names = ctx.inputs, ctx.action_names
        predicted = ctx.logits.argmax(-1).cpu()
        top = []
        for b, t, v in zip(dash.top_windows.tolist(), dash.top_timesteps.tolist(), dash.top_values.tolist()):
            a = int(inputs.actions[b, t])
            top.append(
                {
                    "window": b,
                    "timestep": t,
                    "token": f"S{t + 1}",
                    "episode_step": int(inputs.timesteps[b, t]),
                    "value": v,
                    "action": names[a] if 0 <= a < len(names) else "none",
                    "predicted": names[int(predicted[b, t])],
                    "rtg": float(inputs.rtg[b, t]) * ctx.rtg_scale,
                    "view": inputs.obs[b, t].cpu().numpy(),
                    "heading": DIRECTION_NAMES[int(inputs.directions[b, t])],
                }
            )
        suggestions = [
            PlayIntervention(label, text)
            for label, text in play_interventions(feature, dash, params["coefficient"])
        ]
        values = dash.values[dash.read].numpy()
        data: dict[str, Any] = {
            "feature": feature.text,
            "label": feature.label,
            "kind": feature.kind,
            "hook": feature.hook,
            "n_windows": inputs.batch_size,
            "n_read": dash.n_read,
            "frequency": float((values > 0).mean()),
            "mean": float(values.mean()),
            "max": float(values.max()),
            "hist_edges": dash.hist_edges.numpy(),
            "hist_counts": dash.hist_counts.numpy(),
            "top": top,
            "actions": list(names),
            "logit_effect": dash.logit_effect.numpy(),
            "logit_effect_unscaled": None
            if dash.logit_effect_unscaled is None
            else dash.logit_effect_unscaled.numpy(),
            "ln_scale": dash.ln_scale,
            "boundary": feature.boundary,
            "above_boundary": None if feature.boundary is None else float((values > feature.boundary).mean()),
            "sort": params["sort"],
            "search": params["search"],
            "n_features": len(rows),
            "features": [r.to_dict() for r in listed],
            "list_note": note,
        }
        effect = dash.logit_effect.numpy()
        if np.isfinite(effect).all():
            a = int(np.abs(effect).argmax())
            push = (
                f"one unit's direct effect is largest on {names[a]}: {effect[a]:+.3g} (mean over the tokens, "
                f"final-norm scale frozen; harmonic mean scale {dash.ln_scale:.3g})"
            )
        else:
            push = f"its direct logit effect is not defined at {feature.hook}"
        strongest = (
            f"strongest {top[0]['value']:.3g} at window {top[0]['window']} step {top[0]['episode_step']} "
            f"(took {top[0]['action']}, RTG {top[0]['rtg']:.3g})"
            if top
            else "it never fires on these windows"
        )
        boundary = (
            ""
            if feature.boundary is None
            else f", above its probe's boundary {feature.boundary:.3g} on {data['above_boundary']:.0%}"
        )
        found = (
            f"{len(listed)} of {len(rows)} sibling features match {params['search']!r}"
            if params["search"].strip()
            else f"{len(rows)} sibling features listed by {params['sort']}"
        )
        summary = (
            f"{feature.label} at {feature.hook} over {dash.n_read} real state tokens of {inputs.batch_size} "
            f"window(s): positive on {data['frequency']:.0%}{boundary}, mean {data['mean']:.3g}, {strongest}; "
            f"{push}. "
            f"{found}.{' ' + note + '.' if note else ''} Play tab: " + " | ".join(s.text for s in suggestions)
        )
        return AnalysisResult(self.id, params, data, summary, suggestions)

    def figures(self, result: AnalysisResult) -> list[Any]:
        import plotly.graph_objects as go

        from dtinterp.viz import bar_panels, binned_histogram
        from dtinterp.viz.gridmap import agent_views
        from dtinterp.viz.style import color, finish

        d = result.data
        name = f"{d['label']} at {d['hook']}"
        hist = binned_histogram(
            np.asarray(d["hist_edges"], dtype=float),
            np.asarray(d["hist_counts"], dtype=float),
            title=f"{name}: its value at the {d['n_read']} real state tokens of {d['n_windows']} window(s)",
            x_title="SAE latent activation" if d["kind"] == "sae" else "projection on the unit direction",
            log_y=d["kind"] == "sae",
        )
        if d.get("boundary") is not None:
            hist.add_vline(
                x=d["boundary"],
                line={"color": "grey", "dash": "dash"},
                annotation_text=f"probe boundary ({d['above_boundary']:.0%} above)",
            )
        figs = [hist]
        top = d["top"]
        if top:
            figs.append(
                agent_views(
                    [np.asarray(t["view"], dtype=np.uint8) for t in top],
                    [
                        f"{t['value']:.3g} · took {t['action']} (model {t['predicted']}) · RTG {t['rtg']:.3g} · "
                        f"w{t['window']} step {t['episode_step']}"
                        for t in top
                    ],
                    title=f"{name}: where it is strongest (value · action taken (model's choice) · return-to-go · "
                    "window, episode step)",
                )
            )
        effect = np.asarray([np.nan if v is None else v for v in d["logit_effect"]], dtype=float)
        if np.isfinite(effect).all():
            bar = go.Figure(
                go.Bar(
                    x=d["actions"],
                    y=effect,
                    marker={"color": [color(0) if v >= 0 else color(1) for v in effect]},
                    hovertemplate="%{x}: %{y:+.4g} per unit<extra></extra>",
                )
            )
            bar.update_xaxes(type="category")
            bar.add_hline(y=0, line={"color": "grey", "width": 1})
            figs.append(
                finish(
                    bar,
                    f"{name}: direct effect of one unit on each action logit (each token's final-norm scale "
                    f"frozen, mean over the tokens; harmonic mean scale {d['ln_scale']:.3g})",
                    "action logit",
                    "logit change per unit of the feature",
                )
            )
        rows = d["features"][: int(result.params["list_size"])]
        if rows:
            labels = [f"{r['id']} · {r['top_action']}" if r["top_action"] else r["id"] for r in rows]
            order = "largest logit effect" if d["sort"] == "logit-effect" else "frequency"
            search = f", search {d['search']!r}" if d["search"].strip() else ""
            figs.append(
                bar_panels(
                    labels,
                    {
                        "frequency (value > 0)": np.asarray([r["frequency"] for r in rows], dtype=float),
                        "mean value": np.asarray([r["mean"] for r in rows], dtype=float),
                        "top logit effect": np.asarray(
                            [
                                np.nan if r["top_logit_effect"] is None else r["top_logit_effect"]
                                for r in rows
                            ],
                            dtype=float,
                        ),
                    },
                    colors=[1 if r["text"] == d["feature"] else 0 for r in rows],
                    title=f"Feature list: {len(rows)} of {d['n_features']} by {order}{search} (this feature "
                    "highlighted)",
                    x_title="feature · the action it pushes most",
                    height=min(900, 3 * 200 + 160),
                )
            )
        return figs
