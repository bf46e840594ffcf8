"""The seeds of a run's envs and episodes, all drawn from the run's seed: ``SeedSequence([seed, index, stream])``
with one stream per use, so no two uses share one. Pure functions: every rank computes the same seeds."""

from __future__ import annotations

import numpy as np

# the streams: the training envs (index: the rank), the evaluations' episodes (index: the evaluation's number)
# and the envs that a resume starts afresh (index: the rank; one stream per global env step, from 2 up)
TRAIN_STREAM, EVAL_STREAM, RESTART_STREAMS = 0, 1, 2


def env_seeds(seed: int, rank: int, count: int) -> list[int]:
    """The seeds of ``rank``'s ``count`` training envs."""
    return _seeds([seed, rank, TRAIN_STREAM], count)


def eval_seeds(seed: int, evaluation: int, count: int) -> list[int]:
    """The seeds of the first ``count`` episodes of evaluation number ``evaluation`` (from 0): each evaluation
    plays fresh episodes, known from the run's seed."""
    return _seeds([seed, evaluation, EVAL_STREAM], count)


def restart_seeds(seed: int, rank: int, count: int, env_steps: int) -> list[int]:
    """The seeds of ``rank``'s ``count`` envs when a resume from global env step ``env_steps`` cannot restore
    them and starts their episodes afresh."""
    return _seeds([seed, rank, RESTART_STREAMS + env_steps], count)


def _seeds(key: list[int], count: int) -> list[int]:
    return [int(s) for s in np.random.SeedSequence(key).generate_state(count, dtype=np.uint32)]
