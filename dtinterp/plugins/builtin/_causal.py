"""Parameters and helpers shared by the causal plugins (a private module: the registry skips it).

**Pairs.** ``pair`` picks where the corrupted windows come from (:mod:`dtinterp.interp.pairs`): ``edits``
(the context's edited windows: ``--edit`` in the CLI, the Replay tab's edits in the app), ``resample``
(another window of the batch ending at the same step; needs a dataset batch) or ``env`` (the episode
re-simulated with an env-level change; Memory: the other cue object). The edits are used only by
``pair=edits``.

**Metrics.** ``metric`` (logit-diff | logprob | kl) with ``action`` and ``versus`` (the model's actions, or
the runs' own top actions) is :func:`dtinterp.interp.causal.build_metric`, read at the state token named
by ``position``.

Library errors (a bad component name, a pair that cannot be built, a metric of an action with itself)
become one-line :class:`~dtinterp.plugins.api.ParameterError` s naming the plugin and the parameter.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from dtinterp.errors import DtinterpError
from dtinterp.interp.causal import METRICS, ChosenMetric, build_metric
from dtinterp.interp.pairs import PAIR_SOURCES, Pair, build_pair, check_pair
from dtinterp.plugins.api import MODEL_ACTIONS, AnalysisContext, Param, ParameterError, PluginError

PAIR_PARAM = Param(
    "pair",
    "choice",
    "edits",
    "Corrupted run: edits (the windows with the edits applied), resample (another window of the batch "
    "ending at the same step: give a dataset) or env (the episode re-simulated with an env-level change; "
    "Memory: the other cue object). Only pair=edits uses the edits.",
    choices=PAIR_SOURCES,
)
PAIR_SEED_PARAM = Param("seed", "int", 0, "Seed of pair=resample's choice of partner windows.", min=0)
METRIC_PARAM = Param(
    "metric",
    "choice",
    "logit-diff",
    "logit-diff: logit(action) - logit(versus); logprob: log p(action); kl: KL(clean || run) of the action "
    "distributions.",
    choices=METRICS,
)
ACTION_PARAM = Param(
    "action",
    "choice",
    "clean-top",
    "The action counted by logit-diff and logprob: the clean run's top action in each window, or one action.",
    choices=("clean-top", MODEL_ACTIONS),
)


#: Short names of the metrics for axis titles (the full formula goes into the figure's title).
METRIC_NAMES = {"logit-diff": "logit difference", "logprob": "log-probability", "kl": "KL divergence"}


def versus_param(run: str) -> Param:
    """``versus``: the action subtracted by logit-diff (default: the ``run``'s top action)."""
    return Param(
        "versus",
        "choice",
        f"{run}-top",
        f"The action subtracted by logit-diff: the {run} run's top action in each window (its runner-up "
        "where it is the clean run's too), or one action.",
        choices=(f"{run}-top", MODEL_ACTIONS),
    )


@contextmanager
def user_errors(plugin_id: str, param: str | None = None) -> Iterator[None]:
    """Turn a library's one-line :class:`DtinterpError` into a :class:`ParameterError` naming ``param``."""
    try:
        yield
    except PluginError:
        raise
    except DtinterpError as exc:
        where = f"plugin {plugin_id!r}" + (f" parameter {param!r}" if param else "")
        raise ParameterError(f"{where}: {exc}") from None


def needs_edits_for_pair(_plugin: Any, params: Mapping[str, Any]) -> bool:
    """``Analysis.needs_edits`` of a plugin with ``PAIR_PARAM``: only ``pair=edits`` reads the edits."""
    return params.get("pair") == "edits"


def context_pair(ctx: AnalysisContext, params: dict[str, Any], plugin_id: str) -> Pair:
    """The pair named by ``pair`` for the context's windows (every row the source can pair)."""
    if params["pair"] == "edits":
        if ctx.counterfactual is None:
            raise ParameterError(
                f"plugin {plugin_id!r} parameter 'pair': edits compares the windows with edited copies, "
                "but no edits were given (--edit R*=0 in the CLI; the Replay tab's edits in the app), or "
                "choose pair=resample or pair=env"
            )
        with user_errors(plugin_id, "pair"):
            check_pair(ctx.inputs, ctx.counterfactual)
        rows = list(range(ctx.inputs.batch_size))
        description = ", ".join(str(e) for e in ctx.edits)
        return Pair(ctx.inputs, ctx.counterfactual, "edits", f"edits {description}", rows)
    with user_errors(plugin_id, "pair"):
        pair = build_pair(
            params["pair"], ctx.inputs, env_spec=ctx.checkpoint.env_spec, seed=params.get("seed", 0)
        )
    if ctx.edits:  # the CLI and the app ask a counterfactual analysis for edits; say that these went unused
        pair.description += f"; the edits {', '.join(str(e) for e in ctx.edits)} are not used"
    return pair


def select_pair(
    pair: Pair, params: dict[str, Any], k: int, batch: int, plugin_id: str, where: Sequence[int] | None = None
) -> Pair:
    """The rows of ``pair`` studied: window ``params['window']`` alone (a batch index), or (-1) every row
    whose timestep ``k`` is real; with ``where`` (batch indices), only those."""
    if where is not None:
        allowed = {int(b) for b in where}
        keep = [i for i, b in enumerate(pair.rows) if b in allowed]
        if not keep:
            raise ParameterError(
                f"plugin {plugin_id!r} parameter 'where': none of the {len(pair.rows)} window(s) of the "
                f"{pair.source} pair is where {params['where'].strip()}"
            )
        pair = _subset(pair, keep)
    b = params["window"]
    if b >= batch:
        raise ParameterError(
            f"plugin {plugin_id!r} parameter 'window': {b} is outside the batch of {batch} windows"
        )
    real = pair.clean.pad_mask[:, k].cpu()
    if b >= 0:
        if b not in pair.rows:
            raise ParameterError(
                f"plugin {plugin_id!r} parameter 'window': window {b} is not in the {pair.source} pair "
                f"({pair.description})"
            )
        keep = [pair.rows.index(b)]
        if not bool(real[keep[0]]):
            raise ParameterError(
                f"plugin {plugin_id!r} parameter 'position': timestep {k + 1} is padding in window {b}"
            )
    else:
        keep = [i for i in range(pair.size) if bool(real[i])]
        if not keep:
            raise ParameterError(
                f"plugin {plugin_id!r} parameter 'position': timestep {k + 1} is padding in every window"
            )
    return _subset(pair, keep)


def _subset(pair: Pair, keep: list[int]) -> Pair:
    """The rows ``keep`` (positions in the pair) of ``pair``."""
    if len(keep) == pair.size:
        return pair
    idx = torch.as_tensor(keep, device=pair.clean.device)
    return Pair(
        pair.clean[idx],
        pair.corrupted[idx],
        pair.source,
        pair.description,
        [pair.rows[i] for i in keep],
        None if pair.partners is None else [pair.partners[i] for i in keep],
    )


def choose_metric(
    ctx: AnalysisContext,
    params: dict[str, Any],
    clean_logits: Tensor,
    corrupted_logits: Tensor,
    k: int,
    plugin_id: str,
) -> ChosenMetric:
    """The metric of ``params`` for this pair of runs, at timestep ``k``."""
    names = list(ctx.action_names)
    good = None if params["action"] == "clean-top" else names.index(params["action"])
    bad = None if params["versus"].endswith("-top") else names.index(params["versus"])
    with user_errors(plugin_id, "versus" if good is not None and good == bad else "metric"):
        return build_metric(params["metric"], clean_logits, corrupted_logits, k, good, bad)


def predicted(action_names: Sequence[str], logits: Tensor, k: int) -> list[str]:
    """The top action's name at timestep ``k`` of each window."""
    return [action_names[i] for i in logits[:, k].argmax(-1).tolist()]


def predictions_text(runs: dict[str, Sequence[str]]) -> str:
    """``clean → right, corrupted → left`` (one window) or with counts (``right in 5/7``) over many."""
    parts = []
    for run, actions in runs.items():
        counts = Counter(actions).most_common()
        n = len(actions)
        if len(counts) == 1:
            parts.append(f"{run} → {counts[0][0]}" + (f" (all {n})" if n > 1 else ""))
        else:
            shown = ", ".join(f"{a} {c}/{n}" for a, c in counts[:3])
            parts.append(f"{run} → {shown}")
    return "; ".join(parts)


def windows_text(rows: Sequence[int]) -> str:
    """``window 3`` or ``mean over 12 windows``."""
    return f"window {rows[0]}" if len(rows) == 1 else f"mean over {len(rows)} windows"
