"""The parameter server's protocol over mpi4py (every mpi4py call of the project is here).

Rank 0 (``psmath.SERVER``) holds the weights and the optimizer; ranks 1..N-1 compute gradients on their own replay
and send them with non-blocking point-to-point messages of flat float32 buffers, and receive weights back. A run
of updates (the updates up to a target sync) ends with the server sending its final weights to every worker, so at
its end every rank holds the same weights: target syncs, evaluations, checkpoints and the replicas' checksums work
as in allreduce mode.

- sync: the server waits for one gradient from every worker, steps on their mean (``psmath.average``, in worker
  order: bit-exact for a seed) and sends the new weights to all.
- async: the server steps on each gradient as it arrives. A gradient staler than ``bound`` server steps is not
  applied (the worker gets the weights and recomputes); after each step the worker gets the weights only when its
  own are more than ``bound`` steps old. Gradients still in flight when the run's last update is applied are
  dropped, so a run applies exactly its number of updates.

Horovod and mpi4py share MPI_COMM_WORLD (horovodrun --mpi, mpirun, srun): Horovod initialises MPI with
MPI_THREAD_MULTIPLE and mpi4py, imported after ``hvd.init()``, uses that MPI as it is. The protocol talks on a
duplicate of the world communicator, so its messages never match Horovod's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from hvd_dqn import psmath

GRAD_TAG, REPLY_TAG = 11, 12
_comm = None


def communicator():
    """The protocol's communicator (a duplicate of MPI_COMM_WORLD, made once; call only after hvd.init())."""
    global _comm
    if _comm is None:
        from mpi4py import MPI

        _comm = MPI.COMM_WORLD.Dup()
    return _comm


def _mpi():
    from mpi4py import MPI

    return MPI


class RunResult(NamedTuple):
    """A run of updates as the server saw it: the mean loss and mean Q of the gradients it applied."""

    td_loss: float
    q_mean: float


class Server:
    """``serve(updates, version)`` applies ``updates`` gradients, starting at weights ``version``.
    ``apply(grad)`` steps the optimizer on a flat gradient; ``weights()`` returns the flat weights."""

    def __init__(
        self,
        n_params: int,
        mode: str,
        bound: int,
        apply: Callable[[np.ndarray], None],
        weights: Callable[[], np.ndarray],
    ):
        self.comm = communicator()
        self.workers = self.comm.Get_size() - 1
        self.mode, self.bound, self.apply, self.weights = mode, bound, apply, weights
        self.inbox = [np.empty(psmath.GRAD_HEADER + n_params, np.float32) for _ in range(self.workers)]
        self.outbox = [np.empty(psmath.REPLY_HEADER + n_params, np.float32) for _ in range(self.workers)]
        self.sending = [None] * self.workers
        self.staleness = psmath.StalenessCount()

    def serve(self, updates: int, version: int) -> RunResult:
        run = self._serve_sync if self.mode == "sync" else self._serve_async
        return run(updates, version)

    def _receive(self, w: int):
        return self.comm.Irecv(self.inbox[w], source=w + 1, tag=GRAD_TAG)

    def _reply(self, w: int, version: int, flag: int) -> None:
        if self.sending[w] is not None:
            self.sending[w].Wait()  # the worker has this reply's predecessor; its buffer is free again
        weights = None if flag == psmath.CONTINUE else self.weights()
        message = psmath.pack_reply(self.outbox[w], version, flag, weights)
        self.sending[w] = self.comm.Isend(message, dest=w + 1, tag=REPLY_TAG)

    def _finish(self, version: int) -> None:
        for w in range(self.workers):
            self._reply(w, version, psmath.DONE)
        _mpi().Request.Waitall(self.sending)
        self.sending = [None] * self.workers

    def _serve_sync(self, updates: int, version: int) -> RunResult:
        loss = q = 0.0
        for i in range(updates):
            _mpi().Request.Waitall([self._receive(w) for w in range(self.workers)])
            parts = [psmath.unpack_gradient(buf) for buf in self.inbox]
            stale = [p[0] for p in parts if p[0] != version]
            if stale:
                raise RuntimeError(
                    f"parameter server (sync): a gradient of weights version {stale[0]} arrived at version {version}"
                )
            self.apply(psmath.average([p[3] for p in parts]))
            version += 1
            self.staleness.add(0)
            loss += sum(p[1] for p in parts) / self.workers
            q += sum(p[2] for p in parts) / self.workers
            if i + 1 < updates:
                for w in range(self.workers):
                    self._reply(w, version, psmath.WEIGHTS)
        self._finish(version)
        return RunResult(loss / updates, q / updates)

    def _serve_async(self, updates: int, version: int) -> RunResult:
        MPI = _mpi()
        holds = [version] * self.workers  # the version of each worker's weights
        pending = [self._receive(w) for w in range(self.workers)]
        applied, loss, q = 0, 0.0, 0.0
        while True:
            w = MPI.Request.Waitany(pending)
            grad_version, grad_loss, grad_q, grad = psmath.unpack_gradient(self.inbox[w])
            if psmath.accepted(version, grad_version, self.bound):
                self.apply(grad)
                self.staleness.add(version - grad_version)
                version, applied, loss, q = version + 1, applied + 1, loss + grad_loss, q + grad_q
                if applied == updates:
                    pending[w] = MPI.REQUEST_NULL
                    break
                flag = psmath.WEIGHTS if psmath.must_pull(version, holds[w], self.bound) else psmath.CONTINUE
            else:
                self.staleness.rejected += 1
                flag = psmath.WEIGHTS
            if flag == psmath.WEIGHTS:
                holds[w] = version
            self._reply(w, version, flag)
            pending[w] = self._receive(w)
        # every other worker has one gradient on its way (each sends one per reply): take it in, apply none
        self.staleness.dropped += sum(1 for r in pending if r != MPI.REQUEST_NULL)
        MPI.Request.Waitall(pending)
        self._finish(version)
        return RunResult(loss / updates, q / updates)


class Worker:
    """``work(version, gradient, set_weights)``: sends ``gradient()``'s results (loss, mean Q, flat gradient of
    the current weights) until the server ends the run of updates; ``set_weights(flat)`` takes the weights it
    sends. Returns the version of the weights held at the end (the server's)."""

    def __init__(self, n_params: int):
        self.comm = communicator()
        self.inbox = np.empty(psmath.REPLY_HEADER + n_params, np.float32)

    def work(
        self,
        version: int,
        gradient: Callable[[], tuple[float, float, np.ndarray]],
        set_weights: Callable[[np.ndarray], None],
    ) -> int:
        MPI = _mpi()
        while True:
            loss, q_mean, grad = gradient()
            message = psmath.pack_gradient(version, loss, q_mean, grad)
            MPI.Request.Waitall(
                [
                    self.comm.Isend(message, dest=psmath.SERVER, tag=GRAD_TAG),
                    self.comm.Irecv(self.inbox, source=psmath.SERVER, tag=REPLY_TAG),
                ]
            )
            server_version, flag, weights = psmath.unpack_reply(self.inbox)
            if weights is not None:
                set_weights(weights)
                version = server_version
            if flag == psmath.DONE:
                return version
