"""Linear probes at dataset scale: where, by layer and token position, is a ground-truth fact readable?

The analysis reads a dataset: the episodes of ``--data F --episodes N`` (``AnalysisContext.dataset``)
or, where the windows come from one episode (the app, ``--trajectory``, ``--rollout``), ``collect``
episodes it collects itself with the behaviour policy of the model's training data (recorded in its
checkpoint; else ``mixed``) at env seeds ``env_seed ..``. It harvests the model's activations at
``hooks`` and the tokens of one kind (:func:`~dtinterp.interp.activation_store.harvest`, a temporary
store, windows ending at every step thinned to ``max_windows`` or only at the steps ``at`` names), then
fits one probe per hook x position for ``variable`` (:func:`~dtinterp.interp.probes.train_probes`: held-out
*episodes*, logistic regression on a categorical fact, ridge on a scalar one) and reports:

- the held-out **accuracy** (R² for a scalar fact) by hook x position, beside the **chance** baseline (the
  training majority class; R² 0) and the **control task** (Hewitt & Liang's random label per observation
  type, or shuffled labels): *selectivity* is score - control;
- the **best cell** (ties go to the cell scored on more held-out tokens) and the best at the last token;
  where ``blocks.0.hook_resid_pre`` is probed, what the embeddings alone (the
  observation, no attention) give at the same token;
- ``save=NAME``: the best probe's direction (``basis``: the class means or the classifier's normal) in the
  saved-directions library, and **Play-tab interventions** along it (steer towards and away from the
  class, project it out); the app shows them as buttons;
- ``episodes > 0``: a **causal check**, the same seeded episodes played with and without an edit along
  the best direction at every token of the probed kind (``reflect`` about the boundary flips the probe's
  decisions, ``ablate`` sets the projection to its mean, ``steer`` moves it by the distance between the
  class means): success, return, and how often each end-state fact changed
  (:func:`~dtinterp.interp.effects.played_effect`).

**Invariants** (tested): a probe for a fact the observation at the token determines (``agent_dir``) reads it
at ~1 from the embeddings while shuffled labels stay at chance; the numbers are those of
:func:`~dtinterp.interp.probes.train_probes` on the same store; every suggested line parses.
"""

from __future__ import annotations

import re
import tempfile
from typing import Any

import numpy as np

from dtinterp.data.dataset import TrajectoryDataset
from dtinterp.errors import DtinterpError
from dtinterp.interp.activation_store import STORE_KINDS, ActivationStore, check_hooks, harvest
from dtinterp.interp.directions import DirectionLibrary, DirectionsError
from dtinterp.interp.probes import (
    BASES,
    CONTROLS,
    DirectionEdit,
    LinearProbe,
    ProbeGrid,
    fact_kind,
    train_probes,
)
from dtinterp.plugins.api import (
    Analysis,
    AnalysisContext,
    AnalysisResult,
    Param,
    ParameterError,
    PlayIntervention,
)
from envs.facts import FACTS

KIND_CHOICES = ("auto", "logistic", "linear")
EDITS = ("reflect", "ablate", "steer")
#: The probe the ``kind`` parameter asks for (auto: the fact's own type).
_PROBE_KIND = {"logistic": "categorical", "linear": "scalar"}
EMBED_HOOK = "blocks.0.hook_resid_pre"


