"""What a run reports: its metrics rows (metrics.jsonl, the console, TensorBoard), the row that marks a resume,
and summary.json. Pure functions of the training state and the measurements the loop passes in."""

from __future__ import annotations

import resource
import time
from typing import Any, NamedTuple

from hvd_dqn.trainingstate import TrainingState


class LogPoint(NamedTuple):
    """Where the last metrics row was logged: the speeds of the next row are measured from here."""

    env_steps: int
    time: float  # time.perf_counter()
    updates: int


def metrics_row(
    state: TrainingState, last: LogPoint, now: float, start: float, world_size: int, epsilon: float, episodes
) -> dict[str, Any]:
    """A metrics row's training keys; ``episodes``: the sum and count of the episodes finished since ``last``,
    over all ranks."""
    returns, count = episodes
    elapsed = now - last.time
    return {
        "env_steps": state.env_steps,
        "wall_s": now - start,
        "updates": state.updates,
        "charts/episodic_return": returns / count if count else None,
        "charts/episodes": int(count),
        "charts/epsilon": epsilon,
        "losses/td_loss": state.train_stats.get("td_loss"),
        "losses/q_mean": state.train_stats.get("q_mean"),
        "perf/env_steps_per_s": (state.env_steps - last.env_steps) / elapsed,
        "perf/env_steps_per_s_per_rank": (state.env_steps - last.env_steps) / elapsed / world_size,
        "perf/updates_per_s": (state.updates - last.updates) / elapsed,
    }


def resumed_row(state: TrainingState, wall_s: float, checkpoint: str, restored, world_size: int) -> dict[str, Any]:
    """The row that marks a resume from ``checkpoint`` (``restored``: ``trainstate.restore``'s): the time since it
    was written and both world sizes (they differ where the run was resumed onto another world size,
    docs/checkpoints.md)."""
    return {
        "env_steps": state.env_steps,
        "wall_s": wall_s,
        "updates": state.updates,
        "event": "resumed",
        "checkpoint": checkpoint,
        "resume_gap_s": time.time() - restored.written_at,
        "world_size": world_size,
        "checkpoint_world_size": restored.world_size,
    }


def summary(config, world_size: int, state: TrainingState, wall: float, threshold, checksums, peak_rss_mb) -> dict:
    """summary.json's keys of the run as a whole (the best policy's and the job's own are added to them)."""
    return {
        "env_id": config.env_id,
        "world_size": world_size,
        "env_steps": state.env_steps,
        "updates": state.updates,
        "wall_s": wall,
        "env_steps_per_s": state.env_steps / wall,
        "updates_per_s": state.updates / wall,
        "final_eval_return_mean": state.last_eval.get("eval_return_mean"),
        "reward_threshold": threshold,
        "solved_env_steps": state.solved_env_steps,
        "solved_wall_s": state.solved_wall_s,
        "replica_checksums": checksums,
        "peak_rss_mb": peak_rss_mb,
    }


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB
