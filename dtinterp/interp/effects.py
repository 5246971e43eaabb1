"""What forward hooks do to the model: on its loss over dataset windows, and on played-out episodes.

Probes (:class:`~dtinterp.interp.probes.DirectionEdit`), sparse autoencoders (splicing a reconstruction
in, :meth:`~dtinterp.interp.sae.TopKSAE.splice_hooks`) and ablations all end up as TransformerLens
forward hooks ``[(hook_name, fn)]``. Two measurements of any such list, each against the same run
without the hooks:

- :func:`window_effect`: over windows, at every real state token whose action is known (a dataset's
  windows know every action, a live window not its last), the model's cross-entropy on the recorded
  actions (its training loss), its accuracy, the share of tokens whose greedy action is unchanged and the
  mean ``KL(clean || hooked)`` of the action distributions.
- :func:`played_effect`: the same seeds played greedily with and without the hooks
  (:func:`~dtinterp.play.rollout.rollout`), with every episode's return, success and the env's
  ground-truth facts (:mod:`envs.facts`) at its start and after its last action: for Memory,
  ``agent_side`` after the last action is the side the agent chose.

**Invariant** (tested): empty or identity hooks change nothing: zero loss change, agreement 1, KL 0, and
the same episodes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from dtinterp.model.checkpoint import Checkpoint
from dtinterp.model.hooked_dt import HookedDecisionTransformer
from dtinterp.model.inputs import DTInputs
from dtinterp.play.rollout import rollout
from envs.facts import read_facts
from envs.replay import resimulate
from envs.spec import make_env

Hooks = Sequence[tuple[str, Callable]]


@dataclass
class WindowEffect:
    """The hooks' effect on the action predictions over a batch of windows."""

    loss_clean: float
    """Mean cross-entropy of the recorded actions without the hooks (nats)."""
    loss_hooked: float
    """The same with the hooks."""
    accuracy_clean: float
    """Share of tokens whose greedy action is the recorded one, without the hooks."""
    accuracy_hooked: float
    agreement: float
    """Share of tokens whose greedy action the hooks leave unchanged."""
    kl: float
    """Mean ``KL(clean || hooked)`` of the action distributions (nats)."""
    n_tokens: int
    """State tokens measured (real, with a recorded action)."""

    @property
    def delta_loss(self) -> float:
        return self.loss_hooked - self.loss_clean


@torch.inference_mode()
def window_effect(
    model: HookedDecisionTransformer, inputs: DTInputs, hooks: Hooks, batch_size: int = 512
) -> WindowEffect:
    """Run ``inputs`` with and without ``hooks`` (in batches) and compare the action predictions."""
    n_actions = model.cfg.n_actions
    sums = dict(ce_c=0.0, ce_h=0.0, acc_c=0.0, acc_h=0.0, agree=0.0, kl=0.0)
    n = 0
    device = model.W_U.device
    for b0 in range(0, inputs.batch_size, batch_size):
        batch = inputs[b0 : b0 + batch_size].to(device)
        clean = model(batch).float()  # [B, K, A]
        with model.hooks(fwd_hooks=list(hooks)):
            hooked = model(batch).float()
        mask = batch.pad_mask & (batch.actions < n_actions)  # real tokens with a recorded action
        if not bool(mask.any()):
            continue
        a = batch.actions[mask].long()
        lc, lh = clean[mask].log_softmax(-1), hooked[mask].log_softmax(-1)
        sums["ce_c"] += float(F.nll_loss(lc, a, reduction="sum"))
        sums["ce_h"] += float(F.nll_loss(lh, a, reduction="sum"))
        sums["acc_c"] += float((lc.argmax(-1) == a).sum())
        sums["acc_h"] += float((lh.argmax(-1) == a).sum())
        sums["agree"] += float((lc.argmax(-1) == lh.argmax(-1)).sum())
        sums["kl"] += float((lc.exp() * (lc - lh)).sum())
        n += int(mask.sum())
    if n == 0:
        raise ValueError("no real state token with a recorded action in these windows")
    return WindowEffect(
        loss_clean=sums["ce_c"] / n,
        loss_hooked=sums["ce_h"] / n,
        accuracy_clean=sums["acc_c"] / n,
        accuracy_hooked=sums["acc_h"] / n,
        agreement=sums["agree"] / n,
        kl=sums["kl"] / n,
        n_tokens=n,
    )