class Probes(Analysis):
    id = "probes"
    title = "Linear probes"
    category = "dynamic"
    description = (
        "Where is a ground-truth fact of the env (the Memory cue, the agent's direction, ...) linearly "
        "readable? One probe per layer and token position over a dataset's windows, scored on held-out "
        "episodes against the chance baseline and a control task; the best probe's direction can be saved, "
        "steered or ablated in the Play tab, and played out with it edited."
    )
    parameters = (
        Param(
            "variable",
            "str",
            "agent_dir",
            "The fact probed (a fact of the dataset: agent_dir, cue_object, door_open, goal_distance, ...).",
        ),
        Param(
            "kind",
            "choice",
            "auto",
            "logistic (classes, accuracy) or linear (values, R²); auto: by the fact's type.",
            choices=KIND_CHOICES,
        ),
        Param(
            "hooks",
            "str",
            "",
            "Hooks probed, separated by commas (empty: every residual-stream hook, embeddings first).",
        ),
        Param(
            "token",
            "choice",
            "S",
            "Tokens probed: state, return-to-go or action tokens, or all.",
            choices=STORE_KINDS,
        ),  # fmt: skip
        Param(
            "test_fraction", "float", 0.2, "Share of the episodes held out for scoring.", min=0.05, max=0.9
        ),
        Param("seed", "int", 0, "Seed of the held-out split and the control task.", min=0),
        Param(
            "control",
            "choice",
            "type",
            "Control task: a random label per observation type (Hewitt & Liang) or shuffled labels.",
            choices=CONTROLS,
        ),
        Param(
            "at",
            "str",
            "",
            "Windows end only at steps whose facts match, e.g. agent_x=5,agent_y=3 (Memory's junction, where "
            "the side is chosen); empty: at every step.",
        ),
        Param(
            "seen",
            "str",
            "",
            "Probe only tokens whose window, up to them, shows this fact non-zero, e.g. cue_visible; empty: "
            "every token.",
        ),
        Param("max_windows", "int", 4096, "Windows harvested at most (thinned evenly).", min=16, max=100_000),
        Param(
            "position",
            "int",
            0,
            "The probe saved, steered and checked: 0 the best cell; k the best hook at the k-th token of the "
            "kind (S_k for state tokens).",
            min=0,
        ),
        Param(
            "collect",
            "int",
            20,
            "Without a dataset (the app, --trajectory, --rollout): episodes collected with the model's "
            "training behaviour policy.",
            min=4,
            max=5000,
        ),
        Param(
            "env_seed",
            "int",
            100_000,
            "First env seed of the collected episodes and of the causal check's (default: none of the "
            "shipped models' training or evaluation seeds).",
            min=0,
        ),
        Param(
            "basis",
            "choice",
            "means",
            "Direction saved, steered and edited: the difference of the class means, or the classifier's "
            "normal (weights; a scalar fact has only this).",
            choices=BASES,
        ),
        Param(
            "save",
            "str",
            "",
            "Save the best probe's direction under this name (replacing an earlier probe's) and suggest "
            "Play-tab interventions along it; empty: save nothing.",
        ),
        Param(
            "episodes",
            "int",
            0,
            "Causal check: seeded episodes played with and without the edit (0: none).",
            min=0,
            max=1000,
        ),
        Param(
            "edit",
            "choice",
            "reflect",
            "The causal check's edit along the best direction: reflect about the boundary (flips the probe), "
            "ablate (projection set to its mean) or steer (by the distance between the class means).",
            choices=EDITS,
        ),
        Param("target", "float", 1.0, "Target return of the causal check's episodes.", min=-1e4, max=1e4),
    )

    def compute(self, ctx: AnalysisContext, params: dict[str, Any]) -> AnalysisResult:
        where = f"plugin {self.id!r}"
        ckpt = ctx.checkpoint
        ds, source = _dataset(ctx, params, where)
        variable = params["variable"].strip()
        if variable not in ds.facts:
            have = (
                ", ".join(sorted(ds.facts))
                or "none (collect it again with dtinterp collect: facts are recorded)"
            )
            raise ParameterError(
                f"{where} parameter 'variable': {source} has no fact {variable!r}; it has {have}"
            )
        kind = _PROBE_KIND.get(params["kind"]) or fact_kind(ds.facts[variable])
        hooks = _hooks(ctx, params["hooks"], where)
        ends = _ends(ds, params["at"], params["max_windows"], where)
        if params["seen"] and params["seen"] not in ds.facts:
            raise ParameterError(
                f"{where} parameter 'seen': {source} has no fact {params['seen']!r}; it has "
                + ", ".join(sorted(ds.facts))
            )
        basis = "weights" if kind == "scalar" else params["basis"]

        with tempfile.TemporaryDirectory(prefix="dtinterp-probes-") as tmp:
            try:
                store = harvest(
                    ckpt,
                    ds,
                    hooks,
                    tmp,
                    token_kind=params["token"],
                    max_windows=params["max_windows"],
                    ends=ends,
                    progress=False,
                )
                mask = _seen_mask(store, ds, params["seen"])
                grid = train_probes(
                    store,
                    ds,
                    variable,
                    hooks,
                    test_fraction=params["test_fraction"],
                    seed=params["seed"],
                    control=params["control"],
                    token_mask=mask,
                    kind=kind,
                )
                probe = _chosen(grid, params["position"], where)
            except DtinterpError as exc:
                raise ParameterError(f"{where}: {exc}") from None
            spread = _target_spread(store, ds, grid, probe, variable)

        hi, pi = grid.hooks.index(probe.hook), grid.labels.index(probe.label)
        towards = None if kind == "scalar" else probe.classes[-1]
        u = probe.direction(towards, basis)
        mean_proj = float(probe.mean @ u)
        if kind == "scalar":
            boundary = mean_proj  # reflect the predictions about their mean
            step = spread / float(probe.weight[0].norm())  # moves the prediction by one std of the fact
        else:
            boundary = probe.boundary(towards, basis)
            c = probe.classes.index(towards)
            others = [j for j in range(len(probe.classes)) if j != c]
            step = float((probe.class_means[c] - probe.class_means[others].mean(0)) @ u)
        fact = FACTS.get(variable)
        towards_name = "" if towards is None else (fact.value_name(towards) if fact else str(towards))

        data: dict[str, Any] = {
            "variable": variable,
            "kind": kind,
            "metric": grid.metric,
            "source": source,
            "n_episodes": ds.n_episodes,
            "n_windows": store.n_windows,
            "token": params["token"],
            "at": params["at"],
            "seen": params["seen"],
            "hooks": grid.hooks,
            "labels": grid.labels,
            "score": grid.score.numpy(),
            "train_score": grid.train_score.numpy(),
            "chance": grid.chance.numpy(),
            "control": grid.control.numpy(),
            "control_task": grid.control_task,
            "selectivity": grid.selectivity.numpy(),
            "n_train": grid.n_train,
            "n_test": grid.n_test,
            "train_episodes": len(grid.train_episodes),
            "test_episodes": len(grid.test_episodes),
            "classes": probe.classes,
            "last": _last_token(grid),
            "best": {
                "hook": probe.hook,
                "position": probe.label,
                "score": probe.test_score,
                "train_score": probe.train_score,
                "chance": float(grid.chance[pi]),
                "control": float(grid.control[hi, pi]),
                "n_test": grid.n_test[pi],
                "embedding_score": float(grid.score[grid.hooks.index(EMBED_HOOK), pi])
                if EMBED_HOOK in grid.hooks
                else None,
            },
            "direction": {
                "basis": basis,
                "towards": towards,
                "towards_name": towards_name,
                "boundary": boundary,
                "mean_projection": mean_proj,
                "class_step": step,
                "vector": u.numpy(),
            },
        }
        edit = _edit(params["edit"], probe, u, boundary, mean_proj, step)
        if params["episodes"]:
            data["causal"] = _causal_check(ctx, params, edit, where)
        suggestions: list[PlayIntervention] = []
        if params["save"].strip():
            name = _save(ctx, params["save"].strip(), probe, towards, basis, where)
            data["saved"] = name
            c = float(f"{abs(step):.3g}") or 1.0
            away = f"away from {towards_name}" if towards_name else "down"
            suggestions = [
                PlayIntervention(
                    f"Steer towards {towards_name or 'larger values'} (+{c:g})",
                    f"steer: saved:{name} @ {probe.hook} x {c:g}",
                ),
                PlayIntervention(f"Steer {away} (-{c:g})", f"steer: saved:{name} @ {probe.hook} x {-c:g}"),
                PlayIntervention(f"Ablate the {variable} direction", f"zero: saved:{name} @ {probe.hook}"),
            ]
        return AnalysisResult(self.id, params, data, _summary(data, suggestions), suggestions)

    def figures(self, result: AnalysisResult) -> list[Any]:
        from dtinterp.viz import bar_panels, heatmap

        d = result.data
        metric = "accuracy" if d["metric"] == "accuracy" else "R²"
        score = np.asarray(d["score"], dtype=float)
        chance = np.asarray(d["chance"], dtype=float)
        rows = [*d["hooks"], "chance" + (" (majority class)" if metric == "accuracy" else " (training mean)")]
        b = d["best"]
        where = _where(d)
        figs = [
            heatmap(
                np.vstack([score, chance[None]]),
                x_labels=d["labels"],
                y_labels=rows,
                title=f"Probe for {d['variable']}: held-out {metric} by hook and token ({where}); best "
                f"{b['score']:.3f} at {b['hook']} {b['position']}, chance {b['chance']:.3f}",
                x_title="token position",
                y_title="hook (last row: chance)",
                colorbar_title=metric,
                zmax=1.0,
                hover_extra=np.vstack([np.asarray(d["control"], dtype=float), chance[None]]),
                hover_extra_name=f"control task ({d['control_task']})",
                height=min(900, 90 + 40 * len(rows) + 120),
            ),
            heatmap(
                np.asarray(d["selectivity"], dtype=float),
                x_labels=d["labels"],
                y_labels=d["hooks"],
                title=f"Selectivity: {metric} minus the control task's ({d['control_task']}: "
                + (
                    "a random label per observation type"
                    if d["control_task"] == "type"
                    else "shuffled labels"
                )
                + "); near 0 where the probe's capacity alone explains the score",
                x_title="token position",
                y_title="hook",
                colorbar_title="selectivity",
                diverging=True,
                hover_extra=np.asarray(d["control"], dtype=float),
                hover_extra_name="control score",
                height=min(900, 90 + 40 * len(d["hooks"]) + 120),
            ),
        ]
        causal = d.get("causal")
        if causal:
            panels = {
                "success rate": np.array([causal["success_clean"], causal["success_edited"]]),
                "mean return": np.array([causal["return_clean"], causal["return_edited"]]),
                "episodes that end differently": np.array([0.0, causal["episodes_changed"]]),
            }
            figs.append(
                bar_panels(
                    ["unedited", f"{causal['edit']} along the probe"],
                    panels,
                    colors=[0, 1],
                    title=f"Causal check: {causal['episodes']} seeded episodes at target {causal['target']:g} "
                    f"(seeds {causal['seeds'][0]}..{causal['seeds'][1]}), {causal['edit']} at {b['hook']}",
                    x_title="episodes played",
                )
            )
        return figs


