"""Preemption: SIGTERM or SIGUSR1 asks the run to stop, checkpoint and exit with PREEMPTED_EXIT_CODE.

The handler only sets a flag. The trainer allreduces the flags of all ranks at its decision points (the same
iterations on every rank), so a signal that reaches one rank, some or all of them stops every rank at the same
update; the job then writes a checkpoint and every rank exits with PREEMPTED_EXIT_CODE. The ranks also agree on
the stop's one cause (``root_cause``), which rank 0's line names, whichever rank noticed first. Who sends the signal:
SLURM (``--signal=B:USR1@120`` to the batch script, which forwards it to srun's tasks), mpirun (forwards SIGUSR1;
on SIGTERM it kills the ranks a few seconds later, so send SIGUSR1 to mpirun), horovodrun (with Gloo, on SIGTERM
it gives the ranks SIGTERM, then SIGKILL 5 s later; with MPI it ends alone, and the ranks see it gone:
``hvd_dqn.launcherwatch``), or a user (``kill -USR1 <rank pid>``).
"""

from __future__ import annotations

import math
import os
import signal
import socket
import threading

from hvd_dqn import launcherwatch
from hvd_dqn.errors import UserError, excerpt, say

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL (sysexits.h): stopped on request, a checkpoint is written, resume later
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
GRACE_ENV = "HVD_DQN_TERM_GRACE_S"  # seconds after SIGTERM to agree on the stop, else exit 143 (default 10)


def grace_seconds() -> float:
    """HVD_DQN_TERM_GRACE_S (default 10): a positive number of seconds, else a one-line UserError."""
    raw = os.environ.get(GRACE_ENV) or "10"
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise UserError(f"{GRACE_ENV}: expected a positive number of seconds, got {excerpt(raw)}")
    return value


class Preempted(Exception):
    """Raised on every rank once the checkpoint of a requested stop is written."""

    exit_code = PREEMPTED_EXIT_CODE

    def __init__(self, env_steps: int, checkpoint, signame: str):
        super().__init__(f"stopped by {signame} at global env step {env_steps}; checkpoint {checkpoint}")
        self.env_steps, self.checkpoint = env_steps, checkpoint


