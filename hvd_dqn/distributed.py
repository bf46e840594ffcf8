"""Every Horovod call of the package lives here: init and device pinning, broadcasts, the distributed optimizer and
gradient tape, gathers for metrics and checksums, and ending the whole job when one rank fails.

Other modules ask this one; none imports horovod.
"""

from __future__ import annotations

import functools
import hashlib
import os
import sys
import threading
import traceback
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from hvd_dqn.errors import UserError, say


@dataclass(frozen=True)
class World:
    rank: int
    size: int
    local_rank: int
    local_size: int

    @property
    def is_chief(self) -> bool:
        return self.rank == 0

    @property
    def cores_per_rank(self) -> int:
        """This host's cores (those this process may run on) shared out among its ranks."""
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return max(1, cores // self.local_size)


_world: World | None = None
_in_collectives: dict[int, int] = {}  # thread ident -> how many of the collectives below it is inside


def _collective(fn):
    """Marks ``fn`` as a collective: while a thread is inside it, it waits for the other ranks, which the
    watchdog must tell from a thread stuck on its own (``in_collective``)."""

    @functools.wraps(fn)
    def marked(*args, **kwargs):
        me = threading.get_ident()
        _in_collectives[me] = _in_collectives.get(me, 0) + 1
        try:
            return fn(*args, **kwargs)
        finally:
            _in_collectives[me] -= 1

    return marked


def in_collective(thread_ident: int) -> bool:
    """Whether that thread is inside one of this module's eager collectives (not a collective of a compiled TF
    function, such as the learner's allreduce)."""
    return _in_collectives.get(thread_ident, 0) > 0


def _hvd():
    import horovod.tensorflow as hvd  # imported on first use: importing hvd_dqn must not start Horovod

    return hvd


def init() -> World:
    """Start Horovod (idempotent), pin this process to one GPU if there are any, and size TF's thread pools."""
    global _world
    _latency_defaults()
    hvd = _hvd()
    hvd.init()  # Horovod: picks up the ranks from horovodrun, mpirun or srun; a plain process is rank 0 of 1.
    world = World(hvd.rank(), hvd.size(), hvd.local_rank(), hvd.local_size())
    if _world is None:
        _configure_devices(world)
    _world = world
    return world


# Horovod and Open MPI settings read at hvd.init(); the user's own values always win. A DQN update allreduces a
# few kilobytes hundreds of times a second, so latency, not bandwidth, bounds it: Horovod's default 1 ms cycle
# costs up to a cycle per update, and MPI ranks that spin while idle steal the cores that the other ranks of the
# host compute on (docs/update-cost.md measures both; benchmarks/update_latency.py reproduces it).
LATENCY_DEFAULTS = {"HOROVOD_CYCLE_TIME": "0.1", "OMPI_MCA_mpi_yield_when_idle": "1"}


def _latency_defaults() -> None:
    for key, value in LATENCY_DEFAULTS.items():
        if key == "HOROVOD_CYCLE_TIME" and os.environ.get("HOROVOD_AUTOTUNE", "0") not in ("", "0"):
            continue  # a cycle time set in the environment is one that Horovod's autotuner leaves alone
        os.environ.setdefault(key, value)


def _configure_devices(world: World) -> None:
    gpus = tf.config.list_physical_devices("GPU")
    try:
        if gpus:
            # One process per GPU. Under SLURM with --gpus-per-task=1 each process sees a single GPU, hence modulo.
            gpu = gpus[world.local_rank % len(gpus)]
            tf.config.set_visible_devices(gpu, "GPU")
            tf.config.experimental.set_memory_growth(gpu, True)
        # Ranks sharing a host share its cores; more threads than cores per rank only adds contention.
        threads = world.cores_per_rank if world.local_size > 1 else 0  # 0 = TF's own choice
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(min(2, threads) if threads else 0)
    except RuntimeError:
        pass  # the embedding program already started TensorFlow's runtime; its settings stand


def world() -> World:
    if _world is None:
        raise RuntimeError("hvd_dqn.distributed.init() has not been called")
    return _world


def wrap_optimizer(
    optimizer,
    *,
    op: str = "average",
    compression: str = "none",
    backward_passes_per_step: int = 1,
    average_aggregated_gradients: bool = False,
):
    """Horovod: ``optimizer`` (a tf_keras one) made to reduce its gradients over all ranks inside
    ``minimize(loss, variables, tape=tape)``: its compute_gradients runs the allreduce, then its apply_gradients
    clips (``global_clipnorm``: the REDUCED gradient) and steps. Only minimize (or compute_gradients) reduces:
    ``tape.gradient`` + ``apply_gradients`` would not (the allreduce trap, docs/horovod-options.md).

    ``op``: "average" (Horovod's keras DistributedOptimizer) or "adasum" (through DistributedGradientTape, since
    that optimizer refuses Adasum). ``compression``: "none" or "fp16" on the wire. ``backward_passes_per_step`` k:
    each rank sums k gradients locally, one allreduce and one optimizer step per k (divided by k if
    ``average_aggregated_gradients``). With average, all the gradients of an update travel in one grouped
    allreduce."""
    if op == "adasum":
        return _adasum_optimizer(optimizer, compression)
    import horovod.tensorflow.keras as hvd_keras

    return _reduce_inline(
        hvd_keras.DistributedOptimizer(
            optimizer,
            compression=_wire(compression),
            backward_passes_per_step=backward_passes_per_step,
            average_aggregated_gradients=average_aggregated_gradients,
            groups=1,
        )
    )


def _reduce_inline(optimizer):
    """``optimizer`` (Horovod's keras DistributedOptimizer) with its gradient allreduce traced as plain Python
    into the graph that calls minimize. Built eagerly, Horovod wraps that function in a ``tf.function`` with
    autograph on, and autograph converting horovod.tensorflow's code on every trace of the learner's update made
    it the costliest part of a multi-rank run's start (docs/update-cost.md). The function has no control flow on
    tensors (its branches test Python values; the one on the world size is a ``tf.cond`` already), so the graph
    it builds is the same without autograph."""
    helper = getattr(optimizer, "_agg_helper", None)  # backward_passes_per_step > 1 reduces through it
    for owner, attr in ((optimizer, "_allreduce_grads"), (helper, "allreduce_grads"), (helper, "_allreduce_grads")):
        fn = getattr(owner, attr, None)
        if fn is not None and hasattr(fn, "python_function"):
            setattr(owner, attr, fn.python_function)
    return optimizer


def distributed_tape(tape, *, op: str = "average", compression: str = "none"):
    """Horovod: ``tape`` made to reduce the gradients it computes over all ranks (DistributedGradientTape), for
    an optimizer Horovod's keras DistributedOptimizer cannot hold (its Adasum; Keras 3's LAMB). ``op``: "average"
    or "adasum"; ``compression``: "none" or "fp16" on the wire. One allreduce per tensor, fused by Horovod's
    cycle: horovod 0.28.1's grouped allreduce fails with Adasum (UnboundLocalError)."""
    hvd = _hvd()
    check_allreduce_op(op)
    return hvd.DistributedGradientTape(
        tape, op=hvd.Adasum if op == "adasum" else hvd.Average, compression=_wire(compression)
    )


def _wire(compression: str):
    hvd = _hvd()
    return hvd.Compression.fp16 if compression == "fp16" else hvd.Compression.none


def mpi_enabled() -> bool:
    """Whether this job runs Horovod's MPI controller (horovodrun --mpi, mpirun, srun), not Gloo."""
    return bool(_hvd().mpi_enabled())


def check_allreduce_op(op: str) -> None:
    """A UserError if this job cannot reduce by ``op`` (Adasum needs MPI and a power-of-2 number of ranks)."""
    if op != "adasum":
        return
    if not _hvd().mpi_enabled():
        raise UserError(
            "allreduce_op: adasum needs the MPI controller (horovodrun --mpi, mpirun or srun); this job runs on Gloo"
        )
    size = world().size
    if size & (size - 1):
        raise UserError(f"allreduce_op: adasum needs a power-of-2 number of ranks, not {size}")


def _adasum_optimizer(optimizer, compression: str):
    """``optimizer``'s class with a compute_gradients that reduces by Adasum through DistributedGradientTape (the
    way Horovod's own keras DistributedOptimizer builds its class; saved under the same name)."""
    check_allreduce_op("adasum")

    def compute_gradients(self, loss, var_list, tape=None):
        # Horovod: Adasum combines the ranks' gradients by their projections, not their mean
        tape = distributed_tape(tape, op="adasum", compression=compression)
        return list(zip(tape.gradient(loss, var_list), var_list))

    cls = type(type(optimizer).__name__, (type(optimizer),), {"compute_gradients": compute_gradients})
    return cls.from_config(optimizer.get_config())


def _grouped_average(tensors):
    """One fused allreduce averaging ``tensors`` (eagerly, outside the learner's graph)."""
    hvd = _hvd()
    return hvd.grouped_allreduce(list(tensors), op=hvd.Average)


@_collective
def average_variables(variables) -> None:
    """Horovod: replace ``variables`` on every rank by their mean over all ranks (federated averaging), with one
    fused allreduce of the parameters. The ring-allreduce gives every rank the same bytes, so the replicas are
    bit-identical afterwards."""
    variables = list(variables)
    if world().size == 1:
        return
    for var, mean in zip(variables, _grouped_average([v.read_value() for v in variables])):
        var.assign(mean)


@_collective
def time_allreduce(variables, repeats: int = 3) -> float | None:
    """Milliseconds of one gradient-sized grouped allreduce, the collective of every update (a collective: every
    rank must call it at the same point). None on one rank, where updates run no allreduce."""
    if world().size == 1:
        return None
    import time

    tensors = [tf.zeros_like(v) for v in variables]
    _grouped_average(tensors)  # the first call pays Horovod's negotiation; time the steady state
    start = time.perf_counter()
    for _ in range(repeats):
        _grouped_average(tensors)
    return (time.perf_counter() - start) / repeats * 1e3


@_collective
def broadcast_variables(variables, root_rank: int = 0) -> None:
    """Horovod: overwrite ``variables`` on every rank with root_rank's values."""
    if world().size > 1:
        _hvd().broadcast_variables(list(variables), root_rank=root_rank)


@_collective
def broadcast_object(obj, root_rank: int = 0):
    """Rank root_rank's ``obj`` on every rank (small values: names, flags)."""
    if world().size == 1:
        return obj
    return _hvd().broadcast_object(obj, root_rank=root_rank)


@_collective
def allgather(values: np.ndarray) -> np.ndarray:
    """Concatenate every rank's ``values`` (first dims may differ) in rank order."""
    values = np.asarray(values)
    if world().size == 1:
        return values
    return _hvd().allgather(tf.convert_to_tensor(values)).numpy()


@_collective
def allgather_object(obj) -> list:
    """Every rank's ``obj`` (a small picklable value: names, sizes, digests) in rank order; a collective."""
    if world().size == 1:
        return [obj]
    return _hvd().allgather_object(obj)


def barrier() -> None:
    """Every rank waits here until all have arrived (e.g. until rank 0 has finished writing a file)."""
    if world().size > 1:
        allreduce_sum([0.0])


@_collective
def allreduce_sum(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if world().size == 1:
        return values
    return _hvd().allreduce(tf.convert_to_tensor(values), op=_hvd().Sum).numpy()


def weights_checksum(variables) -> str:
    """A hash of the exact bytes of ``variables``: equal on two ranks iff their weights are bit-identical."""
    digest = hashlib.sha256()
    for v in variables:
        digest.update(np.ascontiguousarray(v.numpy()).tobytes())
    return digest.hexdigest()[:16]


def gather_checksums(variables) -> list[str]:
    """Each rank's weights checksum, in rank order (a collective: every rank must call it)."""
    mine = np.frombuffer(bytes.fromhex(weights_checksum(variables)), dtype=np.uint8)
    gathered = allgather(mine[None, :])
    return [row.tobytes().hex() for row in gathered]


def elastic_state(variables, **counters):
    """Horovod elastic: the state that ``elastic_run`` commits, restores after a failure and syncs from rank 0
    after every reset: ``variables`` (kept as NumPy copies on the host) and the Python values ``counters``
    (attributes of the returned object).

    Not Horovod's ``TensorFlowState``: in TF2's eager mode its constructor broadcasts the variables (a collective
    that a worker joining mid-run makes alone: the job hangs) and its ``sync`` broadcasts them only in a TF1
    session (a joining worker would keep its own weights). This one makes no collective when it is built, and its
    ``sync``, run by every worker after each reset, broadcasts rank 0's variables."""
    import horovod.tensorflow as hvd
    from horovod.common.elastic import ObjectState

    class VariablesState(ObjectState):
        def __init__(self, variables, **kwargs):
            self.variables = list(variables)
            self._save_variables()
            super().__init__(bcast_object=hvd.broadcast_object, get_rank=hvd.rank, **kwargs)

        def save(self):
            self._save_variables()
            super().save()

        def restore(self):
            for var, value in zip(self.variables, self._values):
                var.assign(value)
            super().restore()

        def sync(self):
            hvd.broadcast_variables(self.variables, root_rank=0)
            self._save_variables()
            super().sync()

        def _save_variables(self):
            self._values = [var.numpy() for var in self.variables]

    return VariablesState(variables, **counters)


def elastic_run(func):
    """Horovod elastic: ``func(state)`` re-run from the last commit (after ``state.restore()``, a re-rendezvous of
    the remaining workers and ``state.sync()``) whenever a worker fails or hosts change. A failed collective
    inside a tf.function surfaces as a TF error; Horovod's own wrapper only recognises some op names
    (not HorovodGroupedAllreduce), so every TF error from a Horovod op counts as a worker failure here."""
    import horovod.tensorflow.elastic as hvd_elastic
    from horovod.common.exceptions import HorovodInternalError

    def converted(state):
        try:
            return func(state)
        except tf.errors.OpError as exc:
            if "Horovod" in str(exc) or "horovod" in str(exc):
                raise HorovodInternalError(exc) from exc
            raise

    return hvd_elastic.run(converted)


def abort_job(exc: BaseException, *, show_traceback: bool = True, exit_code: int = 1) -> None:
    """End this process at once so the launcher tears the whole job down instead of the other ranks
    waiting forever in their next collective (Gloo has no stall shutdown). Never returns."""
    rank = f"rank {_world.rank}" if _world else "rank ?"
    if show_traceback:
        traceback.print_exception(exc, file=sys.stderr)
    say(f"hvd-dqn: {rank} failed: {type(exc).__name__}: {exc}; ending the job")
    sys.stdout.flush()
    os._exit(exit_code)
