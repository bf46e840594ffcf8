"""Callbacks: hooks into a running Trainer for embedding it in a larger program.

Subclass ``Callback`` and override what you need; pass instances as ``Trainer(config, callbacks=[...])``.
Hooks run on EVERY rank, at the same points and with the same arguments (all ranks hold identical weights and
evaluation results), so a callback may itself make collectives; ``trainer.world.is_chief`` tells rank 0, for
side effects that should happen once. An exception in a callback ends the job like any training error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class Callback:
    def on_train_begin(self, trainer) -> None:
        """Once set up (envs, replay, networks; restored from the checkpoint when resuming), before the first
        step."""

    def on_log(self, trainer, row: dict[str, Any]) -> None:
        """After each log point; ``row`` is the metrics.jsonl row (global env steps, wall clock, losses, speeds)."""

    def on_evaluation(self, trainer, result: dict[str, Any]) -> None:
        """After each greedy evaluation: eval_return_mean/std/min/max and eval_episodes, plus env_steps."""

    def on_checkpoint(self, trainer, path: Path) -> None:
        """After a checkpoint (or the final model) has been written completely to ``path``."""


class CallbackList:
    def __init__(self, callbacks=()):
        self.callbacks = list(callbacks or ())
        for cb in self.callbacks:
            if not isinstance(cb, Callback):
                raise TypeError(f"callbacks must be hvd_dqn.Callback instances, got {type(cb).__name__}")

    def fire(self, hook: str, trainer, *args) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(trainer, *args)
