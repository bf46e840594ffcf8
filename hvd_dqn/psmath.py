"""The parameter server's arithmetic and message layout, in pure NumPy (``hvd_dqn.paramserver`` moves the buffers).

A gradient message is one flat float32 array: the version of the weights it was computed on (an int64 in two
float32 slots, bit for bit), the worker's loss and mean Q, then the gradient. A reply is the server's version and a
flag (two int64s in four slots), then the weights when the flag says they follow.
"""

from __future__ import annotations

import numpy as np

from hvd_dqn.errors import UserError

SERVER = 0  # the rank that serves the weights and the optimizer
GRAD_HEADER = 4  # float32 slots before a gradient: version (2), loss, mean Q
REPLY_HEADER = 4  # float32 slots before the weights: version (2), flag (2)
CONTINUE, WEIGHTS, DONE = 0, 1, 2  # reply flags: keep computing; new weights follow; the run of updates is over


def check_world(mode: str, size: int, mpi: bool) -> None:
    """A UserError unless a job of ``size`` ranks (MPI controller: ``mpi``) can run parameter_server ``mode``."""
    if mode == "none":
        return
    if size < 2:
        raise UserError(
            f"parameter_server: {mode} needs at least 2 ranks (rank 0 serves, the others act and "
            f"learn); this job has {size}"
        )
    if not mpi:
        raise UserError(
            f"parameter_server: {mode} sends its messages over MPI (mpi4py); this job runs on Gloo: "
            "launch with horovodrun --mpi, mpirun or srun"
        )


def pack_gradient(version: int, loss: float, q_mean: float, grad: np.ndarray) -> np.ndarray:
    buf = np.empty(GRAD_HEADER + grad.size, np.float32)
    buf[:2].view(np.int64)[0] = version
    buf[2], buf[3] = loss, q_mean
    buf[GRAD_HEADER:] = grad.ravel()
    return buf


def unpack_gradient(buf: np.ndarray) -> tuple[int, float, float, np.ndarray]:
    """(version, loss, mean Q, the gradient: a view into ``buf``)."""
    return int(buf[:2].view(np.int64)[0]), float(buf[2]), float(buf[3]), buf[GRAD_HEADER:]


def pack_reply(buf: np.ndarray, version: int, flag: int, weights: np.ndarray | None = None) -> np.ndarray:
    """Fill ``buf`` (REPLY_HEADER + n_params slots) and return the part to send: the header, with the weights
    unless ``flag`` is CONTINUE."""
    buf[:4].view(np.int64)[:] = (version, flag)
    if flag == CONTINUE:
        return buf[:REPLY_HEADER]
    buf[REPLY_HEADER:] = weights
    return buf


def unpack_reply(buf: np.ndarray) -> tuple[int, int, np.ndarray | None]:
    """(server version, flag, the weights (a view) or None)."""
    version, flag = (int(x) for x in buf[:4].view(np.int64))
    return version, flag, None if flag == CONTINUE else buf[REPLY_HEADER:]


def average(grads: list[np.ndarray]) -> np.ndarray:
    """The mean of the workers' gradients, summed in worker order (the same bytes for the same gradients)."""
    total = np.zeros_like(grads[0], dtype=np.float32)
    for g in grads:
        total += g
    return total / np.float32(len(grads))


def accepted(server_version: int, grad_version: int, bound: int) -> bool:
    """Whether a gradient computed on ``grad_version`` may be applied at ``server_version``: its staleness (the
    server steps taken since its weights) is within ``bound``."""
    return server_version - grad_version <= bound


def must_pull(server_version: int, worker_version: int, bound: int) -> bool:
    """Whether a worker holding ``worker_version`` must get the weights before its next gradient: they are more
    than ``bound`` server steps old."""
    return server_version - worker_version > bound


class StalenessCount:
    """How many applied gradients had each staleness (index = server steps since their weights)."""

    def __init__(self):
        self.counts: list[int] = []
        self.rejected = 0  # arrived staler than the bound: not applied, the worker recomputed on new weights
        self.dropped = 0  # in flight when a run of updates ended: not applied

    def add(self, staleness: int) -> None:
        if staleness >= len(self.counts):
            self.counts.extend([0] * (staleness + 1 - len(self.counts)))
        self.counts[staleness] += 1

    @property
    def max(self) -> int | None:
        return len(self.counts) - 1 if self.counts else None

    def state_dict(self) -> dict:
        return {"counts": list(self.counts), "rejected": self.rejected, "dropped": self.dropped}

    def load_state_dict(self, state: dict) -> None:
        """A ValueError names the first entry that is not a count (a checkpoint's damaged state.json)."""
        counts, rejected, dropped = state["counts"], state["rejected"], state["dropped"]
        for name, value in {
            "rejected": rejected,
            "dropped": dropped,
            **{f"counts[{i}]": n for i, n in enumerate(counts)},
        }.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"staleness {name} is {value!r}, not a count")
        self.counts, self.rejected, self.dropped = list(counts), rejected, dropped

    def summary(self) -> dict:
        return {
            "ps_staleness_max": self.max,
            "ps_staleness_counts": list(self.counts),
            "ps_rejected": self.rejected,
            "ps_dropped": self.dropped,
        }
