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
