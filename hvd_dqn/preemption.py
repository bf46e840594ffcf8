"""Preemption: SIGTERM or SIGUSR1 asks the run to stop, checkpoint and exit with PREEMPTED_EXIT_CODE.

The handler only sets a flag. The trainer allreduces the flags of all ranks at its decision points (the same
iterations on every rank), so a signal that reaches one rank, some or all of them stops every rank at the same
update; the job then writes a checkpoint and every rank exits with PREEMPTED_EXIT_CODE. Who sends the signal:
SLURM (``--signal=B:USR1@120`` to the batch script, which forwards it to srun's tasks), mpirun (forwards SIGUSR1;
on SIGTERM it kills the ranks a few seconds later, so send SIGUSR1 to mpirun), horovodrun (on SIGTERM it gives
the ranks SIGTERM, then SIGKILL 5 s later), or a user (``kill -USR1 <rank pid>``).
"""
from __future__ import annotations

import os
import signal
import threading

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL (sysexits.h): stopped on request, a checkpoint is written, resume later
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
PREEMPT_AT_ENV = "HVD_DQN_PREEMPT_AT"  # "RANK:GLOBAL_STEP": raise the flag on that rank at that step (tests)


class Preempted(Exception):
    """Raised on every rank once the checkpoint of a requested stop is written."""

    exit_code = PREEMPTED_EXIT_CODE

    def __init__(self, env_steps: int, checkpoint, signame: str):
        super().__init__(f"stopped by {signame} at global env step {env_steps}; checkpoint {checkpoint}")
        self.env_steps, self.checkpoint = env_steps, checkpoint


class StopRequest:
    """The flag set by the signal handlers (installed from the main thread only; a no-op elsewhere)."""

    def __init__(self, rank: int):
        self.signame: str | None = None
        self._previous = {}
        spec = os.environ.get(PREEMPT_AT_ENV, "")
        at_rank, _, step = spec.partition(":")
        self._at_step = int(step) if spec and int(at_rank) == rank else None

    @property
    def requested(self) -> bool:
        return self.signame is not None

    def poll(self, env_steps: int) -> bool:
        if self._at_step is not None and env_steps >= self._at_step and self.signame is None:
            self.signame = PREEMPT_AT_ENV
        return self.requested

    def _handle(self, signum, frame) -> None:
        self.signame = signal.Signals(signum).name

    def install(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
