"""The exact state of a rank's training envs, for checkpoints: what resuming needs to continue every episode
where it stood, with the same random draws.

Gymnasium envs have no state API, so this reads their attributes. It is exact for environments whose whole state
lives in plain attributes: gymnasium's classic-control and toy-text envs (physics state as arrays and numbers,
``np_random`` as a Generator) under gymnasium's own wrappers (``TimeLimit._elapsed_steps``,
``OrderEnforcing._has_reset``, ``FrameStackObservation.obs_queue``, ``AtariPreprocessing.lives``, ...) and ours,
and for ALE Atari envs, whose emulator is the one attribute that is not plain: ``hvd_dqn.alestate`` saves it with
its RNG. A SyncVectorEnv's own state is which envs reset at their next step (NEXT_STEP autoreset). For any other
vector env or env (Box2D worlds, ale-py's C++ AtariVectorEnv, envs in subprocesses) ``capture`` returns None and a
resumed run restarts the episodes from fresh seeds (not bit-exact); ``why_not`` says why.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from hvd_dqn import alestate
from hvd_dqn.jsoncodec import from_json, to_json

_EXACT_MODULES = ("gymnasium.envs.classic_control.", "gymnasium.envs.toy_text.")
_WRAPPER_MODULES = ("gymnasium.wrappers.", "gymnasium.core", "hvd_dqn.")
_SKIP = {
    "env",
    "spec",
    "metadata",
    "observation_space",
    "action_space",
    "_action_space",
    "_observation_space",
    "_metadata",
    "_cached_spec",
    "render_mode",
    "screen",
    "clock",
    "isopen",
    "_reward_range",
}


def _chain(env: gym.Env) -> list[Any]:
    """The wrappers from the outside in, then the bare env."""
    out = []
    while isinstance(env, gym.Wrapper):
        out.append(env)
        env = env.env
    return out + [env]


def why_not(envs: gym.vector.VectorEnv) -> str | None:
    """Why the state of ``envs`` cannot be captured, in a few words; None if it can."""
    if alestate.is_vector_env(envs):
        return (
            "ale-py's C++ AtariVectorEnv (atari_vector_env: ale) keeps its emulators out of Python's reach; "
            "atari_vector_env: gymnasium resumes exactly"
        )
    if not isinstance(envs, gym.vector.SyncVectorEnv):
        return f"{type(envs).__name__}: only a SyncVectorEnv's envs are captured"
    for env in envs.envs:
        *wrappers, bare = _chain(env)
        if type(bare).__module__.startswith(_EXACT_MODULES):
            pass
        elif not alestate.is_env(bare):
            return f"{type(bare).__name__} is neither a classic-control, toy-text nor ALE env"
        elif (why := alestate.why_not(bare)) is not None:
            return f"{type(bare).__name__}: {why}"
        for w in wrappers:
            if not type(w).__module__.startswith(_WRAPPER_MODULES):
                return f"the wrapper {type(w).__name__} is neither gymnasium's nor hvd-dqn's"
    return None


def capturable(envs: gym.vector.VectorEnv) -> bool:
    return why_not(envs) is None


def _attrs(obj: Any) -> dict[str, Any]:
    out = {}
    for name, value in vars(obj).items():
        if name in _SKIP:
            continue
        if alestate.is_emulator(value):
            out[name] = alestate.capture(value)
            continue
        try:
            out[name] = to_json(value)
        except TypeError:
            continue  # spaces, render objects, dicts of constants: nothing that changes while stepping
    return out


def capture(envs: gym.vector.VectorEnv) -> dict[str, Any] | None:
    """Which envs reset at their next step, and per env, per layer of its wrapper chain, the layer's own
    attributes as exact JSON; None if not capturable."""
    if not capturable(envs):
        return None
    return {
        "autoreset": to_json(envs._autoreset_envs),
        "envs": [[_attrs(layer) for layer in _chain(env)] for env in envs.envs],
    }


def restore(envs: gym.vector.VectorEnv, state: dict[str, Any] | list[list[dict[str, Any]]]) -> None:
    """Set the attributes ``capture`` read back onto freshly made envs of the same id and number."""
    if isinstance(state, list):  # written before the vector env's own state was saved (classic control only,
        state = {"envs": state}  # whose SAME_STEP autoreset carries nothing from one step to the next)
    if len(state["envs"]) != len(envs.envs):
        raise ValueError(f"checkpoint holds {len(state['envs'])} envs, this rank has {len(envs.envs)}")
    for env, layers in zip(envs.envs, state["envs"]):
        chain = _chain(env)
        if len(layers) != len(chain):
            raise ValueError("checkpoint's env has another wrapper chain")
        for layer, attrs in zip(chain, layers):
            for name, value in attrs.items():
                current = getattr(layer, name, None)
                if alestate.is_captured(value):
                    alestate.restore(current, value)
                    continue
                value = from_json(value)
                if isinstance(value, np.random.Generator) and isinstance(current, np.random.Generator):
                    current.bit_generator.state = value.bit_generator.state  # keep the object others hold
                else:
                    setattr(layer, name, value)
    if "autoreset" in state:
        envs._autoreset_envs = from_json(state["autoreset"])
