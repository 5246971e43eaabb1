"""Episode animations (GIF, or MP4 when imageio-ffmpeg is installed) for model cards and reports.

An episode is stored as (env spec, seed, actions): re-simulating the seeded env with its actions gives
back every world frame, so nothing but the actions needs keeping. Frames are the full-world render of
:func:`envs.render.render_world` (agent view highlighted) at a small tile size.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dtinterp.errors import ConfigError
from envs import EnvSpec, make_env
from envs.render import render_world

VIDEO_SUFFIXES = (".gif", ".mp4")


def check_video_path(path: str | os.PathLike, flag: str = "output") -> Path:
    """Validate an animation path before any work: known extension, existing directory, MP4 support."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise ConfigError(f"{flag} {p}: expected a .gif or .mp4 file name")
    if not p.parent.is_dir():
        raise ConfigError(f"{flag} {p}: directory {str(p.parent)!r} does not exist")
    if p.is_dir():
        raise ConfigError(f"{flag} {p}: is a directory")
    if suffix == ".mp4" and importlib.util.find_spec("imageio_ffmpeg") is None:
        raise ConfigError(
            f"{flag} {p}: writing MP4 needs imageio-ffmpeg (pip install imageio-ffmpeg); use .gif"
        )
    return p


def replay_frames(
    spec: EnvSpec, seed: int, actions: Sequence[int] | np.ndarray, tile_size: int = 16
) -> np.ndarray:
    """uint8 [T + 1, H_px, W_px, 3]: the world before each action and after the last one.

    Raises ValueError if the episode ends before the actions do (wrong seed or spec for these actions).
    """
    env = make_env(spec)
    try:
        env.reset(seed=int(seed))
        frames = [render_world(env, tile_size=tile_size)]
        for t, a in enumerate(actions):
            _, _, terminated, truncated, _ = env.step(int(a))
            frames.append(render_world(env, tile_size=tile_size))
            if (terminated or truncated) and t < len(actions) - 1:
                raise ValueError(
                    f"episode (seed {seed}) ended at step {t + 1} of {len(actions)} actions: "
                    "these actions were not played with this seed and env spec"
                )
    finally:
        env.close()
    return np.stack(frames)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _even(frames: np.ndarray) -> np.ndarray:
    """Pad frames to even height and width (H.264 with yuv420p needs both even)."""
    _, h, w, _ = frames.shape
    return np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))


def export_episode(
    episode: np.ndarray | Sequence[np.ndarray] | tuple[EnvSpec, int, Sequence[int] | np.ndarray],
    path: str | os.PathLike,
    fps: float = 6.0,
    tile_size: int = 16,
) -> Path:
    """Write an episode as an animated GIF or MP4 (by ``path``'s extension), atomically; returns the path.

    ``episode`` is either the frames (uint8 [T, H_px, W_px, 3]) or ``(spec, seed, actions)``, which is
    re-simulated with :func:`replay_frames` at ``tile_size`` pixels per cell.
    """
    import imageio.v3 as iio

    path = check_video_path(path)
    if isinstance(episode, tuple) and len(episode) == 3 and isinstance(episode[0], EnvSpec):
        frames = replay_frames(*episode, tile_size=tile_size)
    else:
        frames = np.asarray(episode)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(f"frames must be uint8 [T, H, W, 3] with T >= 1, got {frames.dtype} {frames.shape}")
    suffix = path.suffix.lower()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=suffix)
    os.close(fd)
    try:
        if suffix == ".gif":
            iio.imwrite(tmp, frames, extension=".gif", duration=1000.0 / fps, loop=0)
        else:
            iio.imwrite(tmp, _even(frames), plugin="FFMPEG", fps=fps, macro_block_size=1)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a GIF is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
