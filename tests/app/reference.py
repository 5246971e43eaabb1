"""What the app should show, computed by the library alone (no dash_app code), for the browser tests.

The reference uses its own copy of the default shipped model, loaded from the checkpoint, so it never
touches the model object (and lock) the served app is using in the same process.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

# the app's identity constants and PNG encoder: the tests compare pixels and numbers, not encoders
from dash_app.cache import DEFAULT_MODEL
from dash_app.images import TILE, png_data_uri
from dtinterp.data.episode import Episode
from dtinterp.interp.edits import apply_edits, parse_edit
from dtinterp.model.checkpoint import Checkpoint, load_checkpoint
from dtinterp.model.shipped import resolve_model
from dtinterp.play.rollout import play_episode
from envs.encoding import ACTION_NAMES, compact_obs
from envs.render import render_world
from envs.spec import make_env

#: The shipped model the app opens with, whose env the tests play.
MODEL = DEFAULT_MODEL


@functools.cache
def reference_model() -> Checkpoint:
    """A private copy of the default model's checkpoint."""
    return load_checkpoint(resolve_model(MODEL))


def world_png(seed: int, actions: list[int]) -> str:
    """PNG data URI of the model's env reset with ``seed`` after ``actions``, rendered as the app renders it."""
    env = make_env(reference_model().env_spec)
    try:
        env.reset(seed=seed)
        for a in actions:
            env.step(a)
        return png_data_uri(render_world(env, tile_size=TILE))
    finally:
        env.close()


@functools.cache
def greedy_episode(seed: int, target: float = 1.0) -> Episode:
    """The model's greedy episode from ``seed`` at target return ``target`` (what "DT run to end" plays)."""
    return play_episode(reference_model(), target, seed)


def _probs(inputs) -> np.ndarray:
    with torch.inference_mode():
        return torch.softmax(reference_model().model(inputs)[0, -1].float(), -1).numpy()


def step_probs(episode: Episode, step: int, edits: tuple[str, ...] = ()) -> dict[str, float]:
    """``{action: probability}`` of the model at ``step`` of an episode, with token edits."""
    ckpt = reference_model()
    inputs = episode.window(ckpt, step)
    if edits:
        inputs = apply_edits(inputs, [parse_edit(e) for e in edits], ckpt.rtg_scale)
    return {ACTION_NAMES[i]: float(p) for i, p in enumerate(_probs(inputs))}


def decision_step(episode: Episode, edit: str) -> int:
    """The first step of the episode whose greedy action ``edit`` changes (the step where it matters)."""
    for t in range(episode.length):
        before, after = step_probs(episode, t), step_probs(episode, t, (edit,))
        if max(before, key=before.get) != max(after, key=after.get):
            return t
    raise AssertionError(f"{edit} changes no greedy action of the {MODEL} episode: the model ignores it")


def live_probs(seed: int, actions: list[int], target: float = 1.0) -> dict[str, float]:
    """The model's distribution at the current state of a live episode: ``actions`` taken from ``seed``.

    The live episode is rebuilt by stepping a fresh env directly (not the app's env cache).
    """
    spec = reference_model().env_spec
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
    live = Episode(
        env_spec=spec,
        obs=np.stack(obs_l),
        directions=np.asarray(dir_l, dtype=np.uint8),
        actions=np.asarray(actions, dtype=np.uint8),
        rewards=np.asarray(rew_l, dtype=np.float32),
        seed=seed,
        target_return=target,
        source="play",
    )
    return step_probs(live, len(actions))
