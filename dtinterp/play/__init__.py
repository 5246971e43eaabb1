"""Playing a model in its env: seeded, vectorized rollouts that record :class:`~dtinterp.data.episode.Episode`s.

This layer sits below both ``train`` (evaluation, calibration) and ``interp`` (analysing played
episodes, ablations played out), so neither imports the other to play an episode. Re-simulating a
recorded episode from its seed needs no model and lives in :mod:`envs.replay`.
"""

from dtinterp.play.rollout import EpisodeResult, play_episode, rollout

__all__ = ["EpisodeResult", "play_episode", "rollout"]