# ------------------------------------------------------------------ inputs


def _dataset(ctx: AnalysisContext, params: dict[str, Any], where: str) -> tuple[TrajectoryDataset, str]:
    """The context's dataset, or episodes collected now with the model's training behaviour policy."""
    if ctx.dataset is not None:
        return ctx.dataset, f"the dataset ({ctx.dataset.n_episodes} episodes)"
    from dtinterp.data.collect import collect

    spec = ctx.checkpoint.env_spec
    if spec is None:
        raise ParameterError(
            f"{where}: the model records no env to collect episodes in: give --data F --episodes N"
        )
    recorded = (ctx.meta.get("dataset_metadata") or {}).get("policy") or {}
    policy = recorded.get("name", "mixed")
    weights = (recorded.get("params") or {}).get("weights")
    n, seed = params["collect"], params["env_seed"]
    try:
        ds = collect(
            spec, n, policy, seed, policy_params={"weights": weights} if weights else None, progress=False
        )
    except (DtinterpError, ValueError) as exc:
        raise ParameterError(f"{where}: cannot collect episodes to probe ({exc})") from None
    return ds, f"{n} episodes collected with the {policy} policy (env seeds {seed}..{seed + n - 1})"


def _hooks(ctx: AnalysisContext, text: str, where: str) -> list[str]:
    """The hooks named (commas or spaces), or every residual-stream hook from the embeddings up."""
    names = [h for h in re.split(r"[,\s]+", text) if h]
    if not names:
        L = ctx.model.cfg.n_layers
        every = [EMBED_HOOK] + [f"blocks.{l}.hook_resid_{s}" for l in range(L) for s in ("mid", "post")]
        return [h for h in every if h in ctx.model.hook_dict]
    try:
        return check_hooks(ctx.checkpoint, names)
    except DtinterpError as exc:
        raise ParameterError(f"{where} parameter 'hooks': {exc}") from None


