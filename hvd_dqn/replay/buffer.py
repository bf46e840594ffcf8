"""What every replay buffer of a rank offers the shard that samples it (``Buffer``), the sampled ``Batch``, and
the memory check every buffer makes before allocating.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

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
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
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
            f"{available / 2**30:.2f} GiB is available; lower replay_capacity or use more hosts"
        )


class Buffer(Protocol):
    """A rank's store of transitions, as ``ReplayShard`` uses it: ``ring.ReplayBuffer`` (flat observations) or
    ``frames.FrameReplayBuffer`` (Atari frames stored once)."""

    capacity: int

    def __len__(self) -> int: ...

    def add(self, obs, action, reward, next_obs, terminated, truncated, **extra) -> np.ndarray:
        """Store a vector step's transitions; return the slots written."""

    def sampleable(self, idx) -> np.ndarray:
        """True where slot ``idx`` starts a transition that can be sampled now."""

    def open_slots(self) -> np.ndarray:
        """Written slots whose transitions may still complete at a later add (an n-step window still open)."""

    def gather_with_discount(self, idx: np.ndarray) -> tuple[Batch, np.ndarray | None]:
        """The transitions at slots ``idx`` and their bootstrap discounts, or None where the buffer keeps none
        (the shard's per-slot discounts apply)."""

    def state_dict(self) -> dict[str, np.ndarray]: ...

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None: ...
