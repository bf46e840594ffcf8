"""What a run's config fixes before it starts (learning phases, gradient updates, log and evaluation points),
worked out here from the config's keys with the arithmetic in view, for tests to compare with what a run reports.
Deliberately not through ``Config.per_rank``: a test that asked the code under test for the expected value could
not fail. Covers the two scaling rules the tests use (strong and weak); each assumes learning_starts leaves every
rank's replay a minibatch to sample by the first phase, as the tests' configs do."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hvd_dqn.config import Config


def _config(cfg: Config | Mapping[str, Any]) -> Config:
    """A Config (for its defaults) from a Config or a mapping of its keys."""
    return cfg if isinstance(cfg, Config) else Config.from_dict(dict(cfg))


def learning_phases(cfg: Config | Mapping[str, Any], world_size: int = 1, until: int | None = None) -> list[int]:
    """The global env steps at which the learning phases of a run fall, up to ``until`` (default: the end).

    Each rank steps its num_envs envs together, so one vector step of all ranks is world_size * num_envs global
    env steps; a phase falls every train_every global env steps rounded to whole vector steps, at the vector
    steps that end such a period and are at or past learning_starts."""
    cfg = _config(cfg)
    vector_step = world_size * cfg.num_envs
    every = max(1, round(cfg.train_every / vector_step))  # vector steps from one phase to the next
    vector_steps = -(-cfg.total_env_steps // vector_step)  # the last one reaches or passes total_env_steps
    steps = [v * vector_step for v in range(1, vector_steps + 1) if v % every == 0]
    return [s for s in steps if s >= cfg.learning_starts and (until is None or s <= until)]


def updates_per_phase(cfg: Config | Mapping[str, Any], world_size: int = 1) -> int:
    """Gradient updates of one learning phase on each rank: updates_per_train (divided by N under scaling weak),
    times the train_every periods that one vector step of all ranks spans when it spans more than one."""
    cfg = _config(cfg)
    if cfg.scaling == "strong":
        per_train = cfg.updates_per_train
    elif cfg.scaling == "weak":
        per_train = cfg.updates_per_train // world_size
    else:
        raise NotImplementedError(f"scaling {cfg.scaling}: no test needs it here")
    return per_train * max(1, round(world_size * cfg.num_envs / cfg.train_every))


def expected_updates(cfg: Config | Mapping[str, Any], world_size: int = 1, until: int | None = None) -> int:
    """The ``updates`` counter a run reports (the same on every rank) once it has reached global env step
    ``until`` (default: the end): its learning phases times the updates of each."""
    return len(learning_phases(cfg, world_size, until)) * updates_per_phase(cfg, world_size)


def points(cfg: Config | Mapping[str, Any], every: int, world_size: int = 1) -> list[int]:
    """The global env steps of a run's vector steps that cross a multiple of ``every`` (its log or evaluation
    points), and the last one: where ``log_every`` and ``eval_every`` put a metrics row."""
    cfg = _config(cfg)
    vector_step = world_size * cfg.num_envs
    steps = range(vector_step, -(-cfg.total_env_steps // vector_step) * vector_step + 1, vector_step)
    return [s for s in steps if s // every > (s - vector_step) // every or s == steps[-1]]
