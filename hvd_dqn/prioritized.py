"""Prioritized replay (proportional, Schaul et al. 2016) on each rank's shard, and the shard wrapper the trainer
samples from when any algorithm component needs more than the plain ring buffer.

Each rank keeps the priorities of its own transitions (as Ape-X's replay does); the gradient allreduce then
averages the importance-weighted gradients of all ranks, so nothing about priorities crosses ranks.
"""
from __future__ import annotations

import numpy as np

from hvd_dqn.replay import Batch, ReplayBuffer


class SumTree:
    """Priorities of ``capacity`` slots in a binary tree of partial sums: update and proportional sampling in
    O(log capacity), vectorised over a batch of slots. Leaves of slots never written hold 0, so are never drawn."""

    def __init__(self, capacity: int):
        self.capacity = int(capacity)
        self._leaves = 1 << max(0, (self.capacity - 1).bit_length())  # leaves padded to a power of two
        self._tree = np.zeros(2 * self._leaves, np.float64)  # node i has children 2i, 2i+1; root is 1

    @property
    def total(self) -> float:
        return float(self._tree[1])

    def get(self, idx) -> np.ndarray:
        return self._tree[self._leaves + np.asarray(idx)]

    def set(self, idx, priorities) -> None:
        """Set the priorities of slots ``idx`` (repeats: the last value wins) and recompute their ancestors."""
        idx = np.asarray(idx, np.int64).ravel()
        priorities = np.broadcast_to(np.asarray(priorities, np.float64), idx.shape).ravel()
        if np.any(idx < 0) or np.any(idx >= self.capacity):
            raise IndexError("sum-tree slot out of range")
        if np.any(~np.isfinite(priorities)) or np.any(priorities < 0):
            raise ValueError("priorities must be finite and >= 0")
        node = self._leaves + idx
        self._tree[node] = priorities
        node = np.unique(node // 2)
        while node[0] >= 1:  # level by level: each parent is recomputed from its two children, so sums stay exact
            self._tree[node] = self._tree[2 * node] + self._tree[2 * node + 1]
            if node[0] == 1:
                break
            node = np.unique(node // 2)

    def find(self, mass) -> np.ndarray:
        """The slot whose cumulative-priority interval holds each value of ``mass`` (in [0, total))."""
        mass = np.minimum(np.asarray(mass, np.float64), np.nextafter(self.total, 0.0))
        node = np.ones(mass.shape, np.int64)
        while self._leaves > 1 and node.max() < self._leaves:
            left = 2 * node
            left_sum = self._tree[left]
            go_right = mass >= left_sum
            mass = np.where(go_right, mass - left_sum, mass)
            node = np.where(go_right, left + 1, left)
        return np.minimum(node - self._leaves, self.capacity - 1)

    def sample(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        """Slots drawn with probability priority / total, stratified within each row of the last dim (one draw
        from each of B equal slices of the total mass, as in the paper: lower variance, same marginals)."""
        total = self.total
        if total <= 0:
            raise RuntimeError("sample from a sum-tree whose priorities are all 0")
        b = shape[-1]
        mass = (np.arange(b) + rng.random(shape)) * (total / b)
        return self.find(mass)


def importance_weights(probs: np.ndarray, size: int, beta: float) -> np.ndarray:
    """``(size * P(i))^-beta``, normalised by the largest weight of each batch (the last dim) so the weights
    only ever scale updates down."""
    w = (size * np.asarray(probs, np.float64)) ** (-beta)
    return (w / w.max(axis=-1, keepdims=True)).astype(np.float32)


class ReplayShard:
    """This rank's ring buffer plus a per-slot bootstrap discount (gamma^m for n-step transitions) and, when
    prioritized, a sum-tree of priorities. Uses only ReplayBuffer's public ``add``/``gather``/``pos``."""

    def __init__(self, buffer: ReplayBuffer, discount: float, prioritized: bool = False, alpha: float = 0.6,
                 epsilon: float = 1e-6):
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
        """Transitions a sample can draw: every stored one, or (a buffer with ``sampleable``, the frame replay)
        those whose frames and n steps are all stored."""
        n = len(self.buffer)
        sampleable = getattr(self.buffer, "sampleable", None)
        return n if sampleable is None or n == 0 else int(np.count_nonzero(sampleable(np.arange(n))))

    def add(self, obs, action, reward, next_obs, terminated, truncated, discount=None, **extra) -> None:
        """Add transitions through the buffer's ``add`` (``extra``: its own keywords, e.g. the frame buffer's
        ``episode_end``); they get this shard's discount and, when prioritized, the largest priority so far."""
        n = len(action)
        idx = self.buffer.add(obs, action, reward, next_obs, terminated, truncated, **extra)
        if discount is not None:
            self.discount[idx] = discount
        if self.tree is not None:
            self._track_restored()
            self.tree.set(idx, self.max_priority ** self.alpha)
            self._tracked = min(self.capacity, self._tracked + n)

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
        if hasattr(self.buffer, "gather_with_discount"):  # the frame replay computes n-step discounts itself
            batch, discount = self.buffer.gather_with_discount(idx)
            return batch, discount, weights, idx
        return self.buffer.gather(idx), self.discount[idx], weights, idx

    def _draw(self, rng: np.random.Generator, shape: tuple[int, ...], size: int) -> np.ndarray:
        """Slots to replay. A buffer with ``sampleable`` (the frame buffer: episode-start frames and the oldest
        rows end no complete transition) has its other slots redrawn; prioritized, their priority goes to 0."""
        sampleable = getattr(self.buffer, "sampleable", None)
        idx = rng.integers(0, size, size=shape) if self.tree is None else self.tree.sample(rng, shape)
        for _ in range(1000):
            bad = None if sampleable is None else ~sampleable(idx)
            if bad is None or not bad.any():
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
        self.tree.set(np.asarray(idx).ravel(), p ** self.alpha)

    def _track_restored(self) -> None:
        """Slots filled behind this wrapper's back (the plain buffer restored from a checkpoint) get the max
        priority, so they are sampled instead of sitting at priority 0."""
        if self.tree is not None and self._tracked < len(self.buffer):
            self.tree.set(np.arange(self._tracked, len(self.buffer)), self.max_priority ** self.alpha)
            self._tracked = len(self.buffer)

    # ---- checkpointing: plain arrays, no pickle
    def state_dict(self) -> dict[str, np.ndarray]:
        """The buffer's own arrays plus each slot's discount and, when prioritized, the priorities of the slots
        tracked so far and the largest priority seen."""
        arrays = dict(self.buffer.state_dict())
        arrays["shard_discount"] = self.discount[:int(arrays["size"])]
        if self.tree is not None:
            arrays["shard_priority"] = self.tree.get(np.arange(self._tracked))
            arrays["shard_max_priority"] = np.asarray(self.max_priority)
        return arrays

    def load_state_dict(self, arrays: dict[str, np.ndarray]) -> None:
        self.buffer.load_state_dict(arrays)
        self.discount[:int(arrays["size"])] = arrays["shard_discount"]
        if self.tree is not None:
            priority = arrays["shard_priority"]
            # the tree is a function of its leaves (each parent = left + right), so rebuilding them is exact
            self.tree.set(np.arange(len(priority)), priority)
            self._tracked = len(priority)
            self.max_priority = float(arrays["shard_max_priority"])


__all__ = ["ReplayShard", "SumTree", "importance_weights"]
