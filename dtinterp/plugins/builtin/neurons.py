"""Neuron dashboard: what drives one MLP neuron, and on which observations it fires.

Two views of a chosen neuron:

- **Decomposition** (:func:`dtinterp.interp.dla.neuron_decomposition`): its pre-activation at a state token
  split over everything that writes into its input direction through ``ln2`` (linear given the cached
  ``ln2`` scale): the token's embedding, the time embedding, every head of the layers up to the neuron's,
  the earlier MLPs, the residual biases, ``ln2.b`` and ``b_in``. One window, or the mean and spread.
- **Top activations**: over every real state token of every window (a whole episode, or a dataset with
  ``--data F --episodes N``), the observations where the neuron fires most, drawn as the agent saw them,
  with the activation, the action taken and the model's own choice. An observation that recurs in
  overlapping windows is shown once (its strongest activation).

**Invariant** (tested): the decomposition sums to the cached pre-activation within 1e-4.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from dtinterp.interp.dla import neuron_decomposition
from dtinterp.plugins.api import Analysis, AnalysisContext, AnalysisResult, Param, ParameterError
from dtinterp.plugins.builtin._common import (
    POSITION_PARAM,
    WINDOW_PARAM,
    check_layer,
    mean_std,
    selected_rows,
    state_timestep,
    window_label,
)
from envs.encoding import DIRECTION_NAMES


class Neurons(Analysis):
    id = "neurons"
    title = "Neuron dashboard"
    category = "dynamic"
    description = (
        "One MLP neuron: its pre-activation at a state token decomposed into the components that write "
        "into its input direction, and the observations (over all windows) where it fires most, rendered "
        "as the agent saw them with the action taken."
    )
    parameters = (
        Param("layer", "int", -1, "MLP layer of the neuron (-1: the last layer).", min=-1),
        Param(
            "neuron",
            "int",
            -1,
            "Neuron index in the layer (-1: the neuron most active at the read state token).",
            min=-1,
        ),
        Param("top_k", "int", 8, "Top-activating observations shown.", min=1, max=32),
        POSITION_PARAM,
        WINDOW_PARAM,
    )

    @torch.no_grad()
    def compute(self, ctx: AnalysisContext, params: dict[str, Any]) -> AnalysisResult:
        model, cfg = ctx.model, ctx.model.cfg
        if cfg.attn_only:
            raise ParameterError(f"plugin {self.id!r}: the model is attention-only: it has no MLP neurons")
        layer = cfg.n_layers - 1 if params["layer"] < 0 else params["layer"]
        check_layer(ctx, layer, self.id)
        k = state_timestep(ctx, params, self.id)
        rows = selected_rows(ctx, params, self.id, k)
        post = ctx.cache[f"blocks.{layer}.mlp.hook_post"][:, 1::3]  # [B, K, m] at the state tokens
        neuron = params["neuron"]
        if neuron >= cfg.d_mlp:
            raise ParameterError(
                f"plugin {self.id!r} parameter 'neuron': {neuron} is outside the layer's 0..{cfg.d_mlp - 1}"
            )
        if neuron < 0:
            neuron = int(post[rows.to(post.device), k].double().mean(0).argmax())
        dec = neuron_decomposition(model, ctx.inputs, layer, neuron, token=3 * k + 1, cache=ctx.cache)
        n = len(rows)
        mean, std = mean_std(dec.values, rows)
        pre = dec.pre[rows.to(dec.pre.device)]
        name = f"L{layer}N{neuron}"

        # Top activations over every real state token of the batch, one per distinct observation.
        acts = post[..., neuron].masked_fill(~ctx.inputs.pad_mask.to(post.device), float("-inf"))  # [B, K]
        flat = acts.flatten()
        order = torch.argsort(flat, descending=True)
        order = order[torch.isfinite(flat[order])]
        K = ctx.inputs.context_len
        predicted = ctx.logits.argmax(-1)  # [B, K]
        seen: set[bytes] = set()
        top: list[dict[str, Any]] = []
        for i in order.tolist():
            b, t = divmod(i, K)
            obs, heading = ctx.inputs.obs[b, t].cpu().numpy(), int(ctx.inputs.directions[b, t])
            key = obs.tobytes() + bytes([heading]) + int(ctx.inputs.timesteps[b, t]).to_bytes(4, "little")
            if key in seen:
                continue
            seen.add(key)
            top.append(
                {
                    "window": b,
                    "timestep": t,
                    "episode_step": int(ctx.inputs.timesteps[b, t]),
                    "activation": float(flat[i]),
                    "action": ctx.action_names[int(ctx.inputs.actions[b, t])]
                    if int(ctx.inputs.actions[b, t]) < len(ctx.action_names)
                    else "none",
                    "predicted": ctx.action_names[int(predicted[b, t])],
                    "view": obs,
                    "heading": DIRECTION_NAMES[heading],
                }
            )
            if len(top) == params["top_k"]:
                break
        all_acts = acts[torch.isfinite(acts)].double().cpu().numpy()
        data: dict[str, Any] = {
            "neuron": name,
            "layer": layer,
            "index": neuron,
            "state_label": f"S{k + 1}",
            "windows": rows.cpu().numpy(),
            "decomposition": {"labels": dec.labels, "mean": mean, "std": std},
            "pre": pre.cpu().numpy(),
            "decomposition_error": float((dec.values.sum(-1) - dec.pre)[rows.to(dec.pre.device)].abs().max()),
            "top": top,
            "activations": all_acts,
        }
        order_c = np.argsort(-np.abs(mean), kind="stable")
        top3 = ", ".join(f"{dec.labels[i]} {mean[i]:+.3g}" for i in order_c[:3])
        summary = (
            f"{name} at {data['state_label']} ({window_label(params, n)}): pre-activation "
            f"{float(pre.double().mean()):+.3g}; largest inputs {top3}. Over {all_acts.size} real state tokens "
            f"it fires above 0 on {float((all_acts > 0).mean()):.0%}; strongest {top[0]['activation']:.3g} "
            f"(window {top[0]['window']}, step {top[0]['episode_step']}, took {top[0]['action']})."
        )
        return AnalysisResult(self.id, params, data, summary)

    def figures(self, result: AnalysisResult) -> list[Any]:
        import plotly.graph_objects as go

        from dtinterp.viz import histogram
        from dtinterp.viz.gridmap import agent_views
        from dtinterp.viz.style import color, finish

        d = result.data
        n = len(d["windows"])
        where = f"{d['state_label']}, {window_label(result.params, n)}"
        dec = d["decomposition"]
        bar = go.Figure(
            go.Bar(
                x=dec["labels"],
                y=np.asarray(dec["mean"], dtype=float),
                error_y={"type": "data", "array": np.asarray(dec["std"], dtype=float), "visible": n > 1},
                marker={"color": color(0)},
                hovertemplate="%{x}: %{y:.4g}<extra></extra>",
            )
        )
        bar.update_xaxes(type="category")
        bar.add_hline(y=0, line={"color": "grey", "width": 1})
        pre = float(np.mean(np.asarray(d["pre"], dtype=float)))
        figs = [
            finish(
                bar,
                f"What writes into {d['neuron']}'s input at {where}: pre-activation {pre:+.3g}",
                "component",
                "contribution to the pre-activation",
                height=450,
            )
        ]
        top = d["top"]
        figs.append(
            agent_views(
                [np.asarray(t["view"], dtype=np.uint8) for t in top],
                [
                    f"{t['activation']:.3g} · took {t['action']} · model {t['predicted']} · step {t['episode_step']}"
                    for t in top
                ],
                title=f"{d['neuron']}: the observations where it fires most (activation · action taken · "
                "model's choice · episode step)",
            )
        )
        figs.append(
            histogram(
                {d["neuron"]: np.asarray(d["activations"], dtype=float)},
                title=f"Activation of {d['neuron']} at every real state token of the windows",
                x_title="activation (after the nonlinearity)",
            )
        )
        return figs
