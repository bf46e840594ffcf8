"""Acting: the exploration schedule and epsilon-greedy actions for all envs of a rank in one call."""
from __future__ import annotations

import numpy as np

from hvd_dqn.schedules import linear_schedule


def scheduled_epsilon(config, env_steps: int) -> float:
    """The exploration epsilon at ``env_steps`` global env steps: eps_start decaying linearly to eps_end over
    eps_decay_fraction of training."""
    return linear_schedule(env_steps, config.eps_start, config.eps_end,
                           config.eps_decay_fraction * config.total_env_steps)


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
