"""Time-embedding geometry: how the learned timestep vectors relate to each other, to the RTG and action
embeddings, and to the action unembedding (does the model read the episode clock, and what for?).

The default range is the episode clock of the training data (``dataset_lengths`` in the checkpoint
metadata: timesteps ``0 .. max - 1``), else the env's step limit; the summary says which. The projection
on the unembedding uses the centred ``W_U`` (the final LayerNorm centres the residual stream before it
reads it), as the direct logit attribution does.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from dtinterp.interp.embeddings import (
    action_embeddings,
    cluster_order,
    cosine_matrix,
    dot_matrix,
    time_embeddings,
    unembed_projections,
)
from dtinterp.plugins.api import Analysis, AnalysisContext, AnalysisResult, Param
from dtinterp.plugins.builtin._common import trained_time_range
from envs.encoding import ACTION_NAMES


class TimeEmbeddings(Analysis):
    id = "time-embeddings"
    title = "Time-embedding similarities"
    category = "static"
    description = (
        "Cosine and dot-product similarities of the learned time embeddings, of the RTG and action "
        "embeddings against them, and each time embedding's projection onto the action unembedding."
    )
    parameters = (
        Param(
            "max_t",
            "int",
            0,
            "Study timesteps 0..max_t-1 (0: the longest training episode, else the env's step limit; "
            "capped at the model's max_timestep).",
            min=0,
            max=100_000,
        ),
        Param(
            "order",
            "choice",
            "time",
            "Order of the timesteps in the similarity heatmaps: by time, or clustered "
            "(average-linkage hierarchical clustering of the cosine matrix).",
            choices=("time", "clustered"),
        ),
    )

    def compute(self, ctx: AnalysisContext, params: dict[str, Any]) -> AnalysisResult:
        model = ctx.model
        n_actions = model.cfg.n_actions
        default_t, why = trained_time_range(ctx)
        with torch.no_grad():
            E = time_embeddings(model, params["max_t"] or default_t)  # [T, d]
            others = torch.cat([model.W_rtg.detach()[None], action_embeddings(model)])  # [1 + A, d]
            cos = cosine_matrix(E, E).cpu().numpy()
            data: dict[str, Any] = {
                "timesteps": np.arange(E.shape[0]),
                "cosine": cos,
                "dot": dot_matrix(E, E).cpu().numpy(),
                "norm": E.norm(dim=-1).cpu().numpy(),
                "input_labels": ["RTG", *ACTION_NAMES[:n_actions]],
                "input_cosine": cosine_matrix(others, E).cpu().numpy(),  # [1 + A, T]
                "input_dot": dot_matrix(others, E).cpu().numpy(),
                "action_names": list(ACTION_NAMES[:n_actions]),
                "projections": unembed_projections(model, E).cpu().numpy(),  # [T, A], centred W_U
            }
        lengths = ctx.meta.get("dataset_lengths")
        data["episode_lengths"] = dict(lengths) if isinstance(lengths, dict) else {}
        data["order"] = cluster_order(cos) if params["order"] == "clustered" else np.arange(E.shape[0])
        off = cos[~np.eye(len(cos), dtype=bool)]
        adjacent = np.diag(cos, 1)
        source = f"max_t {params['max_t']}" if params["max_t"] else why
        summary = f"Timesteps 0..{E.shape[0] - 1} ({source}). " + (
            f"{E.shape[0]} time embeddings: mean off-diagonal cosine {off.mean():.3f}"
            if off.size
            else "1 time embedding"
        )
        if adjacent.size:
            summary += f", mean cosine of consecutive timesteps {adjacent.mean():.3f}"
        strongest = np.abs(data["projections"]).max(0)
        summary += (
            f"; largest |projection| on the centred W_U: {data['action_names'][int(strongest.argmax())]}"
        )
        summary += f" ({strongest.max():.3f})."
        return AnalysisResult(self.id, params, data, summary)

    def figures(self, result: AnalysisResult) -> list[Any]:
        from dtinterp.viz import heatmap, line_plot
        from dtinterp.viz.style import MAX_HEIGHT, robust_limit

        d = result.data
        order = np.asarray(d["order"], dtype=int)
        t = np.asarray(d["timesteps"], dtype=int)
        clustered = result.params.get("order") == "clustered"
        axis = "timestep (clustered order)" if clustered else "timestep"
        figs = []
        for key, name in (("cosine", "Cosine similarity"), ("dot", "Dot product")):
            m = np.asarray(d[key], dtype=float)[np.ix_(order, order)]
            off = m[~np.eye(len(m), dtype=bool)]  # the diagonal (1 for cosines) would wash the rest out
            figs.append(
                heatmap(
                    m,
                    x_labels=t[order],
                    y_labels=t[order],
                    title=f"{name} of time embeddings (colour limit: 99th percentile off the diagonal)",
                    x_title=axis,
                    y_title=axis,
                    colorbar_title=name.lower(),
                    diverging=True,
                    zmax=robust_limit(off) if off.size else None,
                    categorical=clustered,
                    height=min(MAX_HEIGHT, 700),
                )
            )
        inputs = np.asarray(d["input_cosine"], dtype=float)
        figs.append(
            heatmap(
                inputs,
                x_labels=t,
                y_labels=d["input_labels"],
                title="Cosine similarity of RTG and action embeddings with time embeddings",
                x_title="timestep",
                y_title="embedding",
                colorbar_title="cosine",
                diverging=True,
                zmax=robust_limit(inputs),
                height=max(300, 60 + 28 * len(d["input_labels"])),
            )
        )
        figs[-1].data[0].x = t  # timesteps in order: a numeric axis with evenly spaced ticks
        figs[-1].update_xaxes(type="linear")
        proj = np.asarray(d["projections"], dtype=float)
        lines = line_plot(
            t,
            {name: proj[:, a] for a, name in enumerate(d["action_names"])},
            title="Time embeddings projected on the centred action unembedding (E_t · W_U[:, a])",
            x_title="timestep",
            y_title="direct logit push",
            zero_line=True,
        )
        lengths = d.get("episode_lengths") or {}
        for key, what in (("mean", "mean"), ("p95", "95th percentile")):
            if key in lengths and float(lengths[key]) < len(t):
                lines.add_vline(
                    x=float(lengths[key]),
                    line={"color": "grey", "width": 1, "dash": "dash"},
                    annotation_text=f"{what} training episode",
                    annotation_font_size=10,
                )
        figs.append(lines)
        return figs
