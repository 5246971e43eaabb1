"""Clean/corrupted pairs of windows: what activation patching, path patching and the causal plugins compare.

A pair is two batches of windows of the same shape, row ``b`` of one matched with row ``b`` of the other,
that differ in the input whose effect is studied. Three sources:

- **edits** (:func:`edit_pair`): the windows and a copy with token edits applied (the edit syntax of
  :mod:`dtinterp.interp.edits`: ``R*=0``, ``S1[3,5].object=key``, ...), to one window or to every
  window of a dataset batch alike;
- **resample** (:func:`resample_pair`): each window against another window of the batch that ends at the
  same episode step (same timesteps, same padding), drawn by a seeded derangement within each step.
  Windows that no other window shares a step with are left out of the pair (``rows`` says which stay);
- **env** (:func:`env_pair`): an env-level change re-simulated, where the env allows it. Memory (minigrid's
  ``MemoryEnv`` and the fixed-start variants) has the change ``other-cue``: the same episode with the
  other cue object (a key for a ball, a ball for a key). Memory's grid is one of four layouts (cue
  object x order of the two end objects) with fixed walls, so the env state at a window's first real
  step is pinned down by its observation: the pair finds the layout and pose that reproduce the window
  through its recorded actions (every observation checked, as :func:`envs.replay.resimulate` checks a
  seed), then plays the same actions from the same pose with the cue swapped. Actions, returns-to-go and
  timesteps are kept; only observations that show the cue change. Windows that never show the cue are
  identical in both runs and are left out. Other envs have no env-level pair: a one-line
  :class:`PairError`.

The same re-simulation tells what a Memory window pins down of the episode it comes from
(:func:`window_facts`): the cue object, the correct side and the agent's pose (:mod:`envs.facts` names),
wherever every layout and pose that reproduce the window agree on them (a window that never shows the cue
leaves the cue open). Hypothesis tests and steering vectors read them as features of the windows.

:func:`check_pair` is the one check every pair passes (and :func:`make_pair` applies to any two batches,
e.g. windows of two trajectory files): the same number of windows, the same context length, the same
observation grid (the same env) and the same padding (patching position p only means something if p is a
real token in both runs). Bad input is a one-line :class:`PairError` naming what differs.
"""

from __future__ import annotations

import copy
import functools
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from minigrid.core.world_object import Ball, Key
from minigrid.envs.memory import MemoryEnv

from dtinterp.errors import DtinterpError
from dtinterp.interp.edits import Edit, EditError, apply_edits
from dtinterp.model.inputs import DTInputs
from envs import EnvSpec, compact_obs, make_env

#: Where the corrupted windows come from.
PAIR_SOURCES = ("edits", "resample", "env")
#: Env-level changes :func:`env_pair` can re-simulate.
ENV_CHANGES = ("other-cue",)


class PairError(DtinterpError):
    """A clean/corrupted pair that cannot be built or whose windows do not match."""


@dataclass
class Pair:
    """Clean and corrupted windows, row for row."""

    clean: DTInputs
    """The clean windows (rows ``rows`` of the batch the pair was built from)."""
    corrupted: DTInputs
    """The corrupted windows, same shape and padding as ``clean``."""
    source: str
    """``edits``, ``resample``, ``env`` or ``given`` (:func:`make_pair`)."""
    description: str
    """What differs, for titles and summaries: the edits, the change, the resampling."""
    rows: list[int]
    """Index of each pair row in the batch it was built from."""
    partners: list[int] | None = None
    """``resample``: the batch index each corrupted window was taken from."""

    @property
    def size(self) -> int:
        return self.clean.batch_size


def check_pair(clean: DTInputs, corrupted: DTInputs, what: str = "the pair") -> None:
    """One-line :class:`PairError` unless the two batches can be compared row for row."""
    if clean.batch_size != corrupted.batch_size:
        raise PairError(
            f"{what}: {clean.batch_size} clean window(s) but {corrupted.batch_size} corrupted window(s)"
        )
    if clean.context_len != corrupted.context_len:
        raise PairError(
            f"{what}: the windows differ in length ({clean.context_len} vs {corrupted.context_len} timesteps)"
        )
    g1, g2 = tuple(clean.obs.shape[2:]), tuple(corrupted.obs.shape[2:])
    if g1 != g2:
        raise PairError(
            f"{what}: the windows come from different envs ({g1[0]}x{g1[1]} vs {g2[0]}x{g2[1]} observations)"
        )
    diff = (clean.pad_mask.cpu() != corrupted.pad_mask.cpu()).any(1)
    if bool(diff.any()):
        b = int(torch.nonzero(diff)[0])
        n1, n2 = int(clean.pad_mask[b].sum()), int(corrupted.pad_mask[b].sum())
        raise PairError(
            f"{what}: window {b} differs in length ({n1} vs {n2} real timesteps): patched positions "
            "would not correspond"
        )


