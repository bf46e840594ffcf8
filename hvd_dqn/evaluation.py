"""Greedy evaluation: N seeded episodes, split across ranks, run side by side with one batched forward per step.

Atari follows the protocol of the literature: epsilon-greedy with a small ``eval_epsilon`` (0.05 in Mnih et al.
2015; the configs say which), the training envs' preprocessing (no-op starts, sticky actions), unclipped game
score as the return, and episodes truncated at ``max_episode_frames`` (108,000 frames = 27,000 agent steps).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from hvd_dqn.actor import epsilon_greedy
from hvd_dqn.envs import make_env
from hvd_dqn.seeds import EVAL_STREAM, eval_seeds


def my_episodes(n_episodes: int, rank: int, world_size: int) -> list[int]:
    """The episode indices this rank plays: round-robin over ranks, so N ranks share the work evenly."""
    return list(range(rank, n_episodes, world_size))


def run_episodes(
    env_id: str,
    q_fn: Callable[[np.ndarray], np.ndarray],
    seeds: list[int],
    epsilon: float = 0.0,
    rng: np.random.Generator | None = None,
    envs=None,
) -> np.ndarray:
    """Play one episode per seed, all at once; return their undiscounted returns in seed order."""
    if not seeds:
        return np.zeros(0, np.float64)
    envs = envs if envs is not None else [make_env(env_id) for _ in seeds]
    rng = rng if rng is not None else np.random.default_rng(seeds[0])
    obs = np.stack([env.reset(seed=s)[0] for env, s in zip(envs, seeds)])
    returns = np.zeros(len(seeds), np.float64)
    alive = np.ones(len(seeds), bool)
    while alive.any():
        idx = np.flatnonzero(alive)
        actions = epsilon_greedy(q_fn(obs[idx]), epsilon, rng)
        for i, a in zip(idx, actions):
            o, r, terminated, truncated, _ = envs[i].step(int(a))
            returns[i] += r
            obs[i] = o
            if terminated or truncated:
                alive[i] = False
    return returns


class Evaluator:
    """Keeps this rank's evaluation envs between evaluations; evaluation number k plays fresh, known seeds."""

    def __init__(
        self,
        env_id: str,
        n_episodes: int,
        seed: int,
        rank: int,
        world_size: int,
        epsilon: float = 0.0,
        env_kwargs: dict | None = None,
    ):
        """``env_kwargs``: ``make_env``'s Atari options (the training envs' preprocessing and episode cap)."""
        self.env_id, self.epsilon, self.seed = env_id, epsilon, seed
        self.episodes = my_episodes(n_episodes, rank, world_size)
        self.envs = [make_env(env_id, **(env_kwargs or {})) for _ in self.episodes]

    def __call__(self, q_fn: Callable[[np.ndarray], np.ndarray], evaluation: int) -> np.ndarray:
        """This rank's returns of evaluation number ``evaluation`` (counted from 0 over the run)."""
        all_seeds = eval_seeds(self.seed, evaluation, max(self.episodes, default=0) + 1)
        seeds = [all_seeds[i] for i in self.episodes]
        rng = np.random.default_rng([self.seed, evaluation, EVAL_STREAM])
        return run_episodes(self.env_id, q_fn, seeds, self.epsilon, rng, envs=self.envs)


def summarize(returns: np.ndarray) -> dict[str, float]:
    return {
        "eval_return_mean": float(np.mean(returns)),
        "eval_return_std": float(np.std(returns)),
        "eval_return_min": float(np.min(returns)),
        "eval_return_max": float(np.max(returns)),
        "eval_episodes": int(len(returns)),
    }
