"""What the app should show, computed by the library alone (no dash_app code), for the browser tests.

The reference uses its own copy of the default shipped model, loaded from the checkpoint, so it never
touches the model object (and lock) the served app is using in the same process.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from dash_app.state import DEFAULT_MODEL, png_data_uri  # noqa: E402
from dtinterp.interp.trajectory import ROLLOUT_POLICY, episode_window, model_env_spec, rollout_trajectory

# the app's identity constants and PNG encoder: the tests compare pixels and numbers, not encoders
from dash_app.play import TILE  # noqa: E402
from dtinterp.data.dataset import TrajectoryDataset
from dtinterp.interp.edits import apply_edits, parse_edit
from dtinterp.model.checkpoint import load_checkpoint
from dtinterp.model.hooked_dt import HookedDecisionTransformer
from dtinterp.model.shipped import resolve_model
from envs.encoding import ACTION_NAMES
from envs.render import render_world
from envs.spec import make_env

#: The shipped model the app opens with, whose env the tests play.
MODEL = DEFAULT_MODEL


@functools.cache
def reference_model() -> tuple[HookedDecisionTransformer, dict]:
    """A private copy of the default model and its checkpoint meta."""
    model, meta = load_checkpoint(resolve_model(MODEL))
    return model.eval(), meta


def world_png(seed: int, actions: list[int]) -> str:
    """PNG data URI of the model's env reset with ``seed`` after ``actions``, rendered as the app renders it."""
    env = make_env(model_env_spec(reference_model()[1]))
    try:
        env.reset(seed=seed)
        for a in actions:
            env.step(a)
        return png_data_uri(render_world(env, tile_size=TILE))
    finally:
        env.close()


@functools.cache
def greedy_episode(seed: int, target: float = 1.0) -> TrajectoryDataset:
    """The model's greedy episode from ``seed`` at target return ``target`` (what "DT run to end" plays)."""
    model, meta = reference_model()
    return rollout_trajectory(model, meta, target, seed)


def _probs(inputs) -> np.ndarray:
    model, _ = reference_model()
    with torch.inference_mode():
        return torch.softmax(model(inputs)[0, -1].float(), -1).numpy()


def step_probs(ds: TrajectoryDataset, step: int, edits: tuple[str, ...] = ()) -> dict[str, float]:
    """``{action: probability}`` of the model at ``step`` of a one-episode dataset, with token edits."""
    model, meta = reference_model()
    rtg_scale = float(meta.get("rtg_scale", 1.0))
    inputs = episode_window(ds, 0, step, model, rtg_scale)
    if edits:
        inputs = apply_edits(inputs, [parse_edit(e) for e in edits], rtg_scale)
    return {ACTION_NAMES[i]: float(p) for i, p in enumerate(_probs(inputs))}


def decision_step(ds: TrajectoryDataset, edit: str) -> int:
    """The first step of the episode whose greedy action ``edit`` changes (the step where it matters)."""
    for t in range(len(ds.actions)):
        before, after = step_probs(ds, t), step_probs(ds, t, (edit,))
        if max(before, key=before.get) != max(after, key=after.get):
            return t
    raise AssertionError(f"{edit} changes no greedy action of the {MODEL} episode: the model ignores it")


def live_probs(seed: int, actions: list[int], target: float = 1.0) -> dict[str, float]:
    """The model's distribution at the current state of a live episode: ``actions`` taken from ``seed``.

    Built as a one-episode dataset with a placeholder action at the current state, which the window at
    that state never embeds (its last action is the one predicted).
    """
    from dtinterp.data.dataset import make_metadata
    from envs.encoding import compact_obs

    model, meta = reference_model()
    spec = model_env_spec(meta)
    env = make_env(spec)
    obs_l, dir_l, rew_l = [], [], []
    try:
        obs, _ = env.reset(seed=seed)
        for a in [*actions, None]:
            grid, d = compact_obs(obs)
            obs_l.append(grid)
            dir_l.append(d)
            if a is not None:
                obs, r, *_ = env.step(a)
                rew_l.append(float(r))
    finally:
        env.close()
    n = len(actions) + 1
    policy = {"name": ROLLOUT_POLICY, "params": {"seeds": [seed], "target_rtg": [target]}, "modes": ["play"]}
    ds = TrajectoryDataset(
        obs=np.stack(obs_l),
        directions=np.asarray(dir_l, dtype=np.uint8),
        actions=np.asarray([*actions, 0], dtype=np.uint8),
        rewards=np.asarray([*rew_l, 0.0], dtype=np.float32),
        terminated=np.zeros(n, dtype=bool),
        truncated=np.eye(1, n, n - 1, dtype=bool)[0],
        episode_starts=np.array([0, n], dtype=np.int64),
        episode_modes=np.zeros(1, dtype=np.uint8),
        metadata=make_metadata(spec, policy, seed=seed, episodes=1),
    )
    return step_probs(ds, n - 1)
