"""Ablations played out: what an agent with components knocked out (or fixed to one activation) does.

The ablation is hooked into every forward pass of seeded rollouts
(:func:`dtinterp.interp.causal.ablation_hooks_for`, then :func:`dtinterp.train.evaluate.evaluate` with
``hooks``), and the same seeds are played without it, at each target return of
``[rtg_min, rtg_max]``: success rate (Wilson 95% CI), mean return (bootstrap 95% CI), episode length, and
the return-calibration curve of both agents. Kinds: ``zero``; ``mean``, the per-position mean over the
analysed windows; ``resample``, the activation of analysed window ``b % R`` in env slot ``b``; ``patch``,
the activation one analysed window (``patch_window``; with ``patch_from=edited`` its edited copy) had, fixed
in every forward pass.

**Invariant** (tested): an ablation that changes nothing (zero-ablating a head whose output weights are
zero) plays exactly the unablated episodes on the same seeds.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dtinterp.errors import DtinterpError
from dtinterp.interp.causal import PLAYED_KINDS, ablation_hooks_for
from dtinterp.plugins.api import Analysis, AnalysisContext, AnalysisResult, Param, ParameterError
from dtinterp.plugins.builtin._causal import user_errors
from dtinterp.plugins.builtin.ablation import COMPONENTS_HELP


class AblationRollout(Analysis):
    id = "ablation-rollout"
    title = "Ablation played out"
    category = "causal"
    description = (
        "Plays seeded episodes with components ablated (zero, mean, resample) or fixed to one window's "
        "activation in every forward pass, and the same seeds without: success rate, mean return with its "
        "95% CI, episode length and the return-calibration curve of both agents."
    )
    parameters = (
        Param("components", "str", "blocks.0.attn.hook_z:h0", COMPONENTS_HELP),
        Param(
            "kind",
            "choice",
            "zero",
            "zero; mean: per-position mean over the analysed windows; resample: analysed window b % R in env "
            "slot b; patch: the activation of one analysed window (patch_window), fixed.",
            choices=PLAYED_KINDS,
        ),
        Param(
            "episodes",
            "int",
            10,
            "Seeded episodes per target return (seeds seed .. seed + episodes - 1).",
            1,
            1000,
        ),
        Param(
            "seed", "int", 1000, "First env seed (the shipped model cards evaluate on 1000 and up).", min=0
        ),
        Param("rtg_min", "float", 0.5, "Lowest target return of the calibration curve.", min=-1e4, max=1e4),
        Param(
            "rtg_max",
            "float",
            1.0,
            "Highest target return (the only one when points = 1).",
            min=-1e4,
            max=1e4,
        ),
        Param("points", "int", 3, "Target returns, evenly spaced from rtg_min to rtg_max.", min=1, max=21),
        Param("patch_window", "int", 0, "kind=patch: the analysed window whose activation is fixed.", min=0),
        Param(
            "patch_from",
            "choice",
            "clean",
            "kind=patch: that window as given, or its edited copy (needs edits).",
            choices=("clean", "edited"),
        ),
    )

    def compute(self, ctx: AnalysisContext, params: dict[str, Any]) -> AnalysisResult:
        from dtinterp.train.evaluate import bootstrap_ci, evaluate

        ckpt = ctx.checkpoint
        if ckpt.env_spec is None:
            raise ParameterError(f"plugin {self.id!r}: the model records no env to play in")
        lo, hi, n = params["rtg_min"], params["rtg_max"], params["points"]
        if n > 1 and not lo < hi:
            raise ParameterError(
                f"plugin {self.id!r} parameter 'rtg_min': {lo:g} must be below rtg_max {hi:g}"
            )
        targets = [hi] if n == 1 else np.linspace(lo, hi, n).tolist()
        kind = params["kind"]
        reference = None
        if kind in ("mean", "resample"):
            reference = ctx.inputs
        elif kind == "patch":
            b = params["patch_window"]
            if b >= ctx.inputs.batch_size:
                raise ParameterError(
                    f"plugin {self.id!r} parameter 'patch_window': {b} is outside the batch of "
                    f"{ctx.inputs.batch_size} windows"
                )
            source = ctx.inputs
            if params["patch_from"] == "edited":
                if ctx.counterfactual is None:
                    raise ParameterError(
                        f"plugin {self.id!r} parameter 'patch_from': edited needs edits (--edit in the CLI)"
                    )
                source = ctx.counterfactual
            reference = source[b]
        spec = f"{kind}: {params['components']}"
        with user_errors(self.id, "components"):
            hooks = ablation_hooks_for(ckpt, spec, reference)
        episodes, seed = params["episodes"], params["seed"]
        try:
            plain = evaluate(ckpt, targets, episodes, seed, progress=False)
            ablated = evaluate(ckpt, targets, episodes, seed, progress=False, hooks=hooks)
        except DtinterpError as exc:
            raise ParameterError(f"plugin {self.id!r} parameter 'rtg_max': {exc}") from None

        def rows(result: dict[str, Any]) -> dict[str, Any]:
            rs = result["results"]
            return {
                "mean_return": np.array([r["mean_return"] for r in rs]),
                "return_ci": np.array([r["return_ci"] for r in rs]),
                "success_rate": np.array([r["success_rate"] for r in rs]),
                "success_ci": np.array([r["success_ci"] for r in rs]),
                "mean_length": np.array([r["mean_length"] for r in rs]),
                "length_ci": np.array([bootstrap_ci(r["lengths"]) for r in rs]),
                "returns": np.array([r["returns"] for r in rs]),
                "lengths": np.array([r["lengths"] for r in rs]),
            }

        components = ", ".join(s.strip() for s in params["components"].replace(",", " ").split())
        what = {
            "zero": "zero-ablated",
            "mean": f"mean-ablated (over {ctx.inputs.batch_size} analysed window(s))",
            "resample": f"resample-ablated (from {ctx.inputs.batch_size} analysed window(s))",
            "patch": f"fixed to their activation on {'edited ' * (params['patch_from'] == 'edited')}window "
            f"{params['patch_window']}",
        }[kind]
        data: dict[str, Any] = {
            "env": ckpt.env_spec.env_id,
            "ablation": f"{components} {what}",
            "spec": f"{kind}: {components}",
            "targets": np.asarray(targets),
            "seeds": [seed, seed + episodes - 1],
            "episodes": episodes,
            "unablated": rows(plain),
            "ablated": rows(ablated),
        }
        a, u = data["ablated"], data["unablated"]
        head = targets[-1]
        unchanged = np.array_equal(a["returns"], u["returns"]) and np.array_equal(a["lengths"], u["lengths"])
        same = " (every episode unchanged)" if unchanged else ""
        summary = (
            f"{components} {what}, played out on {episodes} seeded episodes per target (seeds {seed}.."
            f"{seed + episodes - 1}) in {data['env']}{same}. At target {head:g}: success "
            f"{u['success_rate'][-1]:.0%} -> {a['success_rate'][-1]:.0%}, mean return "
            f"{u['mean_return'][-1]:.3f} -> {a['mean_return'][-1]:.3f} "
            f"(95% CI {a['return_ci'][-1][0]:.3f}-{a['return_ci'][-1][1]:.3f}), "
            f"mean length {u['mean_length'][-1]:.1f} -> {a['mean_length'][-1]:.1f} steps."
        )
        return AnalysisResult(self.id, params, data, summary)

    def figures(self, result: AnalysisResult) -> list[Any]:
        from dtinterp.viz.causal import interval_bars, interval_lines

        d = result.data
        x = np.asarray(d["targets"], dtype=float)
        runs = {"unablated": d["unablated"], "ablated": d["ablated"]}
        subtitle = (
            f"{d['ablation']}<br>{d['env']}, {d['episodes']} episodes per target, seeds {d['seeds'][0]}.."
            f"{d['seeds'][1]} (the same for both) · 95% CIs"
        )
        cats = [f"{t:g}" for t in x]

        def series(key: str, ci: str) -> dict[str, tuple[Any, Any, Any]]:
            out = {}
            for name, r in runs.items():
                bounds = np.asarray(r[ci], dtype=float)
                out[name] = (np.asarray(r[key], dtype=float), bounds[:, 0], bounds[:, 1])
            return out

        calibration = interval_lines(
            x, series("mean_return", "return_ci"), title="Return calibration with and without the ablation",
            subtitle=subtitle, x_title="target return", y_title="achieved return", identity=True,
        )  # fmt: skip
        success = interval_bars(
            cats, series("success_rate", "success_ci"), title="Success rate with and without the ablation",
            subtitle=subtitle, x_title="target return", y_title="success rate", percent=True,
        )  # fmt: skip
        length = interval_bars(
            cats, series("mean_length", "length_ci"), title="Episode length with and without the ablation",
            subtitle=subtitle, x_title="target return", y_title="mean episode length (steps)",
        )  # fmt: skip
        return [calibration, success, length]
