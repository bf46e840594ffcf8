"""This rank's replay shard: a buffer (``Buffer``) plus each slot's bootstrap discount and, with prioritized
replay (proportional, Schaul et al. 2016), a sum-tree of priorities. The learner samples from it.

Each rank keeps the priorities of its own transitions (as Ape-X's replay does); the gradient allreduce then
averages the importance-weighted gradients of all ranks, so nothing about priorities crosses ranks.
"""

from __future__ import annotations

import numpy as np

from hvd_dqn.replay.buffer import Buffer
from hvd_dqn.replay.sumtree import SumTree, importance_weights


class ReplayShard:
    """This rank's buffer plus a per-slot bootstrap discount (gamma^m for n-step transitions) and, when
    prioritized, a sum-tree of priorities. Uses only the ``Buffer`` protocol."""

    def __init__(
        self, buffer: Buffer, discount: float, prioritized: bool = False, alpha: float = 0.6, epsilon: float = 1e-6
    ):
        """``discount``: the bootstrap weight of a slot added without one (gamma^n, that of a full n-step
        window, so a buffer restored from a checkpoint without discounts is right for all but truncated tails)."""
        self.buffer = buffer
        self.capacity = buffer.capacity
        self.discount = np.full(self.capacity, discount, np.float32)
        self._tracked = 0  # slots 0.._tracked-1 have a priority (slots fill in order)
        self.tree = SumTree(self.capacity) if prioritized else None
        self.alpha, self.epsilon = alpha, epsilon
        self.max_priority = 1.0  # new transitions get the largest priority seen, so each is replayed soon

    def __len__(self) -> int:
        return len(self.buffer)

    def sampleable_count(self) -> int:
        """Transitions a sample can draw (the frame replay: those whose frames and n steps are all stored)."""
        n = len(self.buffer)
        return n if n == 0 else int(np.count_nonzero(self.buffer.sampleable(np.arange(n))))

    def add(self, obs, action, reward, next_obs, terminated, truncated, discount=None, **extra) -> None:
        """Add transitions through the buffer's ``add`` (``extra``: its own keywords, e.g. the frame buffer's
        ``episode_end``); they get this shard's discount and, when prioritized, the largest priority so far once
        their transitions are complete (priority 0 until then)."""
        n = len(action)
        if self.tree is not None:
            self._track_restored()  # before the add: the new slots are not restored ones
            waiting = self._waiting()
        idx = self.buffer.add(obs, action, reward, next_obs, terminated, truncated, **extra)
        if discount is not None:
            self.discount[idx] = discount
        if self.tree is not None:
            # A slot enters the tree when its transition completes, not when it is written: a drawn slot whose
            # n-step window is still open could only be zeroed, and nothing would raise it again.
            self.tree.set(idx, 0.0)
            ready = np.concatenate([waiting, idx])
            self.tree.set(ready[self.buffer.sampleable(ready)], self.max_priority**self.alpha)
            self._tracked = min(self.capacity, self._tracked + n)

    def _waiting(self) -> np.ndarray:
        """Written slots whose transitions are not complete yet but may be after the next add."""
        recent = self.buffer.open_slots()
        return recent[~self.buffer.sampleable(recent)]

    def sample(self, rng: np.random.Generator, shape: tuple[int, ...], beta: float = 1.0):
        """``(batch, discount, weights, idx)``: uniform with weights 1, or proportional to priority^alpha
        with importance-sampling weights of exponent ``beta``."""
        size = len(self.buffer)
        if size == 0:
            raise RuntimeError("sample from an empty replay buffer")
        self._track_restored()
        idx = self._draw(rng, shape, size)
        if self.tree is None:
            weights = np.ones(shape, np.float32)
        else:
            weights = importance_weights(self.tree.get(idx) / self.tree.total, size, beta)
        batch, discount = self.buffer.gather_with_discount(idx)  # the frame replay computes n-step discounts itself
        return batch, self.discount[idx] if discount is None else discount, weights, idx

    def _draw(self, rng: np.random.Generator, shape: tuple[int, ...], size: int) -> np.ndarray:
        """Slots to replay. Slots that start no complete transition (the frame buffer's episode-start frames and
        oldest rows) are drawn again; prioritized, only the oldest rows can be drawn so (incomplete slots hold no
        priority), and their priority goes to 0, for good: their frames are gone."""
        if self.tree is not None and self.tree.total <= 0:
            raise RuntimeError("replay holds no complete transition yet")
        idx = rng.integers(0, size, size=shape) if self.tree is None else self.tree.sample(rng, shape)
        for _ in range(1000):
            bad = ~self.buffer.sampleable(idx)
            if not bad.any():
                return idx
            if self.tree is None:
                idx[bad] = rng.integers(0, size, size=int(bad.sum()))
            else:  # the whole draw again, so stratification and weights stay exact
                self.tree.set(idx[bad], 0.0)
                if self.tree.total <= 0:
                    break
                idx = self.tree.sample(rng, shape)
        raise RuntimeError("replay holds no complete transition yet")

    def update_priorities(self, idx: np.ndarray, td_abs: np.ndarray) -> None:
        """New priorities ``(|td| + epsilon)^alpha`` for the sampled slots (no-op without prioritization)."""
        if self.tree is None:
            return
        p = np.abs(np.asarray(td_abs, np.float64)).ravel() + self.epsilon
        self.max_priority = max(self.max_priority, float(p.max()))
        self.tree.set(np.asarray(idx).ravel(), p**self.alpha)

    def _track_restored(self) -> None:
        """Slots filled behind this wrapper's back (the plain buffer restored from a checkpoint) get the max
        priority where their transitions are complete, so they are sampled instead of sitting at priority 0; the
        others enter the tree as they complete (``add``)."""
        if self.tree is not None and self._tracked < len(self.buffer):
            slots = np.arange(self._tracked, len(self.buffer))
            self.tree.set(slots[self.buffer.sampleable(slots)], self.max_priority**self.alpha)
            self._tracked = len(self.buffer)

    # ---- checkpointing: plain arrays, no pickle
    def state_dict(self) -> dict[str, np.ndarray]:
        """The buffer's own arrays plus each slot's discount and, when prioritized, the priorities of the slots
        tracked so far and the largest priority seen."""
        arrays = dict(self.buffer.state_dict())
        arrays["shard_discount"] = self.discount[: int(arrays["size"])]
        if self.tree is not None:
            arrays["shard_priority"] = self.tree.get(np.arange(self._tracked))
            arrays["shard_max_priority"] = np.asarray(self.max_priority)
        return arrays

    def load_state_dict(self, arrays: dict[str, np.ndarray]) -> None:
        self.buffer.load_state_dict(arrays)
        self.discount[: int(arrays["size"])] = arrays["shard_discount"]
        if self.tree is not None:
            priority = arrays["shard_priority"]
            # the tree is a function of its leaves (each parent = left + right), so rebuilding them is exact
            self.tree.set(np.arange(len(priority)), priority)
            self._tracked = len(priority)
            self.max_priority = float(arrays["shard_max_priority"])
