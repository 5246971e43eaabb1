"""Linear probes: is a ground-truth fact of the env linearly readable from the model's activations?

For a fact recorded in the dataset (:mod:`envs.facts`: the Memory cue, the DoorKey door, ...) and an
:class:`~dtinterp.interp.activation_store.ActivationStore`, :func:`train_probes` fits one linear probe per
stored hook (layer) and token position and scores it on *held-out episodes*: episodes, not windows, are
split, because the windows of one episode share their steps and an episode-level fact (the cue) would
otherwise leak from training into testing.

- *Categorical* facts get a multinomial logistic regression (L2-regularised, full-batch L-BFGS on
  standardised activations), scored by accuracy; *scalar* facts get ridge regression, scored by R².
- **Chance**: the accuracy of always predicting the training set's most common class (R² of predicting
  its mean, about 0).
- **Control task** (Hewitt & Liang 2019, "Designing and Interpreting Probes with Control Tasks"): every
  input *type* (the observation and direction at the token's step) gets a random label drawn from the
  training labels' distribution, and the same probe is trained and tested on those labels. A probe that
  scores well on the control task is memorising observations rather than reading the fact;
  *selectivity* = score - control score. A gridworld has few distinct observations, each seen often, so
  a linear probe memorises them easily and the control score can exceed the fact's (it does on Memory).
  What the current observation alone tells is better measured by the same probe on the embeddings
  (``blocks.0.hook_resid_pre``, before any attention): the gain of later hooks over it is what the model
  brought in from other tokens.

A probe's weights are folded back into the raw activation space, so its direction applies to the
model's activations as they are. :meth:`LinearProbe.direction` gives the direction towards one class in
one of two *bases*: ``weights``, the classifier's normal, or ``means``, the difference of the class means
(a "mass-mean" probe, Marks & Tegmark 2023). They read the fact equally well but steer differently: the
normal of a regularised classifier on standardised activations leans on low-variance dimensions, where
moving the activation changes little downstream, while the class means differ along the directions the
model writes the fact in (on memory-s7 reflecting along the normal flips no decision, along the means up
to all of them: ``docs/features.md``). :meth:`LinearProbe.saved_direction` turns either into a
:class:`~dtinterp.interp.directions.SavedDirection` for the saved-directions library.

**Causal check.** Reading a fact is not using it. :class:`DirectionEdit` intervenes along a direction at
a hook with TransformerLens forward hooks (:meth:`DirectionEdit.hooks`, usable by
:func:`~dtinterp.play.rollout.rollout` and :mod:`dtinterp.interp.effects`), on the projection
``p = x . u`` onto the unit direction ``u``:

===========  ==================================  ==========================================================
mode         new activation                      use
===========  ==================================  ==========================================================
``set``      ``x + (value - p) u``               ablation: ``value`` 0 projects the direction out, the mean
                                                 projection mean-ablates it; a class mean steers to it
``add``      ``x + value u``                     steering by a fixed amount
``reflect``  ``x + 2 (value - p) u``             mirrors ``p`` about ``value``: about a probe's boundary,
                                                 it flips every decision the probe makes
===========  ==================================  ==========================================================

:meth:`LinearProbe.edit` builds these from a probe (its boundary and class means, measured on its
training tokens).

**Invariant** (tested): on activations with a planted linear feature, probes reach accuracy ~1 while the
control task stays near chance; a ``reflect`` edit about a probe's boundary flips all its predictions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from dtinterp.data.dataset import TrajectoryDataset
from dtinterp.errors import DtinterpError
from dtinterp.interp.activation_store import ActivationStore
from dtinterp.interp.directions import SavedDirection

EDIT_MODES = ("set", "add", "reflect")
#: Probe kinds: logistic regression on classes, or ridge regression on values.
KINDS = ("categorical", "scalar")
#: What a probe's direction is made of: its weights (the classifier's normal) or its class means.
BASES = ("weights", "means")
CONTROLS = ("type", "shuffle")
#: Fewest training tokens (and classes) a position needs for a probe.
MIN_TRAIN = 10


class ProbeError(DtinterpError):
    """A probe request that cannot be met: unknown fact, no facts in the dataset, too little data."""


@dataclass(frozen=True, eq=False)
class DirectionEdit:
    """An intervention along one direction at one hook (see the module docstring's table)."""

    hook: str
    direction: Float[Tensor, "d"]
    """The direction (normalised to unit length on construction)."""
    mode: str = "add"
    """One of :data:`EDIT_MODES`."""
    value: float = 0.0
    """``set``: the new projection; ``add``: the amount added; ``reflect``: the mirror point."""
    positions: tuple[int, ...] | None = None
    """Token positions edited (None: every position)."""

    def __post_init__(self) -> None:
        if self.mode not in EDIT_MODES:
            raise ProbeError(f"edit mode must be one of {EDIT_MODES}, got {self.mode!r}")
        d = torch.as_tensor(self.direction).detach().float().cpu().reshape(-1)
        norm = d.norm()
        if not torch.isfinite(norm) or norm == 0:
            raise ProbeError("the edit's direction must be a non-zero finite vector")
        object.__setattr__(self, "direction", d / norm)
        if self.positions is not None:
            object.__setattr__(self, "positions", tuple(int(p) for p in self.positions))

    def apply(self, act: Float[Tensor, "B P d"]) -> Float[Tensor, "B P d"]:
        """``act`` edited at :attr:`positions` (a new tensor)."""
        u = self.direction.to(act)
        x = act if self.positions is None else act[:, list(self.positions)]
        p = x @ u  # [B, Pe]
        if self.mode == "set":
            delta = (self.value - p)[..., None] * u
        elif self.mode == "add":
            delta = torch.full_like(p, self.value)[..., None] * u
        else:
            delta = 2 * (self.value - p)[..., None] * u
        if self.positions is None:
            return act + delta
        out = act.clone()
        out[:, list(self.positions)] += delta
        return out

    def hooks(self) -> list[tuple[str, Callable]]:
        """``[(hook, fn)]`` for ``model.hooks(fwd_hooks=...)``, ``run_with_hooks`` or ``rollout(hooks=...)``."""
        return [(self.hook, lambda act, hook: self.apply(act))]


@dataclass
class LinearProbe:
    """One probe: a fact read from one hook at one token position, in raw activation space."""

    fact: str
    kind: str
    """``categorical`` (logistic) or ``scalar`` (ridge)."""
    hook: str
    position: int
    """Token position (in the window) it reads."""
    label: str
    """That position's token label (``S10``)."""
    weight: Float[Tensor, "C d"]
    """Raw-space weights: class logits ``x @ weight.T + bias`` (scalar: one row, the prediction)."""
    bias: Float[Tensor, "C"]
    classes: list[int]
    """The fact's value of each class (categorical; empty for a scalar fact)."""
    class_means: Float[Tensor, "C d"]
    """Mean training activation of each class (scalar: one row, the overall mean)."""
    class_counts: list[int]
    mean: Float[Tensor, "d"]
    """Mean training activation."""
    edit_positions: tuple[int, ...]
    """Positions an edit built from this probe changes by default (every token of its kind)."""
    train_score: float = float("nan")
    test_score: float = float("nan")

    def logits(self, x: Float[Tensor, "n d"]) -> Float[Tensor, "n C"]:
        return x.to(self.weight) @ self.weight.T + self.bias

    def predict(self, x: Float[Tensor, "n d"]) -> Tensor:
        """Predicted fact values (class values for a categorical fact)."""
        out = self.logits(x)
        if self.kind == "scalar":
            return out[:, 0]
        return torch.tensor(self.classes)[out.argmax(-1)]

    def _class(self, towards: int | None) -> int:
        if self.kind == "scalar":
            raise ProbeError(f"{self.fact} is a scalar fact: its probe has one direction, no classes")
        if towards is None:
            return len(self.classes) - 1
        if towards not in self.classes:
            raise ProbeError(f"{self.fact} has no class {towards!r} (classes {self.classes})")
        return self.classes.index(towards)

    def _vector(self, towards: int | None, basis: str) -> tuple[Tensor, float]:
        """``(v, offset)``: class ``towards`` beats the mean of the others where ``x . v + offset > 0``."""
        if basis not in BASES:
            raise ProbeError(f"basis must be one of {BASES}, got {basis!r}")
        if self.kind == "scalar":
            if basis == "means":
                raise ProbeError(f"{self.fact} is a scalar fact: it has no class means, use basis='weights'")
            return self.weight[0], float(self.bias[0])
        c = self._class(towards)
        others = [j for j in range(len(self.classes)) if j != c]
        if basis == "weights":
            offset = float(self.bias[c] - self.bias[others].mean())
            return self.weight[c] - self.weight[others].mean(0), offset
        mine, rest = self.class_means[c], self.class_means[others].mean(0)
        v = mine - rest
        return v, float(-(mine + rest) @ v / 2)  # zero half-way between the means

    def direction(self, towards: int | None = None, basis: str = "weights") -> Float[Tensor, "d"]:
        """Unit direction towards class ``towards`` (default: the last class) against the mean of the
        others: the probe's own normal (``weights``) or the difference of the class means (``means``,
        a mass-mean probe); for a scalar fact, the direction of increasing prediction."""
        v, _ = self._vector(towards, basis)
        return v / v.norm()

    def boundary(self, towards: int | None = None, basis: str = "weights") -> float:
        """Projection onto :meth:`direction` where class ``towards`` ties with the mean of the others (for
        ``means``: half-way between their means)."""
        self._class(towards)
        v, offset = self._vector(towards, basis)
        return -offset / float(v.norm())

    def edit(
        self,
        mode: str = "reflect",
        towards: int | None = None,
        value: float | None = None,
        positions: Sequence[int] | None = None,
        basis: str = "weights",
    ) -> DirectionEdit:
        """A :class:`DirectionEdit` along :meth:`direction` (``basis``) at the probe's hook.

        Default values: ``reflect`` about the boundary (flips the probe's decisions), ``set`` to the
        projection of class ``towards``'s mean (steers to it), ``add`` the distance from the other
        classes' mean to class ``towards``'s mean along the direction. ``positions`` default to every
        token of the probe's kind.
        """
        if mode not in EDIT_MODES:
            raise ProbeError(f"edit mode must be one of {EDIT_MODES}, got {mode!r}")
        u = self.direction(towards, basis)
        if value is None:
            if mode == "reflect":
                value = self.boundary(towards, basis)
            else:
                c = self._class(towards)
                others = [j for j in range(len(self.classes)) if j != c]
                target, rest = float(self.class_means[c] @ u), float(self.class_means[others].mean(0) @ u)
                value = target if mode == "set" else target - rest
        positions = self.edit_positions if positions is None else positions
        return DirectionEdit(self.hook, u, mode, float(value), tuple(positions))

    def saved_direction(
        self,
        name: str | None = None,
        towards: int | None = None,
        model_name: str = "",
        basis: str = "weights",
    ) -> SavedDirection:
        """:meth:`direction` as a saved direction (kind ``custom``; metadata: the probe's provenance)."""
        cls = None if self.kind == "scalar" else self.classes[self._class(towards)]
        tag = "probe" if basis == "weights" else "probe-means"
        return SavedDirection(
            name=name or f"{tag}:{self.fact}={cls}@{self.hook}:{self.label}".replace("blocks.", "L"),
            vector=self.direction(towards, basis),
            kind="custom",
            model=model_name,
            description=f"linear probe ({basis}) for {self.fact}"
            + ("" if cls is None else f" = {cls}")
            + f" at {self.hook} {self.label} (held-out score {self.test_score:.3f})",
            metadata={
                "source": "probe",
                "basis": basis,
                "fact": self.fact,
                "class": cls,
                "hook": self.hook,
                "position": self.position,
                "label": self.label,
                "boundary": None if cls is None else self.boundary(towards, basis),
                "test_score": self.test_score,
                "train_score": self.train_score,
            },
        )


@dataclass
class ProbeGrid:
    """Probes for one fact at every stored hook x token position, scored on held-out episodes."""

    fact: str
    kind: str
    """``categorical`` or ``scalar``."""
    metric: str
    """``accuracy`` (categorical) or ``r2`` (scalar)."""
    hooks: list[str]
    labels: list[str]
    """Token label of each position (``S1 .. SK``)."""
    score: Float[Tensor, "L P"]
    """Held-out score of each probe (NaN where a position had too little data)."""
    train_score: Float[Tensor, "L P"]
    chance: Float[Tensor, "P"]
    """Held-out score of the trivial predictor (training majority class, or training mean)."""
    control: Float[Tensor, "L P"]
    """Held-out score of the same probe trained on the control task."""
    n_train: list[int]
    """Training tokens at each position."""
    n_test: list[int]
    probes: list[list[LinearProbe | None]]
    """``probes[hook][position]``."""
    train_episodes: list[int] = field(default_factory=list)
    test_episodes: list[int] = field(default_factory=list)
    control_task: str = "type"

    @property
    def selectivity(self) -> Float[Tensor, "L P"]:
        """Score minus control score (Hewitt & Liang): how much of the score the probe's capacity alone
        does not explain."""
        return self.score - self.control

    def best(self) -> LinearProbe:
        """The probe with the highest held-out score (the earliest layer and position on ties)."""
        flat = torch.nan_to_num(self.score, nan=-float("inf")).flatten()
        i = int(flat.argmax())
        probe = self.probes[i // len(self.labels)][i % len(self.labels)]
        if probe is None:
            raise ProbeError(f"no probe for {self.fact} could be trained")
        return probe

    def table(self) -> list[dict]:
        """One row per probe: hook, position, score, chance, control, selectivity (for reports)."""
        rows = []
        for li, h in enumerate(self.hooks):
            for pi, lab in enumerate(self.labels):
                rows.append(
                    {
                        "hook": h,
                        "position": lab,
                        self.metric: float(self.score[li, pi]),
                        "chance": float(self.chance[pi]),
                        "control": float(self.control[li, pi]),
                        "selectivity": float(self.selectivity[li, pi]),
                        "n_train": self.n_train[pi],
                        "n_test": self.n_test[pi],
                    }
                )
        return rows


def fact_kind(values: np.ndarray) -> str:
    """``categorical`` for an integer fact (:mod:`envs.facts` stores classes as int16), else ``scalar``."""
    return "categorical" if values.dtype.kind in "iu" else "scalar"


def split_episodes(n_episodes: int, test_fraction: float = 0.2, seed: int = 0) -> tuple[list[int], list[int]]:
    """A seeded random split of episode indices into (train, test), each sorted and non-empty."""
    if n_episodes < 2:
        raise ProbeError(f"need at least 2 episodes to hold some out, got {n_episodes}")
    if not 0 < test_fraction < 1:
        raise ProbeError(f"test_fraction must be in (0, 1), got {test_fraction}")
    perm = np.random.default_rng(seed).permutation(n_episodes)
    n_test = min(max(1, round(test_fraction * n_episodes)), n_episodes - 1)
    return sorted(perm[n_test:].tolist()), sorted(perm[:n_test].tolist())


def observation_types(ds: TrajectoryDataset, rows: np.ndarray) -> np.ndarray:
    """int64 id of the (observation, direction) at each dataset row: the input types of the control task."""
    flat = np.concatenate([ds.obs[rows].reshape(len(rows), -1), ds.directions[rows][:, None]], axis=1)
    flat = np.ascontiguousarray(flat)
    keys = flat.view(np.dtype((np.void, flat.shape[1]))).ravel()
    return np.unique(keys, return_inverse=True)[1].astype(np.int64)


def fit_probe(
    x: Float[Tensor, "n d"],
    y: Tensor,
    kind: str,
    l2: float = 1e-3,
    max_iter: int = 200,
    n_classes: int | None = None,
) -> tuple[Float[Tensor, "C d"], Float[Tensor, "C"]]:
    """Raw-space ``(weight, bias)`` of a probe fit on ``x``: multinomial logistic regression on class
    indices ``y`` in ``0 .. n_classes - 1`` (categorical; default ``y.max() + 1`` classes) or ridge
    regression on values ``y`` (scalar), both on standardised ``x`` with L2 penalty ``l2`` (on the
    weights, added to the mean loss). Deterministic: L-BFGS from zero, ridge in closed form."""
    x = x.double()
    mu, sd = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mu) / sd
    n, d = z.shape
    if kind != "scalar":
        z = z.float()  # L-BFGS in float32: twice as fast, and the fit is far coarser than float32 rounding
    if kind == "scalar":
        yd = y.double()
        ym = yd.mean()
        w = torch.linalg.solve(z.T @ z / n + l2 * torch.eye(d, dtype=z.dtype), z.T @ (yd - ym) / n)[None]
        b = ym[None]
    else:
        n_classes = int(y.max()) + 1 if n_classes is None else n_classes
        w = torch.zeros(n_classes, d, dtype=z.dtype, requires_grad=True)
        b = torch.zeros(n_classes, dtype=z.dtype, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

        def closure() -> Tensor:
            opt.zero_grad()
            loss = F.cross_entropy(z @ w.T + b, y) + l2 * w.pow(2).sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)
        w, b = w.detach(), b.detach()
    # Fold the standardisation in: (x - mu) / sd @ w.T + b == x @ (w / sd).T + (b - (mu / sd) @ w.T).
    w, b = w.double(), b.double()
    return (w / sd).float(), (b - (mu / sd) @ w.T).float()


def _score(kind: str, pred: Tensor, y: Tensor) -> float:
    if len(y) == 0:
        return float("nan")
    if kind == "scalar":
        y = y.double()
        ss = (y - y.mean()).pow(2).sum()
        return float(1 - (pred.double() - y).pow(2).sum() / ss) if ss > 0 else float("nan")
    return float((pred == y).double().mean())


def train_probes(
    store: ActivationStore,
    ds: TrajectoryDataset,
    fact: str,
    hooks: Sequence[str] | None = None,
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
    control: str = "type",
    l2: float = 1e-3,
    max_iter: int = 200,
    token_mask: np.ndarray | None = None,
    kind: str | None = None,
) -> ProbeGrid:
    """Fit and score a probe for ``fact`` at every hook (default: all stored) and stored position.

    ``ds`` is the dataset the store was harvested from (its facts give the labels). ``control`` is
    ``type`` (Hewitt & Liang's random label per observation type) or ``shuffle`` (labels permuted across
    all tokens). ``token_mask`` (bool ``[W, Kp]``) keeps only some stored tokens, in training and testing
    alike (e.g. windows whose context holds what the fact needs). ``kind`` (:data:`KINDS`) overrides the
    probe the fact's type calls for: ``scalar`` reads a categorical fact's values as numbers (ridge, R²),
    ``categorical`` an integer-valued scalar fact's values as classes (logistic, accuracy).
    """
    if fact not in ds.facts:
        have = (
            ", ".join(sorted(ds.facts))
            or "none (collect with facts, or add them: dtinterp.data.collect.add_facts)"
        )
        raise ProbeError(f"the dataset has no fact {fact!r}; it has {have}")
    if control not in CONTROLS:
        raise ProbeError(f"control must be one of {CONTROLS}, got {control!r}")
    if kind is not None and kind not in KINDS:
        raise ProbeError(f"kind must be one of {KINDS}, got {kind!r}")
    store.check_fits(ds=ds)
    hooks = store.hooks if hooks is None else list(hooks)
    values = ds.facts[fact]
    kind = kind or fact_kind(values)
    if kind == "categorical" and values.dtype.kind == "f":
        if not np.array_equal(values, np.round(values)):
            raise ProbeError(f"{fact} takes non-integer values: it has no classes for a categorical probe")
        values = values.astype(np.int64)
    rows = store.rows().numpy()  # [W, Kp]
    episode = store.ends()[:, 0].numpy()  # [W]
    ep_ids = np.unique(episode)
    train_idx, test_idx = split_episodes(len(ep_ids), test_fraction, seed)
    train_eps, test_eps = ep_ids[train_idx], ep_ids[test_idx]
    is_train = np.isin(episode, train_eps)

    real = rows >= 0
    if token_mask is not None:
        token_mask = np.asarray(token_mask, dtype=bool)
        if token_mask.shape != rows.shape:
            raise ProbeError(f"token_mask must have the store's shape {rows.shape}, got {token_mask.shape}")
        real &= token_mask
    all_rows = rows[real]
    if kind == "categorical":
        classes = np.unique(values[all_rows]).tolist()
        target = np.searchsorted(np.asarray(classes), values)  # class index of every dataset row
    else:
        classes = []
        target = values.astype(np.float64)
    ctrl = _control_targets(ds, rows, real & is_train[:, None], target, kind, control, seed)

    n_pos = rows.shape[1]
    score = torch.full((len(hooks), n_pos), float("nan"))
    train_score, ctrl_score = score.clone(), score.clone()
    chance = torch.full((n_pos,), float("nan"))
    n_train, n_test = [], []
    probes: list[list[LinearProbe | None]] = [[None] * n_pos for _ in hooks]
    labels = store.position_labels
    masks = []
    for p in range(n_pos):
        tr, te = real[:, p] & is_train, real[:, p] & ~is_train
        masks.append((torch.from_numpy(tr), torch.from_numpy(te)))
        n_train.append(int(tr.sum()))
        n_test.append(int(te.sum()))
        y_tr, y_te = target[rows[tr, p]], target[rows[te, p]]
        if kind == "categorical" and len(y_tr):
            majority = np.bincount(y_tr).argmax()
            chance[p] = float((y_te == majority).mean()) if len(y_te) else float("nan")
        elif len(y_tr):
            chance[p] = _score(kind, torch.full((len(y_te),), float(y_tr.mean())), torch.from_numpy(y_te))

    to_t = (lambda a: torch.from_numpy(np.asarray(a)).long()) if kind == "categorical" else torch.from_numpy
    for li, hook in enumerate(hooks):
        acts = store.load(hook).flatten(2).float()  # [W, Kp, d]
        for p in range(n_pos):
            tr, te = masks[p]
            y_tr, y_te = to_t(target[rows[tr.numpy(), p]]), to_t(target[rows[te.numpy(), p]])
            if len(y_tr) < MIN_TRAIN or (kind == "categorical" and len(torch.unique(y_tr)) < 2):
                continue
            x_tr, x_te = acts[tr, p], acts[te, p]
            probe = _make_probe(fact, kind, hook, store, p, x_tr, y_tr, classes, l2, max_iter)
            probe.train_score = _score(kind, _predict_index(probe, x_tr), y_tr)
            probe.test_score = _score(kind, _predict_index(probe, x_te), y_te)
            probes[li][p] = probe
            score[li, p], train_score[li, p] = probe.test_score, probe.train_score
            c_tr, c_te = to_t(ctrl[tr.numpy(), p]), to_t(ctrl[te.numpy(), p])
            if kind == "categorical" and len(torch.unique(c_tr)) < 2:
                continue
            cw, cb = fit_probe(x_tr, c_tr, kind, l2, max_iter, n_classes=len(classes) or None)
            c_pred = x_te @ cw.T + cb
            ctrl_score[li, p] = _score(kind, c_pred[:, 0] if kind == "scalar" else c_pred.argmax(-1), c_te)
    return ProbeGrid(
        fact=fact,
        kind=kind,
        metric="accuracy" if kind == "categorical" else "r2",
        hooks=hooks,
        labels=labels,
        score=score,
        train_score=train_score,
        chance=chance,
        control=ctrl_score,
        n_train=n_train,
        n_test=n_test,
        probes=probes,
        train_episodes=[int(e) for e in train_eps],
        test_episodes=[int(e) for e in test_eps],
        control_task=control,
    )


def _predict_index(probe: LinearProbe, x: Tensor) -> Tensor:
    out = probe.logits(x)
    return out[:, 0] if probe.kind == "scalar" else out.argmax(-1)


def _make_probe(
    fact: str,
    kind: str,
    hook: str,
    store: ActivationStore,
    p: int,
    x: Tensor,
    y: Tensor,
    classes: list[int],
    l2: float,
    max_iter: int,
) -> LinearProbe:
    w, b = fit_probe(x, y, kind, l2, max_iter, n_classes=len(classes) or None)
    if kind == "categorical":
        counts = torch.bincount(y, minlength=len(classes))
        means = torch.stack([x[y == c].mean(0) if counts[c] else x.mean(0) for c in range(len(classes))])
        counts_l = counts.tolist()
    else:
        means, counts_l = x.mean(0, keepdim=True), [len(y)]
    return LinearProbe(
        fact=fact,
        kind=kind,
        hook=hook,
        position=store.positions[p],
        label=store.position_labels[p],
        weight=w,
        bias=b,
        classes=[int(c) for c in classes],
        class_means=means,
        class_counts=counts_l,
        mean=x.mean(0),
        edit_positions=tuple(store.positions),
    )


def _control_targets(
    ds: TrajectoryDataset,
    rows: np.ndarray,
    train_mask: np.ndarray,
    target: np.ndarray,
    kind: str,
    control: str,
    seed: int,
) -> np.ndarray:
    """Control-task target of every stored token ``[W, Kp]`` (garbage at padding, never read)."""
    rng = np.random.default_rng([seed, 1])
    real = rows >= 0
    out = np.zeros(rows.shape, dtype=target.dtype)
    train_labels = target[rows[train_mask]]
    if control == "shuffle":
        out[real] = rng.permutation(target[rows[real]])
        return out
    types = observation_types(ds, rows[real])
    table = rng.choice(train_labels, size=int(types.max()) + 1, replace=True)
    out[real] = table[types]
    return out


__all__ = [
    "BASES",
    "CONTROLS",
    "EDIT_MODES",
    "KINDS",
    "DirectionEdit",
    "LinearProbe",
    "ProbeError",
    "ProbeGrid",
    "fact_kind",
    "fit_probe",
    "observation_types",
    "split_episodes",
    "train_probes",
]
