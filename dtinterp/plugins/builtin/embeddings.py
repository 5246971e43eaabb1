"""Embedding geometry: cosine similarities (clustergram), PCA (scatter, scree, top rows) and state gridmaps.

The rows are the model's input vocabulary (:mod:`dtinterp.interp.embedding_geometry`): the state features
(one learned row per (x, y, object|colour|state value) of the view), the agent directions, the actions,
the RTG embedding at returns from -1 to 1 and the time embedding over the training episodes' clock (or all
of those but the state features together, ``kind = inputs``). The time embedding is also the model's
positional embedding (it is added to every token of a timestep).

- **Cosine similarity** of the rows, clustered (average linkage on ``1 - cos``). Constant and zero rows
  (features that never change, erased by LayerNorm's centring) are dropped; of the state features only
  the ``max_rows`` with the largest norms are drawn (features the model never sees keep their small
  initial norm under weight decay).
- **PCA** of the rows (SVD of the centred rows): 2-D or 3-D scatter, scree, and the rows with the
  largest coordinates on the first components.
- **Gridmap**: a direction's dot product with every state feature, one panel per object, colour and state
  value over the agent's 7x7 view. The direction is a principal component of these rows (``pc1``, ...)
  or any direction the other analyses take (an action's centred unembedding, ``a-b``, ``saved:NAME``).

**Invariants** (tested): PCA with all components reconstructs the embedding matrix; the cosine matrix
is symmetric with a unit diagonal.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import torch

from dtinterp.interp.embedding_geometry import (
    CHANNEL_VALUES,
    EmbeddingRows,
    constant_rows,
    cosine_similarity,
    embedding_rows,
    pca,
    state_gridmap,
)
from dtinterp.interp.embeddings import cluster_tree
from dtinterp.plugins.api import Analysis, AnalysisContext, AnalysisResult, Param, ParameterError
from dtinterp.plugins.builtin._common import trained_time_range
from dtinterp.plugins.directions_param import parse_direction, static_vector
from envs.encoding import CHANNEL_NAMES, N_COLORS, N_OBJECTS

KINDS = ("state", "direction", "action", "rtg", "time", "inputs")
_PC = re.compile(r"pc([1-9][0-9]*)")


def _feature_group(label: str) -> str:
    """``key@(4,2)`` -> ``object``; the group of a state-feature row's channel."""
    value = label.split("@")[0]
    i = CHANNEL_VALUES.index(value)
    return "object" if i < N_OBJECTS else "colour" if i < N_OBJECTS + N_COLORS else "state"


def _clustergram_rows(rows: EmbeddingRows, live: torch.Tensor, max_rows: int) -> torch.Tensor:
    """At most ``max_rows`` of the non-constant rows, in order: of the state features those with the
    largest norms (features never seen keep their small initial norm); of the others the timesteps evenly
    thinned and every other row kept (or, if those alone are too many, everything evenly thinned)."""
    idx = torch.nonzero(live).flatten()
    if len(idx) <= max_rows:
        return idx
    if rows.kinds[0] == "state":
        return idx[torch.argsort(rows.vectors[idx].norm(dim=-1), descending=True)[:max_rows]].sort().values
    time = torch.tensor([rows.kinds[i] == "time" for i in idx.tolist()])
    other, steps = idx[~time], idx[time]
    if len(other) + 2 > max_rows:  # too many rows of the other kinds too: thin everything
        other, steps = idx[:0], idx
    room = max_rows - len(other)
    steps = steps[torch.unique(torch.linspace(0, len(steps) - 1, room).round().long())]
    return torch.cat([other, steps]).sort().values


