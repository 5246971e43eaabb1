"""Residual stream L2 norms by layer and token, and each component's output norm beside its direct
contribution to the predicted action's logit."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from dtinterp.interp.norms import component_effects, masked_batch_stats, residual_norms, token_mask
from dtinterp.plugins.api import Analysis, AnalysisContext, AnalysisResult, Param
from dtinterp.plugins.builtin._common import WINDOW_PARAM, one_window_run
from envs.encoding import ACTION_NAMES


def _mean_std(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population std over the last axis (the selected state tokens)."""
    return x.mean(-1).cpu().numpy(), x.std(-1, correction=0).cpu().numpy()


class ResidualNorms(Analysis):
    id = "residual-norms"
    title = "Residual stream norms"
    category = "dynamic"
    description = (
        "L2 norm of the residual stream at every layer and token (mean and std over the batch, padding "
        "excluded), and each component's output norm beside its direct contribution to the predicted "
        "action's logit at state tokens."
    )
    parameters = (
        Param(
            "position",
            "choice",
            "last",
            "State tokens whose components are measured: the last state of each window, or every real state.",
            choices=("last", "all"),
        ),
        Param("heads", "bool", True, "Also measure each attention head's output (z @ W_O)."),
        WINDOW_PARAM,
    )

    def compute(self, ctx: AnalysisContext, params: dict[str, Any]) -> AnalysisResult:
        model, cache, logits, pad = ctx.model, ctx.cache, ctx.logits, ctx.inputs.pad_mask
        if params["window"] >= 0:
            cache, logits, pad = one_window_run(ctx, params["window"], self.id)
        with torch.no_grad():
            norms, sites = residual_norms(model, cache)  # [L, S, B, P]
            mean, std = masked_batch_stats(norms, token_mask(pad))  # [L, S, P]
            eff = component_effects(model, cache, logits, pad, params["position"], params["heads"])
        data: dict[str, Any] = {
            "sites": sites,
            "token_labels": ctx.token_labels,
            "windows": int(pad.shape[0]),
            "norm_mean": mean.cpu().numpy(),
            "norm_std": std.cpu().numpy(),
            "n_real": token_mask(pad).sum(0).cpu().numpy(),  # [P] real tokens averaged at each position
        }
        comp = {"labels": eff["labels"]}
        comp["norm_mean"], comp["norm_std"] = _mean_std(eff["norm"])
        comp["dla_mean"], comp["dla_std"] = _mean_std(eff["dla"])
        comp["norm"], comp["dla"] = eff["norm"].cpu().numpy(), eff["dla"].cpu().numpy()  # [C, N]
        data["components"] = comp
        if params["heads"]:
            heads = {"labels": eff["head_labels"]}
            heads["norm_mean"], heads["norm_std"] = _mean_std(eff["head_norm"])
            heads["dla_mean"], heads["dla_std"] = _mean_std(eff["head_dla"])
            heads["norm"], heads["dla"] = eff["head_norm"].cpu().numpy(), eff["head_dla"].cpu().numpy()
            data["heads"] = heads
        data["tokens"] = {  # the N state tokens measured
            "batch": eff["batch"].cpu().numpy(),
            "step": eff["step"].cpu().numpy(),
            "action": eff["action"].cpu().numpy(),
            "logit": eff["logit"].cpu().numpy(),
            "bias": eff["bias"].cpu().numpy(),
        }
        data["action_names"] = list(ACTION_NAMES[: model.cfg.n_actions])
        last = mean[-1, -1]
        top = int(np.abs(comp["dla_mean"]).argmax())
        which = f"Window {params['window']}" if params["window"] >= 0 else f"{pad.shape[0]} window(s)"
        summary = (
            f"{which}: final residual norm {float(np.nanmean(last.cpu().numpy())):.2f} on average over tokens "
            f"(first layer input {float(np.nanmean(mean[0, 0].cpu().numpy())):.2f}); over "
            f"{eff['norm'].shape[1]} state tokens the largest direct effect on the predicted action is "
            f"{comp['labels'][top]} ({comp['dla_mean'][top]:+.3f}, norm {comp['norm_mean'][top]:.2f})."
        )
        return AnalysisResult(self.id, params, data, summary)

    def figures(self, result: AnalysisResult) -> list[Any]:
        from dtinterp.viz import bar_panels, heatmap

        d = result.data
        mean = np.asarray(d["norm_mean"], dtype=float)  # [L, S, P]
        std = np.asarray(d["norm_std"], dtype=float)
        L, S, P = mean.shape
        rows = [f"L{layer} {site}" for layer in range(L) for site in d["sites"]]
        figs = [
            heatmap(
                mean.reshape(L * S, P),
                x_labels=d["token_labels"],
                y_labels=rows,
                title="Residual stream L2 norm (mean over the batch, padding excluded)",
                x_title="token",
                y_title="layer and site",
                colorbar_title="‖resid‖",
                hover_extra=std.reshape(L * S, P),
                hover_extra_name="std",
            )
        ]
        parts = [d["components"]] + ([d["heads"]] if "heads" in d else [])
        labels = [lab for part in parts for lab in part["labels"]]
        colors = [i for i, part in enumerate(parts) for _ in part["labels"]]

        def cat(key: str) -> np.ndarray:
            return np.concatenate([np.asarray(part[key], dtype=float) for part in parts])

        where = "last state token" if result.params.get("position") == "last" else "all real state tokens"
        figs.append(
            bar_panels(
                labels,
                {"output L2 norm": cat("norm_mean"), "direct logit contribution": cat("dla_mean")},
                errors={"output L2 norm": cat("norm_std"), "direct logit contribution": cat("dla_std")},
                colors=colors,
                title=f"Component output norm vs direct contribution to the predicted action ({where}; ±1 std)",
                x_title="component",
            )
        )
        return figs
