"""Acting: the exploration schedule and epsilon-greedy actions for all envs of a rank in one call."""
from __future__ import annotations

import numpy as np


def linear_epsilon(global_step: int, start: float, end: float, decay_steps: float) -> float:
    """Epsilon decaying linearly from ``start`` to ``end`` over ``decay_steps`` global env steps, then flat."""
    frac = min(1.0, global_step / max(decay_steps, 1.0))
    return start + frac * (end - start)


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
