"""Neuron congruence: how MLP neurons' weights line up with the inputs, the actions and each other.

Weights only (:mod:`dtinterp.interp.congruence`), drawn as sortable strip plots, one point per neuron:

- **output**: ``W_out[n] . W_U_centred[:, a]`` per action: the direct push of a unit of the neuron's
  activation on each action logit (up to the final LayerNorm's scale);
- **input**: ``fold(E) . W_in[:, n]`` per embedding row (state features, directions, actions, RTG values or
  timesteps): how much that row alone drives the neuron's pre-activation (through ``ln2``'s weight and
  centring); of many rows, the ``top_k`` with the most extreme neurons are drawn;
- **MLP to MLP**: for every pair of layers ``l < l'``, each earlier neuron's strongest congruence with a
  neuron of the later layer (``W_out[l] . fold(W_in[l'])``; the hover names both).

``sort`` orders the categories (and chooses the input rows and MLP partners): by the largest ``|value|``,
the largest value, or the lowest. ``normalize`` gives cosine similarities instead of dot products.

**Invariant** (tested): the output congruence is the direct logit attribution of the neuron per unit of
its activation: on any window, the neuron-level DLA equals ``activation x congruence / final-LN scale``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from dtinterp.interp.congruence import (
    SORT_KEYS,
    mlp_to_mlp_congruence,
    neuron_input_congruence,
    neuron_output_congruence,
)
from dtinterp.interp.embedding_geometry import embedding_rows
from dtinterp.plugins.api import Analysis, AnalysisContext, AnalysisResult, Param, ParameterError
from dtinterp.plugins.builtin._common import trained_time_range

ROW_KINDS = ("state", "direction", "action", "rtg", "time")


def _key(values: np.ndarray, by: str, axis: int) -> np.ndarray:
    """The sort key of each slice along ``axis`` (larger first)."""
    return {"abs": np.abs(values).max(axis), "max": values.max(axis), "min": -values.min(axis)}[by]


class Congruence(Analysis):
    id = "congruence"
    title = "Neuron congruence"
    category = "static"
    description = (
        "How MLP neurons' weights line up with the model's vocabulary: output weights vs each action's "
        "unembedding, input weights vs the embeddings, and earlier neurons' outputs vs later neurons' "
        "inputs, as sortable strip plots (one point per neuron)."
    )
    parameters = (
        Param("kind", "choice", "state", "Embedding rows of the input congruence.", choices=ROW_KINDS),
        Param(
            "sort",
            "choice",
            "abs",
            "Order: largest |value|, largest value (max) or lowest (min).",
            choices=SORT_KEYS,
        ),
        Param("top_k", "int", 16, "Input rows drawn (those with the most extreme neurons).", min=1, max=100),
        Param("normalize", "bool", False, "Cosine similarities instead of dot products."),
    )

    @torch.no_grad()
    def compute(self, ctx: AnalysisContext, params: dict[str, Any]) -> AnalysisResult:
        model, cfg = ctx.model, ctx.model.cfg
        if cfg.attn_only:
            raise ParameterError(f"plugin {self.id!r}: the model is attention-only: it has no MLP neurons")
        if params["kind"] == "state" and cfg.state_encoder != "grid":
            raise ParameterError(
                f"plugin {self.id!r} parameter 'kind': the model has no per-feature state embedding"
            )
        by, norm = params["sort"], params["normalize"]
        L, m = cfg.n_layers, cfg.d_mlp
        T, _ = trained_time_range(ctx)
        if params["kind"] == "rtg":
            returns = torch.linspace(-1.0, 1.0, 11)
            rows = embedding_rows(model, "rtg", rtg_values=returns / ctx.rtg_scale)
            rows.labels = [f"R={round(float(v), 6) + 0.0:g}" for v in returns]
        else:
            rows = embedding_rows(model, params["kind"], max_t=T)

        out = [neuron_output_congruence(model, l, normalize=norm) for l in range(L)]
        out_values = torch.cat([c.values for c in out]).numpy()  # [L*m, A]
        actions = out[0].cols
        inp = [neuron_input_congruence(model, l, rows, normalize=norm) for l in range(L)]
        in_values = torch.cat([c.values for c in inp], 1).numpy()  # [n_rows, L*m]
        top_rows = np.argsort(-_key(in_values, by, 1), kind="stable")[: params["top_k"]]
        data: dict[str, Any] = {
            "neurons": [lab for c in out for lab in c.rows],
            "layers": [l for l in range(L) for _ in range(m)],
            "output": {
                "actions": actions,
                "values": out_values,
                "order": [actions[i] for i in np.argsort(-_key(out_values, by, 0), kind="stable")],
            },
            "input": {
                "kind": params["kind"],
                "rows": [rows.labels[i] for i in top_rows],
                "values": in_values[top_rows],
            },
            "mlp": [],
        }
        for src in range(L - 1):
            for dst in range(src + 1, L):
                v = mlp_to_mlp_congruence(model, src, dst, normalize=norm)
                vals = v.values.numpy()  # [m, m]
                partner = np.argmax({"abs": np.abs(vals), "max": vals, "min": -vals}[by], axis=1)
                data["mlp"].append(
                    {
                        "pair": f"L{src}→L{dst}",
                        "sources": v.rows,
                        "partners": [v.cols[j] for j in partner],
                        "values": vals[np.arange(m), partner],
                    }
                )
        what = "cosine" if norm else "dot product"
        flat = out_values.ravel()
        i = int(np.argmax(np.abs(flat)))
        n, a = divmod(i, len(actions))
        r = int(top_rows[0])
        j = int(np.argmax(np.abs(in_values[r])))
        summary = (
            f"Congruence ({what}) of {L * m} neurons: the strongest output congruence is "
            f"{data['neurons'][n]} with {actions[a]} ({flat[i]:+.3g}); among {len(rows)} {params['kind']} rows, "
            f"{rows.labels[r]} drives {data['neurons'][j]} most ({in_values[r, j]:+.3g})."
        )
        return AnalysisResult(self.id, params, data, summary)

    def figures(self, result: AnalysisResult) -> list[Any]:
        from dtinterp.viz.strip import labelled_strip

        d = result.data
        what = "cosine" if result.params.get("normalize") else "dot product"
        neurons, layers = d["neurons"], np.asarray(d["layers"])
        n_layers = int(layers.max()) + 1
        o = d["output"]
        ov = np.asarray(o["values"], dtype=float)
        figs = [
            labelled_strip(
                {
                    f"layer {l}": (
                        [a for _ in range((layers == l).sum()) for a in o["actions"]],
                        ov[layers == l].ravel(),
                        [neurons[n] for n in np.flatnonzero(layers == l) for _ in o["actions"]],
                    )
                    for l in range(n_layers)
                },
                order=o["order"],
                title=f"Output congruence: each neuron's W_out · centred W_U[:, action] ({what}; sorted by "
                f"{result.params.get('sort')})",
                x_title="action",
                y_title=f"congruence ({what})",
            )
        ]
        i = d["input"]
        iv = np.asarray(i["values"], dtype=float)  # [rows, L*m]
        figs.append(
            labelled_strip(
                {
                    f"layer {l}": (
                        [r for r in i["rows"] for _ in range((layers == l).sum())],
                        iv[:, layers == l].ravel(),
                        [neurons[n] for _ in i["rows"] for n in np.flatnonzero(layers == l)],
                    )
                    for l in range(n_layers)
                },
                order=i["rows"],
                title=f"Input congruence: each {i['kind']} embedding row · each neuron's W_in (after ln2; {what}; the "
                f"{len(i['rows'])} rows with the most extreme neurons)",
                x_title=f"{i['kind']} embedding row",
                y_title=f"congruence ({what})",
            )
        )
        if d["mlp"]:
            figs.append(
                labelled_strip(
                    {
                        "earlier neuron's strongest partner": (
                            [p["pair"] for p in d["mlp"] for _ in p["sources"]],
                            np.concatenate([np.asarray(p["values"], dtype=float) for p in d["mlp"]]),
                            [f"{s} → {t}" for p in d["mlp"] for s, t in zip(p["sources"], p["partners"])],
                        )
                    },
                    order=[p["pair"] for p in d["mlp"]],
                    title=f"MLP to MLP: each earlier neuron's W_out · its strongest later neuron's W_in ({what})",
                    x_title="layers",
                    y_title=f"congruence ({what})",
                )
            )
        return figs
