"""Schedules over global env steps: pure functions of the step counter, equal on every rank."""

from __future__ import annotations


def linear_schedule(step: int, start: float, end: float, duration: float) -> float:
    """``start`` moving linearly to ``end`` over ``duration`` global env steps, then flat at ``end``."""
    frac = min(1.0, step / max(duration, 1.0))
    return start + frac * (end - start)


def scheduled_learning_rate(
    env_steps: int,
    config_lr: float,
    rule_lr: float,
    warmup_env_steps: int,
    learning_starts: int,
    final_fraction: float,
    total_env_steps: int,
) -> float:
    """The learning rate of the phase at global env step ``env_steps``: the scaling rule's ``rule_lr``, reached by
    a linear warm-up from the config's own (N = 1's) ``config_lr`` over ``warmup_env_steps`` env steps after
    ``learning_starts`` (Goyal et al. 2017's gradual warm-up), times the linear decay to ``final_fraction`` of it
    over training. Where the rule keeps the config's rate (N = 1, scaling strong) the warm-up changes nothing."""
    lr = rule_lr
    if warmup_env_steps:
        lr = linear_schedule(max(0, env_steps - learning_starts), config_lr, rule_lr, warmup_env_steps)
    return lr * linear_schedule(env_steps, 1.0, final_fraction, total_env_steps)


def annealed_beta(env_steps: int, total_env_steps: int, beta_start: float) -> float:
    """Prioritized replay's importance-sampling exponent, rising linearly from ``beta_start`` to 1 over training
    (full correction by the end)."""
    return beta_start + (1.0 - beta_start) * min(1.0, env_steps / max(1, total_env_steps))
