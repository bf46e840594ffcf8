"""The exact state of a rank's training envs, for checkpoints: what resuming needs to continue every episode
where it stood, with the same random draws.

Gymnasium envs have no state API, so this reads their attributes. It is exact for environments whose whole state
lives in plain attributes: gymnasium's classic-control and toy-text envs (physics state as arrays and numbers,
``np_random`` as a Generator) under gymnasium's own wrappers (``TimeLimit._elapsed_steps``,
``OrderEnforcing._has_reset``, ...) and ours. For any other env (Box2D worlds, ALE emulators, envs in
subprocesses) ``capture`` returns None and a resumed run restarts the episodes from fresh seeds (not bit-exact).
"""
from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from hvd_dqn.checkpoint import from_json, to_json

_EXACT_MODULES = ("gymnasium.envs.classic_control.", "gymnasium.envs.toy_text.")
_WRAPPER_MODULES = ("gymnasium.wrappers.", "gymnasium.core", "hvd_dqn.")
_SKIP = {"env", "spec", "metadata", "observation_space", "action_space", "_action_space", "_observation_space",
         "_metadata", "_cached_spec", "render_mode", "screen", "clock", "isopen", "_reward_range"}


def _chain(env: gym.Env) -> list[Any]:
    """The wrappers from the outside in, then the bare env."""
    out = []
    while isinstance(env, gym.Wrapper):
        out.append(env)
        env = env.env
    return out + [env]


def capturable(envs: gym.vector.VectorEnv) -> bool:
    if not isinstance(envs, gym.vector.SyncVectorEnv):
        return False
    for env in envs.envs:
        *wrappers, bare = _chain(env)
        if not type(bare).__module__.startswith(_EXACT_MODULES):
            return False
        if not all(type(w).__module__.startswith(_WRAPPER_MODULES) for w in wrappers):
            return False
    return True


def _attrs(obj: Any) -> dict[str, Any]:
    out = {}
    for name, value in vars(obj).items():
        if name in _SKIP:
            continue
        try:
            out[name] = to_json(value)
        except TypeError:
            continue  # spaces, render objects, dicts of constants: nothing that changes while stepping
    return out


def capture(envs: gym.vector.VectorEnv) -> list[list[dict[str, Any]]] | None:
    """Per env, per layer of its wrapper chain, the layer's own attributes as exact JSON; None if not capturable."""
    if not capturable(envs):
        return None
    return [[_attrs(layer) for layer in _chain(env)] for env in envs.envs]


def restore(envs: gym.vector.VectorEnv, state: list[list[dict[str, Any]]]) -> None:
    """Set the attributes ``capture`` read back onto freshly made envs of the same id and number."""
    if len(state) != len(envs.envs):
        raise ValueError(f"checkpoint holds {len(state)} envs, this rank has {len(envs.envs)}")
    for env, layers in zip(envs.envs, state):
        chain = _chain(env)
        if len(layers) != len(chain):
            raise ValueError("checkpoint's env has another wrapper chain")
        for layer, attrs in zip(chain, layers):
            for name, value in attrs.items():
                value = from_json(value)
                current = getattr(layer, name, None)
                if isinstance(value, np.random.Generator) and isinstance(current, np.random.Generator):
                    current.bit_generator.state = value.bit_generator.state  # keep the object others hold
                else:
                    setattr(layer, name, value)