class Embeddings(Analysis):
    id = "embeddings"
    title = "Embedding geometry"
    category = "static"
    description = (
        "How the model's input vocabulary is laid out: cosine similarities of the state-feature, "
        "direction, action, RTG and time embeddings (clustered), their principal components, and any "
        "direction's dot product with every state feature drawn over the agent's view."
    )
    parameters = (
        Param(
            "kind",
            "choice",
            "state",
            "Embedding rows (inputs: RTG, action, direction and time).",
            choices=KINDS,
        ),
        Param(
            "max_rows",
            "int",
            48,
            "Rows in the clustergram: of the state features those with the largest norms, timesteps evenly "
            "thinned (constant rows are always dropped).",
            min=2,
            max=400,
        ),
        Param("dims", "choice", 2, "Dimensions of the PCA scatter.", choices=(2, 3)),
        Param(
            "direction",
            "str",
            "pc1",
            "Gridmap direction: pcN (a principal component of these rows), an action's logit (its centred "
            "unembedding, e.g. forward), a logit difference (e.g. forward-left), or saved:NAME.",
        ),
    )

    @torch.no_grad()
    def compute(self, ctx: AnalysisContext, params: dict[str, Any]) -> AnalysisResult:
        model = ctx.model
        kind = params["kind"]
        T, why = trained_time_range(ctx)
        rtg_returns = torch.linspace(-1.0, 1.0, 21)
        grid = model.cfg.state_encoder == "grid"
        if kind == "state" and not grid:
            raise ParameterError(
                f"plugin {self.id!r} parameter 'kind': the model has no per-feature state embedding "
                f"(state_encoder={model.cfg.state_encoder!r})"
            )

        def rows_of(k: str) -> EmbeddingRows:
            if k == "rtg":
                r = embedding_rows(model, "rtg", rtg_values=rtg_returns / ctx.rtg_scale)
                r.labels = [f"R={round(float(v), 6) + 0.0:g}" for v in rtg_returns]
                return r
            return embedding_rows(model, k, max_t=T)

        parts = ["rtg", "action", "direction", "time"] if kind == "inputs" else [kind]
        rows = EmbeddingRows.cat([rows_of(k) for k in parts])
        groups = [_feature_group(lab) for lab in rows.labels] if kind == "state" else list(rows.kinds)
        live = ~constant_rows(rows.vectors)
        idx = _clustergram_rows(rows, live, params["max_rows"])
        if len(idx) < 2:
            raise ParameterError(
                f"plugin {self.id!r} parameter 'kind': fewer than 2 non-constant {kind} rows"
            )
        subset = EmbeddingRows(rows.vectors[idx], [rows.labels[i] for i in idx], [rows.kinds[i] for i in idx])
        cos = cosine_similarity(subset, drop_constant=False)
        tree = cluster_tree(cos.cosine.double().numpy())
        p = pca(rows, keep=live)
        kept = torch.nonzero(p.kept).flatten().tolist()
        coords = p.coords[:, :3].numpy()
        recon = float((p.reconstruct() - rows.vectors[p.kept]).abs().max())
        n_top = min(20, len(kept))
        score = np.abs(coords[:, : min(3, coords.shape[1])]).max(1)
        top = np.sort(np.argsort(-score, kind="stable")[:n_top])
        data: dict[str, Any] = {
            "kind": kind,
            "time_range": f"timesteps 0..{T - 1} ({why})",
            "n_rows": len(rows),
            "n_constant": int((~live).sum()),
            "cosine": {
                "labels": subset.labels,
                "matrix": cos.cosine.numpy(),
                "order": tree["order"],
                "icoord": tree["icoord"],
                "dcoord": tree["dcoord"],
            },
            "pca": {
                "labels": p.labels,
                "groups": [groups[i] for i in kept],
                "coords": coords,
                "ratios": p.explained_variance_ratio.numpy(),
                "top_rows": [p.labels[i] for i in top],
                "top_coords": coords[top],
                "reconstruction_error": recon,
            },
        }
        if grid:
            vector, label = self._direction(ctx, params, p)
            gm = state_gridmap(model, vector)
            data["gridmap"] = {
                "direction": label,
                "values": gm.values.numpy(),  # [20, W, H]
                "channels": list(CHANNEL_NAMES),
                "direction_rows": dict(zip(gm.direction_names, gm.direction_values.tolist())),
                "b_state": float(gm.bias),
            }
        ratio = data["pca"]["ratios"]
        summary = (
            f"{len(rows)} {kind} embedding rows ({data['n_constant']} constant, dropped)"
            + (f", {data['time_range']}" if "time" in parts else "")
            + f"; the clustergram shows {len(idx)}. PC1 explains {float(ratio[0]):.1%} of the variance, the first "
            f"three {float(np.sum(ratio[:3])):.1%}."
        )
        if grid:
            g = data["gridmap"]["values"]
            c, x, y = np.unravel_index(int(np.abs(g).argmax()), g.shape)
            summary += (
                f" Along {data['gridmap']['direction']} the strongest state feature is {CHANNEL_NAMES[c]} at "
                f"({x}, {y}) ({float(g[c, x, y]):+.3g})."
            )
        return AnalysisResult(self.id, params, data, summary)

    def _direction(self, ctx: AnalysisContext, params: dict[str, Any], p: Any) -> tuple[torch.Tensor, str]:
        text = str(params["direction"]).strip()
        m = _PC.fullmatch(text)
        if m:
            i = int(m.group(1)) - 1
            if i >= p.components.shape[0]:
                raise ParameterError(
                    f"plugin {self.id!r} parameter 'direction': {text} but there are "
                    f"{p.components.shape[0]} components"
                )
            return p.components[i], f"PC{i + 1} of the {params['kind']} embeddings"
        parsed = parse_direction(text, ctx.action_names, self.id, model=ctx.model)
        return static_vector(ctx.model, parsed, self.id), parsed.label

    def figures(self, result: AnalysisResult) -> list[Any]:
        from dtinterp.viz import clustergram, heatmap
        from dtinterp.viz.gridmap import gridmap
        from dtinterp.viz.scatter import pca_scatter, scree

        d = result.data
        kind = d["kind"]
        c = d["cosine"]
        figs = [
            clustergram(
                np.asarray(c["matrix"], dtype=float),
                c["labels"],
                c["order"],
                c["icoord"],
                c["dcoord"],
                title=f"Cosine similarity of {kind} embeddings (clustered; {len(c['labels'])} of {d['n_rows']} rows)",
                axis_title=f"{kind} embedding row",
                colorbar_title="cosine",
            )
        ]
        p = d["pca"]
        coords = np.asarray(p["coords"], dtype=float)
        figs.append(
            pca_scatter(
                coords,
                p["labels"],
                p["groups"],
                ratios=np.asarray(p["ratios"], dtype=float),
                title=f"PCA of the {kind} embeddings ({len(p['labels'])} rows)",
                dims=int(result.params.get("dims", 2)),
                text=len(p["labels"]) <= 40,
            )
        )
        figs.append(
            scree(np.asarray(p["ratios"], dtype=float), title=f"Variance explained by each PC ({kind})")
        )
        top = np.asarray(p["top_coords"], dtype=float)
        figs.append(
            heatmap(
                top,
                x_labels=[f"PC{i + 1}" for i in range(top.shape[1])],
                y_labels=p["top_rows"],
                title=f"The {kind} rows with the largest coordinates on the first components",
                x_title="principal component",
                y_title=f"{kind} embedding row",
                colorbar_title="coordinate",
                diverging=True,
                height=min(900, 160 + 22 * len(p["top_rows"])),
            )
        )
        if "gridmap" in d:
            g = d["gridmap"]
            rows = ", ".join(f"{k} {v:+.2g}" for k, v in g["direction_rows"].items())
            figs.append(
                gridmap(
                    np.asarray(g["values"], dtype=float),
                    g["channels"],
                    title=f"{g['direction']} · every state feature over the agent's view (agent at the bottom "
                    f"centre, facing up; direction rows {rows}; b_state {g['b_state']:+.2g})",
                    colorbar_title="dot product",
                )
            )
        return figs
