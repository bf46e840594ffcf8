"""Resuming onto another number of ranks: the transitions of N ranks' replay shards dealt out to N' ranks.

Pure functions over the arrays of ``ReplayShard.state_dict`` (the ring buffer of flat observations); the trainer's
state module reads the files and calls them. The rule, the same on every rank so that each computes its own share
without talking to the others:

- Each old shard's transitions are put in the order they were stored, oldest first (a full ring starts at its
  write position). The n-step starts a vanished rank still held are flushed, as a time limit would (the rewards
  so far, bootstrapped from the env's last observation), and come after them: they are that shard's newest.
- All shards are interleaved newest first (age 0 of rank 0, of rank 1, ..., then age 1, ...) and dealt round
  robin: the j-th goes to new rank ``j % N'``. So every transition lands on exactly one new rank, and each new
  rank gets a slice of every age.
- A new rank keeps the newest ``capacity`` of what it is dealt; the rest (the oldest) are dropped, and
  ``Deal.dropped`` counts them over all new ranks, for the line that says so.

Discounts and priorities travel with their transitions. A slot that had no priority yet (filled behind the
sum-tree's back) and a flushed start get the shard's largest priority, as a new transition would.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from hvd_dqn.nstep import NStepBatch

COLUMNS = ("obs", "next_obs", "action", "reward", "terminated", "truncated")


class Deal(NamedTuple):
    """What one new rank gets: per item, the old rank and its index in that rank's chronological order (oldest
    first), the new rank's items oldest first; and how many items all new ranks together drop."""

    old_rank: np.ndarray
    index: np.ndarray
    dropped: int


def chronological_slots(size: int, pos: int, capacity: int) -> np.ndarray:
    """A ring's slots oldest first: from 0 while it has not wrapped, from its write position once full."""
    if size < capacity:
        return np.arange(size)
    return (pos + np.arange(capacity)) % capacity


def deal(counts: list[int], new_size: int, new_rank: int, capacity: int) -> Deal:
    """Which of the old ranks' items (``counts[r]`` each, in chronological order) new rank ``new_rank`` of
    ``new_size`` gets, keeping at most ``capacity``."""
    counts = [int(c) for c in counts]
    rank = np.concatenate([np.full(c, r, np.int64) for r, c in enumerate(counts)] or [np.zeros(0, np.int64)])
    age = np.concatenate([np.arange(c, dtype=np.int64) for c in counts] or [np.zeros(0, np.int64)])
    order = np.lexsort((rank, age))  # newest first (age 0), then by old rank
    dealt = [order[r::new_size] for r in range(new_size)]
    dropped = sum(max(0, len(d) - capacity) for d in dealt)
    mine = dealt[new_rank][:capacity]  # the newest
    mine = mine[np.lexsort((rank[mine], -age[mine]))]  # stored oldest first, old rank 0 first within an age
    old_rank = rank[mine]
    index = np.asarray(counts, np.int64)[old_rank] - 1 - age[mine] if len(mine) else np.zeros(0, np.int64)
    return Deal(old_rank, index, dropped)


def in_order(
    arrays: dict[str, np.ndarray], capacity: int, max_priority_weight: float | None, flushed: NStepBatch | None = None
) -> dict[str, np.ndarray]:
    """One old shard's transitions as columns in chronological order (oldest first), with ``discount`` and, when
    prioritized (``max_priority_weight``: the largest priority ** alpha), ``priority``; ``flushed`` (its pending
    n-step starts, flushed) appended as the newest."""
    size = int(arrays["size"])
    slots = chronological_slots(size, int(arrays["pos"]), capacity)
    out = {name: np.asarray(arrays[name])[slots] for name in COLUMNS}
    out["discount"] = np.asarray(arrays["shard_discount"])[slots]
    if max_priority_weight is not None:
        tracked = np.asarray(arrays["shard_priority"], np.float64)[:size]  # slots past the size hold no transition
        weight = np.full(size, max_priority_weight, np.float64)
        weight[: len(tracked)] = tracked
        out["priority"] = weight[slots]
    if flushed is not None and len(flushed.action):
        extra = dict(
            zip(
                COLUMNS,
                (flushed.obs, flushed.next_obs, flushed.action, flushed.reward, flushed.terminated, flushed.truncated),
            )
        )
        extra["discount"] = flushed.discount
        if max_priority_weight is not None:
            extra["priority"] = np.full(len(flushed.action), max_priority_weight, np.float64)
        out = {
            name: np.concatenate([col, np.asarray(extra[name]).astype(col.dtype, copy=False)])
            for name, col in out.items()
        }
    return out


def shard_arrays(
    old: list[dict[str, np.ndarray]], mine: Deal, capacity: int, max_priority: float | None
) -> dict[str, np.ndarray]:
    """The ``ReplayShard.load_state_dict`` arrays of a new rank from the old shards' chronological columns
    (``in_order``) and its ``deal``."""
    n = len(mine.index)
    names = [k for k in (*COLUMNS, "discount", "priority") if k in old[0]]
    out = {}
    for name in names:
        template = old[0][name]
        column = np.zeros((n, *template.shape[1:]), template.dtype)
        for r, shard in enumerate(old):
            take = mine.old_rank == r
            column[take] = shard[name][mine.index[take]]
        out[name] = column
    arrays = {name: out[name] for name in COLUMNS}
    arrays.update(size=np.asarray(n), pos=np.asarray(n % capacity), shard_discount=out["discount"])
    if "priority" in out:
        arrays.update(shard_priority=out["priority"], shard_max_priority=np.asarray(max_priority))
    return arrays
