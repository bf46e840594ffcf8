"""Acting: the exploration schedule, epsilon-greedy actions for all envs of a rank in one call, and the
``Actor`` that steps this rank's envs into its replay shard."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from hvd_dqn import envstate
from hvd_dqn.jsoncodec import from_json, to_json
from hvd_dqn.schedules import linear_schedule


def scheduled_epsilon(config, env_steps: int) -> float:
    """The exploration epsilon at ``env_steps`` global env steps: eps_start decaying linearly to eps_end over
    eps_decay_fraction of training."""
    return linear_schedule(
        env_steps, config.eps_start, config.eps_end, config.eps_decay_fraction * config.total_env_steps
    )


def epsilon_greedy(q_values: np.ndarray, epsilon: float | np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One action per row of ``q_values``: uniform with probability ``epsilon`` (a scalar or one per row),
    greedy otherwise. Ties go to the lowest action index."""
    n, n_actions = q_values.shape
    greedy = np.argmax(q_values, axis=1)
    explore = rng.random(n) < epsilon
    if not explore.any():
        return greedy
    return np.where(explore, rng.integers(0, n_actions, size=n), greedy)


def actor_epsilons(epsilon: float, rank: int, world_size: int, num_envs: int, spread: float) -> np.ndarray:
    """Ape-X exploration (Horgan et al. 2018): this rank's envs are actors ``i = rank * num_envs + j`` of
    ``N = world_size * num_envs``, and actor i uses ``epsilon ** (1 + spread * i / (N - 1))``. Actor 0 keeps the
    scheduled epsilon, later ones explore less, so a larger job covers a wider range of behaviour. Ape-X itself
    is epsilon = 0.4 (eps_start = eps_end = 0.4), spread = 7; spread = 0 gives every actor the same epsilon."""
    i = rank * num_envs + np.arange(num_envs)
    n = world_size * num_envs
    exponent = 1.0 + spread * i / (n - 1) if n > 1 else np.ones(num_envs)
    return np.float64(epsilon) ** exponent


class Actor:
    """This rank's envs and what acting carries from one vector step to the next: the current observations, each
    env's running return, the returns of episodes ended since they were last taken, and the RNG of this rank's
    exploration (the learner draws its replay samples from it too). ``task`` (``hvd_dqn.tasks``) stores each
    step into ``replay``."""

    def __init__(self, envs, task, replay, rng: np.random.Generator, seeds: list[int]):
        self.envs, self.task, self.replay, self.rng = envs, task, replay, rng
        self.obs, info = envs.reset(seed=seeds)
        task.begin(replay, self.obs, info)
        self.episode_return = np.zeros(envs.num_envs)
        self.finished_returns: list[float] = []
        self.restart_reason: str | None = None  # why the last load_state_dict restarted the episodes

    def step(self, q_fn: Callable[[np.ndarray], np.ndarray], epsilons: np.ndarray) -> None:
        """One step of every env, epsilon-greedy on ``q_fn``'s Q-values, into the replay."""
        actions = epsilon_greedy(q_fn(self.obs), epsilons, self.rng)
        next_obs, reward, terminated, truncated, info = self.envs.step(actions)
        self.task.store(self.replay, self.obs, actions, reward, next_obs, terminated, truncated, info)
        done = terminated | truncated
        self.episode_return += reward
        if done.any():
            self.finished_returns.extend(self.episode_return[done].tolist())
            self.episode_return[done] = 0.0
        self.obs = next_obs

    def take_finished_returns(self) -> list[float]:
        """The returns of the episodes ended since the last call."""
        returns, self.finished_returns = self.finished_returns, []
        return returns

    def state_dict(self) -> dict[str, Any]:
        """As exact JSON: the RNG, the envs' own state (None where it cannot be captured, see
        ``hvd_dqn.envstate``), the observations and running returns."""
        return {
            "rng": self.rng.bit_generator.state,
            "envs": envstate.capture(self.envs),
            "obs": to_json(self.obs),
            "episode_return": to_json(self.episode_return),
            "finished_returns": list(self.finished_returns),
        }

    def load_state_dict(self, state: dict[str, Any], restart_seeds: list[int]) -> None:
        """Continue where ``state`` stood. Envs whose state was not captured, or cannot be restored, start fresh
        episodes from ``restart_seeds`` instead (not bit-exact); ``restart_reason`` then says why."""
        self.rng.bit_generator.state = state["rng"]
        self.restart_reason = envstate.why_not(self.envs)
        if self.restart_reason is None and state["envs"] is None:
            self.restart_reason = "the checkpoint holds no state of its envs (written with envs that cannot be saved)"
        if self.restart_reason is None:
            envstate.restore(self.envs, state["envs"])
            self.obs = from_json(state["obs"])
            self.episode_return = from_json(state["episode_return"])
        else:
            self.task.end_episodes(self.replay, from_json(state["obs"]))
            self.obs, info = self.envs.reset(seed=restart_seeds)
            self.task.begin(self.replay, self.obs, info)
        self.finished_returns = list(state["finished_returns"])
