"""Schedules over global env steps: pure functions of the step counter, equal on every rank."""
from __future__ import annotations


def linear_schedule(step: int, start: float, end: float, duration: float) -> float:
    """``start`` moving linearly to ``end`` over ``duration`` global env steps, then flat at ``end``."""
    frac = min(1.0, step / max(duration, 1.0))
    return start + frac * (end - start)


def annealed_beta(env_steps: int, total_env_steps: int, beta_start: float) -> float:
    """Prioritized replay's importance-sampling exponent, rising linearly from ``beta_start`` to 1 over training
    (full correction by the end)."""
    return beta_start + (1.0 - beta_start) * min(1.0, env_steps / max(1, total_env_steps))
