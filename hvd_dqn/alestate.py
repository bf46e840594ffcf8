"""An ALE emulator's state in a checkpoint (for ``hvd_dqn.envstate``), and why only gymnasium's Atari envs have one.

The state is what ale-py's ``cloneState(include_rng=True)`` holds: the console (CPU, RAM, TIA, cartridge), the
game's settings (score, lives, terminal flag), the frame counters that truncate an episode, and the emulator's
RNG. It is kept as the bytes ale-py serializes it to, base64 in the rank's JSON; restoring parses them
(``ALEState(bytes)``), whereas unpickling an ALEState would run code.

Two things ale-py's state leaves out (ale-py 0.12):

- the action the emulator holds for its sticky actions (the Stella environment's ``m_player_a_action``, not
  serialized), so an emulator with ``repeat_action_probability > 0`` does not go on exactly after a restore; the
  envs of ``hvd_dqn.envs`` make sticky actions outside it (``StickyActions``), and such an emulator is refused;
- everything of the C++ ``AtariVectorEnv`` (``atari_vector_env: ale``): its Python bindings are reset, send, recv
  and an XLA handle, so its emulators, no-op RNG, frame stacks and episode counters cannot be read or set.
"""

from __future__ import annotations

import base64
import sys
from typing import Any

_MARK = "__ale_state__"


def is_env(env: Any) -> bool:
    """A bare gymnasium ALE env (ale_py.env.AtariEnv)."""
    return type(env).__module__ == "ale_py.env"


def why_not(env: Any) -> str | None:
    """Why the ALE env ``env`` cannot be restored exactly, or None if it can."""
    if env.ale.getFloat("repeat_action_probability") != 0.0:
        return "its emulator makes sticky actions, whose held action ale-py's saved state leaves out"
    return None


def is_vector_env(envs: Any) -> bool:
    """ale-py's C++ AtariVectorEnv (or a subclass)."""
    return any(cls.__module__ == "ale_py.vector_env" for cls in type(envs).__mro__)


def is_emulator(value: Any) -> bool:
    ale_py = sys.modules.get("ale_py")  # no emulator exists in a process that never imported ale_py
    return ale_py is not None and isinstance(value, ale_py.ALEInterface)


def capture(ale: Any) -> dict[str, str]:
    return {_MARK: base64.b64encode(ale.cloneState(include_rng=True).serialize()).decode("ascii")}


def is_captured(value: Any) -> bool:
    return isinstance(value, dict) and _MARK in value


def restore(ale: Any, value: dict[str, str]) -> None:
    """Put the state ``capture`` took into ``ale``, an emulator of the same game."""
    import ale_py

    ale.restoreState(ale_py.ALEState(base64.b64decode(value[_MARK], validate=True)))
