"""Environments: one gymnasium vector env per rank, seeded apart from every other rank and env.

Vector envs run in SAME_STEP autoreset mode: a step that ends an episode returns the next episode's first
observation and puts the true last observation in ``info["final_obs"]``, so every step is one real transition
and no autoreset step ever reaches replay.
"""
from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from hvd_dqn.errors import UserError


def _register_atari() -> None:
    try:
        import ale_py

        gym.register_envs(ale_py)
    except ImportError:  # pragma: no cover - ale-py is a dependency, but classic control needs nothing from it
        pass


def check_env_id(env_id: str) -> None:
    """Raise ValueError (turned into a config error) if gymnasium does not know ``env_id``."""
    if env_id.startswith("ALE/"):
        _register_atari()
    try:
        gym.spec(env_id)
    except gym.error.Error as exc:
        raise ValueError(f"unknown gymnasium env id {env_id!r} ({exc})") from None


def reward_threshold(env_id: str) -> float | None:
    return gym.spec(env_id).reward_threshold


def env_seeds(seed: int, rank: int, count: int, stream: int = 0) -> list[int]:
    """Distinct seeds for ``count`` envs of ``rank``: no two (rank, env, stream) triples share a seed stream."""
    state = np.random.SeedSequence([seed, rank, stream]).generate_state(count, dtype=np.uint32)
    return [int(s) for s in state]


class OneHot(gym.ObservationWrapper):
    """Discrete observations as one-hot float32 vectors, so every classic-control task feeds the same MLP."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self._n = int(env.observation_space.n)
        self.observation_space = gym.spaces.Box(0.0, 1.0, (self._n,), np.float32)

    def observation(self, observation: Any) -> np.ndarray:
        out = np.zeros(self._n, np.float32)
        out[int(observation)] = 1.0
        return out


def make_env(env_id: str, **kwargs: Any) -> gym.Env:
    """One environment with the observation wrappers the networks expect."""
    if env_id.startswith("ALE/"):
        _register_atari()
    try:
        env = gym.make(env_id, **kwargs)
    except gym.error.Error as exc:
        raise UserError(f"env {env_id!r}: {exc}") from None
    if isinstance(env.observation_space, gym.spaces.Discrete):
        env = OneHot(env)
    if not isinstance(env.action_space, gym.spaces.Discrete):
        raise UserError(f"env {env_id!r}: DQN needs a Discrete action space, this one is {env.action_space}")
    space = env.observation_space
    if not (isinstance(space, gym.spaces.Box) and len(space.shape) == 1):
        raise UserError(f"env {env_id!r}: observation space {space} is not a flat vector or a Discrete index")
    return env


def make_vector_env(env_id: str, num_envs: int) -> gym.vector.VectorEnv:
    return gym.vector.SyncVectorEnv(
        [lambda: make_env(env_id) for _ in range(num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )


def true_next_obs(next_obs: np.ndarray, done: np.ndarray, info: dict) -> np.ndarray:
    """The observation each env really reached: the final one where an episode just ended (SAME_STEP mode)."""
    if not done.any():
        return next_obs
    out = next_obs.copy()
    for i in np.flatnonzero(done):
        out[i] = info["final_obs"][i]
    return out