def _ends(ds: TrajectoryDataset, text: str, max_windows: int, where: str) -> list[tuple[int, int]] | None:
    """Window ends at the steps whose facts match ``name=value`` pairs (None: every step)."""
    pairs = [p for p in re.split(r"[,\s]+", text) if p]
    if not pairs:
        return None
    keep = np.ones(ds.n_transitions, dtype=bool)
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or name not in ds.facts:
            raise ParameterError(
                f"{where} parameter 'at': {pair!r} is not FACT=VALUE with a fact of the dataset "
                f"({', '.join(sorted(ds.facts)) or 'none'})"
            )
        try:
            keep &= ds.facts[name] == float(value)
        except ValueError:
            raise ParameterError(f"{where} parameter 'at': {value!r} is not a number") from None
    rows = np.flatnonzero(keep)
    if rows.size == 0:
        raise ParameterError(f"{where} parameter 'at': no step of the {ds.n_episodes} episodes has {text}")
    if rows.size > max_windows:
        rows = rows[np.round(np.linspace(0, rows.size - 1, max_windows)).astype(np.int64)]
    episode = np.searchsorted(ds.episode_starts, rows, side="right") - 1
    return [(int(e), int(r - ds.episode_starts[e])) for e, r in zip(episode, rows)]


def _seen_mask(store: ActivationStore, ds: TrajectoryDataset, fact: str) -> np.ndarray | None:
    """Tokens whose window, up to and including them, shows ``fact`` non-zero (None: every token)."""
    if not fact:
        return None
    rows = store.rows().numpy()
    real = rows >= 0
    shown = np.where(real, ds.facts[fact][np.maximum(rows, 0)], 0) != 0
    return np.maximum.accumulate(shown, axis=1)


