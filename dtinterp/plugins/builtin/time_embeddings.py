"""Time-embedding geometry: how the learned timestep vectors relate to each other, to the RTG and action
embeddings, and to the action unembedding (does the model read the episode clock, and what for?)."""

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
from envs.encoding import ACTION_NAMES


def default_max_t(ctx: AnalysisContext) -> int:
    """The env's step limit from the checkpoint meta, else the model's time-embedding size."""
    spec = ctx.checkpoint.env_spec
    return int(spec.max_steps) if spec is not None and spec.max_steps else ctx.model.cfg.max_timestep


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
            "Study timesteps 0..max_t-1 (0: the env's max steps, else the model's max_timestep; "
            "capped at max_timestep).",
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
        with torch.no_grad():
            E = time_embeddings(model, params["max_t"] or default_max_t(ctx))  # [T, d]
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
                "projections": unembed_projections(model, E).cpu().numpy(),  # [T, A]
            }
        data["order"] = cluster_order(cos) if params["order"] == "clustered" else np.arange(E.shape[0])
        off = cos[~np.eye(len(cos), dtype=bool)]
        adjacent = np.diag(cos, 1)
        summary = (
            f"{E.shape[0]} time embeddings: mean off-diagonal cosine {off.mean():.3f}"
            if off.size
            else "1 time embedding"
        )
        if adjacent.size:
            summary += f", mean cosine of consecutive timesteps {adjacent.mean():.3f}"
        strongest = np.abs(data["projections"]).max(0)
        summary += f"; largest |projection| on W_U: {data['action_names'][int(strongest.argmax())]}"
        summary += f" ({strongest.max():.3f})."
        return AnalysisResult(self.id, params, data, summary)

    def figures(self, result: AnalysisResult) -> list[Any]:
        from dtinterp.viz import heatmap, line_plot

        d = result.data
        order = np.asarray(d["order"], dtype=int)
        t = np.asarray(d["timesteps"], dtype=int)
        clustered = result.params.get("order") == "clustered"
        axis = "timestep (clustered order)" if clustered else "timestep"
        figs = []
        for key, name in (("cosine", "Cosine similarity"), ("dot", "Dot product")):
            m = np.asarray(d[key], dtype=float)[np.ix_(order, order)]
            figs.append(
                heatmap(
                    m,
                    x_labels=t[order],
                    y_labels=t[order],
                    title=f"{name} of time embeddings",
                    x_title=axis,
                    y_title=axis,
                    colorbar_title=name.lower(),
                    diverging=True,
                    zmax=1.0 if key == "cosine" else None,
                )
            )
        figs.append(
            heatmap(
                np.asarray(d["input_cosine"], dtype=float),
                x_labels=t,
                y_labels=d["input_labels"],
                title="Cosine similarity of RTG and action embeddings with time embeddings",
                x_title="timestep",
                y_title="embedding",
                colorbar_title="cosine",
                diverging=True,
                zmax=1.0,
            )
        )
        proj = np.asarray(d["projections"], dtype=float)
        figs.append(
            line_plot(
                t,
                {name: proj[:, a] for a, name in enumerate(d["action_names"])},
                title="Time embeddings projected on the action unembedding (E_t · W_U[:, a])",
                x_title="timestep",
                y_title="direct logit push",
                zero_line=True,
            )
        )
        return figs
