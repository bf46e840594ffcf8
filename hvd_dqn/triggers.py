"""When the loop evaluates, logs and writes a checkpoint. Each decision is made from the global env-step counter,
the same on every rank, or from values every rank learns in the same collective, so every rank makes the same
collective calls that follow from it."""

from __future__ import annotations

import time

from hvd_dqn import distributed
from hvd_dqn.trainingstate import TrainingState


def crossed(before: int, after: int, every: int) -> bool:
    """True when a multiple of ``every`` lies in (before, after]."""
    return after // every > before // every


def checkpoint_due(
    config, state: TrainingState, per_rank, world, stop, last_checkpoint_at: float, prev_steps: int, final: bool
) -> tuple[bool, bool]:
    """(save a checkpoint now, stop after it). The step trigger (a multiple of ``checkpoint_every`` since
    ``prev_steps``) and the end come from the global counter; a stop request (any rank's signal, ``stop``: the
    rank's ``StopRequest``) and the wall-clock trigger (rank 0's ``time.monotonic()`` since
    ``last_checkpoint_at``) are allreduced at decision points, the iterations where a learning phase falls due,
    which are the same on every rank."""
    save = final or (
        config.checkpoint_every is not None and crossed(prev_steps, state.env_steps, config.checkpoint_every)
    )
    if not (final or state.vstep % per_rank.vector_steps_per_train == 0):
        return save, False
    timed = (
        world.is_chief
        and config.checkpoint_every_minutes is not None
        and time.monotonic() - last_checkpoint_at >= 60.0 * config.checkpoint_every_minutes
    )
    stop_votes, timed = distributed.allreduce_sum([float(stop.poll(state.env_steps)), float(timed)])
    stopping = stop_votes > 0 and not final  # at the end the run simply completes
    if stop_votes > 0:
        # every rank is here: the checkpoint gets written, however long it takes, and names the one cause
        stop.agreed(distributed.allgather_object(stop.cause()))
    return save or stopping or timed > 0, stopping