def make_pair(clean: DTInputs, corrupted: DTInputs, description: str = "given windows") -> Pair:
    """Two batches given by the caller (e.g. windows of two episodes), checked by :func:`check_pair`."""
    check_pair(clean, corrupted)
    return Pair(clean, corrupted.to(clean.device), "given", description, list(range(clean.batch_size)))


def edit_pair(inputs: DTInputs, edits: Sequence[Edit], rtg_scale: float = 1.0) -> Pair:
    """``inputs`` against a copy with ``edits`` applied to every window."""
    if not edits:
        raise PairError("pair=edits needs at least one edit (e.g. R*=0 or S1[3,5].object=key)")
    try:
        corrupted = apply_edits(inputs, list(edits), rtg_scale)
    except EditError as exc:
        raise PairError(str(exc)) from None
    rows = list(range(inputs.batch_size))
    return Pair(inputs, corrupted, "edits", ", ".join(str(e) for e in edits), rows)


def resample_pair(inputs: DTInputs, seed: int = 0) -> Pair:
    """Each window against another window of ``inputs`` ending at the same episode step.

    Windows are grouped by their timesteps and padding (the same step gives both); within a group of
    ``n >= 2`` windows, a seeded random order is shifted by one (a derangement: no window is its own
    partner). Windows alone at their step are left out; if every window is, a :class:`PairError`.
    """
    key = torch.cat([inputs.timesteps.cpu(), inputs.pad_mask.cpu().long()], 1)
    groups: dict[tuple[int, ...], list[int]] = {}
    for b, row in enumerate(key.tolist()):
        groups.setdefault(tuple(row), []).append(b)
    g = torch.Generator().manual_seed(seed)
    partner: dict[int, int] = {}
    for members in groups.values():
        if len(members) < 2:
            continue
        order = [members[i] for i in torch.randperm(len(members), generator=g).tolist()]
        partner.update({b: order[(i + 1) % len(order)] for i, b in enumerate(order)})
    if not partner:
        raise PairError(
            f"pair=resample needs two windows that end at the same episode step; these {inputs.batch_size} "
            "window(s) all end at different steps (give a dataset: --data F --episodes N)"
        )
    rows = sorted(partner)
    partners = [partner[b] for b in rows]
    idx, src = torch.as_tensor(rows), torch.as_tensor(partners)
    clean, corrupted = inputs[idx.to(inputs.device)], inputs[src.to(inputs.device)]
    left = inputs.batch_size - len(rows)
    note = f"; {left} window(s) alone at their step left out" if left else ""
    description = f"each window vs another window ending at the same step (seed {seed}){note}"
    return Pair(clean, corrupted, "resample", description, rows, partners)


def env_pair(inputs: DTInputs, env_spec: EnvSpec | None, change: str = "other-cue") -> Pair:
    """``inputs`` against the same episodes re-simulated with an env-level ``change`` (module docstring).

    Rows whose observations do not change (the cue never in view) are left out; if none change, a
    :class:`PairError`.
    """
    if change not in ENV_CHANGES:
        raise PairError(f"unknown env change {change!r}; expected one of {', '.join(ENV_CHANGES)}")
    if env_spec is None:
        raise PairError("pair=env re-simulates the model's env, but the model records no env")
    world = _memory_world(env_spec)
    obs = inputs.obs.cpu().numpy()
    new_obs = obs.copy()
    for b, real, o, d, a in _window_steps(inputs):
        new_obs[b, real] = world.other_cue(o, d, a, b)
    changed = (new_obs != obs).reshape(inputs.batch_size, -1).any(1)
    rows = np.flatnonzero(changed).tolist()
    if not rows:
        raise PairError(
            f"pair=env: the cue is not in view in any of the {inputs.batch_size} window(s), so the other-cue "
            "episode looks the same (choose steps whose window shows the start room)"
        )
    corrupted = inputs.clone()
    corrupted.obs = torch.from_numpy(new_obs).to(inputs.obs.device)
    idx = torch.as_tensor(rows, device=inputs.device)
    left = inputs.batch_size - len(rows)
    note = f"; {left} window(s) that never show the cue left out" if left else ""
    description = f"the same episode re-simulated with the other cue object{note}"
    return Pair(inputs[idx], corrupted[idx], "env", description, rows)


# ------------------------------------------------------------------------------------------- Memory