@dataclass
class Outcomes:
    """Greedy episodes of a set of seeds at one target return."""

    returns: np.ndarray
    """float64 [n]: each episode's return."""
    lengths: np.ndarray
    """int64 [n]: each episode's length."""
    final_facts: dict[str, np.ndarray]
    """The env's facts after each episode's last action (:mod:`envs.facts`), ``{name: [n]}``."""

    @property
    def success(self) -> np.ndarray:
        """bool [n]: MiniGrid pays a positive reward only on success."""
        return self.returns > 0

    @property
    def success_rate(self) -> float:
        return float(self.success.mean())


@dataclass
class PlayedEffect:
    """The same seeds played with and without the hooks."""

    seeds: list[int]
    target_rtg: float
    clean: Outcomes
    hooked: Outcomes
    start_facts: dict[str, np.ndarray]
    """The env's facts at each episode's start (e.g. Memory's ``correct_side``), ``{name: [n]}``."""

    @property
    def delta_success(self) -> float:
        return self.hooked.success_rate - self.clean.success_rate

    @property
    def delta_return(self) -> float:
        return float(self.hooked.returns.mean() - self.clean.returns.mean())

    def changed(self, fact: str, among: np.ndarray | None = None) -> float:
        """Share of episodes (of the bool mask ``among``) whose final ``fact`` the hooks changed."""
        diff = self.clean.final_facts[fact] != self.hooked.final_facts[fact]
        if among is not None:
            diff = diff[among]
        return float(diff.mean()) if diff.size else float("nan")


def play_outcomes(
    checkpoint: Checkpoint,
    seeds: Sequence[int],
    target_rtg: float,
    hooks: Hooks = (),
    num_envs: int = 32,
    progress: bool = False,
) -> Outcomes:
    """Play ``seeds`` greedily at ``target_rtg`` with ``hooks`` attached, and read each end state's facts."""
    results = rollout(
        checkpoint, target_rtg, list(seeds), num_envs=num_envs, record=True, progress=progress, hooks=hooks
    )
    finals: dict[str, list] = {}
    for r in results:
        env = resimulate(checkpoint.env_spec, r.seed, r.episode.actions)
        try:
            for k, v in read_facts(env).items():
                finals.setdefault(k, []).append(v)
        finally:
            env.close()
    return Outcomes(
        returns=np.array([r.episode_return for r in results], dtype=np.float64),
        lengths=np.array([r.length for r in results], dtype=np.int64),
        final_facts={k: np.asarray(v) for k, v in finals.items()},
    )


def start_facts(checkpoint: Checkpoint, seeds: Sequence[int]) -> dict[str, np.ndarray]:
    """The env's facts right after ``reset(seed)`` for each seed."""
    env = make_env(checkpoint.env_spec)
    rows: dict[str, list] = {}
    try:
        for s in seeds:
            env.reset(seed=int(s))
            for k, v in read_facts(env).items():
                rows.setdefault(k, []).append(v)
    finally:
        env.close()
    return {k: np.asarray(v) for k, v in rows.items()}


def played_effect(
    checkpoint: Checkpoint,
    hooks: Hooks,
    seeds: Sequence[int],
    target_rtg: float,
    num_envs: int = 32,
    clean: Outcomes | None = None,
    progress: bool = False,
) -> PlayedEffect:
    """Play ``seeds`` with and without ``hooks`` (pass ``clean`` to reuse an earlier clean run)."""
    seeds = [int(s) for s in seeds]
    if clean is None:
        clean = play_outcomes(checkpoint, seeds, target_rtg, (), num_envs, progress)
    hooked = play_outcomes(checkpoint, seeds, target_rtg, hooks, num_envs, progress)
    return PlayedEffect(seeds, float(target_rtg), clean, hooked, start_facts(checkpoint, seeds))


__all__ = [
    "Outcomes",
    "PlayedEffect",
    "WindowEffect",
    "play_outcomes",
    "played_effect",
    "start_facts",
    "window_effect",
]
