"""The replay buffer of flat observations (classic control): a preallocated NumPy ring buffer of transitions.

``terminated`` (the episode really ended: no bootstrap) is kept apart from ``truncated`` (a time limit cut the
episode: the next state's value still counts).
"""

from __future__ import annotations

import numpy as np

from hvd_dqn.errors import UserError
from hvd_dqn.replay.buffer import Batch, check_fits


class ReplayBuffer:
    def __init__(
        self,
        capacity: int,
        obs_shape: tuple[int, ...],
        obs_dtype=np.float32,
        memory_fraction: float = 0.9,
        ranks_per_host: int = 1,
    ):
        self.capacity = int(capacity)
        columns = {
            "obs": ((self.capacity, *obs_shape), obs_dtype),
            "next_obs": ((self.capacity, *obs_shape), obs_dtype),
            "action": ((self.capacity,), np.int32),
            "reward": ((self.capacity,), np.float32),
            "terminated": ((self.capacity,), np.bool_),
            "truncated": ((self.capacity,), np.bool_),
        }
        need = sum(int(np.prod(shape)) * np.dtype(dtype).itemsize for shape, dtype in columns.values())
        check_fits(need, self.capacity, ranks_per_host, memory_fraction)
        self._data = {name: np.zeros(shape, dtype) for name, (shape, dtype) in columns.items()}
        self.nbytes = need
        self.pos = 0  # next slot to write
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def add(self, obs, action, reward, next_obs, terminated, truncated) -> np.ndarray:
        """Add a batch of transitions (leading dim = number of envs), wrapping around when full; returns the
        slots written."""
        n = len(action)
        if self.pos + n <= self.capacity:  # the common case: one contiguous slice, no index array
            idx = slice(self.pos, self.pos + n)
        else:
            idx = (self.pos + np.arange(n)) % self.capacity
        for name, value in (
            ("obs", obs),
            ("next_obs", next_obs),
            ("action", action),
            ("reward", reward),
            ("terminated", terminated),
            ("truncated", truncated),
        ):
            self._data[name][idx] = value
        slots = (self.pos + np.arange(n)) % self.capacity
        self.pos = int((self.pos + n) % self.capacity)
        self.size = min(self.size + n, self.capacity)
        return slots

    def sampleable(self, idx) -> np.ndarray:
        """Every stored slot holds a complete transition."""
        return np.ones(np.shape(idx), bool)

    def open_slots(self) -> np.ndarray:
        """None: n-step transitions enter this buffer complete (``nstep.NStepAccumulator``)."""
        return np.zeros(0, np.int64)

    def gather_with_discount(self, idx: np.ndarray) -> tuple[Batch, None]:
        """The transitions at slots ``idx``; no discounts of its own (the shard's per-slot ones apply)."""
        return self.gather(idx), None

    def gather(self, idx: np.ndarray) -> Batch:
        d = self._data
        return Batch(
            d["obs"][idx],
            d["action"][idx],
            d["reward"][idx],
            d["next_obs"][idx],
            d["terminated"][idx],
            d["truncated"][idx],
        )

    # ---- checkpointing: plain arrays, no pickle
    def state_dict(self) -> dict[str, np.ndarray]:
        state = {name: arr[: self.size] if self.size < self.capacity else arr for name, arr in self._data.items()}
        state["pos"] = np.asarray(self.pos)
        state["size"] = np.asarray(self.size)
        return state

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        size = int(state["size"])
        if size > self.capacity:
            raise UserError(
                f"replay: checkpoint holds {size} transitions, more than this rank's capacity {self.capacity}"
            )
        for name, arr in self._data.items():
            arr[:size] = state[name][:size]
        self.size, self.pos = size, int(state["pos"]) % self.capacity
