"""OV and QK circuits of every head: full circuits in the model's vocabulary, and their SVDs.

Weights only (:mod:`dtinterp.interp.circuits`, Elhage et al. 2021). With ``circuit = OV``:

- how much of each head's OV matrix ``W_V W_O`` (ln1's weight and centring folded in) its top singular
  values hold (a head that moves one thing has one large singular value);
- the *full* OV circuit of every head from each input kind to the action logits
  (``fold(E) W_V W_O W_U``, centred ``W_U``), as its RMS per head and kind, and for the chosen head in full:
  over the state features as a gridmap toward one action (or difference, or saved direction), or as a
  table ``rows x actions`` for the other kinds;
- the chosen head's top singular directions: what it reads (left vectors) as state-feature gridmaps and
  what it writes (right vectors) as pushes on each action.

With ``circuit = QK``: the share per singular value, the chosen head's pre-softmax scores between a query
kind and a key kind (state features limited to the ``max_rows`` rows with the largest norms), and its
top singular directions on the query and the key side as gridmaps.

**Invariants** (tested): ``U S V^T`` reconstructs the head's matrix; the singular values equal
TransformerLens' ``FactoredMatrix``'s; the OV matrix applied to the first token's normalised residual
stream (which attends only to itself) gives the head's output there.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from dtinterp.interp.attribution import centred_unembed
from dtinterp.interp.circuits import fold_ln, head_svd, ov_circuit, qk_circuit
from dtinterp.interp.embedding_geometry import EmbeddingRows, constant_rows, embedding_rows
from dtinterp.plugins.api import Analysis, AnalysisContext, AnalysisResult, Param, ParameterError
from dtinterp.plugins.builtin._common import check_head, check_layer, trained_time_range
from dtinterp.plugins.directions_param import parse_direction, static_vector
from envs.encoding import CHANNEL_NAMES

ROW_KINDS = ("state", "direction", "action", "rtg", "time")
STRONGEST = "strongest"


class OVQKCircuits(Analysis):
    id = "ov-qk-circuits"
    title = "OV and QK circuits"
    category = "static"
    description = (
        "What each head moves (OV: from each input kind to the action logits) and where it looks (QK: "
        "attention scores between token kinds), with each head's SVD and its top singular directions "
        "mapped back to state-feature gridmaps and actions."
    )
    parameters = (
        Param(
            "circuit",
            "choice",
            "OV",
            "OV (what a head writes) or QK (where it attends).",
            choices=("OV", "QK"),
        ),
        Param(
            "layer",
            "int",
            -1,
            "Layer of the head shown in full (-1: the head with the largest singular value).",
            min=-1,
        ),
        Param(
            "head", "int", -1, "Head shown in full (-1: with layer -1, the largest singular value).", min=-1
        ),
        Param("source", "choice", "state", "OV: the input kind read; QK: the key kind.", choices=ROW_KINDS),
        Param("query", "choice", "state", "QK: the query kind.", choices=ROW_KINDS),
        Param(
            "direction",
            "str",
            STRONGEST,
            "OV state gridmap: the action whose logit the head pushes (strongest: the one it pushes most), a "
            "difference (forward-left) or saved:NAME.",
        ),
        Param("k", "int", 1, "Top singular directions drawn.", min=1, max=8),
        Param(
            "max_rows",
            "int",
            40,
            "QK: rows drawn per side (state features: the largest norms; others: evenly spaced).",
            min=2,
            max=400,
        ),
    )

    @torch.no_grad()
    def compute(self, ctx: AnalysisContext, params: dict[str, Any]) -> AnalysisResult:
        model, cfg = ctx.model, ctx.model.cfg
        circuit = params["circuit"]
        grid = cfg.state_encoder == "grid"
        for name in ("source", "query"):
            if params[name] == "state" and not grid:
                raise ParameterError(
                    f"plugin {self.id!r} parameter {name!r}: the model has no per-feature state embedding"
                )
        svd = head_svd(model, circuit, k=params["k"])
        S = svd.S  # [L, H, r]
        layer, head = params["layer"], params["head"]
        if (layer < 0) != (head < 0):
            raise ParameterError(f"plugin {self.id!r}: give both layer and head, or neither")
        if layer < 0:
            layer, head = divmod(int(S[..., 0].argmax()), cfg.n_heads)
        check_layer(ctx, layer, self.id)
        check_head(ctx, head, self.id)
        label = f"L{layer}H{head}"
        T, _ = trained_time_range(ctx)
        k = min(params["k"], S.shape[-1])
        data: dict[str, Any] = {
            "circuit": circuit,
            "head": label,
            "head_index": [layer, head],
            "heads": svd.heads,
            "S": S.numpy(),
            "explained": svd.explained.numpy(),
            "U": svd.U[layer, head].numpy(),  # [d, r]: with S and V the head's whole matrix
            "V": svd.V[layer, head].numpy(),
            "actions": list(svd.actions),
            "channels": list(CHANNEL_NAMES),
        }
        if grid:
            data["left_gridmaps"] = svd.left_gridmap.values[layer, head, :k].numpy()  # [k, 20, W, H]
            if svd.right_gridmap is not None:
                data["right_gridmaps"] = svd.right_gridmap.values[layer, head, :k].numpy()
        if svd.right_actions is not None:
            data["right_actions"] = svd.right_actions[layer, head, :k].numpy()  # [k, A]

        def rows_of(kind: str) -> EmbeddingRows:
            if kind == "rtg":
                returns = torch.linspace(-1.0, 1.0, 11)
                r = embedding_rows(model, "rtg", rtg_values=returns / ctx.rtg_scale)
                r.labels = [f"R={round(float(v), 6) + 0.0:g}" for v in returns]
                return r
            return embedding_rows(model, kind, max_t=T)

        if circuit == "OV":
            kinds = [kd for kd in ROW_KINDS if kd != "state" or grid]
            strength = []
            for kd in kinds:
                ov = ov_circuit(model, rows_of(kd))
                strength.append(ov.values.pow(2).mean((-2, -1)).sqrt())  # [L, H]
                if kd == params["source"]:
                    chosen = ov
            data["strength"] = {"kinds": kinds, "rms": torch.stack(strength, -1).numpy()}  # [L, H, kinds]
            values = chosen.values[layer, head]  # [n, A]
            data["value_bias"] = chosen.value_bias[layer, head].numpy()
            if params["source"] == "state":
                vector, what = self._ov_direction(ctx, params, values, layer, head)
                x = fold_ln(model, embedding_rows(model, "state").vectors, layer)  # [n, d]
                through = x @ model.W_V[layer, head].detach() @ model.W_O[layer, head].detach() @ vector
                W, H = cfg.obs_shape
                data["ov_gridmap"] = {
                    "direction": what,
                    "values": through.reshape(W, H, -1).permute(2, 0, 1).numpy(),  # [20, W, H]
                }
            else:
                data["ov_table"] = {"rows": chosen.rows, "values": values.numpy()}
        else:
            q_rows, k_rows = (
                self._limit(rows_of(params[n]), params["max_rows"]) for n in ("query", "source")
            )
            qk = qk_circuit(model, q_rows, k_rows)
            data["qk_table"] = {
                "query_rows": qk.query_rows,
                "key_rows": qk.key_rows,
                "scores": qk.scores[layer, head].numpy(),
                "key_bias": qk.key_bias[layer, head].numpy(),
            }
        expl = data["explained"][layer, head]
        summary = (
            f"{circuit} circuits of {len(svd.heads)} heads; {label} (largest top singular value"
            + ("" if params["layer"] < 0 else " of the chosen head")
            + f": {float(S[layer, head, 0]):.3g}) puts {float(expl[0]):.0%} of its squared norm in its first "
            f"singular direction and {float(expl[:3].sum()):.0%} in the first three."
        )
        if "right_actions" in data:
            ra = data["right_actions"][0]
            summary += (
                f" Its top written direction pushes {svd.actions[int(np.argmax(ra))]} most ({ra.max():+.3g})."
            )
        if "ov_gridmap" in data:
            g = data["ov_gridmap"]["values"]
            c, x, y = np.unravel_index(int(np.abs(g).argmax()), g.shape)
            summary += (
                f" Through its OV, the state feature {CHANNEL_NAMES[c]} at ({x}, {y}) pushes "
                f"{data['ov_gridmap']['direction']} most ({float(g[c, x, y]):+.3g})."
            )
        return AnalysisResult(self.id, params, data, summary)

    def _ov_direction(
        self, ctx: AnalysisContext, params: dict[str, Any], values: torch.Tensor, layer: int, head: int
    ) -> tuple[torch.Tensor, str]:
        text = str(params["direction"]).strip()
        if text == STRONGEST:
            a = int(values.pow(2).mean(0).argmax())
            return centred_unembed(ctx.model).detach()[:, a], ctx.action_names[a]
        parsed = parse_direction(text, ctx.action_names, self.id, model=ctx.model)
        return static_vector(ctx.model, parsed, self.id), parsed.label

    @staticmethod
    def _limit(rows: EmbeddingRows, max_rows: int) -> EmbeddingRows:
        """At most ``max_rows`` rows, in their original order: of the state features the non-constant ones
        with the largest norms (unseen features keep small norms), of the others an even thinning."""
        if rows.kinds and rows.kinds[0] == "state":
            idx = torch.nonzero(~constant_rows(rows.vectors)).flatten()
            if len(idx) > max_rows:
                idx = (
                    idx[torch.argsort(rows.vectors[idx].norm(dim=-1), descending=True)[:max_rows]]
                    .sort()
                    .values
                )
        else:
            idx = torch.arange(len(rows))
            if len(idx) > max_rows:
                idx = torch.unique(torch.linspace(0, len(rows) - 1, max_rows).round().long())
        return EmbeddingRows(rows.vectors[idx], [rows.labels[i] for i in idx], [rows.kinds[i] for i in idx])

    def figures(self, result: AnalysisResult) -> list[Any]:
        from dtinterp.viz import heatmap
        from dtinterp.viz.gridmap import gridmap
        from dtinterp.viz.style import MAX_HEIGHT, robust_limit

        d = result.data
        circuit, label, heads = d["circuit"], d["head"], d["heads"]
        expl = np.asarray(d["explained"], dtype=float)
        L, H, r = expl.shape
        shown = min(r, 8)
        figs = [
            heatmap(
                expl.reshape(L * H, r)[:, :shown],
                x_labels=[f"σ{i + 1}" for i in range(shown)],
                y_labels=heads,
                title=f"{circuit}: share of each head's squared norm per singular value (first {shown})",
                x_title="singular value",
                y_title="head",
                colorbar_title="share",
                zmax=1.0,
                height=min(MAX_HEIGHT, 160 + 22 * L * H),
            )
        ]
        figs[0].data[0].zmin = 0.0
        channels = d["channels"]
        if circuit == "OV":
            st = d["strength"]
            figs.append(
                heatmap(
                    np.asarray(st["rms"], dtype=float).reshape(L * H, -1),
                    x_labels=st["kinds"],
                    y_labels=heads,
                    title="Full OV circuit strength: RMS push on the action logits per head and input kind",
                    x_title="input kind read",
                    y_title="head",
                    colorbar_title="RMS logit push",
                    height=min(MAX_HEIGHT, 160 + 22 * L * H),
                )
            )
            if "ov_gridmap" in d:
                g = d["ov_gridmap"]
                figs.append(
                    gridmap(
                        np.asarray(g["values"], dtype=float),
                        channels,
                        title=f"{label}'s full OV circuit: each state feature's push on {g['direction']} if the head "
                        "attended only to it (agent at the bottom centre)",
                        colorbar_title="logit push",
                    )
                )
            else:
                t = d["ov_table"]
                v = np.asarray(t["values"], dtype=float)
                figs.append(
                    heatmap(
                        v,
                        x_labels=d["actions"],
                        y_labels=t["rows"],
                        title=f"{label}'s full OV circuit from {result.params['source']} embeddings to the action logits",
                        x_title="action logit",
                        y_title=f"{result.params['source']} embedding",
                        colorbar_title="logit push",
                        diverging=True,
                        zmax=robust_limit(v),
                        height=min(MAX_HEIGHT, 160 + 20 * len(t["rows"])),
                    )
                )
            if "right_actions" in d:
                ra = np.asarray(d["right_actions"], dtype=float)
                top_s = np.asarray(d["S"], dtype=float)[tuple(d["head_index"])]
                figs.append(
                    heatmap(
                        ra,
                        x_labels=d["actions"],
                        y_labels=[f"σ{i + 1} = {float(s):.3g}" for i, s in enumerate(top_s[: len(ra)])],
                        title=f"{label}: what each top singular direction writes, as a push on each action logit",
                        x_title="action logit",
                        y_title="singular direction written",
                        colorbar_title="logit push",
                        diverging=True,
                        height=max(260, 140 + 40 * len(ra)),
                    )
                )
        else:
            t = d["qk_table"]
            sc = np.asarray(t["scores"], dtype=float)
            figs.append(
                heatmap(
                    sc,
                    x_labels=t["key_rows"],
                    y_labels=t["query_rows"],
                    title=f"{label}'s QK circuit: attention score from each {result.params['query']} row (query) to "
                    f"each {result.params['source']} row (key), before the softmax",
                    x_title=f"key: {result.params['source']} embedding",
                    y_title=f"query: {result.params['query']} embedding",
                    colorbar_title="score",
                    diverging=True,
                    zmax=robust_limit(sc),
                    height=min(MAX_HEIGHT, 200 + 16 * len(t["query_rows"])),
                )
            )
        sides = [("left_gridmaps", "reads" if circuit == "OV" else "looks for (query side)")]
        if circuit == "QK":
            sides.append(("right_gridmaps", "is found by (key side)"))
        for key, verb in sides:
            for i, g in enumerate(np.asarray(d.get(key, []), dtype=float)):
                figs.append(
                    gridmap(
                        g,
                        channels,
                        title=f"{label}'s singular direction {i + 1}: what it {verb}, as its dot product with every "
                        "state feature",
                        colorbar_title="dot product",
                    )
                )
        return figs
