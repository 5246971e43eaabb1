"""A dtinterp analysis plugin: the logit lens at state tokens.

The decision transformer predicts an action from each state token's final residual stream, through the
final LayerNorm and the unembedding ``W_U``. The *logit lens* applies that same read-out to the residual
stream after every layer (each one normalised with its own statistics), showing at which depth the
model's action choice becomes readable. At the last layer the lens *is* the model: its logits equal the
model's output exactly, which is the invariant this package's tests check.

Registered through the ``dtinterp.analyses`` entry point in ``pyproject.toml``; ``dtinterp analyze
--list`` and the app show it with no change to dtinterp.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from dtinterp.plugins import Analysis, AnalysisContext, AnalysisResult, Param
from dtinterp.plugins.api import MODEL_ACTIONS

__version__ = "0.1.0"


class LogitLens(Analysis):
    """Action logits read from the residual stream after every layer, at every state token."""

    id = "logit-lens"
    title = "Logit lens at state tokens"
    category = "dynamic"
    description = (
        "The model's action read-out (final LayerNorm + unembedding) applied to the residual stream after "
        "every layer at each state token: the tracked action's probability per layer and token, how often "
        "the layer's top action already agrees with the model's, and the KL divergence from the model's "
        "action distribution. Padded timesteps are excluded."
    )
    parameters = (
        Param(
            "action",
            "choice",
            "predicted",
            help="Action whose probability is tracked: the model's predicted (top) action, or a fixed one.",
            # MODEL_ACTIONS stands for the actions of the model being analysed (a Dynamic-Obstacles model
            # has only left, right and forward): `--param action=toggle` on it is refused up front.
            choices=("predicted", MODEL_ACTIONS),
        ),
        Param(
            "incl_mid", "bool", True, help="Also read the residual between attention and MLP of each layer."
        ),
    )

    @torch.no_grad()
    def compute(self, ctx: AnalysisContext, params: dict[str, Any]) -> AnalysisResult:
        model, cache = ctx.model, ctx.cache
        states = slice(1, None, 3)  # S1..SK: the tokens that predict actions
        stack, layers = cache.accumulated_resid(
            incl_mid=params["incl_mid"], pos_slice=states, return_labels=True
        )  # [L, B, K, d]
        stack = cache.apply_ln_to_stack(stack, recompute_ln=True)  # each layer normalised on its own
        lens = stack @ model.W_U + model.b_U  # [L, B, K, A]: logits read at every layer
        final = ctx.logits  # [B, K, A]: the model's own logits (equal to lens[-1])

        real = ctx.inputs.pad_mask.to(lens.device)  # [B, K]: padded timesteps predict nothing
        top = final.argmax(-1)  # [B, K]
        target = (
            top
            if params["action"] == "predicted"
            else torch.full_like(top, ctx.action_names.index(params["action"]))
        )
        logp = lens.log_softmax(-1)  # [L, B, K, A]
        logp_final = final.log_softmax(-1)  # [B, K, A]
        index = target[None, ..., None].expand(lens.shape[0], -1, -1, 1)
        prob = logp.gather(-1, index)[..., 0].exp()  # [L, B, K]
        agree = (lens.argmax(-1) == top).float()  # [L, B, K]
        kl = (logp_final.exp() * (logp_final - logp)).sum(-1).clamp_min(0.0)  # [L, B, K]: KL(model || lens)

        w = real.float()  # [B, K]
        n_per_token = w.sum(0)  # [K]
        prob_k = (prob * w).sum(1) / n_per_token  # [L, K]: NaN at tokens padded in every window
        n_real = w.sum()
        agree_l = (agree * w).sum((1, 2)) / n_real  # [L]
        kl_l = (kl * w).sum((1, 2)) / n_real  # [L]

        first = int(torch.nonzero(agree_l >= 0.999).min()) if bool((agree_l >= 0.999).any()) else None
        label = "the predicted action" if params["action"] == "predicted" else f"action {params['action']!r}"
        summary = (
            f"Tracked {label} over {int(n_real)} real state tokens in {ctx.inputs.batch_size} window(s). "
            + (
                f"The lens first matches the model's choice everywhere at {layers[first]}"
                if first is not None
                else "The lens never matches the model's choice everywhere"
            )
            + f"; agreement after the embedding {float(agree_l[0]):.0%}, KL there {float(kl_l[0]):.3f} nats."
        )
        return AnalysisResult(
            self.id,
            params,
            {
                "layers": layers,
                "state_labels": [f"S{k + 1}" for k in range(ctx.inputs.context_len)],
                "prob": prob_k.cpu().numpy(),
                "agreement": agree_l.cpu().numpy(),
                "kl": kl_l.cpu().numpy(),
                "lens_logits": lens.cpu().numpy(),
                "real_states": int(n_real),
            },
            summary,
        )

    def figures(self, result: AnalysisResult) -> list[Any]:
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        d = result.data
        tracked = result.params["action"]
        heat = go.Figure(
            go.Heatmap(
                z=np.asarray(d["prob"], dtype=float),
                x=d["state_labels"],
                y=d["layers"],
                zmin=0.0,
                zmax=1.0,
                colorscale="Viridis",
                colorbar={"title": "p"},
                hovertemplate="%{y} at %{x}: p = %{z:.3f}<extra></extra>",
            )
        )
        heat.update_layout(
            title=f"Logit lens: probability of the {tracked} action per layer and state token",
            xaxis_title="state token",
            yaxis_title="residual stream after",
            yaxis_autorange="reversed",
            template="plotly_white",
        )
        curves = make_subplots(specs=[[{"secondary_y": True}]])
        curves.add_trace(
            go.Scatter(x=d["layers"], y=d["agreement"], name="top-1 agreement", mode="lines+markers")
        )
        curves.add_trace(
            go.Scatter(x=d["layers"], y=d["kl"], name="KL(model || lens)", mode="lines+markers"),
            secondary_y=True,
        )
        curves.update_layout(title="How early the action choice is readable", template="plotly_white")
        curves.update_yaxes(title_text="agreement with the model", range=[0, 1.05], secondary_y=False)
        curves.update_yaxes(title_text="KL (nats)", secondary_y=True)
        return [heat, curves]