def _chosen(grid: ProbeGrid, position: int, where: str) -> LinearProbe:
    """The best probe (``position`` 0) or the best at the ``position``-th token: the highest held-out
    score, ties going to the probe scored on more held-out tokens, then to the earliest hook and token."""
    n_pos = len(grid.labels)
    if position > n_pos:
        raise ParameterError(f"{where} parameter 'position': {position} is beyond the {n_pos} tokens probed")
    cells = [
        (float(grid.score[h, p]), grid.n_test[p], -h, -p)
        for h in range(len(grid.hooks))
        for p in ([position - 1] if position else range(n_pos))
        if grid.probes[h][p] is not None and np.isfinite(float(grid.score[h, p]))
    ]
    if not cells:
        raise ParameterError(
            f"{where}: no probe for {grid.fact} could be trained (too few tokens or one class)"
        )
    _, _, h, p = max(cells)
    return grid.probes[-h][-p]


def _last_token(grid: ProbeGrid) -> dict[str, Any]:
    """The best hook at the last token (the state the action is read from, for state tokens)."""
    scores = grid.score[:, -1].numpy()
    if not np.isfinite(scores).any():
        return {"position": grid.labels[-1], "hook": None, "score": None, "chance": float(grid.chance[-1])}
    h = int(np.nanargmax(scores))
    return {
        "position": grid.labels[-1],
        "hook": grid.hooks[h],
        "score": float(scores[h]),
        "chance": float(grid.chance[-1]),
    }


def _target_spread(
    store: ActivationStore, ds: TrajectoryDataset, grid: ProbeGrid, probe: LinearProbe, variable: str
) -> float:
    """Standard deviation of the fact over the best probe's training tokens (a scalar probe's step)."""
    rows = store.rows().numpy()[:, grid.labels.index(probe.label)]
    train = np.isin(store.ends()[:, 0].numpy(), grid.train_episodes) & (rows >= 0)
    values = ds.facts[variable][rows[train]].astype(np.float64)
    return float(values.std()) if values.size else 1.0


# ------------------------------------------------------------------ outputs


def _edit(
    mode: str, probe: LinearProbe, u: Any, boundary: float, mean_proj: float, step: float
) -> DirectionEdit:
    """The causal check's edit along ``u`` at the probe's hook and every token of its kind."""
    mode, value = {"reflect": ("reflect", boundary), "ablate": ("set", mean_proj), "steer": ("add", step)}[
        mode
    ]
    return DirectionEdit(probe.hook, u, mode, value, probe.edit_positions)