class StopRequest:
    """The flag set by the signal handlers (installed from the main thread only; a no-op elsewhere).

    SIGTERM is also how launchers end the survivors when a rank has died (srun --kill-on-bad-exit, mpirun,
    horovodrun), and such a survivor sits blocked in a collective that will never complete, where no Python
    handler runs. So a watcher thread learns of the signal through ``signal.set_wakeup_fd`` (written by the C
    handler at once) and, after SIGTERM, exits the process with 143 unless the ranks have agreed on the stop
    within ``HVD_DQN_TERM_GRACE_S`` seconds (``agreed()``; after that, writing the checkpoint has no deadline
    but the launcher's). SIGUSR1 is a request without a deadline."""

    def __init__(self, rank: int):
        self.signame: str | None = None
        self._previous = {}
        self._wakeup = None  # (previous wakeup fd, our socket pair)
        self._timer: threading.Timer | None = None
        self._agreed = False
        self._lock = threading.Lock()
        self.grace_s = grace_seconds()
        self.launcher: launcherwatch.Watch | None = None

    @property
    def requested(self) -> bool:
        return self.signame is not None

    def poll(self, env_steps: int) -> bool:
        """Asked at each decision point (global env step ``env_steps``): has a stop been requested?"""
        return self.requested

    def watch_launcher(self) -> launcherwatch.Watch | None:
        """Ask for the stop, as after SIGTERM, when the horovodrun that started this rank ends; returns the watch
        (``cancel()`` it when the job is over), None where there is no launcher to watch (see launcherwatch)."""
        self.launcher = launcherwatch.watch(self.request)
        return self.launcher

    def cause(self) -> tuple[int, str] | None:
        """This rank's account of a requested stop, for ``root_cause``: the end of its launcher if that has ended
        by now, else what this rank saw itself (None: nothing)."""
        if self.launcher is not None and self.launcher.ended():
            return LAUNCHER_ENDED, self.launcher.reason
        return None if self.signame is None else (REQUESTED, self.signame)

    def agreed(self, causes=()) -> None:
        """Every rank has joined the stop decision: no deadline any more. ``causes``: every rank's ``cause()``,
        whose ``root_cause`` every rank then names."""
        with self._lock:
            self._agreed = True
            self.signame = root_cause(causes) or self.signame
            if self._timer is not None:
                self._timer.cancel()

    def request(self, reason: str, deadline: bool = True) -> None:
        """Ask for the stop (from any thread); ``reason`` names it in the messages. With ``deadline`` the ranks
        must agree on it within ``grace_s``, as after SIGTERM (e.g. the launcher is gone: see launcherwatch)."""
        with self._lock:
            if self.signame is None:
                self.signame = reason
            if deadline and self._timer is None and not self._agreed:
                self._timer = threading.Timer(self.grace_s, self._expire, args=(reason,))
                self._timer.daemon = True
                self._timer.start()

    def _requested(self, signum: int) -> None:
        self.request(signal.Signals(signum).name, deadline=signum == signal.SIGTERM)

    def _expire(self, reason: str) -> None:
        say(
            f"hvd-dqn: {reason}, and the ranks did not agree on a stop within {self.grace_s:g} s (a rank is "
            "gone, or this one is blocked); exiting without a checkpoint"
        )
        os._exit(128 + signal.SIGTERM)

    def _handle(self, signum, frame) -> None:
        self._requested(signum)

    def _watch(self, sock: socket.socket) -> None:
        while True:
            try:
                data = sock.recv(64)
            except OSError:
                return
            if not data:
                return
            for signum in data:
                if signum in SIGNALS:
                    self._requested(signum)

    def install(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
            reader, writer = socket.socketpair()
            writer.setblocking(False)
            self._wakeup = (signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False), reader, writer)
            threading.Thread(target=self._watch, args=(reader,), daemon=True, name="hvd-dqn-signals").start()
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        if self._wakeup is not None:
            previous, reader, writer = self._wakeup
            signal.set_wakeup_fd(previous)
            writer.close()
            reader.shutdown(socket.SHUT_RDWR)
            reader.close()
            self._wakeup = None
        if self._timer is not None:
            self._timer.cancel()


LAUNCHER_ENDED, REQUESTED = 0, 1  # the precedence of a rank's cause (``StopRequest.cause``)


def root_cause(causes) -> str | None:
    """The one cause of a stop, from every rank's ``StopRequest.cause()`` in rank order: the end of a launcher if a
    rank saw one, else the first rank's own. A user's SIGTERM to horovodrun --mpi reaches the ranks in several ways
    (the launcher gone; with ``timeout``, its SIGTERM to the process group too), each rank noticing one of them
    first, or none before the decision: it is still one cause, said one way."""
    known = [c for c in causes if c is not None]
    return min(known, key=lambda c: c[0])[1] if known else None


def ignore_stop_signals() -> None:
    """For a process that has written the checkpoint of a requested stop and now exits with PREEMPTED_EXIT_CODE.
    A launcher ends the ranks still closing as soon as one has exited (srun --kill-on-bad-exit, horovodrun), with
    SIGTERM; that must not turn a rank's 75 into death by signal, which made srun report the step as killed and
    SLURM's requeue never happen. ``StopRequest``'s Python handlers cannot see to it: the interpreter restores the
    default action of every signal it handles when it finalizes, while TensorFlow and Horovod are still shutting
    down. An ignored signal stays ignored through that; a launcher that really means it sends SIGKILL after its
    grace period. Called by the CLI, not by the Trainer: an embedding program's signals are its own."""
    try:
        for sig in SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
    except ValueError:  # not the main thread (main() called from a thread of an embedding program)
        pass