class _MemoryWorld:
    """Memory's four layouts and every pose in them, for re-simulating windows with the other cue.

    One env (reset once) is re-used: each candidate state is written into it (grid, pose) and stepped
    with the window's actions. Memory never changes its grid (pickup acts as toggle, which does nothing
    to a key or a ball), so a layout's grid is shared by every replay.
    """

    def __init__(self, spec: EnvSpec):
        self.spec = spec
        self.env = make_env(spec)
        self.env.reset(seed=0)
        base = self.env.unwrapped
        if not isinstance(base, MemoryEnv):
            self.env.close()
            raise PairError(
                f"pair=env: {spec.env_id} has no env-level counterfactual here (only Memory envs: the other "
                "cue object); use pair=edits or pair=resample"
            )
        if base.random_length:
            self.env.close()
            raise PairError(
                f"pair=env: {spec.env_id} draws its hallway length at random, so a window does not pin down "
                "its layout; use pair=edits or pair=resample"
            )
        self.base = base
        self.lock = threading.Lock()
        mid, end = base.height // 2, base.width - 3  # MemoryEnv._gen_grid's geometry
        self.cue = (1, mid - 1)
        self.ends = ((end + 1, mid - 2), (end + 1, mid + 2))
        objects = [base.grid.get(*p) for p in (self.cue, *self.ends)]
        if any(o is None or o.type not in ("key", "ball") for o in objects):
            raise PairError(
                f"pair=env: {spec.env_id} does not lay out its cue and end objects as MemoryEnv does"
            )
        colour = objects[0].color
        kinds = {"key": Key, "ball": Ball}
        # layout = (cue type, upper end type); the lower end holds the other type
        self.layouts: dict[tuple[str, str], tuple[object, tuple[int, int], tuple[int, int]]] = {}
        for cue in ("key", "ball"):
            for upper in ("key", "ball"):
                lower = "ball" if upper == "key" else "key"
                grid = copy.deepcopy(base.grid)
                grid.set(*self.cue, kinds[cue](colour))
                grid.set(*self.ends[0], kinds[upper](colour))
                grid.set(*self.ends[1], kinds[lower](colour))
                up, down = (self.ends[0][0], self.ends[0][1] + 1), (self.ends[1][0], self.ends[1][1] - 1)
                success, failure = (up, down) if cue == upper else (down, up)
                self.layouts[(cue, upper)] = (grid, success, failure)
        floor = [(x, y) for x in range(base.width) for y in range(base.height) if base.grid.get(x, y) is None]
        self.by_view: dict[bytes, list[tuple[tuple[str, str], tuple[int, int], int]]] = {}
        for layout in self.layouts:
            for pos in floor:
                for d in range(4):
                    self._place(layout, pos, d)
                    self.by_view.setdefault(self._key(*self._observe()), []).append((layout, pos, d))

    @staticmethod
    def _key(grid: np.ndarray, direction: int) -> bytes:
        return np.ascontiguousarray(grid, dtype=np.uint8).tobytes() + bytes([int(direction)])

    def _place(self, layout: tuple[str, str], pos: tuple[int, int], direction: int) -> None:
        grid, success, failure = self.layouts[layout]
        b = self.base
        b.grid, b.success_pos, b.failure_pos = grid, success, failure
        b.agent_pos, b.agent_dir, b.carrying, b.step_count = np.array(pos), direction, None, 0

    def _observe(self, obs: dict | None = None) -> tuple[np.ndarray, int]:
        obs = self.base.gen_obs() if obs is None else obs
        if isinstance(self.env, gym.ObservationWrapper):  # the fully observed grid
            obs = self.env.observation(obs)
        return compact_obs(obs)

    def _replay(
        self, layout: tuple[str, str], pos: tuple[int, int], direction: int, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Observations and directions from the pose, then after each action."""
        self._place(layout, pos, direction)
        grids, dirs = [], []
        g, d = self._observe()
        grids.append(g), dirs.append(d)
        for a in actions:
            obs, *_ = self.base.step(int(a))
            g, d = self._observe(obs)
            grids.append(g), dirs.append(d)
        return np.stack(grids), np.asarray(dirs)

    def states_of(
        self, obs: np.ndarray, dirs: np.ndarray, actions: np.ndarray
    ) -> set[tuple[tuple[str, str], tuple[int, int, int]]]:
        """Every ``(layout, pose)`` in which a window's real timesteps (``obs [n, W, H, 3]``, ``actions [n - 1]``)
        are reproduced through its actions: the layout ``(cue type, upper end type)`` and the agent's pose
        ``(x, y, direction)`` at the window's last step."""
        out = set()
        with self.lock:
            for layout, pos, d in self.by_view.get(self._key(obs[0], dirs[0]), []):
                if all(map(np.array_equal, self._replay(layout, pos, d, actions), (obs, dirs))):
                    x, y = (int(v) for v in self.base.agent_pos)
                    out.add((layout, (x, y, int(self.base.agent_dir))))
        return out

    def other_cue(self, obs: np.ndarray, dirs: np.ndarray, actions: np.ndarray, b: int) -> np.ndarray:
        """The real timesteps of window ``b`` (``obs [n, W, H, 3]``, ``actions [n - 1]``) re-simulated with
        the other cue object."""
        with self.lock:
            found: dict[bytes, np.ndarray] = {}
            for layout, pos, d in self.by_view.get(self._key(obs[0], dirs[0]), []):
                grids, ds = self._replay(layout, pos, d, actions)
                if not (np.array_equal(grids, obs) and np.array_equal(ds, dirs)):
                    continue
                swapped = ("ball" if layout[0] == "key" else "key", layout[1])
                other, _ = self._replay(swapped, pos, d, actions)
                found.setdefault(other.tobytes(), other)
        if not found:
            raise PairError(
                f"pair=env: window {b} is not a {self.spec.env_id} episode (no layout and pose reproduce its "
                "observations through its actions; an edited window?)"
            )
        if len(found) > 1:
            raise PairError(
                f"pair=env: window {b} fits several {self.spec.env_id} states with different other-cue "
                "episodes; use pair=edits"
            )
        return next(iter(found.values()))


def _window_steps(inputs: DTInputs) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Each window's real (unpadded) steps: ``(b, their positions, observations, directions, the actions
    taken between them)``."""
    obs = inputs.obs.cpu().numpy()
    dirs = inputs.directions.cpu().numpy()
    actions = inputs.actions.cpu().numpy()
    pad = inputs.pad_mask.cpu().numpy()
    for b in range(inputs.batch_size):
        real = np.flatnonzero(pad[b])
        yield b, real, obs[b, real], dirs[b, real], actions[b, real[:-1]]


@functools.lru_cache(maxsize=8)
def _memory_world(spec: EnvSpec) -> _MemoryWorld:
    return _MemoryWorld(spec)


#: The facts :func:`window_facts` reads off Memory windows (:mod:`envs.facts` names), at the last step.
WINDOW_FACTS = ("cue_object", "correct_side", "agent_x", "agent_y", "agent_dir")


def window_facts(inputs: DTInputs, env_spec: EnvSpec | None) -> dict[str, np.ndarray]:
    """What each window pins down of its episode: ``{fact: [B] int64}`` at its last step, ``-1`` where open.

    Memory (the envs :func:`env_pair` re-simulates): ``cue_object`` (0 key, 1 ball), ``correct_side`` (0 up,
    1 down) and the agent's pose ``agent_x``, ``agent_y``, ``agent_dir`` (:mod:`envs.facts`), read off every
    layout and pose that reproduce the window's observations through its actions; where these disagree (the
    cue never in view) or none does (an edited window), ``-1``. Other envs: a :class:`PairError`.
    """
    if env_spec is None:
        raise PairError("window facts re-simulate the model's env, but the model records no env")
    world = _memory_world(env_spec)
    out = {name: np.full(inputs.batch_size, -1, dtype=np.int64) for name in WINDOW_FACTS}
    for b, _, o, d, a in _window_steps(inputs):
        states = world.states_of(o, d, a)
        values = {
            "cue_object": {int(cue == "ball") for (cue, _), _ in states},
            "correct_side": {int(cue != upper) for (cue, upper), _ in states},  # matching end up: side 0
            "agent_x": {pose[0] for _, pose in states},
            "agent_y": {pose[1] for _, pose in states},
            "agent_dir": {pose[2] for _, pose in states},
        }
        for name, seen in values.items():
            if len(seen) == 1:
                out[name][b] = seen.pop()
    return out


def build_pair(
    source: str,
    inputs: DTInputs,
    *,
    edits: Sequence[Edit] = (),
    rtg_scale: float = 1.0,
    env_spec: EnvSpec | None = None,
    seed: int = 0,
) -> Pair:
    """The pair of ``source`` (:data:`PAIR_SOURCES`) for ``inputs``."""
    if source == "edits":
        return edit_pair(inputs, edits, rtg_scale)
    if source == "resample":
        return resample_pair(inputs, seed)
    if source == "env":
        return env_pair(inputs, env_spec)
    raise PairError(f"unknown pair source {source!r}; expected one of {', '.join(PAIR_SOURCES)}")


__all__ = [
    "ENV_CHANGES",
    "WINDOW_FACTS",
    "PAIR_SOURCES",
    "Pair",
    "PairError",
    "build_pair",
    "check_pair",
    "edit_pair",
    "env_pair",
    "make_pair",
    "resample_pair",
    "window_facts",
]
