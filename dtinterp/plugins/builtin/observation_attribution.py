"""Observation attribution: how much each cell and channel of the agent's view contributes to a direction.

The state embedding is a sum of one learned row per (x, y, channel) of the observation that is on, plus
the agent-direction row and ``b_state``; with the final LayerNorm's cached scale the readout is linear,
so :func:`dtinterp.interp.dla.observation_attribution` splits the state embedding's direct contribution
exactly over the cells and channels (the *direct path*: the read token's own observation) and, through
each head's OV circuit (linearised with the cached ``ln1`` scale at the source), the contribution of the
observations of every state token the head attends to.

Figures: the direct path per cell (all channels, then the object, colour and state channels) drawn over
the rendered view when one window is shown; each head's path per cell (summed over the window's state
tokens, or from one chosen state token ``source``); and each head's share per source state token.

**Invariant** (tested): the per-cell contributions plus the direction row and ``b_state`` sum to the
state embedding's total direct contribution (the ``state_embed`` component of the direct logit
attribution) in every window.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from dtinterp.interp.dla import observation_attribution
from dtinterp.interp.embedding_geometry import CHANNEL_GROUPS
from dtinterp.plugins.api import Analysis, AnalysisContext, AnalysisResult, Param, ParameterError
from dtinterp.plugins.builtin._common import (
    POSITION_PARAM,
    WINDOW_PARAM,
    mean_std,
    readout_label,
    selected_rows,
    state_timestep,
    window_label,
)
from dtinterp.plugins.directions_param import DIRECTION_PARAM, parse_direction
from envs.encoding import DIRECTION_NAMES


class ObservationAttribution(Analysis):
    id = "observation-attribution"
    title = "Observation attribution"
    category = "dynamic"
    description = (
        "How much each cell and channel (object, colour, state) of the agent's view contributes to the "
        "direction: the read state's own observation directly, and every state token's observation through "
        "each head's OV circuit, as gridmaps over the rendered view."
    )
    parameters = (
        DIRECTION_PARAM,
        POSITION_PARAM,
        WINDOW_PARAM,
        Param(
            "source",
            "int",
            0,
            "Heads' panels: the observation of state token S_j only (j = 1..K), or 0 for every state token "
            "of the window, summed.",
            min=0,
        ),
    )

    @torch.no_grad()
    def compute(self, ctx: AnalysisContext, params: dict[str, Any]) -> AnalysisResult:
        model = ctx.model
        direction = parse_direction(params["direction"], ctx.action_names, self.id, model=model)
        k = state_timestep(ctx, params, self.id)
        rows = selected_rows(ctx, params, self.id, k)
        K = ctx.inputs.context_len
        j = params["source"]
        if j > K:
            raise ParameterError(
                f"plugin {self.id!r} parameter 'source': {j} is outside the window of {K} timesteps"
            )
        oa = observation_attribution(model, ctx.inputs, direction.spec, position=k, cache=ctx.cache)
        groups = {
            name: oa.direct[:, lo:hi].sum(1) for name, (lo, hi) in CHANNEL_GROUPS.items()
        }  # [B, W, H] each
        cells = oa.direct_cells  # [B, W, H]
        heads = oa.heads if j == 0 else oa.heads[:, :, :, j - 1 : j]  # [B, L, H, K', W, H]
        heads = heads.sum(3)
        by_source = oa.heads.sum((-2, -1)) + oa.heads_direction + oa.heads_bias  # [B, L, H, K]
        L, H = model.cfg.n_layers, model.cfg.n_heads
        total = oa.direct_total

        def stats(x: torch.Tensor) -> dict[str, np.ndarray]:
            mean, std = mean_std(x, rows)
            return {"mean": mean, "std": std}

        n = len(rows)
        data: dict[str, Any] = {
            "direction": readout_label(direction.label, oa.direction.labels, rows),
            "state_label": f"S{k + 1}",
            "windows": rows.cpu().numpy(),
            "direct": {
                "cells": stats(cells),
                **{name: stats(g) for name, g in groups.items()},
                "direction_row": stats(oa.direct_direction),
                "b_state": stats(oa.direct_bias),
                "total": stats(total),
            },
            "heads": {
                "labels": [f"L{l}H{h}" for l in range(L) for h in range(H)],
                **stats(heads.flatten(1, 2)),
            },
            "by_source": {
                "labels": [f"S{i + 1}" for i in range(K)],
                "real": ctx.inputs.pad_mask[rows].any(0).cpu().numpy(),
                **stats(by_source.flatten(1, 2)),
            },
            "source": j,
            "cells_error": float(
                (cells.sum((-2, -1)) + oa.direct_direction + oa.direct_bias - total)[rows].abs().max()
            ),
        }
        if n == 1:
            b = int(rows[0])
            data["view"] = ctx.inputs.obs[b, k].cpu().numpy()
            data["agent_direction"] = DIRECTION_NAMES[int(ctx.inputs.directions[b, k])]
            if j > 0 and bool(ctx.inputs.pad_mask[b, j - 1]):
                data["source_view"] = ctx.inputs.obs[b, j - 1].cpu().numpy()
        mean_cells = data["direct"]["cells"]["mean"]
        x, y = np.unravel_index(int(np.abs(mean_cells).argmax()), mean_cells.shape)
        head_tot = np.abs(data["heads"]["mean"]).sum((-2, -1))
        best = int(head_tot.argmax())
        summary = (
            f"{data['direction']} at {data['state_label']} ({window_label(params, n)}): the state embedding "
            f"contributes {float(data['direct']['total']['mean']):+.3g} directly; the cell that contributes "
            f"most is ({x}, {y}) ({float(mean_cells[x, y]):+.3g}). Through heads, "
            f"{data['heads']['labels'][best]} carries the most from the observations "
            f"(sum of |cells| {float(head_tot[best]):.3g})."
        )
        return AnalysisResult(self.id, params, data, summary)

    def figures(self, result: AnalysisResult) -> list[Any]:
        from dtinterp.viz import heatmap
        from dtinterp.viz.gridmap import gridmap, view_image

        d = result.data
        n = len(d["windows"])
        where = f"{d['state_label']}, {window_label(result.params, n)}"
        direct = d["direct"]
        image = view_image(d["view"]) if "view" in d else None
        panels = np.stack(
            [np.asarray(direct[key]["mean"], dtype=float) for key in ("cells", *CHANNEL_GROUPS)]
        )
        spread = np.stack([np.asarray(direct[key]["std"], dtype=float) for key in ("cells", *CHANNEL_GROUPS)])
        extra = (
            f"direction row {float(direct['direction_row']['mean']):+.3g}, b_state "
            f"{float(direct['b_state']['mean']):+.3g}, total {float(direct['total']['mean']):+.3g}"
        )
        facing = f", agent heading {d['agent_direction']}" if "agent_direction" in d else ""
        figs = [
            gridmap(
                panels,
                ["all channels", "object channels", "colour channels", "state channels"],
                title=f"Direct path: each cell of the view to {d['direction']} at {where}{facing} ({extra})",
                colorbar_title="contribution",
                image=image,
                cols=4,
                panel_px=260,
                hover_extra=spread if n > 1 else None,
            )
        ]
        heads = d["heads"]
        h_panels = np.asarray(heads["mean"], dtype=float)
        n_heads = len({lab.split("H")[1] for lab in heads["labels"]})
        j = int(d["source"])
        src = "every state token of the window" if j == 0 else f"state token S{j}"
        source_image = view_image(d["source_view"]) if "source_view" in d else None
        figs.append(
            gridmap(
                h_panels,
                heads["labels"],
                title=f"Through each head's OV: each cell of the observations of {src} to {d['direction']} ({where})",
                colorbar_title="contribution",
                image=source_image,
                cols=n_heads,
                panel_px=200,
                hover_extra=np.asarray(heads["std"], dtype=float) if n > 1 else None,
            )
        )
        bs = d["by_source"]
        real = np.asarray(bs["real"], dtype=bool)
        figs.append(
            heatmap(
                np.asarray(bs["mean"], dtype=float)[:, real],
                x_labels=[lab for lab, r in zip(bs["labels"], real) if r],
                y_labels=heads["labels"],
                title=f"State embeddings' contribution to {d['direction']} through each head, by source state ({where})",
                x_title="source state token",
                y_title="head",
                colorbar_title="contribution",
                diverging=True,
                hover_extra=np.asarray(bs["std"], dtype=float)[:, real],
                hover_extra_name="std",
                height=min(900, 160 + 22 * len(heads["labels"])),
            )
        )
        return figs
