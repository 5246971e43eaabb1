"""Everything that knows MiniGrid: env specs, observation encodings, custom envs, scripted experts, rendering.

Importing this package registers the custom envs. It never imports torch or dtinterp.
"""

from envs import custom  # noqa: F401  (registers custom envs)
from envs.encoding import (
    CHANNEL_NAMES,
    COLOR_NAMES,
    DIRECTION_NAMES,
    N_CHANNELS,
    N_COLORS,
    N_DIRECTIONS,
    N_OBJECTS,
    N_STATES,
    OBJECT_NAMES,
    STATE_NAMES,
    compact_obs,
    from_one_hot,
    one_hot,
)
from envs.errors import EnvSpecError
from envs.experts import make_expert
from envs.policies import POLICY_NAMES, Policy, make_policy
from envs.render import render_pov, render_world
from envs.replay import ReplayMismatch, replays, resimulate
from envs.spec import EnvFacts, EnvSpec, env_facts, make_env, make_vector_env, obs_shape

__all__ = [
    "CHANNEL_NAMES",
    "COLOR_NAMES",
    "DIRECTION_NAMES",
    "N_CHANNELS",
    "N_COLORS",
    "N_DIRECTIONS",
    "N_OBJECTS",
    "N_STATES",
    "OBJECT_NAMES",
    "STATE_NAMES",
    "EnvFacts",
    "EnvSpec",
    "EnvSpecError",
    "POLICY_NAMES",
    "Policy",
    "ReplayMismatch",
    "compact_obs",
    "env_facts",
    "from_one_hot",
    "make_env",
    "make_expert",
    "make_policy",
    "make_vector_env",
    "obs_shape",
    "one_hot",
    "render_pov",
    "render_world",
    "replays",
    "resimulate",
]