def _causal_check(ctx: AnalysisContext, params: dict[str, Any], edit: DirectionEdit, where: str) -> dict:
    from dtinterp.interp.effects import played_effect

    if ctx.checkpoint.env_spec is None:
        raise ParameterError(f"{where} parameter 'episodes': the model records no env to play in")
    seed, n = params["env_seed"], params["episodes"]
    try:
        played = played_effect(ctx.checkpoint, edit.hooks(), range(seed, seed + n), params["target"])
    except DtinterpError as exc:
        raise ParameterError(f"{where} parameter 'target': {exc}") from None
    changed = {k: played.changed(k) for k in played.clean.final_facts}
    clean, edited = played.clean, played.hooked
    differs = (clean.returns != edited.returns) | (clean.lengths != edited.lengths)
    for k in clean.final_facts:
        differs |= clean.final_facts[k] != edited.final_facts[k]
    return {
        "edit": params["edit"],
        "episodes": n,
        "seeds": [seed, seed + n - 1],
        "target": params["target"],
        "success_clean": played.clean.success_rate,
        "success_edited": played.hooked.success_rate,
        "return_clean": float(played.clean.returns.mean()),
        "return_edited": float(played.hooked.returns.mean()),
        "facts_changed": changed,
        "episodes_changed": float(differs.mean()),
    }


def _save(
    ctx: AnalysisContext, name: str, probe: LinearProbe, towards: int | None, basis: str, where: str
) -> str:
    """Save the probe's direction as ``name``; an earlier probe's direction of that name is replaced."""
    library = DirectionLibrary()
    saved = probe.saved_direction(name, towards, ctx.checkpoint.name, basis)
    try:
        existing = {d.name: d for d in library.list()}.get(name)
        if existing is not None and existing.metadata.get("source") != "probe":
            raise DirectionsError(f"a direction named {name!r} that is not a probe's already exists")
        library.save(saved, overwrite=existing is not None)
    except DtinterpError as exc:
        raise ParameterError(f"{where} parameter 'save': {exc}") from None
    return name


def _where(d: dict[str, Any]) -> str:
    parts = [f"{d['n_windows']} windows of {d['source']}"]
    if d["at"]:
        parts.append(f"ending where {d['at']}")
    if d["seen"]:
        parts.append(f"tokens whose context shows {d['seen']}")
    return ", ".join(parts)


def _summary(d: dict[str, Any], suggestions: list[PlayIntervention]) -> str:
    b, metric = d["best"], d["metric"]
    embed = (
        ""
        if b["embedding_score"] is None
        else f"; the embeddings alone give {b['embedding_score']:.3f} there"
    )
    text = (
        f"Probe for {d['variable']} ({'logistic' if d['kind'] == 'categorical' else 'ridge'}) over {_where(d)}, "
        f"{d['test_episodes']} of {d['train_episodes'] + d['test_episodes']} episodes held out: best held-out "
        f"{metric} {b['score']:.3f} at {b['hook']} {b['position']} ({b['n_test']} tokens), chance "
        f"{b['chance']:.3f}, control task ({d['control_task']}) {b['control']:.3f}{embed}."
    )
    last = d["last"]
    if last["score"] is not None and last["position"] != b["position"]:
        text += (
            f" At the last token {last['position']}: {last['score']:.3f} at {last['hook']} (chance "
            f"{last['chance']:.3f})."
        )
    causal = d.get("causal")
    if causal:
        changed = causal["facts_changed"]
        top = max(changed.values(), default=0.0)
        most = ", ".join(k for k, v in changed.items() if v == top)
        text += (
            f" Causal check ({causal['edit']} along the {d['direction']['basis']} direction, {causal['episodes']} "
            f"episodes at target {causal['target']:g}): success {causal['success_clean']:.0%} -> "
            f"{causal['success_edited']:.0%}, mean return {causal['return_clean']:.3f} -> "
            f"{causal['return_edited']:.3f}, "
            + (
                f"the end state's {most} changed in {top:.0%} of episodes"
                if top > 0
                else "no end state changed"
            )
            + "."
        )
    if suggestions:
        text += f" Saved as {d['saved']}; Play tab: " + " | ".join(s.text for s in suggestions)
    else:
        text += " save=NAME saves its direction and suggests Play-tab interventions along it."
    return text
