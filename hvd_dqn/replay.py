"""This rank's replay shard: a preallocated NumPy ring buffer of transitions.

``terminated`` (the episode really ended: no bootstrap) is kept apart from ``truncated`` (a time limit cut the
episode: the next state's value still counts).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import psutil

from hvd_dqn.errors import UserError


class Batch(NamedTuple):
    """Transitions, each array with leading dims (..., batch)."""

    obs: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    next_obs: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray


def available_memory() -> int:
    """Bytes this process can still allocate: the host's available memory, or less under a cgroup (v2 or v1)
    memory limit, as in a container or a SLURM job with --mem."""
    available = psutil.virtual_memory().available
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = open(limit_file).read().strip()
            usage = int(open(usage_file).read().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit():
            available = min(available, max(0, int(limit) - usage))
        break
    return available


def check_fits(need: int, capacity: int, ranks_per_host: int = 1, memory_fraction: float = 0.9) -> None:
    """A UserError naming replay_capacity if ``ranks_per_host`` shards of ``need`` bytes each would not fit in
    ``memory_fraction`` of the memory this process can see. (NumPy's zeros are committed only as they are
    written, so an unchecked buffer fails much later, at an OOM kill, when the ring fills up.)"""
    available = available_memory()
    if need * ranks_per_host > memory_fraction * available:
        on_host = f" x {ranks_per_host} ranks on this host" if ranks_per_host > 1 else ""
        raise UserError(
            f"replay: {capacity} transitions need {need / 2**30:.2f} GiB per rank{on_host} but only "
            f"{available / 2**30:.2f} GiB is available; lower replay_capacity or use more hosts")


class ReplayBuffer:
    def __init__(self, capacity: int, obs_shape: tuple[int, ...], obs_dtype=np.float32, memory_fraction: float = 0.9,
                 ranks_per_host: int = 1):
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
        for name, value in (("obs", obs), ("next_obs", next_obs), ("action", action), ("reward", reward),
                            ("terminated", terminated), ("truncated", truncated)):
            self._data[name][idx] = value
        slots = (self.pos + np.arange(n)) % self.capacity
        self.pos = int((self.pos + n) % self.capacity)
        self.size = min(self.size + n, self.capacity)
        return slots

    def sample(self, rng: np.random.Generator, shape: tuple[int, ...]) -> Batch:
        """Uniform sample with replacement; ``shape`` = (updates, batch) gives one batch per update."""
        if self.size == 0:
            raise RuntimeError("sample from an empty replay buffer")
        idx = rng.integers(0, self.size, size=shape)
        return self.gather(idx)

    def gather(self, idx: np.ndarray) -> Batch:
        d = self._data
        return Batch(d["obs"][idx], d["action"][idx], d["reward"][idx], d["next_obs"][idx],
                     d["terminated"][idx], d["truncated"][idx])

    # ---- checkpointing: plain arrays, no pickle
    def state_dict(self) -> dict[str, np.ndarray]:
        state = {name: arr[: self.size] if self.size < self.capacity else arr for name, arr in self._data.items()}
        state["pos"] = np.asarray(self.pos)
        state["size"] = np.asarray(self.size)
        return state

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        size = int(state["size"])
        if size > self.capacity:
            raise UserError(f"replay: checkpoint holds {size} transitions, more than this rank's capacity {self.capacity}")
        for name, arr in self._data.items():
            arr[:size] = state[name][:size]
        self.size, self.pos = size, int(state["pos"]) % self.capacity
