"""Saved directions: the library of named residual-stream directions, as the model reads them.

Lists the saved-direction library (:class:`dtinterp.interp.directions.DirectionLibrary`, default directory
``$DTINTERP_DIRECTIONS_DIR`` or ``~/.local/share/dtinterp/directions``) and shows every direction that
fits the model beside the model's own action readouts (each action's centred unembedding): their cosine
similarities, each one's direct push on every action logit if added to the final residual stream, and one
direction's dot product with every state feature over the agent's view.

This analysis only reads the library; ``dtinterp directions save|delete|export`` changes it (an analysis
run must not change what the next run sees). Every analysis that explains a direction takes a saved one
as ``direction = saved:NAME``.

**Invariant** (tested): a direction saved and loaded back is bit-identical, and its push on the action
logits is its product with the centred unembedding.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from dtinterp.interp.attribution import centred_unembed
from dtinterp.interp.directions import DirectionLibrary, DirectionsError
from dtinterp.interp.embedding_geometry import state_gridmap
from dtinterp.interp.embeddings import cosine_matrix
from dtinterp.plugins.api import Analysis, AnalysisContext, AnalysisResult, Param, ParameterError
from envs.encoding import CHANNEL_NAMES


class SavedDirections(Analysis):
    id = "saved-directions"
    title = "Saved directions"
    category = "static"
    description = (
        "The saved-direction library as this model reads it: every saved direction that fits the model "
        "beside each action's readout, their cosine similarities, their direct push on each action logit, "
        "and one direction's dot product with every state feature. Save, delete and export with "
        "`dtinterp directions`."
    )
    parameters = (
        Param(
            "name",
            "str",
            "",
            "Direction drawn as a gridmap: a saved name, or an action's readout (empty: the first saved "
            "direction, else the first action).",
        ),
    )

    @torch.no_grad()
    def compute(self, ctx: AnalysisContext, params: dict[str, Any]) -> AnalysisResult:
        model = ctx.model
        lib = DirectionLibrary()
        try:
            saved = lib.list()
        except DirectionsError as exc:
            raise ParameterError(f"plugin {self.id!r}: {exc}") from None
        d_model = model.cfg.d_model
        fits = [s for s in saved if s.d_model == d_model]
        W = centred_unembed(model).detach()  # [d, A]
        names = [f"readout:{a}" for a in ctx.action_names] + [s.name for s in fits]
        vectors = torch.cat([W.T, torch.stack([s.vector for s in fits]).to(W)]) if fits else W.T.clone()
        chosen = params["name"].strip() or (fits[0].name if fits else names[0])
        if chosen in ctx.action_names:
            chosen = f"readout:{chosen}"
        if chosen not in names:
            other = [s.name for s in saved if s.d_model != d_model]
            why = " (saved for another d_model)" if chosen in other else ""
            raise ParameterError(
                f"plugin {self.id!r} parameter 'name': no direction {chosen!r}{why}; "
                f"available: {', '.join(names)}"
            )
        data: dict[str, Any] = {
            "library": str(lib.path),
            "saved": [
                {
                    "name": s.name,
                    "kind": s.kind,
                    "model": s.model,
                    "d_model": s.d_model,
                    "description": s.description,
                    "created": s.created,
                    "norm": float(s.vector.norm()),
                    "fits": s.d_model == d_model,
                }
                for s in saved
            ],
            "names": names,
            "norms": vectors.norm(dim=-1).numpy(),
            "cosine": cosine_matrix(vectors, vectors).numpy(),
            "push": (vectors @ W).numpy(),  # [n, A]: direct push on each logit (before the final LN's scale)
            "actions": list(ctx.action_names),
            "chosen": chosen,
        }
        if model.cfg.state_encoder == "grid":
            gm = state_gridmap(model, vectors[names.index(chosen)])
            data["gridmap"] = {
                "values": gm.values.numpy(),
                "channels": list(CHANNEL_NAMES),
                "direction_rows": dict(zip(gm.direction_names, gm.direction_values.tolist())),
                "b_state": float(gm.bias),
            }
        if saved:
            listing = "; ".join(f"{s.name} ({s.kind}, d_model {s.d_model})" for s in saved)
            summary = f"{len(saved)} saved direction(s) in {lib.path}: {listing}. {len(fits)} fit this model."
        else:
            summary = (
                f"No saved directions in {lib.path}: shown are this model's action readouts. Save one with "
                "`dtinterp directions save MODEL NAME --unembed forward-left` (or --embedding, --pca, --neuron, "
                "--mean-diff)."
            )
        return AnalysisResult(self.id, params, data, summary)

    def figures(self, result: AnalysisResult) -> list[Any]:
        from dtinterp.viz import heatmap
        from dtinterp.viz.gridmap import gridmap
        from dtinterp.viz.style import MAX_HEIGHT, robust_limit

        d = result.data
        names = d["names"]
        height = min(MAX_HEIGHT, 200 + 26 * len(names))
        push = np.asarray(d["push"], dtype=float)
        figs = [
            heatmap(
                np.asarray(d["cosine"], dtype=float),
                x_labels=names,
                y_labels=names,
                title="Cosine similarity of the saved directions and the action readouts (centred W_U columns)",
                x_title="direction",
                y_title="direction",
                colorbar_title="cosine",
                diverging=True,
                zmax=1.0,
                height=height,
            ),
            heatmap(
                push,
                x_labels=d["actions"],
                y_labels=names,
                title="Direct push of each direction on each action logit (v · centred W_U)",
                x_title="action logit",
                y_title="direction",
                colorbar_title="logit push",
                diverging=True,
                zmax=robust_limit(push),
                hover_extra=np.repeat(np.asarray(d["norms"], dtype=float)[:, None], push.shape[1], 1),
                hover_extra_name="‖v‖",
                height=height,
            ),
        ]
        if "gridmap" in d:
            g = d["gridmap"]
            rows = ", ".join(f"{k} {v:+.2g}" for k, v in g["direction_rows"].items())
            figs.append(
                gridmap(
                    np.asarray(g["values"], dtype=float),
                    g["channels"],
                    title=f"{d['chosen']} · every state feature over the agent's view (direction rows {rows}; "
                    f"b_state {g['b_state']:+.2g})",
                )
            )
        return figs
