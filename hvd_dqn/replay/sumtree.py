"""The sum-tree of prioritized replay and its importance-sampling weights (Schaul et al. 2016).

Each rank keeps the priorities of its own transitions (as Ape-X's replay does); the gradient allreduce then
averages the importance-weighted gradients of all ranks, so nothing about priorities crosses ranks.
"""

from __future__ import annotations

import numpy as np


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
        if idx.size == 0:
            return
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
