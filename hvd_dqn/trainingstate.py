"""The training state: what a run has done so far, as one record, equal on every rank.

The loop advances it; a checkpoint's ``state.json`` holds it under ``training`` and an elastic commit holds its
fields, both through ``to_dict`` / ``from_dict``. The networks, the optimizer's slots, the replay and each rank's
actor keep their own state; the learner's two counters and the evaluations' count are copied into the record
where they change (after a learning phase, after an evaluation) and copied back out when a state is loaded.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from hvd_dqn.errors import excerpt


@dataclass
class TrainingState:
    vstep: int = 0  # vector steps done by this rank (the same count on every rank)
    env_steps: int = 0  # global env steps done by all ranks
    updates: int = 0  # gradient updates done (the learner's)
    since_sync: int = 0  # gradient updates since the last target sync (the learner's)
    evaluations: int = 0  # greedy evaluations done: the next one plays the episodes of this index
    train_stats: dict = field(default_factory=dict)  # the last learning phase's loss and Q
    last_eval: dict = field(default_factory=dict)  # the last evaluation's summary
    solved_env_steps: int | None = None  # where the eval mean first reached the reward threshold
    solved_wall_s: float | None = None

    def evaluated(self, summary: dict[str, Any], threshold: float | None, wall_s: float) -> None:
        """Record an evaluation's summary (``evaluation.summarize``'s), and where its mean first reached
        ``threshold``."""
        self.evaluations += 1
        self.last_eval = dict(summary)
        if self.solved_env_steps is None and threshold is not None and summary["eval_return_mean"] >= threshold:
            self.solved_env_steps, self.solved_wall_s = self.env_steps, wall_s

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON values (copies: the dict does not change with the record)."""
        return {f.name: _copy(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "") -> TrainingState:
        """The record of ``to_dict``'s dict; ValueError naming the first key that is missing or of another type
        (``where``: the dict's place in its file, for the message)."""
        for name, kind in FIELD_TYPES.items():
            if name not in data:
                raise ValueError(f"no {where}{name}")
            value = data[name]
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ValueError(f"{where}{name} is a {type(value).__name__}: {excerpt(value)}")
        return cls(**{name: _copy(data[name]) for name in FIELD_TYPES})


FIELD_TYPES = {
    "vstep": int,
    "env_steps": int,
    "updates": int,
    "since_sync": int,
    "evaluations": int,
    "train_stats": dict,
    "last_eval": dict,
    "solved_env_steps": (int, type(None)),
    "solved_wall_s": (int, float, type(None)),
}


def from_version2(state: dict[str, Any]) -> dict[str, Any]:
    """The record's dict from a state.json of checkpoint versions 1 and 2, which kept the loop's counters under
    ``loop`` and the learner's update count and the evaluations' count beside it (``updates``,
    ``evaluator_count``); the caller has checked those keys' types."""
    return {**state["loop"], "updates": state["updates"], "evaluations": state["evaluator_count"]}


def _copy(value: Any) -> Any:
    return dict(value) if isinstance(value, dict) else value
